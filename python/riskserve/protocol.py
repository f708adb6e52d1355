"""Open Inference Protocol (KServe V2) conventions shared by the server and its
clients: datatypes and how they travel, and riskserve's tensor names. Imports
nothing of the server, so `riskserve.client` can use it."""

from __future__ import annotations

from typing import Any

import numpy as np

#: V2 datatype → numpy dtype (little-endian, as the protocol specifies).
NUMPY_DTYPE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

#: V2 datatype → the InferTensorContents field that carries it.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: Feature-spec dtype → the V2 datatype of its input tensor.
V2_DATATYPE = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES"}

#: The one output of every riskserve model: P(fraud) per row, FP32.
OUTPUT_NAME = "probability"
#: The second output a client may ask for (requested outputs): the version's
#: decision at its operating threshold, BOOL (probability >= threshold).
FLAGGED_NAME = "flagged"
