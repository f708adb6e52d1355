"""The request families in native atomics (riskserve._native.RequestStats):
exact counts from threads, Prometheus' inclusive `le`, a table file read by
another process (live or killed), damaged files refused with a reason, the
overflow slot, and an exposition with the families, labels and buckets that
prometheus_client objects gave before."""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from riskserve._native import RequestStats, StatsFileError
from riskserve.monitoring.fleet import FleetRequests, SnapshotWriter, requests_served
from riskserve.monitoring.metrics import (
    BATCH_BUCKETS,
    COUNT,
    LATENCY_BUCKETS,
    LATENCY_SUM_NS,
    ROWS_SUM,
    Metrics,
    RequestCollector,
    stats_file,
)

N_LAT = len(LATENCY_BUCKETS) + 1
LAT = 3  # first latency bucket cell
ROWS = LAT + N_LAT  # first rows bucket cell
FAMILIES = (
    "riskserve_requests",
    "riskserve_request_duration_seconds",
    "riskserve_inference_rows",
    "riskserve_request_rows",
)


def cells_of(stats: RequestStats, *key: str) -> list[int]:
    (cells,) = [c for *k, c in stats.snapshot() if tuple(k) == key]
    return cells


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------


def test_threads_count_exactly() -> None:
    stats = RequestStats()
    ok = stats.slot("fraud", "1", "control", "OK")
    err = stats.slot("fraud", "1", "control", "INTERNAL")
    per_thread = 100_000

    def work(k: int) -> None:
        observe, count = stats.observe_ok, stats.count
        for i in range(per_thread):
            observe(ok, 1_000_000 * (i % 7), 1 + i % 3)
            if i % 10 == k:
                count(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cells = cells_of(stats, "fraud", "1", "control", "OK")
    n = 4 * per_thread
    assert cells[COUNT] == n
    assert cells[LATENCY_SUM_NS] == 4 * sum(1_000_000 * (i % 7) for i in range(per_thread))
    assert cells[ROWS_SUM] == 4 * sum(1 + i % 3 for i in range(per_thread))
    assert sum(cells[LAT:ROWS]) == sum(cells[ROWS:]) == n
    # 0 ms goes to the first bucket, 1 ms to le=0.001 (index 3), ... 6 ms to le=0.0075
    assert cells[LAT + 0] == 4 * len(range(0, per_thread, 7))
    assert cells[LAT + LATENCY_BUCKETS.index(0.001)] == 4 * len(range(1, per_thread, 7))
    assert cells[LAT + LATENCY_BUCKETS.index(0.0075)] == 4 * len(range(6, per_thread, 7))
    assert cells_of(stats, "fraud", "1", "control", "INTERNAL")[COUNT] == 4 * per_thread // 10


def test_metrics_from_threads_count_exactly() -> None:
    m = Metrics(CollectorRegistry())

    def work(k: int) -> None:
        for i in range(20_000):
            m.observe_ok("fraud", str(1 + i % 2), f"v{k % 2}", 0.002, 4)
            m.observe_error("fraud", "1", "control", "UNAVAILABLE")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = {tuple(k): c for *k, c in m.stats.snapshot()}
    assert len(snap) == 5  # 2 versions x 2 variants, and the error
    assert sum(c[COUNT] for k, c in snap.items() if k[3] == "OK") == 80_000
    assert all(c[ROWS_SUM] == 4 * c[COUNT] for k, c in snap.items() if k[3] == "OK")
    assert snap[("fraud", "1", "control", "UNAVAILABLE")][COUNT] == 80_000
    assert requests_served(m.requests) == 160_000


def test_le_is_inclusive_at_every_bound() -> None:
    stats = RequestStats()
    for i, b in enumerate(stats.LATENCY_BOUNDS_NS):
        s = stats.slot("lat", str(i), "", "OK")
        for ns in (b - 1, b, b + 1):
            stats.observe_ok(s, ns, 1)
        cells = cells_of(stats, "lat", str(i), "", "OK")
        assert cells[LAT + i] == 2, (b, cells[LAT:ROWS])  # b - 1 and b: le is inclusive
        assert cells[LAT + i + 1] == 1  # b + 1: the next bucket (+Inf after the last)
    for i, b in enumerate(stats.ROWS_BOUNDS):
        s = stats.slot("rows", str(i), "", "OK")
        for rows in (b - 1, b, b + 1):
            stats.observe_ok(s, 1, rows)
        cells = cells_of(stats, "rows", str(i), "", "OK")
        want = [0] * (len(BATCH_BUCKETS) + 1)
        for rows in (b - 1, b, b + 1):
            want[
                next((j for j, x in enumerate(BATCH_BUCKETS) if rows <= x), len(BATCH_BUCKETS))
            ] += 1
        assert cells[ROWS:] == want, (b, cells[ROWS:])
    # a negative time (a clock step) counts as 0
    s = stats.slot("neg", "", "", "OK")
    stats.observe_ok(s, -5, 1)
    assert cells_of(stats, "neg", "", "", "OK")[LATENCY_SUM_NS] == 0


def test_buckets_match_prometheus_client_around_every_bound() -> None:
    """The same seconds and rows into our Metrics and into prometheus_client's own
    Histogram: the same bucket counts (values 1 us either side of each bound)."""
    m = Metrics(CollectorRegistry())
    ref = CollectorRegistry()
    dur = Histogram(
        "riskserve_request_duration_seconds", "", ["model"], buckets=LATENCY_BUCKETS, registry=ref
    )
    rr = Histogram("riskserve_request_rows", "", ["model"], buckets=BATCH_BUCKETS, registry=ref)
    rows_values = [r for b in BATCH_BUCKETS for r in (b - 1, b, b + 1)]
    for j, seconds in enumerate(s for b in LATENCY_BUCKETS for s in (b - 1e-6, b, b + 1e-6)):
        rows = rows_values[j % len(rows_values)]
        m.observe_ok("fraud", "1", "", seconds, rows)
        dur.labels("fraud").observe(seconds)
        rr.labels("fraud").observe(rows)
    for r in rows_values:  # every rows value at least once
        m.observe_ok("fraud", "1", "", 0.001, r)
        dur.labels("fraud").observe(0.001)
        rr.labels("fraud").observe(r)

    def buckets(registry: CollectorRegistry, family: str) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            if f.name == family
            for s in f.samples
            if s.name.endswith("_bucket")
        }

    for family in ("riskserve_request_duration_seconds", "riskserve_request_rows"):
        got, want = buckets(m.registry, family), buckets(ref, family)
        assert got == want, family
        assert (
            len(got) == (len(LATENCY_BUCKETS) if "duration" in family else len(BATCH_BUCKETS)) + 1
        )


