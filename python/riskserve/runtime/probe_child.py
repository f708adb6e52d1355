"""The model check process (riskserve.runtime.probe):

    python -m riskserve.runtime.probe_child MODELS NAME VERSION [ONNX_THREADS]

loads the version exactly as the server does (riskserve.runtime.loaded: verified
contents, the feature pipeline, the runtime, the warm-up), scores the probe rows
and reports on stdout, one JSON object a line: the stage it is about to enter
({"stage": "parse"}; the first after the library import also lists the sha256
of every file it verified), then the result, {"ok": true, "scores": [...]} or
{"ok": false, "reason": "..."}. Whatever LightGBM or ONNX Runtime print goes to
stderr, so stdout holds the report alone. If the library aborts the process, the
last stage says where. Exit 0 after a report; 1 when the process itself failed."""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, Any

from riskserve.errors import RiskserveError
from riskserve.registry import ModelRepository
from riskserve.runtime.loaded import open_model, read_version
from riskserve.runtime.probe import probe_rows, probe_scores
from riskserve.runtime.runtimes import skip_lightgbm_extras

#: Imported by lightgbm only for its scikit-learn and pandas interfaces, never by
#: Booster parsing or predicting: blocked here, they would cost ~1.5 s a check.
#: The server's own load of the same bytes must agree on the probe scores.
_SPLIT_FEATURE = re.compile(rb"^split_feature=(.*)$", re.MULTILINE)
_MAX_FEATURE = re.compile(rb"^max_feature_idx=(-?\d+)\s*$", re.MULTILINE)


def split_feature_problem(model_txt: bytes) -> str | None:
    """A tree splitting on a feature index outside the model's features: LightGBM
    parses it and reads out of bounds when scoring. None when every index is in
    range (or the text is too broken to tell: LightGBM refuses it then)."""
    top = _MAX_FEATURE.search(model_txt)
    if top is None:
        return None
    n = int(top.group(1)) + 1
    if n < 1:
        return f"max_feature_idx={n - 1} leaves the model no features"
    for tree, m in enumerate(_SPLIT_FEATURE.finditer(model_txt)):
        try:
            features = [int(f) for f in m.group(1).split()]
        except ValueError:
            return None
        bad = [f for f in features if not 0 <= f < n]
        if bad:
            return f"tree {tree} splits on feature {bad[0]}, but the model has {n} features"
    return None


def _report(out: IO[str], **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print(f"usage: {__doc__}", file=sys.stderr)
        return 2
    root, name, version = args[0], args[1], int(args[2])
    onnx_threads = int(args[3]) if len(args) == 4 else 1
    # The report gets the real stdout; fd 1 (where C libraries print) becomes stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    skip_lightgbm_extras()
    started = time.perf_counter()

    def stage(name: str, **fields: Any) -> None:
        _report(out, stage=name, **fields)

    stage("read")
    repo = ModelRepository(Path(root))
    try:
        files = read_version(repo, repo.version(name, version))
    except RiskserveError as e:
        _report(out, ok=False, reason=e.message)
        return 0
    lib = "onnxruntime" if files.manifest.model_format == "onnx" else "lightgbm"
    stage("import")
    importlib.import_module(lib)  # a failure here is this process's, not the model's
    stage("inspect", files=dict(files.manifest.files))
    try:
        if lib == "lightgbm":
            why = split_feature_problem(files.contents["model.txt"])
            if why is not None:
                raise RiskserveError(f"{files.ref.path / 'model.txt'}: {why}")
        model = open_model(files, onnx_threads, drift_slots=0, stage=stage)
        stage("score")
        rows = probe_rows(files)
        scores = probe_scores(model.runtime, rows)
        stage("free")
        del model
        gc.collect()
    except RiskserveError as e:
        _report(out, ok=False, reason=e.message)
        return 0
    except Exception as e:  # the model's stages: any failure refuses the model
        where = files.ref.path / files.model_file
        _report(out, ok=False, reason=f"{where}: {type(e).__name__}: {e}")
        return 0
    seconds = round(time.perf_counter() - started, 3)
    _report(out, ok=True, scores=scores, seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
