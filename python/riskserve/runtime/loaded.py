"""A model version loaded from the registry: its compiled feature pipeline, its
runtime, its manifest and the V2 metadata derived from its spec.

Opening a version has two steps: `read_version` (verified contents, the compiled
feature spec: nothing there can crash the process) and `open_model` (the model
file parsed by LightGBM or ONNX Runtime: a malformed file can abort the process).
`riskserve.runtime.load_version` runs the second step in a check process first
(riskserve.runtime.probe); the check process runs these same two functions."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from riskserve._native import DriftMonitor, FeaturePipeline, SpecError
from riskserve.errors import IntegrityError
from riskserve.protocol import V2_DATATYPE
from riskserve.registry import Manifest, ModelRepository, VersionRef
from riskserve.runtime.runtimes import LightGBMRuntime, ModelRuntime, OnnxRuntime, Scores

#: The operating threshold of versions trained before the threshold was chosen at
#: training and recorded in the manifest (no `operating_point` in it).
LEGACY_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class InputInfo:
    name: str
    dtype: str  # spec dtype
    datatype: str  # V2 datatype


def missing_row(inputs: tuple[InputInfo, ...]) -> dict[str, Any]:
    """One row with every input missing (strings None, numbers NaN; bools and
    ints, which have no missing value, zero)."""
    row: dict[str, Any] = {}
    for i in inputs:
        if i.dtype == "string":
            row[i.name] = [None]
        elif i.dtype == "bool":
            row[i.name] = np.zeros(1, dtype=bool)
        elif i.dtype == "int":
            row[i.name] = np.zeros(1, dtype=np.int64)
        else:
            row[i.name] = np.full(1, np.nan)
    return row


@dataclasses.dataclass(eq=False)
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    pipeline: FeaturePipeline
    runtime: ModelRuntime
    inputs: tuple[InputInfo, ...]
    #: Per-bin input and score counts; None when the spec has no drift reference.
    drift: DriftMonitor | None = None

    @property
    def platform(self) -> str:
        return self.runtime.platform

    @property
    def threshold(self) -> float:
        """The version's own operating threshold (a score >= it is flagged): the
        manifest's `operating_point.threshold` (checked to be in [0, 1] when the
        manifest was parsed), or LEGACY_THRESHOLD for a version trained before it
        was recorded. A deployment may override it (routing.Deployment.threshold_of)."""
        t = self.manifest.threshold
        return LEGACY_THRESHOLD if t is None else t

    @functools.cached_property
    def input_index(self) -> Mapping[str, InputInfo]:
        return {i.name: i for i in self.inputs}

    def score(self, columns: Mapping[str, Any]) -> Scores:
        """Raw columns → P(fraud) per row. Runs numeric work with the GIL released;
        call it from a worker thread, not the event loop."""
        cols = columns if isinstance(columns, dict) else dict(columns)
        features = self.pipeline.transform(cols, self.drift)
        scores = self.runtime.predict(features)
        if self.drift is not None:
            self.drift.observe_scores(scores)
        return scores

    def warm_up(self) -> None:
        """Scores one all-missing row so the first real request pays no lazy setup."""
        features = self.pipeline.transform(missing_row(self.inputs))  # not counted as traffic
        out = self.runtime.predict(features)
        if out.shape != (1,) or not np.isfinite(out).all():
            raise IntegrityError(f"{self.name}/{self.version}: warm-up produced {out!r}")


@dataclasses.dataclass(frozen=True)
class VersionFiles:
    """A version's verified contents and its compiled feature spec: everything
    about it that can be read without parsing the model file."""

    ref: VersionRef
    manifest: Manifest
    contents: Mapping[str, bytes]
    spec_json: str
    pipeline: FeaturePipeline
    inputs: tuple[InputInfo, ...]

    @property
    def model_file(self) -> str:
        return "model.onnx" if self.manifest.model_format == "onnx" else "model.txt"


def read_version(repo: ModelRepository, ref: VersionRef) -> VersionFiles:
    """Reads and verifies every file of `ref` and compiles its feature spec; raises
    IntegrityError naming the file on any failure."""
    manifest, contents = repo.read_verified(ref)
    spec_path = ref.path / "features.json"
    try:
        spec_json = contents["features.json"].decode()
    except UnicodeDecodeError:
        raise IntegrityError(f"{spec_path}: not UTF-8") from None
    try:
        pipeline = FeaturePipeline(spec_json)
    except SpecError as e:
        raise IntegrityError(f"{spec_path}: {e}") from None
    inputs = tuple(InputInfo(name, dtype, V2_DATATYPE[dtype]) for name, dtype in pipeline.inputs)
    return VersionFiles(ref, manifest, contents, spec_json, pipeline, inputs)


def open_model(
    files: VersionFiles,
    onnx_threads: int = 1,
    drift_slots: int = 60,
    drift_slot_seconds: int = 60,
    stage: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Parses the model file of `files` with its runtime and warms it up; raises
    IntegrityError naming the file when the library refuses it. A malformed file
    can abort the process instead: load_version checks it in another one first.
    `stage` is told "parse", then "warm_up" (the check process reports them)."""
    tell = stage or (lambda _: None)
    ref, manifest, contents = files.ref, files.manifest, files.contents
    try:
        has_reference = json.loads(files.spec_json).get("reference") is not None
        drift = (
            DriftMonitor(files.spec_json, drift_slots, drift_slot_seconds)
            if has_reference and drift_slots > 0
            else None
        )
    except SpecError as e:
        raise IntegrityError(f"{ref.path / 'features.json'}: {e}") from None
    n = files.pipeline.n_features
    tell("parse")
    try:
        runtime: ModelRuntime
        if manifest.model_format == "onnx":
            runtime = OnnxRuntime(contents["model.onnx"], n, onnx_threads)
        else:
            runtime = LightGBMRuntime(contents["model.txt"], n)
    except Exception as e:  # the libraries raise their own types
        raise IntegrityError(f"{ref.path}: model does not load: {e}") from None
    model = LoadedModel(
        ref.name, ref.version, manifest, files.pipeline, runtime, files.inputs, drift
    )
    tell("warm_up")
    model.warm_up()
    return model


def spec_hash(spec_json: str) -> str:
    """sha256 of the canonical (sorted, compact) JSON of a spec."""
    import hashlib

    canon = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()
