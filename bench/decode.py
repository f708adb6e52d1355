"""Request decoding: the generated protobuf path vs reading ModelInferRequest
bytes in Rust (riskserve._native.parse_infer_request), both from the bytes a
server receives to the data plane's InferRequest with numpy views, through the
server's codec (riskserve.transport.codec.Codec: the same checks and limits).

    .venv/bin/python bench/decode.py [--rounds N] [--out bench/results/decode.json]

Interleaved rounds (A, B, then B, A) on the same requests; prints median and p95 µs
per request and the ratio. 1-row requests of the fraud spec's 35 raw fields."""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from riskserve.client import build_request
from riskserve.config import LimitsSettings
from riskserve.dataplane import InferRequest
from riskserve.training.datagen import generate
from riskserve.training.train import columns_of
from riskserve.transport.codec import Bounds, Codec

SPEC = Path(__file__).resolve().parents[1] / "python/riskserve/training/specs/fraud.json"
V2 = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES"}


PROTOBUF = Codec(Bounds(LimitsSettings()), rust_parser=False)
RUST = Codec(Bounds(LimitsSettings()), rust_parser=True)


def via_protobuf(data: bytes) -> InferRequest:
    return PROTOBUF.decode(data)


def via_rust(data: bytes) -> InferRequest:
    return RUST.decode(data)


def same(a: InferRequest, b: InferRequest) -> bool:
    if (a.model_name, a.id, len(a.inputs)) != (b.model_name, b.id, len(b.inputs)):
        return False
    for x, y in zip(a.inputs, b.inputs, strict=True):
        if (x.name, x.datatype, x.shape) != (y.name, y.datatype, y.shape):
            return False
        if isinstance(x.data, bytes):
            if x.data != y.data:
                return False
        elif not np.array_equal(x.data, y.data, equal_nan=True):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/decode.json")
    a = ap.parse_args()
    spec = json.loads(SPEC.read_text())
    dts = {i["name"]: V2[i["dtype"]] for i in spec["inputs"]}
    cols = columns_of(generate(64, 9), list(dts))
    reqs = [
        build_request(
            "fraud",
            {k: v[i : i + 1] for k, v in cols.items()},
            dts,
            request_id=f"r{i}",
            parameters={"routing_key": f"card-{i}"},
        ).SerializeToString()
        for i in range(64)
    ]
    for r in reqs:
        assert same(via_protobuf(r), via_rust(r)), "the two decoders disagree"
    times: dict[str, list[float]] = {"protobuf": [], "rust": []}
    gc.disable()
    for k in range(a.rounds):
        r = reqs[k % len(reqs)]
        order = [("protobuf", via_protobuf), ("rust", via_rust)]
        if k % 2:
            order.reverse()
        for label, fn in order:
            t = time.perf_counter()
            fn(r)
            times[label].append((time.perf_counter() - t) * 1e6)
    gc.enable()

    def pct(v: list[float], q: float) -> float:
        s = sorted(v)
        return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]

    res = {
        label: {"median_us": statistics.median(v), "p95_us": pct(v, 0.95)}
        for label, v in times.items()
    }
    ratio = res["protobuf"]["median_us"] / res["rust"]["median_us"]
    print(f"decode, 1-row request, 35 inputs, {a.rounds} interleaved rounds")
    for label, r in res.items():
        print(f"  {label:<9} median {r['median_us']:7.1f} µs   p95 {r['p95_us']:7.1f} µs")
    print(f"  protobuf / rust (medians): {ratio:.1f}x")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"results": res, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
