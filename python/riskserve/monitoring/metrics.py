"""Prometheus metrics. The request families (riskserve_requests_total,
riskserve_request_duration_seconds, riskserve_inference_rows_total,
riskserve_request_rows) live in native atomics (`riskserve._native.RequestStats`)
and are exported at scrape time by RequestCollector: observing a request is one
native call, no lock, and with `serve --workers N` each worker's table is a file
in the multiprocess directory that the metrics process sums
(riskserve.monitoring.fleet). The other request-path metrics are plain
prometheus_client objects. Drift metrics come from a custom collector that reads
the Rust counters at scrape time, so the hot path does no Python work for them and
every bin series exists (at 0) from the moment a version goes live."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from riskserve._native import RequestStats
from riskserve.config import SecuritySettings
from riskserve.monitoring.statistics import VersionRecorder

log = logging.getLogger(__name__)

#: Dense between 0.5 ms and 50 ms, where a payment team's contract lives.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000)
WINDOWS = ("cumulative", "sliding")

# The cells of a RequestStats slot (RequestStats' docstring).
COUNT, LATENCY_SUM_NS, ROWS_SUM = 0, 1, 2
_LATENCY = 3
_ROWS = _LATENCY + len(LATENCY_BUCKETS) + 1
_LATENCY_LE = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
_ROWS_LE = [*(floatToGoString(b) for b in BATCH_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
# The native table's bounds are compiled in: they must be these.
_NATIVE_BOUNDS = (RequestStats.LATENCY_BOUNDS_NS, RequestStats.ROWS_BOUNDS)
_BOUNDS = ([round(b * 1e9) for b in LATENCY_BUCKETS], list(BATCH_BUCKETS))
if _NATIVE_BOUNDS != _BOUNDS:
    raise RuntimeError("riskserve._native.RequestStats bucket bounds differ from metrics.py's")

#: The code of the slots counting the native path's requests per (model, version).
NATIVE = "NATIVE"

#: The request-stats file of each worker in the multiprocess directory.
STATS_GLOB = "requests-*.stats"

#: (model, version, variant, code, cells): one slot of a RequestStats table.
StatsRow = tuple[str, str, str, str, list[int]]
StatsKey = tuple[str, str, str, str]


def serve_metrics(
    port: int, host: str, registry: CollectorRegistry, security: SecuritySettings
) -> Any:
    """Starts /metrics over HTTP, or HTTPS with RISKSERVE_METRICS_TLS (the gRPC
    port's certificate; with a client CA, scrapers must present a certificate it
    signed). Returns the HTTP server (its `server_port`, `shutdown()`)."""
    tls: dict[str, Any] = {}
    if security.metrics_tls:
        tls = {
            "certfile": security.tls_cert_file,
            "keyfile": security.tls_key_file,
            "client_cafile": security.tls_client_ca_file or None,
            "client_auth_required": bool(security.tls_client_ca_file),
        }
    httpd, _thread = start_http_server(port, host, registry=registry, **tls)
    return httpd


def multiprocess_dir() -> Path | None:
    """prometheus_client's multiprocess directory, PROMETHEUS_MULTIPROC_DIR (the
    supervisor sets it for its workers), or None in a single process. The request
    table follows the same switch prometheus_client reads, so the two never
    disagree about where a worker's metrics go."""
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(d) if d else None


def stats_file(directory: Path) -> Path:
    """A new request-stats file name for this process in `directory`: the pid and
    a random part, so a pid reused by a later worker never meets an earlier file."""
    return directory / f"requests-{os.getpid()}-{secrets.token_hex(6)}.stats"


def merge_stats(tables: Iterable[Iterable[StatsRow]]) -> dict[StatsKey, list[int]]:
    """The cells of every key summed over `tables` (several workers' files)."""
    out: dict[StatsKey, list[int]] = {}
    for table in tables:
        for model, version, variant, code, cells in table:
            key = (model, version, variant, code)
            prev = out.get(key)
            out[key] = (
                list(cells) if prev is None else [a + b for a, b in zip(prev, cells, strict=True)]
            )
    return out


