"""`riskserve serve --workers N`: a supervisor, N worker processes and one
metrics process on one host.

The supervisor never creates a gRPC object or a thread of its own: it reserves
the port, points prometheus_client at a fresh multiprocess directory, forks the
workers (each then builds its own gRPC server bound with SO_REUSEPORT, so the
kernel spreads connections over them) and a metrics process that serves
/metrics for all of them, and waits. A child that dies is forked again (with
back-off; a crash loop stops the whole server). SIGTERM/SIGINT stop every
worker the way a single process stops (riskserve.server.Server.stop: NOT_SERVING,
the drain delay, GOAWAY, in-flight calls finish), then the metrics process.
SIGHUP is a rolling restart: each worker in turn is replaced by a new one, which
serves before the old one drains (`Supervisor.rolling_restart`).

Admin changes reach every worker through models/<name>/deployment.json: the
worker that takes the call changes it under a file lock, the others notice the
new revision within `RISKSERVE_STATE_POLL_SECONDS` and swap their routing table
atomically (riskserve.deployments).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riskserve.config import Settings
from riskserve.worker import WorkerContext

log = logging.getLogger(__name__)

#: Seconds a child may take from fork to serving.
START_TIMEOUT = 120.0
#: More than this many restarts within RESTART_WINDOW seconds: give up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


@dataclasses.dataclass
class _Child:
    kind: str  # "worker" or "metrics"
    index: int
    pid: int
    ready_r: int


def reserve_port(host: str, port: int) -> int:
    """Checks that host:port is free (or picks a free port for 0) with a plain
    bind, no SO_REUSEPORT, so a port another server holds is refused here
    rather than silently shared by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from e
        return int(s.getsockname()[1])


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (even by SIGKILL), so no
    worker is left holding the port (Linux prctl PR_SET_PDEATHSIG)."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed", extra={"errno": ctypes.get_errno()})
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child_main(parent: int, fn: Any, *args: Any) -> None:
    """Runs `fn` in a forked child and never returns into the supervisor's code."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's: a rolling restart
        _die_with_parent(parent)
        fn(*args)
        code = 0
    except BaseException:
        log.exception("child process failed", extra={"pid": os.getpid()})
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)


def _worker_main(settings: Settings, ctx: WorkerContext) -> None:
    from riskserve.server import run

    run(settings, ctx)


def _metrics_main(settings: Settings, directory: Path, ready_fd: int) -> None:
    from riskserve.monitoring.fleet import run_metrics_process

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def ready(port: int) -> None:
        os.write(ready_fd, f"{port}\n".encode())
        os.close(ready_fd)

    server = settings.server
    run_metrics_process(
        directory,
        settings.drift,
        settings.security,
        models_dir=server.models_dir,
        host=server.metrics_host,
        port=server.metrics_port,
        ready=ready,
        stopping=stop.wait,
        extra=lambda views: _outcomes(settings, views),
    )


def _outcomes(settings: Settings, views: Callable[[], list[Any]]) -> tuple[Any, Callable[[], None]]:
    """The fleet's outcomes per variant on the metrics process's /metrics: computed
    from the shared feedback store every RISKSERVE_OUTCOME_REFRESH_SECONDS."""
    from riskserve.feedback.backends import open_store
    from riskserve.feedback.exporter import OutcomesCollector
    from riskserve.feedback.outcomes import outcomes
    from riskserve.feedback.service import UnavailableStore, outcome_settings
    from riskserve.feedback.store import FeedbackStore, StoreError

    fb = settings.feedback
    store: FeedbackStore
    try:
        store = open_store(fb.dsn, settings.server.models_dir)
    except StoreError as e:
        log.error("feedback store unavailable", extra={"error": e.message})
        store = UnavailableStore(e.message)
    s = outcome_settings(fb)
    collector = OutcomesCollector(
        lambda: [(v.name, tuple(x.version for x in v.versions)) for v in views()]
    )
    last = [-math.inf]

    def compute(model: str) -> Any:
        now = time.time()
        rows = store.joined(model, now - s.window_seconds - s.maturity_seconds, now + 1.0)
        return outcomes(rows, now, s)

    def step() -> None:
        if time.monotonic() - last[0] >= fb.outcomes_seconds:
            last[0] = time.monotonic()
            collector.refresh(compute)

    return collector, step


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        if "prometheus_client" in sys.modules or "grpc" in sys.modules:
            # Multiprocess metrics are chosen when prometheus_client is imported,
            # and gRPC must not exist before fork.
            raise RuntimeError("the supervisor must start before prometheus_client and grpc load")
        self.settings = settings
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="riskserve-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.port = reserve_port(settings.server.host, settings.server.port)
        self.worker_settings = settings.replace(port=self.port, metrics_port=-1)
        self.children: dict[int, _Child] = {}
        self.metrics_port: int | None = None
        self.stopping = False
        #: Set by SIGHUP: replace every worker (rolling_restart).
        self.reloading = False
        self.restarts: list[float] = []

    def _fork(self, kind: str, index: int) -> _Child:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            for c in self.children.values():
                with contextlib.suppress(OSError):
                    os.close(c.ready_r)
            if kind == "worker":
                ctx = WorkerContext(index, self.metrics_dir, w)
                _child_main(parent, _worker_main, self.worker_settings, ctx)
            _child_main(parent, _metrics_main, self.settings, self.metrics_dir, w)
        os.close(w)
        child = _Child(kind, index, pid, r)
        self.children[pid] = child
        return child

    def _await_ready(self, child: _Child) -> str:
        """The child's ready line, or raises if it exits or takes too long."""
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{child.kind} {child.index} not ready in {START_TIMEOUT}s")
                readable, _, _ = select.select([child.ready_r], [], [], min(left, 1.0))
                if readable:
                    chunk = os.read(child.ready_r, 64)
                    if not chunk:
                        raise RuntimeError(
                            f"{child.kind} {child.index} (pid {child.pid}) exited before serving"
                        )
                    buf += chunk
        finally:
            os.close(child.ready_r)
            child.ready_r = -1
        return buf.decode().strip()

    def start(self) -> None:
        workers = [self._fork("worker", i) for i in range(self.settings.server.workers)]
        for w in workers:
            self._await_ready(w)
        if self.settings.server.metrics_port >= 0:
            self.metrics_port = int(self._await_ready(self._fork("metrics", 0)))
        log.info(
            "serving",
            extra={
                "host": self.settings.server.host,
                "port": self.port,
                "metrics_port": self.metrics_port,
                "pid": os.getpid(),
                "workers": [c.pid for c in self.children.values() if c.kind == "worker"],
            },
        )

    def _restart(self, child: _Child, status: int) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        log.error(
            f"{child.kind} process died; restarting",
            extra={
                "worker": child.index,
                "pid": child.pid,
                "exit": os.waitstatus_to_exitcode(status),
                "restarts_in_window": len(self.restarts),
            },
        )
        if len(self.restarts) > MAX_RESTARTS:
            raise RuntimeError(f"{len(self.restarts)} restarts within {RESTART_WINDOW:.0f}s")
        time.sleep(min(2.0, 0.2 * len(self.restarts)))
        new = self._fork(child.kind, child.index)
        ready = self._await_ready(new)
        if child.kind == "metrics":
            self.metrics_port = int(ready)

    def rolling_restart(self) -> None:
        """Replaces every worker, one at a time, without failing a request: fork the
        new worker (it loads the models folder as it is now) and wait until it
        serves, so the kernel already hands it new connections on the shared port;
        then stop the old one with SIGUSR1: as SIGTERM, minus the load-balancer
        delay (no balancer decides between workers: the kernel stops choosing the
        old one once its listener closes). It refuses new calls with GOAWAY, so
        its clients reconnect, to a live worker, and finishes what it has. A new
        worker that does not start ends the restart; the rest keep serving."""
        old = sorted(
            (c for c in self.children.values() if c.kind == "worker"), key=lambda c: c.index
        )
        started = time.monotonic()
        log.info("rolling restart", extra={"workers": [c.pid for c in old]})
        for child in old:
            if self.stopping:
                return
            new = self._fork("worker", child.index)
            try:
                self._await_ready(new)
            except RuntimeError as e:
                log.error(  # the reason: why the new worker did not start
                    "rolling restart abandoned", extra={"worker": child.index, "reason": str(e)}
                )
                self._stop_pids([new.pid], "worker", 0.0, signal.SIGKILL)
                return
            if self.stopping:  # SIGTERM meanwhile: shutdown() stops old and new alike
                return
            self._stop_pids(
                [child.pid], "worker", self.settings.server.grace_seconds + 10.0, signal.SIGUSR1
            )
            log.info(
                "worker replaced", extra={"worker": child.index, "old": child.pid, "pid": new.pid}
            )
        log.info(
            "rolling restart done",
            extra={
                "seconds": round(time.monotonic() - started, 3),
                "workers": [c.pid for c in self.children.values() if c.kind == "worker"],
            },
        )

    def supervise(self) -> int:
        def on_signal(signum: int, _frame: Any) -> None:
            if signum == signal.SIGHUP:
                self.reloading = True
            else:
                self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        code = 0
        try:
            self.start()
            while not self.stopping:
                if self.reloading:
                    self.reloading = False
                    self.rolling_restart()
                    continue
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid, status = 0, 0
                if pid == 0:
                    time.sleep(0.1)
                    continue
                child = self.children.pop(pid, None)
                if child is not None and not self.stopping:
                    self._restart(child, status)
        except Exception as e:
            log.error("supervisor stopping", extra={"reason": str(e)})
            code = 1
        self.shutdown()
        return code

    def _stop_pids(
        self, pids: list[int], kind: str, timeout: float, sig: int = signal.SIGTERM
    ) -> None:
        """Sends `sig` to each child in `pids`, waits up to `timeout` seconds for all
        of them, SIGKILLs the rest."""
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        for p in pids:
            while True:
                done, status = os.waitpid(p, os.WNOHANG)
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    if code != 0 and sig != signal.SIGKILL:
                        log.error(f"{kind} exited badly", extra={"pid": p, "exit": code})
                    break
                if time.monotonic() > deadline:
                    if sig != signal.SIGKILL:
                        log.error(f"{kind} did not stop; killing it", extra={"pid": p})
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                    break
                time.sleep(0.05)
            self.children.pop(p, None)

    def _stop(self, kind: str, timeout: float) -> None:
        self._stop_pids([p for p, c in self.children.items() if c.kind == kind], kind, timeout)

    def shutdown(self) -> None:
        """Workers first (they drain and write their last snapshots), then metrics."""
        server = self.settings.server
        self._stop("worker", server.drain_seconds + server.grace_seconds + 10.0)
        self._stop("metrics", 10.0)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("stopped")


def run(settings: Settings) -> int:
    return Supervisor(settings).supervise()
