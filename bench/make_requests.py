"""Writes a request file for bench/loadgen: length-prefixed serialized ModelInferRequests.

    .venv/bin/python bench/make_requests.py --target HOST:PORT --out FILE [--model fraud]
        [--rows R] [--requests N] [--seed S] [--model-version V]
        [--request-kind raw-fields|matrix --features features.json]

Asks the server for the model's metadata (inputs and datatypes), then builds N distinct
requests of R datagen rows each, exactly as bench/load.py does (its fetch_metadata and
build_payloads), and writes each one as a little-endian u32 length followed by the
message's SerializeToString() bytes. ``--request-kind matrix`` builds load.py's matrix
requests instead (one FP32 [rows, n_features] input, transformed up front with
FeaturePipeline(--features); for MLServer) and needs no server.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import build_matrix_payloads, build_payloads, fetch_metadata  # bench/load.py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    ap.add_argument("--model", default="fraud")
    ap.add_argument("--model-version", default="", help="model_version to request (default any)")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--requests", type=int, default=256, help="distinct requests")
    ap.add_argument("--seed", type=int, default=11, help="datagen seed (bench/load.py's default)")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for readiness")
    ap.add_argument("--out", required=True, help="the request file to write")
    ap.add_argument("--request-kind", choices=("raw-fields", "matrix"), default="raw-fields")
    ap.add_argument("--features", type=Path, help="features.json, for --request-kind matrix")
    a = ap.parse_args(argv)
    if a.rows < 1 or a.requests < 1:
        ap.error("--rows and --requests must be at least 1")

    if a.request_kind == "matrix":
        if a.features is None:
            ap.error("--request-kind matrix needs --features PATH/features.json")
        payloads = build_matrix_payloads(
            a.model, a.features, a.rows, a.requests, a.seed, a.model_version
        )
        inputs = "one FP32 matrix input"
    else:
        md = fetch_metadata(a.target, a.model, a.wait, a.model_version)
        payloads = build_payloads(
            a.model, md["datatypes"], a.rows, a.requests, a.seed, version=a.model_version
        )
        inputs = f"{len(md['datatypes'])} inputs"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for p in payloads:
            f.write(struct.pack("<I", len(p)))
            f.write(p)
    mean = sum(map(len, payloads)) / len(payloads)
    print(
        f"wrote {out}: {len(payloads)} requests of {a.rows} row(s) for model {a.model!r} "
        f"({inputs}, {mean:.0f} bytes each on average)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