class RequestCollector(Collector):
    """The request families, from RequestStats tables at scrape time, with the
    names, types, help texts, labels and buckets prometheus_client gave them:
    requests per (model, version, variant, code); for successes, the duration
    histogram per (model, version, variant), rows per (model, version) and the
    rows-per-request histogram per model (summed over versions and variants)."""

    def __init__(self, tables: Callable[[], Iterable[Iterable[StatsRow]]]) -> None:
        self._tables = tables

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily, HistogramMetricFamily
    ]:
        return (
            CounterMetricFamily(
                "riskserve_requests",
                "Inference requests by model, version that served, variant, and status code.",
                labels=["model", "version", "variant", "code"],
            ),
            HistogramMetricFamily(
                "riskserve_request_duration_seconds",
                "Time from a decoded request to its scores, seconds.",
                labels=["model", "version", "variant"],
            ),
            CounterMetricFamily(
                "riskserve_inference_rows",
                "Rows (transactions) scored.",
                labels=["model", "version"],
            ),
            HistogramMetricFamily(
                "riskserve_request_rows", "Rows per inference request.", labels=["model"]
            ),
        )

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, duration, rows, request_rows = self._families()
        native = CounterMetricFamily(
            "riskserve_native_requests",
            "Inference requests the native path scored (one native call each), by model "
            "and version; the others of riskserve_requests_total took the Python path.",
            labels=["model", "version"],
        )
        rows_of: dict[tuple[str, str], int] = {}
        per_model: dict[str, list[int]] = {}  # rows bucket counts, then the rows sum
        for (model, version, variant, code), cells in merge_stats(self._tables()).items():
            if code == NATIVE:
                native.add_metric([model, version], cells[COUNT])
                continue
            requests.add_metric([model, version, variant, code], cells[COUNT])
            if code != "OK":
                continue
            duration.add_metric(
                [model, version, variant],
                list(zip(_LATENCY_LE, itertools.accumulate(cells[_LATENCY:_ROWS]), strict=True)),
                cells[LATENCY_SUM_NS] / 1e9,
            )
            rows_of[(model, version)] = rows_of.get((model, version), 0) + cells[ROWS_SUM]
            mine = [*cells[_ROWS:], cells[ROWS_SUM]]
            prev = per_model.get(model)
            per_model[model] = (
                mine if prev is None else [a + b for a, b in zip(prev, mine, strict=True)]
            )
        for (model, version), n in rows_of.items():
            rows.add_metric([model, version], n)
        for model, counts in per_model.items():
            buckets = list(zip(_ROWS_LE, itertools.accumulate(counts[:-1]), strict=True))
            request_rows.add_metric([model], buckets, counts[-1])
        yield requests
        yield duration
        yield rows
        yield request_rows
        yield native


