"""Independent numpy reference implementation of the feature spec.

Written from ``docs/feature-spec.md`` only (not from the Rust source), so that the
parity tests compare two implementations of the documented semantics.

``reference_transform(spec, columns)`` -> float32 ``[rows, n_features]``
``reference_fit(template, columns)`` -> fitted spec (a new dict)
``reference_feature_names(spec)`` -> list of output column names
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import mmh3
import numpy as np

F32_MAX = float(np.finfo(np.float32).max)
TWO_PI = 2.0 * math.pi

DEFAULT_MAX_CATEGORIES = {"one_hot": 16, "ordinal": 256}
INPUT_VOCABULARY_CAP = 1000

Column = Any  # np.ndarray | list | tuple | bytes


# --------------------------------------------------------------------------- columns


def unpack_bytes_tensor(buf: bytes | bytearray | memoryview) -> list[bytes]:
    """Decode a V2 packed BYTES tensor: each element a 4-byte LE length then the bytes."""
    data = bytes(buf)
    out: list[bytes] = []
    off = 0
    while off < len(data):
        if off + 4 > len(data):
            raise ValueError("truncated length prefix")
        n = int.from_bytes(data[off : off + 4], "little")
        off += 4
        if off + n > len(data):
            raise ValueError("truncated element")
        out.append(data[off : off + n])
        off += n
    return out


def pack_bytes_tensor(values: Iterable[str | bytes | None]) -> bytes:
    """Encode strings as a V2 packed BYTES tensor (None is encoded as the empty string)."""
    parts: list[bytes] = []
    for v in values:
        b = b"" if v is None else (v.encode("utf-8") if isinstance(v, str) else bytes(v))
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def as_numeric(col: Column) -> np.ndarray:
    """A numeric column as a 1-D float64 array (bool -> 0/1, int -> its value)."""
    arr = np.asarray(col)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"numeric column must have shape [batch] or [batch, 1], got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"not a numeric array: dtype {arr.dtype}")
    return arr.astype(np.float64)


def as_strings(col: Column) -> list[bytes | None]:
    """A string column as UTF-8 byte strings; None for missing (None or empty)."""
    if isinstance(col, bytes | bytearray | memoryview):
        raw: list[Any] = list(unpack_bytes_tensor(col))
    else:
        raw = (
            list(np.asarray(col, dtype=object).reshape(-1))
            if isinstance(col, np.ndarray)
            else list(col)
        )
    out: list[bytes | None] = []
    for v in raw:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, str):
            b = v.encode("utf-8")  # raises on lone surrogates
        elif isinstance(v, bytes | bytearray):
            b = bytes(v)
            b.decode("utf-8")  # raises UnicodeDecodeError if not valid UTF-8
        else:
            raise TypeError(f"expected str, bytes or None, got {type(v).__name__}")
        out.append(b if b else None)
    return out


def _input_dtypes(spec: Mapping[str, Any]) -> dict[str, str]:
    return {inp["name"]: inp["dtype"] for inp in spec["inputs"]}


# --------------------------------------------------------------------------- numeric


def _missing_block(t: Mapping[str, Any]) -> dict[str, Any]:
    m = dict(t.get("missing") or {})
    m.setdefault("strategy", "median")
    m.setdefault("indicator", False)
    return m


def _raw_numeric(
    t: Mapping[str, Any], cols: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The transform's raw value and its 'present' mask (before imputation)."""
    if t["type"] == "ratio":
        num = cols[t["numerator"]]
        den = cols[t["denominator"]]
        with np.errstate(all="ignore"):
            q = num / den
        present = np.isfinite(num) & np.isfinite(den) & (den != 0) & np.isfinite(q)
        return np.where(present, q, np.nan), present
    v = cols[t["input"]]
    return v, np.isfinite(v)


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _apply_step(step: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    op = step["op"]
    if op == "log1p":
        return _log1p(x)
    if op == "clip":
        if step.get("min") is not None:
            x = np.maximum(x, float(step["min"]))
        if step.get("max") is not None:
            x = np.minimum(x, float(step["max"]))
        return x
    if op == "standardize":
        with np.errstate(over="ignore"):
            return (x - float(step["mean"])) / float(step["std"])
    if op == "bucketize":
        edges = np.asarray(step["edges"], dtype=np.float64)
        return np.searchsorted(edges, x, side="right").astype(np.float64)
    raise ValueError(f"unknown op {op!r}")


def _cyclical(x: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    # As documented: reduce x modulo period first (exact), then sin/cos of
    # 2*pi*r/period, so huge values and tiny periods stay finite.
    r = np.mod(x, period)
    phase = r * (TWO_PI / period)
    return np.sin(phase), np.cos(phase)


def _to_f32(x: np.ndarray) -> np.ndarray:
    """Cast f64 -> f32 saturating at +-f32::MAX (NaN passes through)."""
    return np.clip(x, -F32_MAX, F32_MAX).astype(np.float32)


# --------------------------------------------------------------------------- names


def reference_feature_names(spec: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for t in spec["transforms"]:
        kind = t["type"]
        name = t["name"] if kind == "ratio" else t.get("name", t["input"])
        if kind in ("numeric", "ratio"):
            names.append(name)
        elif kind == "cyclical":
            names += [f"{name}__sin", f"{name}__cos"]
        elif kind == "one_hot":
            names += [f"{name}={v}" for v in t["vocabulary"]]
            names += [f"{name}=__unseen__", f"{name}=__missing__"]
        elif kind in ("ordinal", "hash"):
            names.append(name)
        else:
            raise ValueError(f"unknown transform type {kind!r}")
        if kind in ("numeric", "ratio", "cyclical") and _missing_block(t)["indicator"]:
            names.append(f"{name}__missing")
    return names


# --------------------------------------------------------------------------- transform


def _prepare(spec: Mapping[str, Any], columns: Mapping[str, Column]) -> tuple[dict, dict, int]:
    dtypes = _input_dtypes(spec)
    num: dict[str, np.ndarray] = {}
    strs: dict[str, list[bytes | None]] = {}
    lengths = set()
    for name, dtype in dtypes.items():
        if name not in columns:
            continue
        if dtype == "string":
            strs[name] = as_strings(columns[name])
            lengths.add(len(strs[name]))
        else:
            num[name] = as_numeric(columns[name])
            lengths.add(len(num[name]))
    if len(lengths) > 1:
        raise ValueError(f"inputs of different lengths: {sorted(lengths)}")
    return num, strs, (lengths.pop() if lengths else 0)


def reference_transform(spec: Mapping[str, Any], columns: Mapping[str, Column]) -> np.ndarray:
    """Transform raw columns with a *fitted* spec into a float32 [rows, n_features] matrix."""
    num, strs, n = _prepare(spec, columns)
    blocks: list[np.ndarray] = []  # each [n, k] float64 (or float32 for exact categorical)

    for t in spec["transforms"]:
        kind = t["type"]
        if kind in ("numeric", "ratio", "cyclical"):
            m = _missing_block(t)
            v, present = _raw_numeric(t, num)
            x = np.where(present, v, float(m["value"]))
            if kind == "cyclical":
                s, c = _cyclical(x, float(t["period"]))
                cols = [s, c]
            else:
                for step in t.get("steps", []):
                    x = _apply_step(step, x)
                cols = [x]
            if m["indicator"]:
                cols.append((~present).astype(np.float64))
            blocks.append(np.stack(cols, axis=1))
        elif kind == "one_hot":
            vocab = {v.encode("utf-8"): i for i, v in enumerate(t["vocabulary"])}
            k = len(vocab)
            idx = np.array(
                [k + 1 if s is None else vocab.get(s, k) for s in strs[t["input"]]],
                dtype=np.int64,
            )
            block = np.zeros((n, k + 2), dtype=np.float64)
            block[np.arange(n), idx] = 1.0
            blocks.append(block)
        elif kind == "ordinal":
            vocab = {v.encode("utf-8"): i for i, v in enumerate(t["vocabulary"])}
            k = len(vocab)
            idx = [k + 1 if s is None else vocab.get(s, k) for s in strs[t["input"]]]
            blocks.append(np.asarray(idx, dtype=np.float64).reshape(n, 1))
        elif kind == "hash":
            buckets = int(t["buckets"])
            seed = int(t.get("seed", 0))
            h = [
                buckets if s is None else mmh3.hash(s, seed, signed=False) % buckets
                for s in strs[t["input"]]
            ]
            blocks.append(np.asarray(h, dtype=np.float64).reshape(n, 1))
        else:
            raise ValueError(f"unknown transform type {kind!r}")

    if not blocks:
        return np.zeros((n, 0), dtype=np.float32)
    return _to_f32(np.concatenate(blocks, axis=1))


# --------------------------------------------------------------------------- fit


def _fit_missing_value(m: dict[str, Any], values: np.ndarray) -> None:
    if m.get("value") is not None:
        return
    strategy = m["strategy"]
    if strategy == "constant" or values.size == 0:
        m["value"] = 0.0
    elif strategy == "median":
        m["value"] = float(np.quantile(values, 0.5))
    elif strategy == "mean":
        m["value"] = _mean(values)
    else:
        raise ValueError(f"unknown missing strategy {strategy!r}")


def _mean(x: np.ndarray) -> float:
    """Mean with a correctly rounded sum (math.fsum): no cancellation or overflow."""
    scale = float(np.max(np.abs(x)))
    if scale == 0.0:
        return 0.0
    return scale * (math.fsum((x / scale).tolist()) / x.size)


def _population_std(x: np.ndarray) -> float:
    """Population std (ddof 0), computed on x / max|x| so squaring cannot overflow."""
    scale = float(np.max(np.abs(x)))
    if scale == 0.0:
        return 0.0
    y = x / scale
    m = math.fsum(y.tolist()) / y.size
    return scale * math.sqrt(math.fsum(((y - m) ** 2).tolist()) / y.size)


def _fit_step(step: dict[str, Any], x: np.ndarray) -> None:
    op = step["op"]
    if op == "clip":
        for bound in ("min", "max"):
            q = step.get(f"{bound}_quantile")
            if step.get(bound) is None and q is not None:
                step[bound] = float(np.quantile(x, float(q)))
    elif op == "standardize":
        if step.get("mean") is None:
            step["mean"] = _mean(x)
        if step.get("std") is None:
            # population std (ddof 0). A constant column has std exactly 0 even where
            # floating-point summation would leave a ~1e-17 residue, so test for it directly.
            std = 0.0 if x.size == 0 or x.min() == x.max() else _population_std(x)
            step["std"] = 1.0 if std == 0.0 else std
    elif op == "bucketize" and step.get("edges") is None:
        q = int(step["quantiles"])
        qs = np.quantile(x, [i / q for i in range(1, q)]) if q > 1 else np.array([])
        edges: list[float] = []
        for e in qs.tolist():  # quantiles i/q, i = 1..q-1, de-duplicated
            if not edges or e != edges[-1]:
                edges.append(float(e))
        step["edges"] = edges


def _ranked_vocabulary(values: list[bytes | None], min_count: int, cap: int) -> list[str]:
    counts = Counter(v for v in values if v is not None)
    ranked = sorted(
        (item for item in counts.items() if item[1] >= min_count),
        key=lambda item: (-item[1], item[0]),  # most frequent first, ties by byte order
    )
    return [v.decode("utf-8") for v, _ in ranked[:cap]]


def reference_fit(template: Mapping[str, Any], columns: Mapping[str, Column]) -> dict[str, Any]:
    """Fill the fitted statistics of a spec template from training columns."""
    spec = copy.deepcopy(dict(template))
    num, strs, _ = _prepare(spec, columns)

    for inp in spec["inputs"]:
        if inp["dtype"] == "string" and inp.get("vocabulary") is None and inp["name"] in strs:
            inp["vocabulary"] = _ranked_vocabulary(strs[inp["name"]], 1, INPUT_VOCABULARY_CAP)

    for t in spec["transforms"]:
        kind = t["type"]
        if kind in ("numeric", "ratio", "cyclical"):
            m = _missing_block(t)
            v, present = _raw_numeric(t, num)
            _fit_missing_value(m, v[present])
            t["missing"] = m
            if kind == "cyclical":
                continue
            x = np.where(present, v, float(m["value"]))
            steps = [dict(s) for s in t.get("steps", [])]
            for step in steps:
                _fit_step(step, x)
                x = _apply_step(step, x)
            t["steps"] = steps
        elif kind in ("one_hot", "ordinal"):
            t.setdefault("min_count", 1)
            t.setdefault("max_categories", DEFAULT_MAX_CATEGORIES[kind])
            if t.get("vocabulary") is None:
                t["vocabulary"] = _ranked_vocabulary(
                    strs[t["input"]], int(t["min_count"]), int(t["max_categories"])
                )
        elif kind == "hash":
            t.setdefault("seed", 0)
    return spec