def test_overflow_slot_takes_new_keys_once_full() -> None:
    stats = RequestStats(capacity=8)  # 5 regular keys, 2 per-code overflow slots, the catch-all
    slots = [stats.slot(f"m{i}", "1", "", "OK") for i in range(5)]
    assert slots == list(range(5))
    over = stats.slot("m5", "1", "", "OK")
    assert stats.slot("m6", "2", "canary", "OK") == over
    stats.observe_ok(over, 1_000, 2)
    stats.observe_ok(stats.slot("m7", "1", "", "OK"), 1_000, 3)
    stats.count(stats.slot("m8", "1", "", "INTERNAL"))
    stats.count(stats.slot("m9", "1", "", "UNAVAILABLE"))  # overflow slots full: catch-all
    keys = [tuple(k) for *k, _ in stats.snapshot()]
    assert keys[5:] == [
        ("__overflow__", "", "", "OK"),
        ("__overflow__", "", "", "INTERNAL"),
        ("__overflow__", "", "", ""),
    ]
    assert len(stats) == 8 == stats.capacity
    assert cells_of(stats, "__overflow__", "", "", "OK")[:3] == [2, 2_000, 5]
    assert stats.slot("m0", "1", "", "OK") == 0  # a known key keeps its slot
    # and it is exported like any other key
    text = generate_latest(_registry_of(stats)).decode()
    assert (
        'riskserve_requests_total{code="OK",model="__overflow__",variant="",version=""} 2.0' in text
    )
    with pytest.raises(IndexError):
        stats.count(8)
    with pytest.raises(ValueError, match="capacity"):
        RequestStats(capacity=1)


def _registry_of(*tables: RequestStats) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RequestCollector(lambda: [t.snapshot() for t in tables]))
    return registry