class Metrics:
    """Request-path metrics. One instance per process, built in the composition root.

    The request families live in `stats`, a RequestStats table: in this process's
    memory, or, in a worker of `serve --workers N` (`stats_dir`, else
    PROMETHEUS_MULTIPROC_DIR), a new file in that directory that the metrics
    process reads. A native hot path records into it without Python: `ok_slot`
    gives the slot of a (model, version, variant), `stats.observe_ok(slot, ns, rows)`
    (or the core table behind it) records one success."""

    def __init__(self, registry: CollectorRegistry, stats_dir: Path | None = None) -> None:
        self.registry = registry
        directory = stats_dir if stats_dir is not None else multiprocess_dir()
        #: riskserve_requests, request_duration_seconds, inference_rows, request_rows.
        self.stats = RequestStats(None if directory is None else str(stats_file(directory)))
        registry.register(RequestCollector(lambda: [self.stats.snapshot()]))
        self.batch_rows = Histogram(
            "riskserve_batch_rows",
            "Rows per model call after dynamic batching.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "riskserve_queue_seconds",
            "Time a request waited in its version's batch queue, seconds.",
            ["model", "version"],
            buckets=(0.0, *LATENCY_BUCKETS),
            registry=registry,
        )
        self.rollbacks = Counter(
            "riskserve_rollbacks",
            "Rollbacks by model and reason (manual, or the canary guard's breach).",
            ["model", "reason"],
            registry=registry,
        )
        self.shadow = Counter(
            "riskserve_shadow_requests",
            "Shadow scorings by outcome (ok, error, dropped when the shadow lags).",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.shadow_diff = Histogram(
            "riskserve_shadow_score_abs_diff",
            "Largest |shadow - primary| probability per shadowed request.",
            ["model", "version"],
            buckets=(1e-6, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=registry,
        )
        # The feedback loop: every series exists from the start at 0, so a PromQL
        # rate or sum over them never silently misses one.
        self.log_rows = Counter(
            "riskserve_prediction_log_rows",
            "Prediction-log rows by result: written (committed), dropped (the queue was "
            "full, or rows left at exit), failed (the store refused them).",
            ["result"],
            registry=registry,
        )
        self.labels_in = Counter(
            "riskserve_labels",
            "Labels received by result (accepted, duplicate, revised, pending, rejected).",
            ["result"],
            registry=registry,
        )
        for result in ("written", "dropped", "failed"):
            self.log_rows.labels(result)
        for result in ("accepted", "duplicate", "revised", "pending", "rejected"):
            self.labels_in.labels(result)
        self._ok: dict[tuple[str, str, str], int] = {}
        self._codes: dict[StatsKey, int] = {}
        self._batch: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._observe_ok = self.stats.observe_ok

    @property
    def requests(self) -> RequestStats:
        """This process's request counts, every code (SnapshotWriter reports their
        sum per worker): the `stats` table."""
        return self.stats

    def ok_slot(self, model: str, version: str, variant: str) -> int:
        """The `stats` slot of successes of (model, version, variant), for a hot
        path that records with `stats.observe_ok(slot, ns, rows)` (or natively)."""
        slot = self._ok.get((model, version, variant))
        if slot is None:
            slot = self._ok[(model, version, variant)] = self.stats.slot(
                model, version, variant, "OK"
            )
        return slot

    def observe_ok(self, model: str, version: str, variant: str, seconds: float, rows: int) -> None:
        slot = self._ok.get((model, version, variant))
        if slot is None:
            slot = self.ok_slot(model, version, variant)
        self._observe_ok(slot, int(seconds * 1e9 + 0.5), rows)

    def observe_native(
        self, model: str, version: str, variant: str, seconds: float, rows: int
    ) -> None:
        """A success of the native path: observe_ok, and one more of
        riskserve_native_requests_total."""
        slot = self._ok.get((model, version, variant))
        if slot is None:
            slot = self.ok_slot(model, version, variant)
        self._observe_ok(slot, int(seconds * 1e9 + 0.5), rows)
        key = (model, version, "", NATIVE)
        native = self._codes.get(key)
        if native is None:
            native = self._codes[key] = self.stats.slot(*key)
        self.stats.count(native)

    def observe_batch(self, model: str, version: str, rows: int, waits: Sequence[float]) -> None:
        children = self._batch.get((model, version))
        if children is None:
            children = self._batch[(model, version)] = (
                self.batch_rows.labels(model, version),
                self.queue_seconds.labels(model, version),
            )
        batch, q = children
        batch.observe(rows)
        for w in waits:
            q.observe(w)

    def observe_error(self, model: str, version: str, variant: str, code: str) -> None:
        key = (model, version, variant, code)
        slot = self._codes.get(key)
        if slot is None:
            slot = self._codes[key] = self.stats.slot(model, version, variant, code)
        self.stats.count(slot)

    def observe_shadow(self, model: str, version: str, outcome: str, diff: float | None) -> None:
        self.shadow.labels(model, version, outcome).inc()
        if diff is not None:
            self.shadow_diff.labels(model, version).observe(diff)


class DriftSource(Protocol):
    """Per-bin drift counts of one version: its live DriftMonitor, or the counts
    of several worker processes summed (riskserve.monitoring.fleet)."""

    @property
    def fields(self) -> list[tuple[str, list[str], list[float]]]: ...

    def counts(self, window: str = ..., now: int | None = ...) -> npt.NDArray[np.uint64]: ...

    def psi(
        self, window: str = ..., now: int | None = ...
    ) -> list[tuple[str, int, float | None]]: ...


@dataclasses.dataclass(frozen=True)
class VersionView:
    version: int
    sha256: str
    drift: DriftSource | None
    #: The version's ModelStatistics figures in this process (a worker's snapshot
    #: carries them to the others); None when it has served nothing here yet.
    statistics: VersionRecorder | None = None


@dataclasses.dataclass(frozen=True)
class ModelView:
    """What a scrape reports of one model: its revision and loaded versions."""

    name: str
    revision: int
    versions: tuple[VersionView, ...]


class ServingCollector(Collector):
    """Reads the served models and their drift counters at scrape time: model
    info, deployment revision, per-bin drift counts and PSI. Every bin series
    exists (at 0) from the moment a version goes live."""

    def __init__(
        self,
        views: Callable[[], list[ModelView]],
        threshold: float = 0.25,
        bins: bool = True,
    ) -> None:
        self._views = views
        self.threshold = threshold
        self.bins = bins

    def describe(self) -> list[Metric]:
        return []  # collected dynamically; no fixed description

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "riskserve_model_info",
            "1 for every loaded model version, with its model file's sha256.",
            labels=["model", "version", "sha256"],
        )
        revision = GaugeMetricFamily(
            "riskserve_deployment_revision",
            "Current deployment revision of each model.",
            labels=["model"],
        )
        psi = GaugeMetricFamily(
            "riskserve_drift_psi",
            "Population stability index of a raw input (or __score__) against training.",
            labels=["model", "version", "feature", "window"],
        )
        obs = GaugeMetricFamily(
            "riskserve_drift_observations",
            "Rows counted by the drift monitor.",
            labels=["model", "version", "window"],
        )
        alert = GaugeMetricFamily(
            "riskserve_drift_alert",
            "1 while the sliding-window PSI of a feature is above the threshold.",
            labels=["model", "version", "feature"],
        )
        threshold = GaugeMetricFamily(
            "riskserve_drift_threshold", "PSI above which the drift alert is raised."
        )
        threshold.add_metric([], self.threshold)
        bin_obs = CounterMetricFamily(
            "riskserve_drift_bin_observations",
            "Rows per reference bin since the version went live (sum them across replicas).",
            labels=["model", "version", "feature", "bin"],
        )
        ref = GaugeMetricFamily(
            "riskserve_drift_reference_ratio",
            "Share of training rows per reference bin.",
            labels=["model", "version", "feature", "bin"],
        )
        for mv in self._views():
            revision.add_metric([mv.name], float(mv.revision))
            for vv in mv.versions:
                version = str(vv.version)
                info.add_metric([mv.name, version, vv.sha256], 1.0)
                mon = vv.drift
                if mon is None:
                    continue
                for window in WINDOWS:
                    rows = mon.psi(window)
                    obs.add_metric([mv.name, version, window], float(rows[-1][1]))
                    for feature, _n, value in rows:
                        if value is not None:
                            psi.add_metric([mv.name, version, feature, window], value)
                        if window == "sliding":
                            high = value is not None and value > self.threshold
                            alert.add_metric([mv.name, version, feature], 1.0 if high else 0.0)
                if self.bins:
                    counts = mon.counts("cumulative")
                    off = 0
                    for feature, labels, shares in mon.fields:
                        for j, (label, share) in enumerate(zip(labels, shares, strict=True)):
                            bin_obs.add_metric(
                                [mv.name, version, feature, label], float(counts[off + j])
                            )
                            ref.add_metric([mv.name, version, feature, label], share)
                        off += len(labels)
        yield info
        yield revision
        yield psi
        yield obs
        yield alert
        yield threshold
        if self.bins:
            yield bin_obs
            yield ref


class DriftAlerts:
    """Logs one structured event when a feature's sliding PSI crosses the
    threshold, and one when it falls back, never one per request."""

    def __init__(self, views: Callable[[], list[ModelView]], threshold: float = 0.25) -> None:
        self._views = views
        self.threshold = threshold
        self.active: set[tuple[str, int, str]] = set()

    def check(self, now: int | None = None) -> list[tuple[str, int, str, float]]:
        raised = []
        seen: set[tuple[str, int, str]] = set()
        for mv in self._views():
            name = mv.name
            for vv in mv.versions:
                if vv.drift is None:
                    continue
                v = vv.version
                for feature, n, value in vv.drift.psi("sliding", now):
                    key = (name, v, feature)
                    seen.add(key)
                    high = value is not None and value > self.threshold
                    if high and key not in self.active:
                        self.active.add(key)
                        raised.append((name, v, feature, float(value or 0.0)))
                        log.warning(
                            "drift alert raised",
                            extra={
                                "model": name,
                                "version": v,
                                "feature": feature,
                                "psi": value,
                                "observations": n,
                                "threshold": self.threshold,
                            },
                        )
                    elif not high and key in self.active:
                        self.active.discard(key)
                        log.info(
                            "drift alert cleared",
                            extra={"model": name, "version": v, "feature": feature, "psi": value},
                        )
        self.active &= seen  # versions that were unloaded
        return raised
