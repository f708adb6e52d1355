"""A real server with RISKSERVE_LIGHTGBM_COMPILE=true: the LightGBM version is
compiled in the background while requests keep flowing (none fails), the switch
is logged, the ONNX version is left alone, and afterwards the served scores
still equal LightGBM's own predictions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerHandle

from riskserve.client import build_request, probabilities
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # lleaves compiles the model


def events(h: Any, name: str, model: str) -> list[dict[str, Any]]:
    return [e for e in h.events() if e.get("event") == name and e.get("model") == model]


def test_lightgbm_is_compiled_while_serving(
    models_dir: Path,
    reference: Any,
    fresh_table: Any,
    tmp_path: Path,
    start_server: Callable[..., ServerHandle],
) -> None:
    vdir = models_dir / "fraud" / "1"
    cols = reference.columns(fresh_table, vdir)
    dts = reference.datatypes(vdir)
    want = reference.predict(vdir, cols)
    n = len(want)
    h = start_server(
        models_dir,
        env={"RISKSERVE_LIGHTGBM_COMPILE": "true", "RISKSERVE_COMPILE_CACHE_DIR": str(tmp_path)},
    )
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        ch = grpc.insecure_channel(h.target)
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        try:
            while not stop.is_set():
                k = served % n
                one = {c: v[k : k + 1] for c, v in cols.items()}
                try:
                    stub.ModelInfer(build_request("fraud", one, dts), timeout=10)
                    served += 1
                except grpc.RpcError as e:
                    failures.append(f"{e.code().name}: {e.details()}")
        finally:
            ch.close()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 240
        while not events(h, "model compiled", "fraud"):
            assert time.monotonic() < deadline, "no 'model compiled' event:\n" + h.log_text()
            time.sleep(0.2)
        time.sleep(0.5)  # requests after the switch too
    finally:
        stop.set()
        t.join(15)
    assert not failures, failures[:5]
    assert served > 0
    assert events(h, "compiling model", "fraud")
    assert not events(h, "compiling model", "fraud_onnx")

    ch = grpc.insecure_channel(h.target)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        resp = stub.ModelInfer(build_request("fraud", cols, dts), timeout=30)
        got = probabilities(resp).astype(np.float64)
    finally:
        ch.close()
    assert np.max(np.abs(got - want)) <= 1e-6
    # start_server stops it afterwards: exit 0, no traceback in its log