# --------------------------------------------------------------------------------------
# files and other processes
# --------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from riskserve._native import RequestStats
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "write":  # a worker that records, says so, and is killed
        t = RequestStats(path)
        ok = t.slot("fraud", "3", "canary", "OK")
        for i in range(1000):
            t.observe_ok(ok, 1_000 * i, 1 + i % 4)
        t.count(t.slot("fraud", "3", "canary", "INVALID_ARGUMENT"))
        print("ready", flush=True)
        sys.stdin.read()
    else:  # the metrics process reading a live worker's file
        print(json.dumps(RequestStats.read(path)))
    """
)


def test_another_process_reads_a_live_table(tmp_path: Path) -> None:
    path = tmp_path / "requests-1-a.stats"
    stats = RequestStats(str(path))
    assert stats.path == str(path)
    ok = stats.slot("fraud", "1", "control", "OK")
    for i in range(500):
        stats.observe_ok(ok, 10_000 * i, i % 9)
    stats.count(stats.slot("nosuch", "", "", "NOT_FOUND"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "read", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    got = [(*row[:4], row[4]) for row in json.loads(out.stdout)]
    assert got == [(*k, c) for *k, c in stats.snapshot()]
    assert RequestStats.read(str(path)) == stats.snapshot()
    # a second table at the same path is refused: a file is never shared
    with pytest.raises(FileExistsError):
        RequestStats(str(path))


def test_a_killed_process_leaves_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "requests-2-b.stats"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "write", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    rows = {tuple(k): c for *k, c in RequestStats.read(str(path))}
    ok = rows[("fraud", "3", "canary", "OK")]
    assert ok[COUNT] == 1000
    assert ok[LATENCY_SUM_NS] == 1_000 * sum(range(1000))
    assert ok[ROWS_SUM] == sum(1 + i % 4 for i in range(1000))
    assert sum(ok[LAT:ROWS]) == 1000
    assert rows[("fraud", "3", "canary", "INVALID_ARGUMENT")][COUNT] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left


def test_damaged_files_are_refused_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "requests-10-good.stats"
    stats = RequestStats(str(good), capacity=16)
    stats.observe_ok(stats.slot("fraud", "1", "", "OK"), 5, 5)
    whole = good.read_bytes()
    cases = {
        "empty": (b"", "truncated"),
        "header cut": (whole[:200], "truncated"),
        "slots cut": (whole[: len(whole) // 2], "truncated or damaged"),
        "garbage": (bytes(range(256)) * (len(whole) // 256 + 1), "magic"),
        "zeros": (bytes(len(whole)), "magic"),
    }
    for name, (data, reason) in cases.items():
        bad = tmp_path / f"requests-{name.replace(' ', '_')}.stats"
        bad.write_bytes(data)
        with pytest.raises(StatsFileError, match=reason):
            RequestStats.read(str(bad))
    with pytest.raises(FileNotFoundError):
        RequestStats.read(str(tmp_path / "gone.stats"))
    # the metrics process skips them, once warned per file, and reads the good one
    fleet = FleetRequests(tmp_path)
    with caplog.at_level(logging.WARNING):
        tables = fleet.tables()
        assert tables == [stats.snapshot()]
        warned = [r for r in caplog.records if "request stats file unreadable" in r.message]
        assert len(warned) == len(cases)
        caplog.clear()
        assert fleet.tables() == [stats.snapshot()]
        assert not [r for r in caplog.records if "unreadable" in r.message]  # throttled


def test_metrics_in_a_worker_write_a_file_the_fleet_sums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' Metrics (one through PROMETHEUS_MULTIPROC_DIR, as the
    supervisor sets it) and the metrics process's view of both: the sums."""
    a = Metrics(CollectorRegistry(), stats_dir=tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    b = Metrics(CollectorRegistry())
    files = sorted(tmp_path.glob("requests-*.stats"))
    assert len(files) == 2 and a.stats.path != b.stats.path
    assert {a.stats.path, b.stats.path} == {str(f) for f in files}
    assert stats_file(tmp_path) != stats_file(tmp_path)
    ref = _reference_metrics()
    for i, m in enumerate((a, b, a)):
        for call in CALLS[i::3]:
            _apply(m, call)
    for call in CALLS:
        _apply(ref, call)
    fleet = CollectorRegistry()
    fleet.register(RequestCollector(FleetRequests(tmp_path).tables))
    _assert_same(_families(fleet), _families(ref.registry))
    # the per-worker count the snapshots carry
    writer = SnapshotWriter(tmp_path, 0, lambda: [], a.requests)
    assert writer.snapshot()["requests"] == sum(c[COUNT] for *_, c in a.stats.snapshot())


# --------------------------------------------------------------------------------------
# the exposition, against prometheus_client's objects as they were
# --------------------------------------------------------------------------------------

#: observe_ok(model, version, variant, seconds, rows) or observe_error(..., code)
CALLS: list[tuple[Any, ...]] = [
    ("ok", "fraud", "1", "control", 0.0012, 3),
    ("ok", "fraud", "1", "control", 0.001, 1),
    ("ok", "fraud", "1", "canary", 0.02, 64),
    ("ok", "fraud", "2", "canary", 0.5, 300),
    ("ok", "other", "7", "", 3.0, 10_001),
    ("ok", "other", "7", "", 0.00025, 1),
    ("error", "fraud", "1", "control", "INVALID_ARGUMENT"),
    ("error", "fraud", "", "", "RESOURCE_EXHAUSTED"),
    ("error", "__unknown__", "", "", "NOT_FOUND"),
    ("ok", "fraud", "2", "control", 0.0075, 16),
]


class _Reference:
    """Metrics' four request families as prometheus_client objects, as before."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "riskserve_requests",
            "Inference requests by model, version that served, variant, and status code.",
            ["model", "version", "variant", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "riskserve_request_duration_seconds",
            "Time from a decoded request to its scores, seconds.",
            ["model", "version", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "riskserve_inference_rows",
            "Rows (transactions) scored.",
            ["model", "version"],
            registry=r,
        )
        self.request_rows = Histogram(
            "riskserve_request_rows",
            "Rows per inference request.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def observe_ok(self, model: str, version: str, variant: str, seconds: float, rows: int) -> None:
        self.requests.labels(model, version, variant, "OK").inc()
        self.duration.labels(model, version, variant).observe(seconds)
        self.rows.labels(model, version).inc(rows)
        self.request_rows.labels(model).observe(rows)

    def observe_error(self, model: str, version: str, variant: str, code: str) -> None:
        self.requests.labels(model, version, variant, code).inc()


def _reference_metrics() -> _Reference:
    return _Reference()


def _apply(m: Metrics | _Reference, call: tuple[Any, ...]) -> None:
    kind, *args = call
    fn: Callable[..., None] = m.observe_ok if kind == "ok" else m.observe_error
    fn(*args)


def _families(registry: CollectorRegistry) -> dict[str, Any]:
    """Name -> (type, help, {(sample name, labels): value}) of the request families,
    without prometheus_client's `_created` samples (multiprocess mode never had them)."""
    out = {}
    for f in text_string_to_metric_families(generate_latest(registry).decode()):
        if f.name in FAMILIES:
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for s in f.samples
                if not s.name.endswith("_created")
            }
            out[f.name] = (f.type, f.documentation, samples)
    return out


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same families, types, help texts, series and values (sums to 1e-9:
    integer nanoseconds against prometheus_client's float additions)."""
    assert set(got) == set(want) == set(FAMILIES)
    for name in FAMILIES:
        g_type, g_help, g_samples = got[name]
        w_type, w_help, w_samples = want[name]
        assert (g_type, g_help) == (w_type, w_help), name
        assert g_samples.keys() == w_samples.keys(), name
        for k, v in w_samples.items():
            assert math.isclose(g_samples[k], v, rel_tol=1e-9, abs_tol=1e-12), (name, k)


def test_exposition_has_the_families_labels_and_buckets_of_before() -> None:
    m = Metrics(CollectorRegistry())
    ref = _reference_metrics()
    for call in CALLS:
        _apply(m, call)
        _apply(ref, call)
    got, want = _families(m.registry), _families(ref.registry)
    _assert_same(got, want)
    # spot checks: summed over variants, and over versions and variants
    _, _, rows = got["riskserve_inference_rows"]
    assert rows[("riskserve_inference_rows_total", (("model", "fraud"), ("version", "1")))] == 68
    _, _, rr = got["riskserve_request_rows"]
    assert rr[("riskserve_request_rows_count", (("model", "fraud"),))] == 5
    assert rr[("riskserve_request_rows_sum", (("model", "fraud"),))] == 384
    # what a scrape of an idle server shows: the families, no series
    idle = _families(Metrics(CollectorRegistry()).registry)
    assert {n: s for n, (_, _, s) in idle.items()} == {name: {} for name in FAMILIES}


def test_ok_slot_is_the_slot_observe_ok_records_into() -> None:
    m = Metrics(CollectorRegistry())
    slot = m.ok_slot("fraud", "1", "control")
    assert m.ok_slot("fraud", "1", "control") == slot
    m.stats.observe_ok(slot, 2_000_000, 5)  # as a native hot path would
    m.observe_ok("fraud", "1", "control", 0.002, 5)
    cells = cells_of(m.stats, "fraud", "1", "control", "OK")
    assert cells[:3] == [2, 4_000_000, 10]
    assert cells[LAT + LATENCY_BUCKETS.index(0.002)] == 2
