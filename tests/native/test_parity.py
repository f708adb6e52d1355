"""Parity of the Rust FeaturePipeline with the independent numpy reference.

The reference (``reference.py``, imported via pytest's default "prepend" import mode,
which puts this directory on sys.path) is written from ``docs/feature-spec.md``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    as_strings,
    pack_bytes_tensor,
    reference_feature_names,
    reference_fit,
    reference_transform,
)

from riskserve._native import (
    FeatureError,
    FeaturePipeline,
    InputError,
    SpecError,
    fit_spec,
    murmur3_32,
)

HERE = Path(__file__).parent
N_ROWS = 10_000
ATOL = 1e-6
FIT_RTOL = 1e-9

HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- spec

TEMPLATE: dict[str, Any] = {
    "format": "riskserve.features/v1",
    "inputs": [
        {"name": "amount", "dtype": "float"},
        {"name": "balance", "dtype": "float"},
        {"name": "velocity", "dtype": "float"},
        {"name": "hour", "dtype": "float"},
        {"name": "n_items", "dtype": "int"},
        {"name": "is_foreign", "dtype": "bool"},
        {"name": "channel", "dtype": "string"},
        {"name": "country", "dtype": "string"},
        {"name": "merchant", "dtype": "string"},
    ],
    "transforms": [
        {
            "type": "numeric",
            "input": "amount",
            "missing": {"strategy": "median", "indicator": True},
            "steps": [
                {"op": "log1p"},
                {"op": "clip", "min_quantile": 0.01, "max_quantile": 0.99},
                {"op": "standardize"},
            ],
        },
        {
            "type": "numeric",
            "input": "amount",
            "name": "amount_bucket",
            "missing": {"strategy": "mean"},
            "steps": [{"op": "log1p"}, {"op": "bucketize", "quantiles": 10}],
        },
        {
            # ~30 % zeros: several quantile edges coincide and must be de-duplicated
            "type": "numeric",
            "input": "balance",
            "missing": {"strategy": "constant", "value": -1.0, "indicator": True},
            "steps": [{"op": "bucketize", "quantiles": 8}],
        },
        {
            # only an upper bound is fitted; the lower bound stays absent (= no bound)
            "type": "numeric",
            "input": "velocity",
            "steps": [{"op": "clip", "max_quantile": 0.95}, {"op": "standardize"}],
        },
        {
            "type": "ratio",
            "numerator": "amount",
            "denominator": "balance",
            "name": "amount_to_balance",
            "missing": {"strategy": "median", "indicator": True},
            "steps": [
                {"op": "log1p"},
                {"op": "clip", "min": -5.0, "max_quantile": 0.9},
                {"op": "standardize"},
            ],
        },
        {
            "type": "cyclical",
            "input": "hour",
            "period": 24,
            "missing": {"strategy": "median", "indicator": True},
        },
        {
            "type": "numeric",
            "input": "n_items",
            "missing": {"strategy": "mean"},
            "steps": [{"op": "standardize"}],
        },
        {"type": "numeric", "input": "is_foreign"},
        {"type": "one_hot", "input": "channel", "min_count": 30},
        {
            "type": "ordinal",
            "input": "country",
            "name": "country_idx",
            "min_count": 2,
            "max_categories": 20,
        },
        {"type": "hash", "input": "merchant", "buckets": 64, "seed": 42},
        {"type": "hash", "input": "channel", "name": "channel_hash", "buckets": 1000},
    ],
    "reference": None,
}

FLOAT_INPUTS = ["amount", "balance", "velocity", "hour"]
NUMERIC_INPUTS = [*FLOAT_INPUTS, "n_items", "is_foreign"]
STRING_INPUTS = ["channel", "country", "merchant"]

CHANNELS = ["ecommerce", "pos", "café", "atm", "über", "日本"]
CHANNEL_P = [0.46, 0.31, 0.11, 0.06, 0.04, 0.02]
COUNTRIES = [f"C{i:02d}" for i in range(38)] + ["ÅLAND", "Ελλάδα"]


# --------------------------------------------------------------------------- data


def _sprinkle(rng: np.random.Generator, arr: np.ndarray, specials: list[tuple[Any, float]]) -> None:
    """Overwrite disjoint random fractions of ``arr`` with special values."""
    u = rng.random(arr.shape[0])
    lo = 0.0
    for value, frac in specials:
        arr[(u >= lo) & (u < lo + frac)] = value
        lo += frac


def make_batch(seed: int, n: int = N_ROWS, *, unseen: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    nan, inf = math.nan, math.inf

    amount = rng.lognormal(3.0, 1.5, n)
    amount_specials = [
        (0.0, 0.05),
        (nan, 0.03),
        (inf, 0.01),
        (-inf, 0.01),
        (1e30, 0.005),
        (1e300, 0.005),  # beyond float32 range
        (-1e30, 0.003),
        (1e-300, 0.002),
        (-0.0, 0.002),
    ]
    if unseen:
        amount_specials += [(-1e300, 0.003), (np.finfo(np.float64).max, 0.002)]
    _sprinkle(rng, amount, amount_specials)
    negative = rng.random(n) < 0.02
    amount[negative] = -np.abs(amount[negative])

    balance = rng.exponential(1000.0, n)
    _sprinkle(rng, balance, [(0.0, 0.30), (nan, 0.02), (inf, 0.005), (1e30, 0.002), (-0.0, 0.01)])

    velocity = rng.normal(10.0, 3.0, n)
    velocity_specials = [(nan, 0.05), (1e300, 0.01), (inf, 0.01), (-inf, 0.005)]
    if unseen:
        velocity_specials += [(-1e300, 0.005), (-1e30, 0.005), (3.5e38, 0.005)]
    _sprinkle(rng, velocity, velocity_specials)

    hour = rng.uniform(0.0, 24.0, n)
    hour[: n // 2] = np.floor(hour[: n // 2])
    _sprinkle(rng, hour, [(nan, 0.03), (-inf, 0.01), (inf, 0.005), (1e30, 0.002), (-7.5, 0.01)])

    n_items = rng.poisson(2.0, n).astype(np.int64)
    if unseen:
        n_items[rng.random(n) < 0.01] = 2**62
        n_items[rng.random(n) < 0.01] = -(2**40)
    is_foreign = rng.random(n) < 0.1

    channel: list[str | None] = [str(c) for c in rng.choice(CHANNELS, size=n, p=CHANNEL_P)]
    pos = rng.permutation(n)
    k = 0
    rare = [("moto", 10), ("mail", 3), ("naïve", 2), (None, 150), ("", 150)]  # < min_count 30
    if unseen:
        rare += [("crypto", 40), ("🎉 party", 20), ("ecommerce ", 10), ("POS", 10)]
    for value, count in rare:
        for i in pos[k : k + count]:
            channel[i] = value
        k += count

    weights = 1.0 / np.arange(1, len(COUNTRIES) + 1)
    country: list[str | None] = [
        str(c) for c in rng.choice(COUNTRIES, size=n, p=weights / weights.sum())
    ]
    pos = rng.permutation(n)
    singles = [f"X{i}" for i in range(5)] + [None] * 100 + [""] * 100
    if unseen:
        singles += ["ZZ"] * 50 + ["Ørsted"] * 20
    for i, value in zip(pos, singles, strict=False):
        country[i] = value

    merchant: list[str | None] = [f"m{i}" for i in rng.integers(0, 5000, n)]
    pos = rng.permutation(n)
    specials = [None] * 200 + [""] * 200 + ["商店", "Zürich Bäckerei", "a\x00b", " "] * 25
    for i, value in zip(pos, specials, strict=False):
        merchant[i] = value

    return {
        "amount": amount,
        "balance": balance,
        "velocity": velocity,
        "hour": hour,
        "n_items": n_items,
        "is_foreign": is_foreign,
        "channel": channel,
        "country": country,
        "merchant": merchant,
    }


@functools.cache
def train_batch() -> dict[str, Any]:
    return make_batch(1)


@functools.cache
def unseen_batch() -> dict[str, Any]:
    return make_batch(2, unseen=True)


@functools.cache
def fitted_spec_json() -> str:
    return fit_spec(json.dumps(TEMPLATE), train_batch())


@functools.cache
def fitted_spec() -> dict[str, Any]:
    return json.loads(fitted_spec_json())


@functools.cache
def pipeline() -> FeaturePipeline:
    return FeaturePipeline(fitted_spec_json())


def assert_parity(columns: dict[str, Any], *, pipe: FeaturePipeline | None = None) -> np.ndarray:
    pipe = pipe or pipeline()
    got = pipe.transform(columns)
    want = reference_transform(fitted_spec(), columns)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    return got


# --------------------------------------------------------------------------- fit parity


def _close(got: Any, want: Any, what: str) -> None:
    if want is None or got is None:
        assert got == want, what
        return
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        np.asarray(want, dtype=np.float64),
        rtol=FIT_RTOL,
        atol=0,
        err_msg=what,
    )


def assert_fit_parity(rust: dict[str, Any], ref: dict[str, Any]) -> None:
    assert [i["name"] for i in rust["inputs"]] == [i["name"] for i in ref["inputs"]]
    for ri, fi in zip(rust["inputs"], ref["inputs"], strict=True):
        assert ri["dtype"] == fi["dtype"]
        assert ri.get("vocabulary") == fi.get("vocabulary"), f"input {ri['name']} vocabulary"
    assert len(rust["transforms"]) == len(ref["transforms"])
    for k, (rt, ft) in enumerate(zip(rust["transforms"], ref["transforms"], strict=True)):
        where = f"transform #{k} ({ft['type']} {ft.get('name', ft.get('input'))})"
        assert rt["type"] == ft["type"], where
        if ft["type"] in ("numeric", "ratio", "cyclical"):
            rm, fm = rt["missing"], ft["missing"]
            assert rm["strategy"] == fm["strategy"], where
            assert bool(rm.get("indicator", False)) == fm["indicator"], where
            _close(rm["value"], fm["value"], f"{where} missing.value")
            rsteps, fsteps = rt.get("steps", []), ft.get("steps", [])
            assert [s["op"] for s in rsteps] == [s["op"] for s in fsteps], where
            for j, (rs, fs) in enumerate(zip(rsteps, fsteps, strict=True)):
                sw = f"{where} step #{j} {fs['op']}"
                if fs["op"] == "clip":
                    _close(rs.get("min"), fs.get("min"), f"{sw} min")
                    _close(rs.get("max"), fs.get("max"), f"{sw} max")
                elif fs["op"] == "standardize":
                    _close(rs["mean"], fs["mean"], f"{sw} mean")
                    _close(rs["std"], fs["std"], f"{sw} std")
                elif fs["op"] == "bucketize":
                    assert len(rs["edges"]) == len(fs["edges"]), f"{sw} edges {rs['edges']}"
                    _close(rs["edges"], fs["edges"], f"{sw} edges")
        elif ft["type"] in ("one_hot", "ordinal"):
            assert rt["vocabulary"] == ft["vocabulary"], f"{where} vocabulary"
        elif ft["type"] == "hash":
            assert rt["buckets"] == ft["buckets"]
            assert rt.get("seed", 0) == ft["seed"]


def test_fit_matches_reference() -> None:
    rust = fitted_spec()
    ref = reference_fit(TEMPLATE, train_batch())
    assert_fit_parity(rust, ref)


def test_fitted_spec_sanity() -> None:
    t = {tr.get("name", tr.get("input")): tr for tr in fitted_spec()["transforms"]}
    # rare channel values (count < min_count) are not in the vocabulary: they read as unseen
    assert t["channel"]["vocabulary"] == CHANNELS
    assert len(t["country_idx"]["vocabulary"]) == 20
    assert not {"X0", "X1", "", None} & set(t["country_idx"]["vocabulary"])
    edges = t["balance"]["steps"][0]["edges"]
    assert len(edges) < 7, "duplicate quantile edges (many zeros) must be de-duplicated"
    assert edges == sorted(set(edges))
    assert t["velocity"]["steps"][0].get("min") is None
    assert t["amount_to_balance"]["steps"][1]["min"] == -5.0
    assert t["balance"]["missing"]["value"] == -1.0
    inputs = {i["name"]: i for i in fitted_spec()["inputs"]}
    vocab = inputs["channel"]["vocabulary"]
    assert vocab[: len(CHANNELS)] == CHANNELS
    assert {"moto", "mail", "naïve"} <= set(vocab)
    assert "" not in vocab


def _fit_both(template: dict[str, Any], columns: dict[str, Any]) -> dict[str, Any]:
    rust = json.loads(fit_spec(json.dumps(template), columns))
    assert_fit_parity(rust, reference_fit(template, columns))
    return rust


def test_fit_edge_cases() -> None:
    """Small hand-checked cases of the documented fitting rules."""
    template = {
        "format": "riskserve.features/v1",
        "inputs": [
            {"name": "allmiss", "dtype": "float"},
            {"name": "x", "dtype": "float"},
            {"name": "s", "dtype": "string"},
        ],
        "transforms": [
            {"type": "numeric", "input": "allmiss", "missing": {"strategy": "mean"}},
            {
                "type": "numeric",
                "input": "x",
                "steps": [
                    {"op": "clip", "min_quantile": 0.75},
                    {"op": "bucketize", "quantiles": 4},
                ],
            },
            {"type": "one_hot", "input": "s", "max_categories": 2},
            {"type": "ordinal", "input": "s", "name": "s_ord", "min_count": 2},
        ],
    }
    columns = {
        "allmiss": np.array([np.nan, np.inf, -np.inf, np.nan] * 2),
        "x": np.arange(1.0, 9.0),
        "s": ["b", "a", "a", "b", "c", None, "", "c"],
    }
    rust = _fit_both(template, columns)
    tr = rust["transforms"]
    assert tr[0]["missing"]["value"] == 0.0  # no present values -> 0
    assert tr[1]["steps"][0]["min"] == 6.25  # linear quantile 0.75 of 1..8
    assert tr[1]["steps"][0].get("max") is None
    # quantiles 1/4, 2/4, 3/4 of [6.25 x6, 7, 8] = 6.25, 6.25, 6.4375 -> de-duplicated
    assert tr[1]["steps"][1]["edges"] == [6.25, 6.4375]
    assert tr[2]["vocabulary"] == ["a", "b"]  # 3-way tie at 2 -> byte order, capped at 2
    assert tr[3]["vocabulary"] == ["a", "b", "c"]
    assert rust["inputs"][2]["vocabulary"] == ["a", "b", "c"]

    columns["s"] = ["é", "z", "é", "z", "a", None, "", ""]  # 'z' (0x7a) < 'é' (0xc3 0xa9)
    rust = _fit_both(template, columns)
    assert rust["transforms"][2]["vocabulary"] == ["z", "é"]
    assert rust["transforms"][3]["vocabulary"] == ["z", "é"]


@pytest.mark.parametrize(
    ("n", "value"), [(8, 0.1), (3, 0.1), (10, 0.3), (N_ROWS, 0.1), (5, 5.0), (N_ROWS, 1.0)]
)
def test_fit_constant_column_std_is_one(n: int, value: float) -> None:
    """A constant column has population std 0, which the doc says is replaced by 1.

    Otherwise standardize divides by a rounding residue (~1e-17..1e-14) and any serving
    value that differs from the training constant explodes to ~1e15 or f32::MAX.
    """
    template = {
        "format": "riskserve.features/v1",
        "inputs": [{"name": "c", "dtype": "float"}],
        "transforms": [{"type": "numeric", "input": "c", "steps": [{"op": "standardize"}]}],
    }
    columns = {"c": np.full(n, value)}
    assert reference_fit(template, columns)["transforms"][0]["steps"][0]["std"] == 1.0
    fitted = json.loads(fit_spec(json.dumps(template), columns))
    step = fitted["transforms"][0]["steps"][0]
    assert step["std"] == 1.0, f"constant {value!r} x {n}: fitted std {step['std']!r}, expected 1.0"
    out = FeaturePipeline(json.dumps(fitted)).transform({"c": np.array([value, value + 0.5])})
    np.testing.assert_allclose(out.ravel(), [0.0, 0.5], rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("values", "what"),
    [
        # mean 1/3 exactly; a left-to-right f64 sum cancels 1e30 - 1e30 after absorbing the 1
        ([1.0, 1e30, -1e30], "mean"),
        # population std 3e299 is finite although its square is not
        ([2e299, 8e299], "std"),
        # population std 1.5e-200 is > 0 although its square underflows to 0
        ([1e-200, 4e-200], "std"),
    ],
    ids=["cancellation", "huge", "tiny"],
)
def test_fit_standardize_extreme_magnitudes(values: list[float], what: str) -> None:
    """The fitted mean / population std are those of the values, whatever their magnitude."""
    template = {
        "format": "riskserve.features/v1",
        "inputs": [{"name": "v", "dtype": "float"}],
        "transforms": [
            {
                "type": "numeric",
                "input": "v",
                "missing": {"strategy": "mean"},
                "steps": [{"op": "standardize"}],
            }
        ],
    }
    columns = {"v": np.array(values)}
    want = reference_fit(template, columns)["transforms"][0]
    got = json.loads(fit_spec(json.dumps(template), columns))["transforms"][0]
    exact = {
        "mean": math.fsum(values) / len(values),
        "std": float(np.std(np.array(values) / max(values)) * max(values)),
    }[what]
    ref_value = want["steps"][0][what]
    assert ref_value == pytest.approx(exact, rel=1e-12)
    if what == "mean":
        _close(got["missing"]["value"], want["missing"]["value"], "missing.value (mean)")
    _close(got["steps"][0][what], ref_value, f"standardize {what} of {values}")


# --------------------------------------------------------------------------- transform parity


def expected_feature_names() -> list[str]:
    channel = [f"channel={c}" for c in CHANNELS] + ["channel=__unseen__", "channel=__missing__"]
    return [
        "amount",
        "amount__missing",
        "amount_bucket",
        "balance",
        "balance__missing",
        "velocity",
        "amount_to_balance",
        "amount_to_balance__missing",
        "hour__sin",
        "hour__cos",
        "hour__missing",
        "n_items",
        "is_foreign",
        *channel,
        "country_idx",
        "merchant",
        "channel_hash",
    ]


def test_feature_names() -> None:
    pipe = pipeline()
    assert list(pipe.feature_names) == expected_feature_names()
    assert reference_feature_names(fitted_spec()) == expected_feature_names()
    assert pipe.n_features == len(expected_feature_names())
    assert [tuple(x) for x in pipe.inputs] == [(i["name"], i["dtype"]) for i in TEMPLATE["inputs"]]


def test_transform_parity_unseen_batch() -> None:
    columns = unseen_batch()
    got = assert_parity(columns)
    assert got.shape == (N_ROWS, len(expected_feature_names()))
    assert np.isfinite(got).all()
    diff = np.abs(got - reference_transform(fitted_spec(), columns)).max()
    print(f"max abs diff vs reference: {diff:.3g}")

    names = expected_feature_names()
    col = {n: i for i, n in enumerate(names)}
    onehot = [i for i, n in enumerate(names) if n.startswith("channel=")]
    assert (got[:, onehot].sum(axis=1) == 1.0).all()
    # the batch really exercises the unseen / missing / saturation paths
    assert got[:, col["channel=__unseen__"]].sum() >= 90
    assert got[:, col["channel=__missing__"]].sum() >= 300
    n_countries = len(fitted_spec()["transforms"][9]["vocabulary"])
    assert (got[:, col["country_idx"]] == n_countries).any()
    assert (got[:, col["country_idx"]] == n_countries + 1).any()
    assert (got[:, col["merchant"]] == 64).sum() == 400
    assert (got[:, col["velocity"]] == -np.finfo(np.float32).max).any()
    assert (got[:, col["amount_to_balance__missing"]] == 1.0).sum() > 0.3 * N_ROWS


def test_transform_parity_training_batch() -> None:
    assert_parity(train_batch())


# --------------------------------------------------------------------------- column layouts


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros((a.shape[0], 3), dtype=a.dtype)
    big[:, 1] = a
    out = big[:, 1]
    assert not out.flags.c_contiguous
    return out


def _strided_n1(a: np.ndarray) -> np.ndarray:
    big = np.zeros((a.shape[0] * 2, 1), dtype=a.dtype)
    big[::2, 0] = a
    out = big[::2]
    assert out.shape == (a.shape[0], 1)
    assert not out.flags.c_contiguous
    return out


def _finite_ints(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.nan_to_num(np.clip(a, -1e9, 1e9), nan=0.0, posinf=1e9, neginf=-1e9)
    return a


NUMERIC_LAYOUTS = {
    "float64": lambda a: a.astype(np.float64),
    "float32": lambda a: a.astype(np.float32),
    "int64": lambda a: _finite_ints(a).astype(np.int64),
    "int32": lambda a: np.clip(_finite_ints(a), -(2**31), 2**31 - 1).astype(np.int32),
    "bool": lambda a: _finite_ints(a).astype(bool),
    "uint16 (widened)": lambda a: np.clip(_finite_ints(a), 0, 2**16 - 1).astype(np.uint16),
    "float16 (widened)": lambda a: a.astype(np.float16),
    "[n,1]": lambda a: a.reshape(-1, 1),
    "strided": _strided,
    "strided [n,1]": _strided_n1,
    "fortran [n,1] slice": lambda a: np.asfortranarray(np.stack([a, a], axis=1))[:, :1],
    "reversed": lambda a: a[::-1].copy()[::-1],
}


@pytest.mark.parametrize("layout", list(NUMERIC_LAYOUTS))
def test_numeric_layouts(layout: str) -> None:
    base = unseen_batch()
    convert = NUMERIC_LAYOUTS[layout]
    columns = dict(base)
    for name in NUMERIC_INPUTS:
        with np.errstate(all="ignore"):
            columns[name] = convert(np.asarray(base[name]))
    assert_parity(columns)


STRING_LAYOUTS = {
    "list[str]": lambda v: list(v),
    "tuple": lambda v: tuple(v),
    "object array": lambda v: np.array(v, dtype=object),
    "list[bytes]": lambda v: [None if s is None else s.encode("utf-8") for s in v],
    "packed BYTES": pack_bytes_tensor,
}


@pytest.mark.parametrize("layout", list(STRING_LAYOUTS))
def test_string_layouts(layout: str) -> None:
    base = unseen_batch()
    columns = dict(base)
    for name in STRING_INPUTS:
        columns[name] = STRING_LAYOUTS[layout](base[name])
    got = assert_parity(columns)
    # every layout means the same thing (packed BYTES has no None: it sends "", also missing)
    np.testing.assert_array_equal(got, pipeline().transform(base))


def test_packed_bytes_roundtrip_in_reference() -> None:
    values = ["a", "", None, "café", "日本"]
    assert as_strings(pack_bytes_tensor(values)) == [
        b"a",
        None,
        None,
        "café".encode(),
        "日本".encode(),
    ]


@pytest.mark.parametrize("period", [24.0, 2 * math.pi, 1.0, 0.5, 1e-3, 1e-300])
def test_cyclical_output_finite_for_every_valid_period(period: float) -> None:
    """Any period > 0 compiles, and sin/cos of a finite phase is in [-1, 1]: output must be
    finite for every finite input (the doc: the model only ever sees finite values)."""
    template = {
        "format": "riskserve.features/v1",
        "inputs": [{"name": "t", "dtype": "float"}],
        "transforms": [{"type": "cyclical", "input": "t", "period": period}],
    }
    pipe = FeaturePipeline(fit_spec(json.dumps(template), {"t": np.array([0.0, 1.0])}))
    x = np.array([0.0, 1.0, 1e7, 1e10, 1e30, 1e300, 1.7e308, -1.7e308, np.nan, np.inf])
    out = pipe.transform({"t": x})
    bad = x[~np.isfinite(out).all(axis=1)]
    assert bad.size == 0, f"period {period}: non-finite sin/cos for t={bad.tolist()}"


# --------------------------------------------------------------------------- hypothesis

SPECIAL_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1e30,
    -1e30,
    1e300,
    -1e300,
    float(np.finfo(np.float64).max),
    -float(np.finfo(np.float64).max),
    5e-324,
    float(np.finfo(np.float32).max),
    3.5e38,
    -3.5e38,
    1.0,
    23.0,
    24.0,
]
float_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_FLOATS),
    st.floats(min_value=-1e4, max_value=1e4),
)
string_values = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=6),
    st.sampled_from([*CHANNELS, "moto", "crypto", "C00", "C01", "ÅLAND", "café", "naïve", "🎉"]),
)


@st.composite
def raw_batches(draw: st.DrawFn, max_rows: int = 12) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=max_rows))

    def column(elements: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(elements, min_size=n, max_size=n))

    columns: dict[str, Any] = {name: np.array(column(float_values)) for name in FLOAT_INPUTS}
    columns["n_items"] = np.array(
        column(st.integers(min_value=-(2**63), max_value=2**63 - 1)), dtype=np.int64
    )
    columns["is_foreign"] = np.array(column(st.booleans()), dtype=bool)
    for name in STRING_INPUTS:
        columns[name] = column(string_values)
    return columns


@HYPOTHESIS
@given(columns=raw_batches())
def test_property_parity_and_finite(columns: dict[str, Any]) -> None:
    got = assert_parity(columns)
    assert np.isfinite(got).all()
    names = list(pipeline().feature_names)
    onehot = [i for i, n in enumerate(names) if n.startswith("channel=")]
    assert (got[:, onehot].sum(axis=1) == 1.0).all()
    assert set(np.unique(got[:, onehot]).tolist()) <= {0.0, 1.0}


@HYPOTHESIS
@given(columns=raw_batches())
def test_property_row_by_row_equals_batch(columns: dict[str, Any]) -> None:
    pipe = pipeline()
    batch = pipe.transform(columns)
    n = batch.shape[0]
    rows = [
        pipe.transform(
            {
                k: v[i : i + 1]  # ndarray or list slice
                for k, v in columns.items()
            }
        )
        for i in range(n)
    ]
    np.testing.assert_array_equal(np.vstack(rows), batch)


@HYPOTHESIS
@given(columns=raw_batches(max_rows=4), layout=st.sampled_from(list(STRING_LAYOUTS)))
def test_property_string_layouts_agree(columns: dict[str, Any], layout: str) -> None:
    converted = dict(columns)
    for name in STRING_INPUTS:
        converted[name] = STRING_LAYOUTS[layout](columns[name])
    np.testing.assert_array_equal(pipeline().transform(converted), pipeline().transform(columns))


# --------------------------------------------------------------------------- errors


def _valid_small() -> dict[str, Any]:
    return {
        "amount": np.array([1.0, 2.0, 3.0]),
        "balance": np.array([1.0, 0.0, np.nan]),
        "velocity": np.array([1.0, 2.0, 3.0]),
        "hour": np.array([1.0, 2.0, 3.0]),
        "n_items": np.array([1, 2, 3]),
        "is_foreign": np.array([True, False, True]),
        "channel": ["pos", None, "café"],
        "country": ["C00", "", "ZZ"],
        "merchant": ["m1", "m2", "m3"],
    }


def _drop(name: str) -> Any:
    def edit(c: dict[str, Any]) -> None:
        del c[name]

    return edit


def _set(name: str, value: Any) -> Any:
    def edit(c: dict[str, Any]) -> None:
        c[name] = value

    return edit


INPUT_ERRORS = {
    "missing input": ("channel", _drop("channel")),
    "missing numeric input": ("velocity", _drop("velocity")),
    "unexpected input": ("bogus", _set("bogus", np.array([1.0, 2.0, 3.0]))),
    "length mismatch (numeric)": ("hour", _set("hour", np.array([1.0, 2.0]))),
    "length mismatch (string)": ("merchant", _set("merchant", ["a", "b", "c", "d"])),
    "numeric array for string input": ("channel", _set("channel", np.array([1.0, 2.0, 3.0]))),
    "list of strings for numeric input": ("amount", _set("amount", ["1", "2", "3"])),
    "string array for numeric input": ("amount", _set("amount", np.array(["1", "2", "3"]))),
    "shape [n,2]": ("amount", _set("amount", np.zeros((3, 2)))),
    "shape [n,1,1]": ("velocity", _set("velocity", np.zeros((3, 1, 1)))),
    "shape [] (0-d array)": ("hour", _set("hour", np.array(1.0))),
    "zero-width [n,0]": ("hour", _set("hour", np.zeros((3, 0)))),
    "complex dtype": ("hour", _set("hour", np.array([1j, 2j, 3j]))),
    "non-UTF-8 bytes in list": ("merchant", _set("merchant", [b"ok", b"\xff\xfe", None])),
    "non-UTF-8 bytes in packed": (
        "country",
        _set("country", pack_bytes_tensor(["a", b"\xc3", "b"])),
    ),
    "truncated packed element": (
        "country",
        _set("country", b"\x01\x00\x00\x00a\x05\x00\x00\x00ab"),
    ),
    "truncated packed prefix": (
        "channel",
        _set("channel", pack_bytes_tensor(["a", "b"]) + b"\x02\x00"),
    ),
    "non-string element": ("channel", _set("channel", ["pos", 3, None])),
}


@pytest.mark.parametrize(
    "scalar", [np.float64(1.0), np.int64(1), np.bool_(True)], ids=["float64", "int64", "bool_"]
)
def test_numpy_scalar_is_shape_input_error(scalar: Any) -> None:
    """A numpy scalar has shape (), which is not [batch] or [batch, 1]: InputError naming it."""
    columns = _valid_small()
    columns["hour"] = scalar
    with pytest.raises(InputError, match="hour"):
        pipeline().transform(columns)


@pytest.mark.parametrize("case", list(INPUT_ERRORS))
def test_input_errors(case: str) -> None:
    name, edit = INPUT_ERRORS[case]
    columns = _valid_small()
    pipeline().transform(columns)  # the unedited batch is valid
    edit(columns)
    with pytest.raises(InputError) as info:
        pipeline().transform(columns)
    assert name in str(info.value), f"{case}: {info.value!r} does not name {name!r}"
    assert isinstance(info.value, FeatureError)
    assert isinstance(info.value, ValueError)


def test_unfitted_template_is_spec_error() -> None:
    with pytest.raises(SpecError):
        FeaturePipeline(json.dumps(TEMPLATE))
    assert issubclass(SpecError, FeatureError)
    assert issubclass(FeatureError, ValueError)


def _bad_spec(edit: Any) -> str:
    spec = copy.deepcopy(fitted_spec())
    edit(spec)
    return json.dumps(spec)


def _find(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for t in spec["transforms"]:
        if t.get("name", t.get("input")) == name:
            return t
    raise KeyError(name)


SPEC_ERRORS = {
    "undeclared input": lambda s: _find(s, "merchant").__setitem__("input", "nope"),
    "undeclared ratio denominator": lambda s: _find(s, "amount_to_balance").__setitem__(
        "denominator", "nope"
    ),
    "string input in numeric transform": lambda s: _find(s, "amount").__setitem__(
        "input", "channel"
    ),
    "numeric input in one_hot": lambda s: _find(s, "channel").__setitem__("input", "amount"),
    "unordered edges": lambda s: _find(s, "amount_bucket")["steps"][1].__setitem__(
        "edges", [2.0, 1.0]
    ),
    "non-finite edges": lambda s: _find(s, "amount_bucket")["steps"][1].__setitem__(
        "edges", [1.0, math.inf]
    ),
    "std 0": lambda s: _find(s, "amount")["steps"][2].__setitem__("std", 0.0),
    "std < 0": lambda s: _find(s, "amount")["steps"][2].__setitem__("std", -1.0),
    "period 0": lambda s: _find(s, "hour").__setitem__("period", 0),
    "zero buckets": lambda s: _find(s, "merchant").__setitem__("buckets", 0),
    "duplicate vocabulary": lambda s: _find(s, "channel").__setitem__("vocabulary", ["a", "a"]),
    "missing.value absent": lambda s: _find(s, "velocity")["missing"].pop("value"),
    "duplicate feature name": lambda s: _find(s, "channel_hash").__setitem__("name", "merchant"),
}


@pytest.mark.parametrize("case", list(SPEC_ERRORS))
def test_spec_errors(case: str) -> None:
    spec_json = _bad_spec(SPEC_ERRORS[case])
    with pytest.raises(SpecError) as info:
        FeaturePipeline(spec_json)
    if case.startswith("undeclared"):
        assert "nope" in str(info.value)


# --------------------------------------------------------------------------- murmur3


def _hash_vectors() -> list[tuple[bytes, int, int]]:
    data = json.loads((HERE / "hash_vectors.json").read_text())
    return [(bytes.fromhex(v["input"]), v["seed"], v["expected"]) for v in data["vectors"]]


@pytest.mark.parametrize(("data", "seed", "expected"), _hash_vectors())
def test_murmur3_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected
    assert mmh3.hash(data, seed, signed=False) == expected
    if seed == 0:
        assert murmur3_32(data) == expected


def test_murmur3_str_is_utf8() -> None:
    for s in ["", "café", "日本", "🎉", "test"]:
        assert (
            murmur3_32(s, 7)
            == murmur3_32(s.encode("utf-8"), 7)
            == mmh3.hash(s.encode(), 7, signed=False)
        )


@HYPOTHESIS
@given(data=st.binary(max_size=64), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_property_murmur3_matches_mmh3(data: bytes, seed: int) -> None:
    assert murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


# --------------------------------------------------------------------------- threads


def test_concurrent_transforms_match_sequential() -> None:
    pipe = pipeline()
    batches = [make_batch(100 + i, 20_000, unseen=bool(i % 2)) for i in range(8)]
    sequential = [pipe.transform(b) for b in batches]
    barrier = threading.Barrier(len(batches))

    def work(i: int) -> list[np.ndarray]:
        barrier.wait()
        return [pipe.transform(batches[i]) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(pool.map(work, range(len(batches))))
    for i, outs in enumerate(results):
        for out in outs:
            np.testing.assert_array_equal(out, sequential[i])
    np.testing.assert_allclose(
        sequential[0], reference_transform(fitted_spec(), batches[0]), rtol=0, atol=ATOL
    )
