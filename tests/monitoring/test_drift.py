"""Drift monitoring end to end: exact per-bin counts and PSI against an independent
numpy computation, known drift on a real trained model (PSI, alerts, one log event),
the minimum count, window expiry with an injected clock, parallel observers, and the
Prometheus collector. No mocks: every model is trained by riskserve itself."""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from conftest import train_model
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from riskserve._native import DriftMonitor, fit_reference, fit_spec
from riskserve.dataplane import table_view
from riskserve.monitoring import DriftAlerts, ServingCollector
from riskserve.registry import ModelRepository, VersionRef
from riskserve.routing.table import Deployment, RoutingTable
from riskserve.runtime import LoadedModel, load_version
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

ROOT = Path(__file__).resolve().parents[2]
FRAUD_SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"
SHARE_FLOOR = 1e-4
STABLE, ALERT = 0.1, 0.25

Columns = dict[str, Any]


# --------------------------------------------------------------------------------------
# Helpers: an independent numpy implementation of the bin rule and of PSI
# --------------------------------------------------------------------------------------


def input_names() -> list[str]:
    return [i["name"] for i in json.loads(FRAUD_SPEC.read_text())["inputs"]]


def take(columns: Mapping[str, Any], sl: slice) -> Columns:
    return {k: (v[sl].copy() if isinstance(v, np.ndarray) else v[sl]) for k, v in columns.items()}


def reference_fields(spec_json: str) -> list[dict[str, Any]]:
    """The reference of every input, then the score, as Python parses the JSON."""
    ref = json.loads(spec_json)["reference"]
    return [*ref["fields"], ref["score"]]


def numpy_counts(field: dict[str, Any], values: Any) -> np.ndarray:
    """Per-bin counts by the documented rule, computed with numpy only."""
    if field["kind"] == "numeric":
        edges = np.asarray(field["edges"], dtype=np.float64)
        x = np.asarray(values).astype(np.float64)
        finite = np.isfinite(x)
        bins = np.searchsorted(edges, x[finite], side="right")
        counts = np.bincount(bins, minlength=len(edges) + 1)
        return np.append(counts, np.count_nonzero(~finite))
    vocab = {v: i for i, v in enumerate(field["values"])}
    unseen, missing = len(vocab), len(vocab) + 1
    idx = [missing if v is None or v == "" else vocab.get(v, unseen) for v in values]
    return np.bincount(np.asarray(idx, dtype=np.int64), minlength=len(vocab) + 2)


