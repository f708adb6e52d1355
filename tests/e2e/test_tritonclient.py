"""NVIDIA's tritonclient against our server: wire compatibility, end to end.

tritonclient.grpc and riskserve.pb both register `inference.*` protobuf messages,
so tritonclient runs in a subprocess (triton_probe.py) and hands back JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)

PROBE = Path(__file__).resolve().with_name("triton_probe.py")
TOL = {"fraud": 1e-6, "fraud_onnx": 1e-5}
PLATFORM = {"fraud": "lightgbm", "fraud_onnx": "onnxruntime_onnx"}
V2 = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES"}


def _write_npz(path: Path, columns: dict[str, Any]) -> None:
    arrays = {}
    for name, col in columns.items():
        arrays[name] = np.array(col, dtype=str) if isinstance(col, list) else np.asarray(col)
    np.savez(path, **arrays)


def run_probe(target: str, model: str, npz: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(PROBE), target, model, str(npz), *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, f"triton_probe failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("model", "shape_kind"), [("fraud", "batch"), ("fraud_onnx", "batch1")])
def test_tritonclient_scores_metadata_and_errors(
    server: Any,
    models_dir: Path,
    fresh_table: Any,
    reference: Any,
    rows: Any,
    tmp_path: Path,
    model: str,
    shape_kind: str,
) -> None:
    vdir = models_dir / model / "1"
    cols = rows(reference.columns(fresh_table, vdir), slice(0, 200))
    # missing and odd values, as a client would send them
    cols["amount"][0] = math.nan
    cols["amount"][1] = 1e308  # (±inf is refused: tests/e2e/test_bad_input.py)
    cols["currency"][2] = ""
    cols["channel"][3] = "teleport"
    want = reference.predict(vdir, cols)
    npz = tmp_path / "cols.npz"
    _write_npz(npz, cols)

    out = run_probe(
        server.target, model, npz,
        "--request-id", f"triton-{model}", "--shape", shape_kind, "--unknown-model", "nope",
    )  # fmt: skip

    assert out["server_live"] is True
    assert out["server_ready"] is True
    assert out["model_ready"] is True
    assert out["server_metadata"]["name"] == "riskserve"

    md = out["metadata"]
    assert md["name"] == model
    assert md["versions"] == ["1"]
    assert md["platform"] == PLATFORM[model]
    spec_inputs = reference.spec(vdir)["inputs"]
    assert md["inputs"] == [
        {"name": i["name"], "datatype": V2[i["dtype"]], "shape": [-1]} for i in spec_inputs
    ]
    assert md["outputs"] == [
        {"name": "probability", "datatype": "FP32", "shape": [-1]},
        {"name": "flagged", "datatype": "BOOL", "shape": [-1]},
    ]

    inf = out["infer"]
    assert inf["model_name"] == model
    assert inf["model_version"] == "1"
    assert inf["id"] == f"triton-{model}"
    assert inf["output"] == {"name": "probability", "datatype": "FP32", "shape": [len(want)]}
    assert inf["dtype"] == "float32"
    got = np.asarray(inf["probabilities"])
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[model])

    errs = out["errors"]
    for what in ("infer", "metadata", "ready"):
        assert errs[what]["raised"], what
        assert "NOT_FOUND" in errs[what]["status"], errs[what]
        assert "nope" in errs[what]["message"], errs[what]
    bad = errs["wrong_datatype"]
    assert bad["raised"]
    assert "INVALID_ARGUMENT" in bad["status"], bad
    assert bad["input"] in bad["message"] and "FP64" in bad["message"], bad
