"""A small typed client over our generated stubs (used by the CLI and tests)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.protocol import CONTENTS_FIELD, NUMPY_DTYPE


def pack_bytes(values: Sequence[str | bytes | None]) -> bytes:
    """V2 packed BYTES: a 4-byte little-endian length, then the bytes, per element."""
    parts = []
    for v in values:
        b = b"" if v is None else v.encode() if isinstance(v, str) else v
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def build_request(
    model: str,
    columns: Mapping[str, Sequence[Any]],
    datatypes: Mapping[str, str],
    *,
    version: str = "",
    request_id: str = "",
    raw: bool = True,
    parameters: Mapping[str, str] | None = None,
) -> pb.ModelInferRequest:
    """One input per column, shape [batch]; raw_input_contents when `raw`."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, values in columns.items():
        dt = datatypes[name]
        t = req.inputs.add(name=name, datatype=dt, shape=[len(values)])
        if dt == "BYTES":
            if raw:
                req.raw_input_contents.append(pack_bytes(list(values)))
            else:
                t.contents.bytes_contents.extend(
                    b"" if v is None else v.encode() if isinstance(v, str) else v for v in values
                )
        else:
            arr = np.asarray(values, dtype=NUMPY_DTYPE[dt])
            if raw:
                req.raw_input_contents.append(arr.tobytes())
            else:
                getattr(t.contents, CONTENTS_FIELD[dt]).extend(arr.tolist())
    for k, v in (parameters or {}).items():
        req.parameters[k].string_param = v
    return req


def probabilities(resp: pb.ModelInferResponse) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(resp.raw_output_contents[0], dtype="<f4")


class Client:
    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def datatypes(self, model: str) -> dict[str, str]:
        md = self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=self.timeout)
        return {i.name: i.datatype for i in md.inputs}

    def score(
        self, model: str, row_or_columns: Mapping[str, Any], version: str = ""
    ) -> tuple[str, list[float]]:
        dts = self.datatypes(model)
        cols = {
            k: (list(v) if isinstance(v, list | tuple) else [v]) for k, v in row_or_columns.items()
        }
        unknown = [k for k in cols if k not in dts]
        if unknown:
            raise ValueError(f"model {model!r} has no input(s) {', '.join(unknown)}")
        resp = self.stub.ModelInfer(
            build_request(model, cols, dts, version=version), timeout=self.timeout
        )
        return resp.model_version, probabilities(resp).tolist()


def example_row(seed: int = 7) -> dict[str, Any]:
    """One synthetic transaction from the generator, as JSON-friendly values."""
    from riskserve.training.datagen import TARGET, generate

    table = generate(1, seed)
    row = {k: v[0] for k, v in table.to_pydict().items() if k != TARGET}
    clean: dict[str, Any] = json.loads(json.dumps(row, default=str).replace("NaN", "null"))
    return clean