def numpy_psi(counts: np.ndarray, shares: list[float]) -> float:
    a = np.maximum(counts / counts.sum(), SHARE_FLOOR)
    e = np.maximum(np.asarray(shares, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def split_counts(mon: DriftMonitor, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Flat monitor counts → per field (score last)."""
    out, off = {}, 0
    for name, labels, _shares in mon.fields:
        out[name] = flat[off : off + len(labels)]
        off += len(labels)
    assert off == len(flat)
    return out


def psi_of(
    mon: DriftMonitor, window: str = "cumulative", now: int | None = None
) -> dict[str, float | None]:
    return {name: value for name, _n, value in mon.psi(window, now)}


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_spec() -> str:
    """The fraud spec fitted on generated data, with a drift reference fitted on
    those columns and some scores."""
    names = input_names()
    cols = columns_of(generate(20_000, 0), names)
    spec = fit_spec(FRAUD_SPEC.read_text(), cols)
    scores = np.random.default_rng(0).beta(0.5, 8.0, 20_000)
    return fit_reference(spec, cols, scores)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, VersionRef]:
    """A real LightGBM model trained by riskserve on 20,000 generated rows."""
    d = tmp_path_factory.mktemp("drift")
    run_datagen(20_000, 0, d / "train.parquet")
    res = train_model(d / "train.parquet", d / "models", rounds=30)
    assert res.metrics["auc"] > 0.7, res.metrics
    return ModelRepository(d / "models"), res.ref


@pytest.fixture(scope="module")
def traffic() -> Columns:
    """6,000 rows of fresh traffic: same generator, another seed."""
    return columns_of(generate(6_000, 123), input_names())


def score_in_requests(model: LoadedModel, columns: Columns, batch: int = 100) -> None:
    rows = len(columns["amount"])
    for start in range(0, rows, batch):
        out = model.score(take(columns, slice(start, start + batch)))
        assert np.isfinite(out).all()


def table_of(model: LoadedModel) -> RoutingTable:
    """A routing table serving one loaded version, as a fresh start builds it."""
    dep = Deployment(model.name, MappingProxyType({model.version: model}), model.version)
    return RoutingTable(MappingProxyType({model.name: dep}))


# --------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------


def test_counts_and_psi_equal_numpy(fitted_spec: str) -> None:
    names = input_names()
    cols = columns_of(generate(5_000, 7), names)
    # Non-finite numbers, null/empty and unseen categories, non-finite scores.
    cols["amount"][:30] = [np.nan, np.inf, -np.inf] * 10
    cols["distance_from_home_km"][100:110] = np.inf
    cols["currency"][:40] = [None, "", "XTS", "ZZZ"] * 10
    cols["channel"][500:510] = ["teleport"] * 10
    scores = np.random.default_rng(1).beta(0.6, 7.0, 5_000)
    scores[:6] = [np.nan, np.inf, -np.inf, 0.0, 1.0, -0.0]

    mon = DriftMonitor(fitted_spec)
    mon.observe(cols, scores, now=1_700_000_000)
    got = split_counts(mon, mon.counts("cumulative"))
    assert (mon.counts("sliding", now=1_700_000_000) == mon.counts("cumulative")).all()

    fields = reference_fields(fitted_spec)
    assert [f["name"] for f in fields] == [*names, "__score__"]
    psi = {name: (n, value) for name, n, value in mon.psi("cumulative")}
    for f in fields:
        values = scores if f["name"] == "__score__" else cols[f["name"]]
        want = numpy_counts(f, values)
        np.testing.assert_array_equal(got[f["name"]], want, err_msg=f["name"])
        n, value = psi[f["name"]]
        assert n == 5_000
        assert value is not None
        assert value == pytest.approx(numpy_psi(want, f["shares"]), abs=1e-12), f["name"]
    # The specials went where the rule says.
    assert got["amount"][-1] == 30
    assert got["distance_from_home_km"][-1] >= 10
    assert got["currency"][-2] >= 20 and got["currency"][-1] >= 20
    assert got["__score__"][-1] == 3

    # Labels and shares as the Python API exposes them agree with the JSON.
    for (name, labels, shares), f in zip(mon.fields, fields, strict=True):
        assert name == f["name"]
        assert shares == pytest.approx(f["shares"], rel=1e-15, abs=0)
        assert math.fsum(shares) == pytest.approx(1.0, abs=1e-12)
        if f["kind"] == "categorical":
            assert labels == [*f["values"], "__unseen__", "__missing__"]
        else:
            assert len(labels) == len(f["edges"]) + 2 and labels[-1] == "missing"


def test_values_on_the_edges_bin_like_numpy(fitted_spec: str) -> None:
    """Values exactly on an edge (and one ulp either side) bin like numpy: the edges
    survive features.json bit for bit (serde_json's float_roundtrip)."""
    names = input_names()
    cols = columns_of(generate(200, 9), names)
    fields = {f["name"]: f for f in reference_fields(fitted_spec)}
    # Every numeric float input takes its edges (and their neighbours) as values.
    for name in names:
        f = fields[name]
        if f["kind"] != "numeric" or cols[name].dtype != np.float64 or not f["edges"]:
            continue
        e = np.asarray(f["edges"])
        probe = np.concatenate([e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)])
        cols[name] = np.resize(probe, 200)
    mon = DriftMonitor(fitted_spec)
    mon.observe(cols)
    got = split_counts(mon, mon.counts())
    bad = [
        name
        for name in names
        if not np.array_equal(got[name], numpy_counts(fields[name], cols[name]))
    ]
    assert not bad


# --------------------------------------------------------------------------------------
# Known drift on a real model
# --------------------------------------------------------------------------------------


def test_known_drift_on_a_trained_model(
    trained: tuple[ModelRepository, VersionRef],
    traffic: Columns,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    repo, ref = trained
    rows = len(traffic["amount"])
    assert rows >= 5_000

    stable = load_version(repo, ref)
    assert stable.drift is not None
    score_in_requests(stable, traffic)
    psi = {name: (n, value) for name, n, value in stable.drift.psi("cumulative")}
    assert all(n == rows for n, _ in psi.values()), psi
    high = {k: v for k, (_n, v) in psi.items() if v is None or v >= STABLE}
    assert not high, f"PSI ≥ {STABLE} on undrifted traffic: {high}"

    drifted_traffic = copy.copy(traffic)
    drifted_traffic["amount"] = traffic["amount"] * 10.0
    drifted = load_version(repo, ref)
    assert drifted.drift is not None
    score_in_requests(drifted, drifted_traffic)
    after = psi_of(drifted.drift)
    record_property("psi_score_stable", psi["__score__"][1])
    record_property("psi_score_drifted", after["__score__"])
    print(f"__score__ PSI: {psi['__score__'][1]:.4f} undrifted, {after['__score__']:.4f} drifted")
    assert after["amount"] is not None and after["amount"] > ALERT, after
    inputs = [n for n in after if n != "__score__"]
    moved = {n: after[n] for n in inputs if n != "amount" and not after[n] < STABLE}
    assert not moved, moved
    # Untouched inputs are counted exactly as in the undrifted run.
    before_counts = split_counts(stable.drift, stable.drift.counts())
    after_counts = split_counts(drifted.drift, drifted.drift.counts())
    for n in inputs:
        if n != "amount":
            np.testing.assert_array_equal(after_counts[n], before_counts[n], err_msg=n)

    # Alerts: one event for amount, not one per request, and none on a re-check.
    table = table_of(drifted)
    alerts = DriftAlerts(lambda: table_view(table), threshold=ALERT)
    score_expect = after["__score__"] > ALERT
    with caplog.at_level(logging.INFO, logger="riskserve.monitoring.metrics"):
        raised = alerts.check()
        inputs_raised = [r for r in raised if r[2] != "__score__"]
        assert [(m, v, f) for m, v, f, _ in inputs_raised] == [("fraud", ref.version, "amount")]
        assert inputs_raised[0][3] == pytest.approx(psi_of(drifted.drift, "sliding")["amount"])
        assert len(raised) == 1 + score_expect
        score_in_requests(drifted, take(drifted_traffic, slice(0, 1_000)))
        assert alerts.check() == []
        assert alerts.check() == []
    events = [r for r in caplog.records if r.getMessage() == "drift alert raised"]
    amount_events = [r for r in events if getattr(r, "feature", None) == "amount"]
    assert len(amount_events) == 1, events
    assert len(events) == 1 + score_expect
    ev = amount_events[0]
    assert ev.levelno == logging.WARNING
    assert (ev.model, ev.version, ev.threshold) == ("fraud", ref.version, ALERT)  # type: ignore[attr-defined]
    assert ev.psi > ALERT and ev.observations == rows  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage() == "drift alert cleared"]


# --------------------------------------------------------------------------------------
# Minimum count, window, threads
# --------------------------------------------------------------------------------------


def test_psi_needs_the_minimum_count(fitted_spec: str) -> None:
    mon = DriftMonitor(fitted_spec)
    fields = mon.fields
    mins = [mon.min_count(i) for i in range(len(fields))]
    assert mins == [max(200, 20 * len(labels)) for _n, labels, _s in fields]
    with pytest.raises(ValueError, match="no field"):
        mon.min_count(len(fields))

    cols = columns_of(generate(max(mins) + 10, 5), input_names())
    scores = np.random.default_rng(2).random(max(mins) + 10)
    seen = 0
    # Walk the row count across every distinct threshold: None just below, a
    # value from exactly the threshold on.
    for target in sorted({m - 1 for m in mins} | set(mins) | {max(mins) + 10}):
        mon.observe(take(cols, slice(seen, target)), scores[seen:target])
        seen = target
        for (name, n, value), m in zip(mon.psi(), mins, strict=True):
            assert n == seen
            assert (value is None) == (seen < m), (name, seen, m, value)
    # Inputs observed without scores: the score alone stays below its minimum.
    mon2 = DriftMonitor(fitted_spec)
    mon2.observe(cols)
    mon2.observe_scores(scores[: mins[-1] - 1])
    assert psi_of(mon2)["__score__"] is None
    assert psi_of(mon2)["amount"] is not None
    mon2.observe_scores(scores[:1])
    assert psi_of(mon2)["__score__"] is not None


def test_window_expiry_with_injected_clock(fitted_spec: str) -> None:
    mon = DriftMonitor(fitted_spec, slots=3, slot_seconds=10)  # a 30 s window
    cols = columns_of(generate(600, 8), input_names())
    scores = np.linspace(0.0, 1.0, 600)
    a, b, c = (take(cols, slice(i * 200, (i + 1) * 200)) for i in range(3))

    def rows(window: str, now: int) -> int:
        return int(split_counts(mon, mon.counts(window, now))["amount"].sum())

    mon.observe(a, scores[:200], now=1_000)
    mon.observe(b, now=1_015)
    mon.observe_scores(scores[200:400], now=1_015)
    mon.observe(c, scores[400:], now=1_029)
    assert [rows("sliding", t) for t in (1_009, 1_029, 1_030, 1_040, 1_050)] == [
        200, 600, 400, 200, 0,
    ]  # fmt: skip
    assert rows("cumulative", 10**9) == 600
    full = mon.counts("cumulative")
    assert (mon.counts("sliding", now=1_029) == full).all()
    np.testing.assert_array_equal(
        mon.counts("sliding", now=1_040), counts_of_batch(fitted_spec, c, scores[400:])
    )
    expired = mon.psi("sliding", now=1_050)
    assert all(n == 0 and value is None for _name, n, value in expired)
    assert {n for _name, n, _value in mon.psi("cumulative")} == {600}

    # The clock goes backwards: counted cumulatively, the window is not corrupted.
    mon.observe(a, scores[:200], now=990)
    assert rows("cumulative", 0) == 800
    assert rows("sliding", 1_029) == 600
    assert rows("sliding", 1_040) == 200
    # A new sub-window much later holds only the new batch.
    mon.observe(b, scores[200:400], now=5_000)
    np.testing.assert_array_equal(
        mon.counts("sliding", now=5_000), counts_of_batch(fitted_spec, b, scores[200:400])
    )
    assert rows("cumulative", 0) == 1_000
    with pytest.raises(ValueError, match="window"):
        mon.counts("hourly")


def counts_of_batch(spec: str, columns: Columns, scores: np.ndarray) -> np.ndarray:
    """The counts a fresh monitor gives for one batch."""
    mon = DriftMonitor(spec)
    mon.observe(columns, scores)
    return mon.counts()


def test_eight_python_threads_lose_no_count(fitted_spec: str) -> None:
    cols = columns_of(generate(4_000, 6), input_names())
    scores = np.random.default_rng(3).random(4_000)
    batches = [(take(cols, slice(i, i + 250)), scores[i : i + 250]) for i in range(0, 4_000, 250)]
    threads, rounds = 8, 12
    now = 1_700_000_000

    mon = DriftMonitor(fitted_spec)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                c, s = batches[(t + r) % len(batches)]
                if r % 3 == 0:  # both entry points
                    mon.observe(c, now=now + r)
                    mon.observe_scores(s, now=now + r)
                else:
                    mon.observe(c, s, now=now + r)
        except BaseException as e:  # surfaced below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors

    single = DriftMonitor(fitted_spec)
    for t in range(threads):
        for r in range(rounds):
            c, s = batches[(t + r) % len(batches)]
            single.observe(c, s, now=now)
    want = single.counts()
    np.testing.assert_array_equal(mon.counts("cumulative"), want)
    np.testing.assert_array_equal(mon.counts("sliding", now=now + rounds), want)
    totals = {n for _name, n, _v in mon.psi()}
    assert totals == {threads * rounds * 250}


# --------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------


def test_prometheus_collector_exports_every_bin(
    trained: tuple[ModelRepository, VersionRef], traffic: Columns
) -> None:
    repo, ref = trained
    model = load_version(repo, ref)
    assert model.drift is not None
    score_in_requests(model, take(traffic, slice(0, 2_000)), batch=500)
    table = table_of(model)
    registry = CollectorRegistry()
    registry.register(ServingCollector(lambda: table_view(table)))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    version = str(ref.version)
    bins: dict[tuple[str, str], float] = {}
    for s in families["riskserve_drift_bin_observations"].samples:
        if s.name == "riskserve_drift_bin_observations_total":
            assert (s.labels["model"], s.labels["version"]) == ("fraud", version)
            bins[(s.labels["feature"], s.labels["bin"])] = s.value
    ratios: dict[tuple[str, str], float] = {
        (s.labels["feature"], s.labels["bin"]): s.value
        for s in families["riskserve_drift_reference_ratio"].samples
    }
    counts = split_counts(model.drift, model.drift.counts())
    expected_keys = []
    for name, labels, shares in model.drift.fields:
        for label, count, share in zip(labels, counts[name], shares, strict=True):
            expected_keys.append((name, label))
            assert bins[(name, label)] == float(count), (name, label)
            assert ratios[(name, label)] == pytest.approx(share, rel=1e-15)
        total = math.fsum(ratios[(name, label)] for label in labels)
        assert total == pytest.approx(1.0, abs=1e-9), name
        assert sum(bins[(name, label)] for label in labels) == 2_000
    assert sorted(bins) == sorted(expected_keys)
    assert sorted(ratios) == sorted(expected_keys)
    assert 0.0 in bins.values()  # empty bins are exported, at 0
    psi = {
        (s.labels["feature"], s.labels["window"]): s.value
        for s in families["riskserve_drift_psi"].samples
    }
    assert psi[("amount", "cumulative")] == pytest.approx(psi_of(model.drift)["amount"])
