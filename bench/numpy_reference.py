"""A straightforward vectorised numpy implementation of a *fitted* feature spec.

Written from ``docs/feature-spec.md`` as the baseline the Rust ``FeaturePipeline`` is
benchmarked against (``bench/transforms.py``). It only transforms; it does not fit.
It is deliberately what a careful Python engineer would write: one numpy expression per
step over the whole batch, string columns matched against the vocabulary with a single
broadcast comparison, murmur3 computed over a padded byte matrix. No per-row Python
loops except turning the incoming Python list of strings into a numpy array.

    X = reference_transform(spec_dict, columns)   # float32 [rows, n_features]

Columns: numpy arrays (float/int/bool) for numeric inputs; sequences of ``str``/``bytes``/
``None`` or a packed V2 BYTES buffer (``bytes``) for string inputs.

Known limits (fine for benchmarking, not a second production path): numpy fixed-width
string arrays drop trailing NUL characters, and input validation is minimal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["feature_names", "murmur3_32", "reference_transform"]

F32_MAX = float(np.finfo(np.float32).max)
TWO_PI = 2.0 * math.pi

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

# ------------------------------------------------------------------------ murmur3


_C1 = np.uint32(0xCC9E2D51)
_C2 = np.uint32(0x1B873593)
_M5 = np.uint32(5)
_N1 = np.uint32(0xE6546B64)
_F1 = np.uint32(0x85EBCA6B)
_F2 = np.uint32(0xC2B2AE35)


def _rotl(x: npt.NDArray[np.uint32], r: int) -> npt.NDArray[np.uint32]:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def murmur3_32(values: npt.NDArray[np.bytes_], seed: int) -> npt.NDArray[np.uint32]:
    """murmur3_x86_32 of every element of a fixed-width bytes array, vectorised over rows."""
    n = values.shape[0]
    width = values.dtype.itemsize
    lengths = np.strings.str_len(values).astype(np.uint32)
    # Row-major byte matrix, zero padded to whole words plus one spare word for the tail.
    padded = (width // 4 + 1) * 4
    mat = np.zeros((n, padded), dtype=np.uint8)
    if width:
        mat[:, :width] = np.frombuffer(values.tobytes(), dtype=np.uint8).reshape(n, width)
    words = mat.view("<u4")  # [n, padded / 4]
    nblocks = lengths >> np.uint32(2)
    h = np.full(n, seed & 0xFFFFFFFF, dtype=np.uint32)
    for k in range(int(nblocks.max(initial=0))):
        k1 = words[:, k] * _C1
        k1 = _rotl(k1, 15) * _C2
        h2 = _rotl(h ^ k1, 13) * _M5 + _N1
        h = np.where(k < nblocks, h2, h)
    # Tail: up to 3 bytes after the last whole block (bytes past the end are zero).
    rows = np.arange(n)
    base = (nblocks * np.uint32(4)).astype(np.intp)
    t0 = mat[rows, base].astype(np.uint32)
    t1 = mat[rows, base + 1].astype(np.uint32)
    t2 = mat[rows, base + 2].astype(np.uint32)
    rem = lengths & np.uint32(3)
    k1 = t0 | (np.where(rem >= 2, t1, 0).astype(np.uint32) << np.uint32(8))
    k1 |= np.where(rem >= 3, t2, 0).astype(np.uint32) << np.uint32(16)
    k1 = _rotl(k1 * _C1, 15) * _C2
    h = np.where(rem > 0, h ^ k1, h)
    # Finalisation.
    h ^= lengths
    h ^= h >> np.uint32(16)
    h *= _F1
    h ^= h >> np.uint32(13)
    h *= _F2
    h ^= h >> np.uint32(16)
    return h


# ------------------------------------------------------------------------ inputs


def _unpack(buf: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(buf):
        n = int.from_bytes(buf[off : off + 4], "little")
        out.append(buf[off + 4 : off + 4 + n])
        off += 4 + n
    return out


def _strings(col: Any) -> npt.NDArray[np.bytes_]:
    """A string column as a fixed-width UTF-8 bytes array; missing (None or "") is b""."""
    if isinstance(col, bytes | bytearray | memoryview):
        col = _unpack(bytes(col))
    arr = np.asarray(col)
    if arr.dtype.kind == "U":
        return np.strings.encode(arr, "utf-8")
    if arr.dtype.kind == "S":
        return arr
    # Mixed / None-holding sequences arrive as object arrays.
    seq: Sequence[Any] = arr.reshape(-1).tolist()
    return np.array([b"" if v is None else v.encode() if isinstance(v, str) else v for v in seq])


def _numeric(col: Any) -> tuple[Floats, Bools]:
    """A numeric column as float64 plus its missing mask (NaN and ±inf are missing)."""
    x = np.asarray(col).reshape(-1).astype(np.float64, copy=False)
    return x, ~np.isfinite(x)


# ------------------------------------------------------------------------ transforms


def _steps(x: Floats, steps: Sequence[Mapping[str, Any]]) -> Floats:
    for s in steps:
        op = s["op"]
        if op == "log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
        elif op == "clip":
            lo, hi = s.get("min"), s.get("max")
            if lo is not None:
                x = np.maximum(x, lo)
            if hi is not None:
                x = np.minimum(x, hi)
        elif op == "standardize":
            x = (x - s["mean"]) / s["std"]
        elif op == "bucketize":
            x = np.searchsorted(np.asarray(s["edges"], dtype=np.float64), x, side="right")
            x = x.astype(np.float64)
        else:
            raise ValueError(f"unknown step op {op!r}")
    return x


def _impute(x: Floats, miss: Bools, t: Mapping[str, Any]) -> Floats:
    return np.where(miss, float(t.get("missing", {}).get("value", 0.0)), x)


def _indicator(t: Mapping[str, Any]) -> bool:
    return bool(t.get("missing", {}).get("indicator", False))


def _transform_one(t: Mapping[str, Any], cols: Mapping[str, Any], n: int) -> list[Any]:
    kind = t["type"]
    if kind in ("numeric", "ratio", "cyclical"):
        if kind == "ratio":
            num, num_miss = _numeric(cols[t["numerator"]])
            den, den_miss = _numeric(cols[t["denominator"]])
            with np.errstate(divide="ignore", invalid="ignore"):
                v = num / den
            miss = num_miss | den_miss | (den == 0.0) | ~np.isfinite(v)
        else:
            v, miss = _numeric(cols[t["input"]])
        x = _impute(v, miss, t)
        if kind == "cyclical":
            angle = TWO_PI * x / float(t["period"])
            out = [np.sin(angle), np.cos(angle)]
        else:
            out = [_steps(x, t.get("steps", []))]
        if _indicator(t):
            out.append(miss.astype(np.float64))
        return out
    s = _strings(cols[t["input"]])
    miss = np.strings.str_len(s) == 0
    if kind == "hash":
        buckets = int(t["buckets"])
        h = (murmur3_32(s, int(t.get("seed", 0))) % np.uint32(buckets)).astype(np.float64)
        return [np.where(miss, float(buckets), h)]
    vocab = np.array([v.encode() for v in t["vocabulary"]], dtype=np.bytes_)
    # [rows, vocabulary] matches; a row matches at most one (vocabulary values are unique).
    eq = s[:, None] == vocab[None, :] if vocab.size else np.zeros((n, 0), dtype=bool)
    seen = eq.any(axis=1)
    if kind == "one_hot":
        return [eq, ~seen & ~miss, miss]
    if kind == "ordinal":
        idx = np.where(seen, eq.argmax(axis=1), len(vocab))
        return [np.where(miss, len(vocab) + 1, idx).astype(np.float64)]
    raise ValueError(f"unknown transform type {kind!r}")


def _column_count(t: Mapping[str, Any]) -> int:
    kind = t["type"]
    if kind in ("numeric", "ratio"):
        return 1 + _indicator(t)
    if kind == "cyclical":
        return 2 + _indicator(t)
    if kind == "one_hot":
        return len(t["vocabulary"]) + 2
    return 1


def feature_names(spec: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for t in spec["transforms"]:
        kind = t["type"]
        name = t.get("name") or t.get("input")
        if kind in ("numeric", "ratio"):
            names.append(name)
        elif kind == "cyclical":
            names += [f"{name}__sin", f"{name}__cos"]
        elif kind == "one_hot":
            names += [f"{name}={v}" for v in t["vocabulary"]]
            names += [f"{name}=__unseen__", f"{name}=__missing__"]
        else:
            names.append(name)
        if kind in ("numeric", "ratio", "cyclical") and _indicator(t):
            names.append(f"{name}__missing")
    return names


def reference_transform(spec: Mapping[str, Any], columns: Mapping[str, Any]) -> Any:
    """Transforms a batch with a fitted spec: float32 ``[rows, n_features]``, row-major."""
    first = next(iter(columns.values()))
    n = len(_unpack(bytes(first))) if isinstance(first, bytes) else len(first)
    width = sum(_column_count(t) for t in spec["transforms"])
    out = np.empty((n, width), dtype=np.float64)
    j = 0
    for t in spec["transforms"]:
        for block in _transform_one(t, columns, n):
            block = np.asarray(block)
            k = 1 if block.ndim == 1 else block.shape[1]
            out[:, j : j + k] = block.reshape(n, k)
            j += k
    # Cast to f32 saturating at ±f32::MAX (never infinity).
    np.clip(out, -F32_MAX, F32_MAX, out=out)
    return out.astype(np.float32)
