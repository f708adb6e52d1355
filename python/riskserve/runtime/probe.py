"""Every model file is parsed in a check process before the server parses it.

LightGBM's parser calls std::terminate (or reads out of bounds) on a malformed
model.txt whose hashes match its manifest, and ONNX Runtime can crash on a
hostile model.onnx; in the server that would end every request in flight, and a
restart with the version in the registry would crash-loop. So `load_version`:

1. reads and verifies the version's files and compiles its feature spec (in
   process: nothing there can abort it) and builds the probe rows: an
   all-missing row (the warm-up's), a few deterministic raw rows built from the
   spec (through the feature pipeline), and wide random feature rows (every kind
   of branch);
2. has a fresh interpreter (riskserve.runtime.probe_child, started with
   riskserve.runtime.child: exec, never a fork of the server) load the version
   exactly as the server would and score the probe rows (for LightGBM it first
   checks that every split names a feature the model has: LightGBM parses an
   out-of-range one and reads past the row when scoring); a child killed by a
   signal, exiting non-zero, timing out (`ModelCheck.timeout`, 60 s) or writing
   no readable report means IntegrityError, naming the file and what happened;
3. only then parses the same verified bytes itself, and refuses the version
   unless its own scores of the probe rows agree with the child's (≤ 1e-6).

The child's verdict is kept, a failure as well as a pass, keyed by the sha256 of
the model file, the library and its version, the sha256 of features.json and of
the probe rows (so a change to the rows in a new riskserve re-checks): in memory
for the process, and on disk in `<models>/.checked/<key>.json`. On disk next to
the models rather than in ~/.cache: the deployment manifests mount the root
filesystem read-only and the models folder writable (deployment.json lives
there already), every worker and every replica sharing the folder reuses one
check, and a bad version stays refused across restarts instead of being
re-checked by every pod that comes up. A verdict file that is unreadable or
malformed is ignored and checked again, never trusted as a pass; a folder that
cannot be written keeps verdicts in memory only. Deleting a file re-checks that
version in processes started afterwards. The agreement check (step 3) runs at
every load: it costs one predict call; when it fails on a kept verdict, the
verdict is checked again once.

A row the model fails to score (an ONNX Runtime error, a non-finite score) does
not refuse it, as before: the warm-up row must score, and both processes must
fail on the same rows. The cost, one check process per new model file and
library version, is measured in bench/README.md ("Model check")."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import importlib
import importlib.metadata
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from riskserve._native import FeatureError
from riskserve.errors import IntegrityError
from riskserve.files import write_atomic
from riskserve.registry import ModelRepository, VersionRef
from riskserve.runtime.child import ChildResult, run_module
from riskserve.runtime.loaded import (
    InputInfo,
    LoadedModel,
    VersionFiles,
    missing_row,
    open_model,
    read_version,
)
from riskserve.runtime.runtimes import PARITY_TOLERANCE, FloatMatrix, ModelRuntime, parity_rows

log = logging.getLogger(__name__)

VERDICT_FORMAT = "riskserve.check/v1"
#: The folder of kept verdicts, under the models folder.
CHECKED_DIR = ".checked"
#: The module the check process runs.
CHILD_MODULE = "riskserve.runtime.probe_child"
DEFAULT_TIMEOUT = 60.0
#: Largest |server score - check process score| accepted on the probe rows.
AGREEMENT_TOLERANCE = PARITY_TOLERANCE
#: Deterministic raw rows after the all-missing one, and wide random feature rows.
RAW_ROWS = 8
WIDE_ROWS = 64

_FLOAT_LADDER = (-1000.0, -1.0, 0.0, 0.5, 1.0, 10.0, 1000.0, 1e6)
_INT_LADDER = (-5, 0, 1, 2, 7, 30, 365, 100_000)
_UNSEEN = "riskserve-probe-unseen"

#: Stands for the version's folder in a kept reason: the verdict is about the
#: files' contents, which another version or a copied models folder may share.
VERSION_DIR = "<version dir>"

#: Runs the check process: (module, args, timeout) -> how it ended. Tests may wrap it.
Runner = Callable[[str, Sequence[str], float], ChildResult]


# -- the probe rows -------------------------------------------------------------------


def _vocabularies(spec_json: str) -> dict[str, list[str]]:
    spec = json.loads(spec_json)
    out: dict[str, list[str]] = {}
    for i in spec.get("inputs", []):
        vocab = i.get("vocabulary") if isinstance(i, dict) else None
        if isinstance(vocab, list) and vocab and all(isinstance(v, str) for v in vocab):
            out[str(i["name"])] = vocab
    return out


def probe_columns(inputs: tuple[InputInfo, ...], spec_json: str) -> dict[str, Any]:
    """1 + RAW_ROWS raw rows: all missing, then per input a deterministic walk over
    its vocabulary (the last row an unseen value) or a ladder of magnitudes."""
    vocabularies = _vocabularies(spec_json)
    missing = missing_row(inputs)
    cols: dict[str, Any] = {}
    for k, i in enumerate(inputs):
        first = missing[i.name]
        if i.dtype == "string":
            vocab = vocabularies.get(i.name, [])
            walk: list[str | None] = [
                vocab[(3 * r + k) % len(vocab)] if vocab else f"probe-{r}"
                for r in range(RAW_ROWS - 1)
            ]
            cols[i.name] = [*first, *walk, _UNSEEN]
        elif i.dtype == "bool":
            rest = np.array([(r + k) % 2 == 0 for r in range(RAW_ROWS)], dtype=bool)
            cols[i.name] = np.concatenate([first, rest])
        elif i.dtype == "int":
            ints = [_INT_LADDER[(r + k) % len(_INT_LADDER)] for r in range(RAW_ROWS)]
            cols[i.name] = np.concatenate([first, np.array(ints, dtype=np.int64)])
        else:
            floats = [_FLOAT_LADDER[(r + k) % len(_FLOAT_LADDER)] for r in range(RAW_ROWS)]
            cols[i.name] = np.concatenate([first, np.array(floats)])
    return cols


def probe_rows(files: VersionFiles) -> FloatMatrix:
    """The feature rows both processes score: the raw probe rows through the
    version's pipeline (the all-missing row alone if the spec refuses the others),
    then WIDE_ROWS wide random rows."""
    pipe = files.pipeline
    try:
        raw = pipe.transform(probe_columns(files.inputs, files.spec_json))
    except FeatureError:
        try:
            raw = pipe.transform(missing_row(files.inputs))
        except FeatureError as e:
            raise IntegrityError(f"{files.ref.path / 'features.json'}: {e}") from None
    rows = np.vstack([raw, parity_rows(pipe.n_features, WIDE_ROWS)])
    return np.ascontiguousarray(rows, dtype=np.float32)


# -- verdicts -------------------------------------------------------------------------


@functools.cache
def library_version(model_format: str) -> str:
    """ "lightgbm 4.7.0" / "onnxruntime 1.32.0": the library that parses the file."""
    dist = "onnxruntime" if model_format == "onnx" else "lightgbm"
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:  # installed under another name
        return f"{dist} {importlib.import_module(dist).__version__}"


def library_label(model_format: str) -> str:
    return "ONNX Runtime" if model_format == "onnx" else "LightGBM"


def verdict_key(files: VersionFiles, rows: FloatMatrix) -> str:
    """What a verdict depends on: the model file, the library, the spec, the rows."""
    m = files.manifest
    parts = [
        VERDICT_FORMAT,
        f"{files.model_file}={m.model_sha256}",
        library_version(m.model_format),
        f"features.json={m.files['features.json']}",
        f"rows={rows.shape}:{hashlib.sha256(rows.tobytes()).hexdigest()}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the check process found: a pass with its scores of the probe rows,
    or a refusal with its reason."""

    ok: bool
    #: With VERSION_DIR for the folder of the version it was found in.
    reason: str = ""
    #: Per probe row; None where scoring the row failed (probe_scores).
    scores: tuple[float | None, ...] = ()

    def reason_at(self, version_dir: Path) -> str:
        return self.reason.replace(VERSION_DIR, str(version_dir))

    def to_json(self, key: str, about: dict[str, Any]) -> str:
        body = {
            "format": VERDICT_FORMAT,
            "key": key,
            "ok": self.ok,
            "reason": self.reason,
            "scores": list(self.scores),
            "checked": about,
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, key: str) -> Verdict | None:
        """The verdict in `text` if it is well formed and for `key`, else None."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("format") != VERDICT_FORMAT:
            return None
        ok, reason, scores = data.get("ok"), data.get("reason"), data.get("scores")
        if data.get("key") != key or not isinstance(ok, bool) or not isinstance(reason, str):
            return None
        if ok:
            parsed = _scores(scores)
            return None if not parsed or reason else cls(True, "", parsed)
        return cls(False, reason) if reason.strip() else None


def _scores(values: Any) -> tuple[float | None, ...] | None:
    """A reported score list (finite numbers or null), else None."""
    if not isinstance(values, list):
        return None
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        else:
            out.append(float(v))
    return tuple(out)


def probe_scores(runtime: ModelRuntime, rows: FloatMatrix) -> list[float | None]:
    """The runtime's score of every probe row. A model may fail on some rows (an
    error from ONNX Runtime, a non-finite score): those rows are None, found by
    scoring one row at a time, and the two processes must fail on the same rows.
    The warm-up has already required a finite score of the all-missing row."""
    try:
        out = runtime.predict(rows)
        if out.shape == (rows.shape[0],) and bool(np.isfinite(out).all()):
            return [float(v) for v in out]
    except Exception:
        pass
    scores: list[float | None] = []
    for i in range(rows.shape[0]):
        try:
            one = runtime.predict(rows[i : i + 1])
        except Exception:
            scores.append(None)
            continue
        ok = one.shape == (1,) and bool(np.isfinite(one).all())
        scores.append(float(one[0]) if ok else None)
    return scores


def disagreement(mine: Sequence[float | None], theirs: Sequence[float | None]) -> float:
    """Largest |difference| between two processes' probe scores; inf when they do
    not align or one failed on a row the other scored."""
    if len(mine) != len(theirs) or not mine:
        return math.inf
    diff = 0.0
    for a, b in zip(mine, theirs, strict=True):
        if (a is None) != (b is None):
            return math.inf
        if a is not None and b is not None:
            diff = max(diff, abs(a - b))
    return diff if math.isfinite(diff) else math.inf


# -- the check ------------------------------------------------------------------------


class _Unkept(IntegrityError):
    """A failure that says nothing about the model file (the check process could
    not start, or the files changed under it): refused now, not remembered."""


#: What the check process was doing in each stage it reports.
_DOING = {
    "inspect": "inspecting it",
    "parse": "parsing it",
    "warm_up": "scoring the warm-up row",
    "score": "scoring the probe rows",
    "free": "freeing the model",
}


def _crashed(stage: str, label: str) -> str:
    if stage == "parse":
        return f"crashed {label}'s parser"
    return f"crashed {label} while {_DOING.get(stage, 'exiting')}"


class ModelCheck:
    """Checks versions in a child process and keeps the verdicts (module docstring)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, run: Runner = run_module) -> None:
        self.timeout = timeout
        self._run = run
        self._memory: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        #: Check processes started (tests and logs read it).
        self.spawned = 0

    @staticmethod
    def verdict_path(repo: ModelRepository, key: str) -> Path:
        return repo.root / CHECKED_DIR / f"{key}.json"

    # -- the kept verdicts

    def kept(self, repo: ModelRepository, key: str) -> Verdict | None:
        """The verdict for `key` from memory or disk; None when unknown (a file
        that cannot be read or parsed counts as unknown)."""
        with self._lock:
            found = self._memory.get(key)
        if found is not None:
            return found
        path = self.verdict_path(repo, key)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning(
                "model check verdict unreadable", extra={"path": str(path), "reason": str(e)}
            )
            return None
        found = Verdict.from_json(text, key)
        if found is None:
            log.warning("model check verdict malformed; checking again", extra={"path": str(path)})
            return None
        with self._lock:
            self._memory[key] = found
        return found

    def _keep(self, repo: ModelRepository, key: str, v: Verdict, about: dict[str, Any]) -> None:
        with self._lock:
            self._memory[key] = v
        path = self.verdict_path(repo, key)
        try:
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, v.to_json(key, about))
        except OSError as e:
            log.warning(
                "model check verdict kept in memory only",
                extra={"path": str(path), "reason": str(e)},
            )

    def _forget(self, repo: ModelRepository, key: str) -> None:
        with self._lock:
            self._memory.pop(key, None)
        with contextlib.suppress(OSError):
            self.verdict_path(repo, key).unlink(missing_ok=True)

    # -- checking

    def check(
        self, repo: ModelRepository, files: VersionFiles, rows: FloatMatrix, onnx_threads: int
    ) -> Verdict:
        """Runs the check process on `files` and keeps its verdict; raises
        IntegrityError (not kept) when the run says nothing about the model."""
        key = verdict_key(files, rows)
        ref, manifest = files.ref, files.manifest
        args = [str(repo.root), ref.name, str(ref.version), str(onnx_threads)]
        try:
            with self._lock:
                self.spawned += 1
            result = self._run(CHILD_MODULE, args, self.timeout)
        except OSError as e:
            raise _Unkept(f"{ref.path}: the model check process did not start: {e}") from None
        verdict = self._interpret(files, rows, result)
        verdict = dataclasses.replace(
            verdict, reason=verdict.reason.replace(str(ref.path), VERSION_DIR)
        )
        about = {
            "model": f"{ref.name}/{ref.version}",
            "file": files.model_file,
            "sha256": manifest.model_sha256,
            "library": library_version(manifest.model_format),
            "features_sha256": manifest.files["features.json"],
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(result.seconds, 3),
        }
        self._keep(repo, key, verdict, about)
        log.info(
            "model version checked",
            extra={
                "model": ref.name,
                "version": ref.version,
                "ok": verdict.ok,
                "reason": verdict.reason_at(ref.path),
                "seconds": round(result.seconds, 3),
                "verdict": str(self.verdict_path(repo, key)),
            },
        )
        return verdict

    def _interpret(self, files: VersionFiles, rows: FloatMatrix, result: ChildResult) -> Verdict:
        ref, manifest = files.ref, files.manifest
        where = ref.path / files.model_file
        label = library_label(manifest.model_format)
        lines, garbage = _report_lines(result.stdout)
        stages = [str(x["stage"]) for x in lines if "stage" in x]
        final = next((x for x in reversed(lines) if "ok" in x), None)
        seen = next((x["files"] for x in lines if "files" in x), None)
        if seen is None:  # it never got to the model: its own failure, not the model's
            if final is not None and isinstance(final.get("reason"), str):
                raise _Unkept(f"{final['reason']} (in the model check process)")
            raise _Unkept(
                f"{where}: the model check process {result.how()} before it read the "
                f"version (stage {stages[-1] if stages else 'start'}): {result.stderr_line()}"
            )
        if seen != dict(manifest.files):
            raise _Unkept(f"{ref.path}: its files changed while the model check process read them")
        stage = "exit" if final is not None else stages[-1] if stages else "inspect"
        if result.timed_out:
            return Verdict(
                False,
                f"{where}: {label} did not finish {_DOING.get(stage, 'exiting')} in a check "
                f"process within {self.timeout:g} s (killed)",
            )
        if result.signal_name is not None:
            return Verdict(
                False,
                f"{where} {_crashed(stage, label)} in a check process "
                f"({result.signal_name}){_said(result)}",
            )
        if final is None or garbage or result.returncode != 0:
            return Verdict(
                False,
                f"{where}: the check process {result.how()} in stage {stage} without a "
                f"readable report{_said(result)}",
            )
        if final.get("ok") is not True:
            reason = final.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                reason = f"{where}: refused by the check process"
            return Verdict(False, reason)
        scores = _scores(final.get("scores"))
        if scores is None or len(scores) != rows.shape[0] or scores[0] is None:
            return Verdict(False, f"{where}: the check process reported unusable scores")
        return Verdict(True, "", scores)

    # -- the entry points

    def load(
        self,
        repo: ModelRepository,
        ref: VersionRef,
        onnx_threads: int = 1,
        drift_slots: int = 60,
        drift_slot_seconds: int = 60,
    ) -> LoadedModel:
        """load_version with this check (see the module docstring)."""
        files = read_version(repo, ref)
        rows = probe_rows(files)
        key = verdict_key(files, rows)
        verdict = self.kept(repo, key)
        fresh = verdict is None
        if verdict is None:
            verdict = self.check(repo, files, rows, onnx_threads)
        if not verdict.ok:
            raise IntegrityError(verdict.reason_at(ref.path))
        model = open_model(files, onnx_threads, drift_slots, drift_slot_seconds)
        mine = probe_scores(model.runtime, rows)
        diff = disagreement(mine, verdict.scores)
        if not diff <= AGREEMENT_TOLERANCE and not fresh:
            # A kept verdict from another run: check again once before refusing.
            log.warning(
                "kept model check verdict disagrees with this process; checking again",
                extra={"model": ref.name, "version": ref.version, "max_abs_diff": diff},
            )
            self._forget(repo, key)
            verdict = self.check(repo, files, rows, onnx_threads)
            if not verdict.ok:
                raise IntegrityError(verdict.reason_at(ref.path))
            diff = disagreement(mine, verdict.scores)
        if not diff <= AGREEMENT_TOLERANCE:
            raise IntegrityError(
                f"{ref.path / files.model_file}: its scores of the probe rows in this process "
                f"differ from the check process's by {diff:.3g} (more than "
                f"{AGREEMENT_TOLERANCE:g})"
            )
        return model

    def refusal(self, repo: ModelRepository, ref: VersionRef) -> str | None:
        """Why a check process refused `ref`, if one did: its kept verdict, found
        without starting a check process. None when it passed, has not been checked
        yet, or its files do not verify (the listing reports those itself). Hashes
        every file: call it off the event loop."""
        try:
            files = read_version(repo, ref)
            rows = probe_rows(files)
        except IntegrityError:
            return None
        verdict = self.kept(repo, verdict_key(files, rows))
        return verdict.reason_at(ref.path) if verdict is not None and not verdict.ok else None


