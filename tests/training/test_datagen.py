"""Tests for the deterministic synthetic transaction generator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskserve.training import datagen

_KIND_TYPES = {
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
_NAN_FIELDS = (
    "distance_from_home_km",
    "distance_from_last_txn_km",
    "seconds_since_last_txn",
    "email_domain_age_days",
)
_EMPTY_STRING_FIELDS = ("device_os", "email_domain")


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return datagen.generate(100_000, 0)


def _col(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def _assert_tables_equal(a: pa.Table, b: pa.Table) -> None:
    """Value equality that treats NaN as equal to NaN (pyarrow's equals does not)."""
    assert a.schema.equals(b.schema)
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        assert a.column(name).null_count == b.column(name).null_count == 0, name
        if pa.types.is_floating(a.schema.field(name).type):
            np.testing.assert_array_equal(_col(a, name), _col(b, name), err_msg=name)
        else:
            assert a.column(name).equals(b.column(name)), name


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(score.size, dtype=np.float64)
    ranks[order] = np.arange(1, score.size + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --------------------------------------------------------------------------------------------
# Schema and documentation
# --------------------------------------------------------------------------------------------


def test_fields_are_documented_and_in_range() -> None:
    assert 25 <= len(datagen.FIELDS) <= 40
    names = [f.name for f in datagen.FIELDS]
    assert len(set(names)) == len(names)
    assert datagen.TARGET not in names
    for f in datagen.FIELDS:
        assert f.kind in _KIND_TYPES
        assert f.description.strip()
        assert "\n" not in f.description
    assert datagen.field_names() == tuple(names)


def test_columns_and_types_follow_fields(table: pa.Table) -> None:
    assert table.column_names == [*datagen.field_names(), datagen.TARGET]
    assert table.schema.equals(datagen.SCHEMA)
    for f in datagen.FIELDS:
        assert table.schema.field(f.name).type == _KIND_TYPES[f.kind], f.name
    assert table.schema.field(datagen.TARGET).type == pa.int64()
    for name in table.column_names:
        assert table.column(name).null_count == 0, name
    assert set(np.unique(_col(table, datagen.TARGET)).tolist()) == {0, 1}


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_same_table() -> None:
    _assert_tables_equal(datagen.generate(5_000, 7), datagen.generate(5_000, 7))


def test_multi_chunk_generation_is_deterministic() -> None:
    a = datagen.generate(2_500, 7, chunk_rows=1_000)
    _assert_tables_equal(a, datagen.generate(2_500, 7, chunk_rows=1_000))
    assert a.num_rows == 2_500
    # chunks use different streams: the second chunk is not a copy of the first
    assert not np.array_equal(_col(a, "amount")[:1_000], _col(a, "amount")[1_000:2_000])


def test_different_seed_different_table() -> None:
    a = datagen.generate(5_000, 1)
    b = datagen.generate(5_000, 2)
    assert not np.array_equal(_col(a, "amount"), _col(b, "amount"))
    assert not a.column("merchant_category").equals(b.column("merchant_category"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_written_files_are_byte_deterministic(tmp_path: Path, suffix: str) -> None:
    table = datagen.generate(3_000, 11)
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    datagen.write_table(table, first)
    datagen.write_table(datagen.generate(3_000, 11), second)
    assert first.read_bytes() == second.read_bytes()
    assert datagen.fingerprint(first) == datagen.fingerprint(second)

    # The streaming writer produces exactly the same bytes as write_table(generate(...)).
    streamed = tmp_path / f"streamed{suffix}"
    assert datagen.run_datagen(3_000, 11, streamed) == datagen.fingerprint(first)

    other = tmp_path / f"other{suffix}"
    assert datagen.run_datagen(3_000, 12, other) != datagen.fingerprint(first)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_run_datagen_multi_chunk(tmp_path: Path, suffix: str) -> None:
    messages: list[str] = []
    out = tmp_path / "nested" / f"data{suffix}"
    digest = datagen.run_datagen(2_500, 5, out, messages.append, chunk_rows=1_000)
    assert digest == datagen.fingerprint(out)
    assert messages[:3] == [
        "generated 1000/2500 rows",
        "generated 2000/2500 rows",
        "generated 2500/2500 rows",
    ]
    assert len(messages) == 4 and digest in messages[-1]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind
    _assert_tables_equal(datagen.read_table(out), datagen.generate(2_500, 5, chunk_rows=1_000))
    again = tmp_path / f"again{suffix}"
    assert datagen.run_datagen(2_500, 5, again, chunk_rows=1_000) == digest


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_zero_rows(tmp_path: Path, suffix: str) -> None:
    assert datagen.generate(0, 0).num_rows == 0
    out = tmp_path / f"empty{suffix}"
    datagen.run_datagen(0, 0, out)
    back = datagen.read_table(out)
    assert back.num_rows == 0
    assert back.schema.equals(datagen.SCHEMA)


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_preserves_nan_and_empty_strings(tmp_path: Path, suffix: str) -> None:
    table = datagen.generate(20_000, 3)
    for name in _NAN_FIELDS:
        assert np.isnan(_col(table, name)).any(), name
    for name in _EMPTY_STRING_FIELDS:
        assert (_col(table, name) == "").any(), name

    path = tmp_path / f"rt{suffix}"
    datagen.write_table(table, path)
    back = datagen.read_table(path)
    _assert_tables_equal(back, table)  # includes: no nulls, NaN at the same positions
    for name in _NAN_FIELDS:
        np.testing.assert_array_equal(np.isnan(_col(back, name)), np.isnan(_col(table, name)))
    for name in _EMPTY_STRING_FIELDS:
        np.testing.assert_array_equal(_col(back, name) == "", _col(table, name) == "")


def test_bad_extension_raises(tmp_path: Path) -> None:
    table = datagen.generate(10, 0)
    bad = tmp_path / "data.txt"
    with pytest.raises(ValueError, match=r"\.txt"):
        datagen.write_table(table, bad)
    with pytest.raises(ValueError, match=r"\.txt"):
        datagen.read_table(bad)
    with pytest.raises(ValueError, match=r"\.json"):
        datagen.run_datagen(10, 0, tmp_path / "data.json")
    with pytest.raises(ValueError, match="extension"):
        datagen.write_table(table, tmp_path / "noext")
    assert list(tmp_path.iterdir()) == []


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        datagen.generate(-1, 0)
    with pytest.raises(ValueError, match="seed"):
        datagen.generate(1, -1)
    with pytest.raises(ValueError, match="chunk_rows"):
        datagen.generate(1, 0, chunk_rows=0)


def test_fingerprint_streams_large_files(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(2 * (1 << 20) + 12_345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert datagen.fingerprint(path) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fraud_rate_is_between_one_and_two_percent(seed: int) -> None:
    rate = float(_col(datagen.generate(100_000, seed), datagen.TARGET).mean())
    assert 0.01 <= rate <= 0.02


def _check_invariants(table: pa.Table) -> None:
    hour = _col(table, "transaction_hour")
    assert ((hour >= 0) & (hour <= 23)).all()
    dow = _col(table, "day_of_week")
    assert ((dow >= 0) & (dow <= 6)).all()
    account_age = _col(table, "account_age_days")
    card_age = _col(table, "card_age_days")
    assert (card_age >= 0).all()
    assert (card_age <= account_age).all()
    c1, c24 = _col(table, "txn_count_1h"), _col(table, "txn_count_24h")
    assert (c1 >= 0).all()
    assert (c24 >= c1).all()
    amount = _col(table, "amount")
    assert (amount > 0).all()
    np.testing.assert_array_equal(amount, np.round(amount, 2))
    assert (_col(table, "amount_sum_24h") >= amount).all()
    assert (_col(table, "avg_amount_30d") > 0).all()
    ip = _col(table, "ip_risk_score")
    assert ((ip >= 0) & (ip <= 1)).all()
    age = _col(table, "customer_age_years")
    assert ((age >= 18) & (age <= 100)).all()
    for name in _NAN_FIELDS:
        values = _col(table, name)
        assert (values[~np.isnan(values)] >= 0).all(), name
    home = _col(table, "distance_from_home_km")
    assert (home[~np.isnan(home)] <= 20_040).all()  # at most half the Earth's circumference
    # first transaction: no previous one, hence no gap and no distance
    first = np.isnan(_col(table, "seconds_since_last_txn"))
    np.testing.assert_array_equal(first, np.isnan(_col(table, "distance_from_last_txn_km")))
    assert (c24[first] == 0).all()
    gap = _col(table, "seconds_since_last_txn")
    assert (gap[~first & (c1 > 0)] < 3600).all()
    # consistency of derived flags
    intl = _col(table, "is_international")
    np.testing.assert_array_equal(
        intl, _col(table, "merchant_country") != _col(table, "card_country")
    )
    channel = _col(table, "channel")
    present = _col(table, "card_present")
    np.testing.assert_array_equal(present, np.isin(channel, ["pos", "contactless", "atm"]))
    assert _col(table, "cvv_match")[present].all()
    assert (channel[_col(table, "three_ds_authenticated")] == "ecommerce").all()
    assert set(np.unique(_col(table, datagen.TARGET)).tolist()) <= {0, 1}


def test_value_ranges_and_consistency(table: pa.Table) -> None:
    _check_invariants(table)
    hour = _col(table, "transaction_hour")
    assert set(np.unique(hour).tolist()) == set(range(24))
    by_hour = np.bincount(hour, minlength=24)
    assert by_hour[3] * 3 < by_hour[18]  # day/night pattern
    assert set(np.unique(_col(table, "channel")).tolist()) == {
        "pos",
        "contactless",
        "ecommerce",
        "moto",
        "atm",
    }
    assert set(np.unique(_col(table, "card_type")).tolist()) == {"debit", "credit", "prepaid"}
    assert 20 <= np.unique(_col(table, "merchant_category")).size <= 40
    assert 25 <= np.unique(_col(table, "card_country")).size <= 35
    assert 8 <= np.unique(_col(table, "currency")).size <= 15
    # skewed vocabularies: the most common value dominates, and a long tail exists
    _, counts = np.unique(_col(table, "merchant_category"), return_counts=True)
    assert counts.max() > 50 * counts.min()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(min_value=0, max_value=300), seed=st.integers(0, 2**63))
def test_invariants_hold_for_small_tables(rows: int, seed: int) -> None:
    table = datagen.generate(rows, seed, chunk_rows=128)
    assert table.num_rows == rows
    assert table.schema.equals(datagen.SCHEMA)
    _check_invariants(table)


def test_missing_value_rates(table: pa.Table) -> None:
    for name in _NAN_FIELDS:
        rate = float(np.isnan(_col(table, name)).mean())
        assert 0.002 <= rate <= 0.05, (name, rate)
    for name in _EMPTY_STRING_FIELDS:
        rate = float((_col(table, name) == "").mean())
        assert 0.005 <= rate <= 0.03, (name, rate)
    # string columns other than the documented ones never use the missing marker
    for f in datagen.FIELDS:
        if f.kind == "string" and f.name not in _EMPTY_STRING_FIELDS:
            assert not (_col(table, f.name) == "").any(), f.name


def test_label_depends_on_features(table: pa.Table) -> None:
    y = _col(table, datagen.TARGET)
    base = float(y.mean())
    night = _col(table, "transaction_hour") <= 5
    risky = ~_col(table, "card_present") & _col(table, "new_device") & night
    assert risky.sum() >= 100
    assert float(y[risky].mean()) >= 3 * base
    high_ip = _col(table, "ip_risk_score") > 0.7
    assert float(y[high_ip].mean()) >= 3 * base
    cnp_intl_no_3ds = (
        ~_col(table, "card_present")
        & _col(table, "is_international")
        & ~_col(table, "three_ds_authenticated")
    )
    assert float(y[cnp_intl_no_3ds].mean()) >= 3 * base


def test_label_is_learnable_but_noisy(table: pa.Table) -> None:
    import lightgbm as lgb

    columns = []
    for f in datagen.FIELDS:
        col = table.column(f.name)
        if f.kind == "string":
            col = col.combine_chunks().dictionary_encode().indices
        columns.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64))
    x = np.column_stack(columns)
    y = _col(table, datagen.TARGET)
    half = table.num_rows // 2
    model = lgb.LGBMClassifier(n_estimators=150, learning_rate=0.08, verbose=-1)
    model.fit(x[:half], y[:half])
    auc = _auc(y[half:], model.predict_proba(x[half:])[:, 1])
    assert 0.8 < auc < 0.99, auc
