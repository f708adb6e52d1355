"""What a forked worker of `riskserve serve --workers N` knows of its place in the
fleet. Its own module, importing nothing heavy, so that the supervisor (which must
not load gRPC or prometheus_client before it forks) and the server both use it
without importing each other."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """What a forked worker needs beyond Settings."""

    #: The worker's number, 0..N-1 (kept across restarts).
    index: int
    #: prometheus_client's multiprocess directory (fresh for each run of the supervisor),
    #: also holding the worker snapshots and request-stats files (monitoring.fleet).
    metrics_dir: Path
    #: Pipe the worker writes "ready" to once it serves, then closes.
    ready_fd: int