def _said(result: ChildResult) -> str:
    line = result.stderr_line()
    return f": {line}" if line else ""


def _report_lines(stdout: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON objects the child wrote, one a line, and whether anything else was there."""
    out: list[dict[str, Any]] = []
    garbage = False
    for raw in stdout.splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            garbage = True
            continue
        if isinstance(obj, dict):
            out.append(obj)
        else:
            garbage = True
    return out, garbage


#: The check of this process (its kept verdicts in memory).
DEFAULT_CHECK = ModelCheck()


def load_version(
    repo: ModelRepository,
    ref: VersionRef,
    onnx_threads: int = 1,
    drift_slots: int = 60,
    drift_slot_seconds: int = 60,
    check: ModelCheck | None = None,
) -> LoadedModel:
    """Verifies, checks in a separate process, compiles, loads and warms up one
    version; raises IntegrityError naming the file on any failure.
    drift_slots=0 turns drift counting off."""
    return (check or DEFAULT_CHECK).load(repo, ref, onnx_threads, drift_slots, drift_slot_seconds)


def refusal(repo: ModelRepository, ref: VersionRef, check: ModelCheck | None = None) -> str | None:
    """ModelCheck.refusal with this process's check: the reason `ref` is known to
    be refused, without starting a check process; None when unknown or passed."""
    return (check or DEFAULT_CHECK).refusal(repo, ref)
