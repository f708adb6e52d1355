"""Talks to a running riskserve with NVIDIA's tritonclient and prints JSON.

Run as a subprocess (tritonclient's protobuf module and riskserve.pb both define
`inference.*` messages and cannot live in one process):

    python triton_probe.py TARGET MODEL COLUMNS.npz [--request-id ID] [--shape batch|batch1]
                           [--unknown-model NAME]

COLUMNS.npz holds one array per model input: float64, int64, bool, or a unicode
array for BYTES inputs (sent as a numpy object array of UTF-8 bytes). The input
datatypes come from the server's model metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException


def _metadata(client: tc.InferenceServerClient, model: str) -> dict[str, Any]:
    md = client.get_model_metadata(model, as_json=True)
    return {
        "name": md["name"],
        "versions": md.get("versions", []),
        "platform": md.get("platform", ""),
        "inputs": [
            {"name": i["name"], "datatype": i["datatype"], "shape": [int(d) for d in i["shape"]]}
            for i in md["inputs"]
        ],
        "outputs": [
            {"name": o["name"], "datatype": o["datatype"], "shape": [int(d) for d in o["shape"]]}
            for o in md["outputs"]
        ],
    }


def _inputs(columns: Any, datatypes: dict[str, str], shape_kind: str) -> list[tc.InferInput]:
    out = []
    for name, datatype in datatypes.items():
        col = columns[name]
        if datatype == "BYTES":
            arr = np.array([str(v).encode("utf-8") for v in col], dtype=np.object_)
        elif datatype == "FP64":
            arr = np.asarray(col, dtype=np.float64)
        elif datatype == "INT64":
            arr = np.asarray(col, dtype=np.int64)
        elif datatype == "BOOL":
            arr = np.asarray(col, dtype=bool)
        else:
            raise SystemExit(f"unexpected datatype {datatype} for {name}")
        if shape_kind == "batch1":
            arr = arr.reshape(-1, 1)
        inp = tc.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("model")
    p.add_argument("columns")
    p.add_argument("--request-id", default="triton-probe")
    p.add_argument("--shape", choices=("batch", "batch1"), default="batch")
    p.add_argument("--unknown-model", default="")
    a = p.parse_args()

    client = tc.InferenceServerClient(url=a.target)
    result: dict[str, Any] = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(a.model),
        "server_metadata": client.get_server_metadata(as_json=True),
    }
    md = _metadata(client, a.model)
    result["metadata"] = md
    datatypes = {i["name"]: i["datatype"] for i in md["inputs"]}

    with np.load(a.columns) as data:
        columns = {k: data[k] for k in data.files}
    inputs = _inputs(columns, datatypes, a.shape)
    outputs = [tc.InferRequestedOutput("probability")]
    res = client.infer(a.model, inputs, request_id=a.request_id, outputs=outputs)
    resp = res.get_response(as_json=True)
    probs = res.as_numpy("probability")
    out_meta = resp["outputs"][0]
    result["infer"] = {
        "model_name": resp["model_name"],
        "model_version": resp["model_version"],
        "id": resp.get("id", ""),
        "output": {
            "name": out_meta["name"],
            "datatype": out_meta["datatype"],
            "shape": [int(d) for d in out_meta["shape"]],
        },
        "dtype": str(probs.dtype),
        "probabilities": [float(x) for x in probs.reshape(-1)],
    }

    if a.unknown_model:
        errors = {}
        calls = {
            "infer": lambda: client.infer(a.unknown_model, inputs),
            "metadata": lambda: client.get_model_metadata(a.unknown_model),
            "ready": lambda: client.is_model_ready(a.unknown_model),
        }
        for what, call in calls.items():
            try:
                call()
                errors[what] = {"raised": False}
            except InferenceServerException as e:
                errors[what] = {"raised": True, "status": e.status(), "message": e.message()}
        # and a known model with a wrong datatype: the first FP64 input as FP32
        bad = []
        first_fp64 = next(n for n, d in datatypes.items() if d == "FP64")
        for inp, name in zip(inputs, datatypes, strict=True):
            if name == first_fp64:
                arr = np.asarray(columns[name], dtype=np.float32).reshape(inp.shape())
                inp = tc.InferInput(name, list(arr.shape), "FP32")
                inp.set_data_from_numpy(arr)
            bad.append(inp)
        try:
            client.infer(a.model, bad)
            errors["wrong_datatype"] = {"raised": False, "input": first_fp64}
        except InferenceServerException as e:
            errors["wrong_datatype"] = {
                "raised": True,
                "status": e.status(),
                "message": e.message(),
                "input": first_fp64,
            }
        result["errors"] = errors

    client.close()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
