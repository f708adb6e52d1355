"""Metrics across worker processes (`riskserve serve --workers N`).

The request families (riskserve_requests_total, request_duration_seconds,
inference_rows_total, request_rows) live in each worker's native RequestStats
table, a memory-mapped file `requests-<pid>-<random>.stats` in the supervisor's
fresh multiprocess directory; the metrics process reads every such file at scrape
time and sums them (FleetRequests), so the counts stay exact for a worker that
crashed or was replaced. A file it cannot read is skipped with a throttled
warning, never a failed scrape. The other request-path metrics use
prometheus_client's multiprocess mode: memory-mapped files in the same directory,
summed the same way.

Drift counters live in each worker's Rust DriftMonitor. Every worker writes a
snapshot of them (and of what it serves) to `worker-<pid>.json` in the same
directory every `SNAPSHOT_SECONDS` and when it stops; the metrics process sums
the per-bin counts of every snapshot and computes PSI from the sums with the
version's own reference (DriftMonitor.psi_of), so fleet PSI is the PSI of the
combined traffic, not an average of per-worker PSIs. A worker that died keeps
its last cumulative counts (counters never go backwards); its sliding-window
counts stop counting once its snapshot is stale.

The snapshots also carry each version's ModelStatistics figures
(riskserve.monitoring.statistics). A worker answering ModelStatistics adds the
figures of every other live worker's latest snapshot to its own
(`SnapshotWriter.peer_statistics`): the whole server's, at most SNAPSHOT_SECONDS
behind for the other workers. A worker that is gone (stale snapshot) takes its
figures with it, as a restarted Triton starts from zero: counting a dead worker's
figures would bring an unloaded version's old figures back when it is loaded
again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riskserve._native import DriftMonitor, RequestStats
from riskserve.config import DriftSettings, SecuritySettings
from riskserve.files import write_atomic
from riskserve.monitoring.metrics import (
    NATIVE,
    STATS_GLOB,
    ModelView,
    RequestCollector,
    StatsRow,
    VersionView,
)
from riskserve.monitoring.statistics import PeerStatistics, VersionStatistics
from riskserve.registry import ModelRepository

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "riskserve.worker/v1"
#: How often a worker writes its snapshot.
SNAPSHOT_SECONDS = 0.5
#: A snapshot older than this is a worker that is gone (or stuck).
STALE_SECONDS = 5.0
#: At most one warning per unreadable request-stats file in this many seconds.
WARN_SECONDS = 60.0


def read_snapshots(directory: Path, skip: Path | None = None) -> list[dict[str, Any]]:
    """Every worker snapshot in `directory` (but `skip`) that reads whole."""
    out = []
    for path in sorted(directory.glob("worker-*.json")):
        if path == skip:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # a file replaced under us: next time
            log.warning("worker snapshot unreadable", extra={"path": str(path), "error": str(e)})
            continue
        if isinstance(doc, dict) and doc.get("format") == SNAPSHOT_FORMAT:
            out.append(doc)
    return out


def fresh(doc: dict[str, Any], now: float) -> bool:
    """The snapshot of a worker that is still alive (it wrote within STALE_SECONDS)."""
    return now - float(doc["time"]) < STALE_SECONDS


def requests_served(requests: RequestStats | Counter) -> int:
    """Requests this process answered (every status): the counts of its
    RequestStats table (Metrics.stats), or of a riskserve_requests counter."""
    if isinstance(requests, RequestStats):
        return sum(cells[0] for *_key, code, cells in requests.snapshot() if code != NATIVE)
    total = 0.0
    for family in requests.collect():
        total += sum(s.value for s in family.samples if s.name == "riskserve_requests_total")
    return int(total)


class FleetRequests:
    """Metrics-process side of the request families: every worker's RequestStats
    file in `directory`, read whole at each scrape (a dead worker's file still
    counts). A file that cannot be read (torn, truncated, gone meanwhile) is
    skipped with at most one warning per file every WARN_SECONDS."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._warned: dict[Path, float] = {}

    def tables(self) -> list[list[StatsRow]]:
        out = []
        for path in sorted(self.directory.glob(STATS_GLOB)):
            try:
                out.append(RequestStats.read(str(path)))
            except (OSError, ValueError) as e:
                now = time.monotonic()
                if now - self._warned.get(path, -math.inf) >= WARN_SECONDS:
                    self._warned[path] = now
                    log.warning(
                        "request stats file unreadable; skipped",
                        extra={"path": str(path), "error": str(e)},
                    )
        return out


class SnapshotWriter:
    """Worker side: writes what this process serves and its drift counts."""

    def __init__(
        self,
        directory: Path,
        worker: int,
        views: Callable[[], list[ModelView]],
        requests: RequestStats | Counter,
    ) -> None:
        self.path = directory / f"worker-{os.getpid()}.json"
        self.worker = worker
        self._views = views
        self._requests = requests
        self.started = time.time()

    def snapshot(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for mv in self._views():
            versions: dict[str, Any] = {}
            for vv in mv.versions:
                drift = None
                if vv.drift is not None:
                    drift = {
                        "cumulative": vv.drift.counts("cumulative").tolist(),
                        "sliding": vv.drift.counts("sliding").tolist(),
                    }
                stats = None if vv.statistics is None else vv.statistics.snapshot().to_json()
                versions[str(vv.version)] = {
                    "sha256": vv.sha256,
                    "drift": drift,
                    "statistics": stats,
                }
            models[mv.name] = {"revision": mv.revision, "versions": versions}
        return {
            "format": SNAPSHOT_FORMAT,
            "pid": os.getpid(),
            "worker": self.worker,
            "started": self.started,
            "time": time.time(),
            "requests": requests_served(self._requests),
            "models": models,
        }

    def write(self) -> None:
        write_atomic(self.path, json.dumps(self.snapshot(), separators=(",", ":")))

    def peer_statistics(self) -> PeerStatistics:
        """The ModelStatistics figures of every other live worker, summed per
        (model, version, model sha256). Reads files: call it off the event loop."""
        now = time.time()
        out: dict[tuple[str, int, str], VersionStatistics] = {}
        for doc in read_snapshots(self.path.parent, skip=self.path):
            if not fresh(doc, now):
                continue
            for name, m in doc["models"].items():
                for v, vd in m["versions"].items():
                    if vd.get("statistics") is None:
                        continue
                    try:
                        stats = VersionStatistics.from_json(vd["statistics"])
                    except (KeyError, TypeError, ValueError) as e:
                        log.warning(
                            "worker statistics unreadable",
                            extra={"pid": doc.get("pid"), "model": name, "error": repr(e)},
                        )
                        continue
                    key = (name, int(v), str(vd["sha256"]))
                    prev = out.get(key)
                    out[key] = stats if prev is None else prev + stats
        return out


@dataclasses.dataclass(frozen=True)
class MergedDrift:
    """Drift counts summed over workers, with PSI from the version's reference."""

    monitor: DriftMonitor
    cumulative: npt.NDArray[np.uint64]
    sliding: npt.NDArray[np.uint64]

    @property
    def fields(self) -> list[tuple[str, list[str], list[float]]]:
        return self.monitor.fields

    def counts(self, window: str = "cumulative", now: int | None = None) -> npt.NDArray[np.uint64]:
        return self.cumulative if window == "cumulative" else self.sliding

    def psi(
        self, window: str = "cumulative", now: int | None = None
    ) -> list[tuple[str, int, float | None]]:
        return self.monitor.psi_of(self.counts(window))


class Fleet:
    """Metrics-process side: reads every worker's snapshot and merges them."""

    def __init__(self, directory: Path, repo: ModelRepository) -> None:
        self.directory = directory
        self.repo = repo
        self._monitors: dict[tuple[str, int, str], DriftMonitor | None] = {}
        self._cache: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's latest snapshot (re-read at most every 0.1 s)."""
        now = time.monotonic()
        if now - self._cache[0] < 0.1:
            return self._cache[1]
        out = read_snapshots(self.directory)
        self._cache = (now, out)
        return out

    @staticmethod
    def fresh(doc: dict[str, Any], now: float) -> bool:
        return fresh(doc, now)

    def _monitor(self, name: str, version: int, sha256: str) -> DriftMonitor | None:
        key = (name, version, sha256)
        if key not in self._monitors:
            mon = None
            try:
                spec = (self.repo.version(name, version).path / "features.json").read_text()
                if json.loads(spec).get("reference") is not None:
                    mon = DriftMonitor(spec, 1, 1)
            except Exception as e:  # the version is unreadable here: no drift read-out
                log.error(
                    "drift reference unreadable",
                    extra={"model": name, "version": version, "error": repr(e)},
                )
            self._monitors[key] = mon
        return self._monitors[key]

    def views(self) -> list[ModelView]:
        now = time.time()
        docs = self.snapshots()
        live = [d for d in docs if self.fresh(d, now)]
        revisions: dict[str, int] = {}
        served: dict[str, set[tuple[int, str]]] = {}
        for d in live:
            for name, m in d["models"].items():
                revisions[name] = max(revisions.get(name, 0), int(m["revision"]))
                for v, vd in m["versions"].items():
                    served.setdefault(name, set()).add((int(v), str(vd["sha256"])))
        out = []
        for name in sorted(served):
            versions = []
            for v, sha in sorted(served[name]):
                versions.append(VersionView(v, sha, self._merged(docs, now, name, v, sha)))
            out.append(ModelView(name, revisions[name], tuple(versions)))
        return out

    def _merged(
        self, docs: list[dict[str, Any]], now: float, name: str, version: int, sha256: str
    ) -> MergedDrift | None:
        mon = self._monitor(name, version, sha256)
        if mon is None:
            return None
        n = len(mon.counts())
        cumulative = np.zeros(n, dtype=np.uint64)
        sliding = np.zeros(n, dtype=np.uint64)
        for d in docs:
            vd = d["models"].get(name, {}).get("versions", {}).get(str(version))
            if vd is None or vd["sha256"] != sha256 or vd["drift"] is None:
                continue
            cum = np.asarray(vd["drift"]["cumulative"], dtype=np.uint64)
            if cum.shape != (n,):
                continue  # not this reference's layout
            cumulative += cum
            if self.fresh(d, now):
                sliding += np.asarray(vd["drift"]["sliding"], dtype=np.uint64)
        return MergedDrift(mon, cumulative, sliding)


class WorkerCollector(Collector):
    """Per-worker read-outs: is it up, how many requests it answered, which
    deployment revision it serves (to see that an admin change reached all)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "riskserve_worker_up", "1 while a worker's snapshot is fresh.", labels=["worker"]
        )
        requests = CounterMetricFamily(
            "riskserve_worker_requests",
            "Inference requests answered by each worker (any status).",
            labels=["worker"],
        )
        revision = GaugeMetricFamily(
            "riskserve_worker_deployment_revision",
            "Deployment revision each live worker serves.",
            labels=["model", "worker"],
        )
        now = time.time()
        ups: dict[str, float] = {}
        totals: dict[str, float] = {}
        for d in self._fleet.snapshots():
            w = str(d["worker"])
            fresh = self._fleet.fresh(d, now)
            ups[w] = max(ups.get(w, 0.0), 1.0 if fresh else 0.0)
            totals[w] = totals.get(w, 0.0) + float(d["requests"])
            if fresh:
                for name, m in d["models"].items():
                    revision.add_metric([name, w], float(m["revision"]))
        for w in sorted(ups):
            up.add_metric([w], ups[w])
            requests.add_metric([w], totals[w])
        yield up
        yield requests
        yield revision


def run_metrics_process(
    directory: Path,
    drift: DriftSettings,
    security: SecuritySettings,
    *,
    models_dir: Path,
    host: str,
    port: int,
    ready: Callable[[int], None],
    stopping: Callable[[float], bool],
    extra: Callable[[Callable[[], list[ModelView]]], tuple[Collector, Callable[[], None]]]
    | None = None,
) -> None:
    """The metrics process: serves /metrics on host:port for the whole fleet
    (the workers' files in `directory`, the versions' references in
    `models_dir`) and logs drift alerts on the merged counts. `ready(port)`
    once listening; runs until `stopping(timeout)` returns True. `extra(views)`
    gives one more collector and a step run every check (the feedback loop's
    outcomes: the layer above builds them)."""
    from prometheus_client import multiprocess

    from riskserve.monitoring.metrics import DriftAlerts, ServingCollector, serve_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(RequestCollector(FleetRequests(directory).tables))
    fleet = Fleet(directory, ModelRepository(models_dir))
    registry.register(ServingCollector(fleet.views, drift.threshold, drift.bins))
    registry.register(WorkerCollector(fleet))
    step: Callable[[], None] | None = None
    if extra is not None:
        collector, step = extra(fleet.views)
        registry.register(collector)
    httpd = serve_metrics(port, host, registry, security)
    ready(int(httpd.server_port))
    alerts = DriftAlerts(fleet.views, drift.threshold)
    while not stopping(drift.check_seconds):
        try:
            alerts.check()
        except Exception:
            log.exception("drift check failed")
        if step is not None:
            try:
                step()
            except Exception:
                log.exception("metrics step failed")
    httpd.shutdown()


__all__ = [
    "Fleet",
    "FleetRequests",
    "MergedDrift",
    "SnapshotWriter",
    "WorkerCollector",
    "fresh",
    "read_snapshots",
    "requests_served",
    "run_metrics_process",
]
