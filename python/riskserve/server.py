"""Composition root: builds everything from Settings, serves, shuts down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, disable_created_metrics

import riskserve
from riskserve.config import Settings
from riskserve.dataplane import DataPlane
from riskserve.deployments import DeploymentService
from riskserve.deployments.canary import CanaryGuard
from riskserve.feedback.backends import open_store
from riskserve.feedback.exporter import OutcomesCollector
from riskserve.feedback.log import LogCounters, PredictionLog, load_hash_key, routing_key_hasher
from riskserve.feedback.records import LabelAck
from riskserve.feedback.service import (
    FeedbackService,
    UnavailableStore,
    count_by_result,
    outcome_settings,
)
from riskserve.feedback.store import FeedbackStore, StoreError
from riskserve.monitoring import DriftAlerts, Metrics, ServingCollector
from riskserve.monitoring.fleet import SNAPSHOT_SECONDS, SnapshotWriter
from riskserve.monitoring.metrics import serve_metrics
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2_grpc
from riskserve.registry import ModelRepository, VersionRef
from riskserve.registry.signing import TrustedKeys
from riskserve.routing import RoutingTable
from riskserve.runtime import LoadedModel, load_version, refusal
from riskserve.runtime.compiled import Compiler
from riskserve.runtime.runtimes import skip_lightgbm_extras
from riskserve.transport.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from riskserve.transport.admin import AdminServicer
from riskserve.transport.auth import AdminAuth, load_token
from riskserve.transport.codec import Bounds
from riskserve.transport.drain import QUIET_TICK, DrainingHealth
from riskserve.transport.errors import Registrar
from riskserve.transport.feedback import SERVICE_NAME as FEEDBACK_SERVICE_NAME
from riskserve.transport.feedback import FeedbackServicer
from riskserve.transport.inference import SERVICE_NAME, InferenceServicer
from riskserve.transport.principals import Principals
from riskserve.transport.tls import ReloadingCredentials, TlsFiles
from riskserve.worker import WorkerContext

log = logging.getLogger(__name__)

#: How often old predictions and expired pending labels are purged, seconds.
PURGE_SECONDS = 3600.0


class Server:
    """A running riskserve: the gRPC server, its data plane and health service."""

    def __init__(self, settings: Settings, worker: WorkerContext | None = None) -> None:
        self.settings = settings
        #: Set when this is one of `--workers N` processes (forked by the supervisor).
        self.worker = worker
        started = time.perf_counter()
        server = settings.server
        security = settings.security
        trusted = (
            TrustedKeys.load(Path(security.trusted_keys_file))
            if security.trusted_keys_file
            else None
        )
        repo = ModelRepository(server.models_dir, trusted)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.dataplane = DataPlane(
            settings.scoring,
            settings.batching,
            RoutingTable(MappingProxyType({})),
            self.metrics,
            settings.limits,
        )
        scoring, drift = settings.scoring, settings.drift

        def loader(ref: VersionRef) -> LoadedModel:
            return load_version(
                repo, ref, scoring.onnx_threads, drift.slots_or_off, drift.slot_seconds
            )

        self.deployments = DeploymentService(
            repo, loader, self.dataplane.swap_table, refusal=lambda ref: refusal(repo, ref)
        )
        table = self.deployments.restore()
        self.guard = CanaryGuard(
            settings.canary,
            self.deployments,
            lambda model, reason: self.metrics.rollbacks.labels(model, reason).inc(),
        )
        if settings.canary.enabled:
            self.dataplane.guard = self.guard
        self.views = self.dataplane.views
        self._open_feedback(settings)
        self.registry.register(
            ServingCollector(self.views, settings.drift.threshold, settings.drift.bins)
        )
        self.alerts = DriftAlerts(self.views, settings.drift.threshold)
        self.snapshots = (
            None
            if worker is None
            else SnapshotWriter(worker.metrics_dir, worker.index, self.views, self.metrics.requests)
        )
        self.metrics_port: int | None = None
        self._http: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        log.info(
            "models loaded",
            extra={
                "models": {n: d.live for n, d in table.deployments.items()},
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        opts = [
            ("grpc.max_receive_message_length", server.max_message_bytes),
            ("grpc.max_send_message_length", server.max_message_bytes),
            # Workers share the port (the supervisor checked it was free).
            ("grpc.so_reuseport", 1 if worker else 0),
        ]
        if server.max_pending_calls > 0:
            opts += [
                ("grpc.server.max_pending_requests", max(1, server.max_pending_calls // 2)),
                ("grpc.server.max_pending_requests_hard_limit", server.max_pending_calls),
            ]
        fb = settings.feedback
        principals = Principals(
            Path(security.principals_file) if security.principals_file else None,
            load_token(settings.admin.token, settings.admin.token_file),
            load_token(fb.token, fb.token_file, "feedback token"),
        )
        self.grpc = grpc.aio.server(options=opts)
        # status mapping, who may call the admin methods, and the hold that lets
        # stop() pick up every call sent (Quiesce)
        ours = Registrar(self.grpc, AdminAuth(principals))
        self.quiesce = ours.quiesce
        inference = InferenceServicer(
            self.dataplane,
            riskserve.__version__,
            self.deployments,
            settings.limits,
            rust_parser=server.rust_request_parser,
            peer_statistics=None if self.snapshots is None else self.snapshots.peer_statistics,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(inference, ours)
        admin_pb2_grpc.add_ModelAdminServicer_to_server(
            AdminServicer(self.deployments, self.metrics, settings.limits), ours
        )
        feedback_pb2_grpc.add_FeedbackServicer_to_server(
            FeedbackServicer(self.feedback, Bounds(settings.limits)), ours
        )
        self.health = DrainingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if security.reflection:
            names = (
                SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                FEEDBACK_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, self.grpc)
        assert pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == SERVICE_NAME
        address = f"{server.host}:{server.port}"
        self.tls: ReloadingCredentials | None = None
        if security.tls:
            ca = Path(security.tls_client_ca_file) if security.tls_client_ca_file else None
            files = TlsFiles(Path(security.tls_cert_file), Path(security.tls_key_file), ca)
            self.tls = ReloadingCredentials(files)  # TlsError: the server does not start
            self.port = self.grpc.add_secure_port(address, self.tls.credentials)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {server.host}:{server.port}")

    def _open_feedback(self, settings: Settings) -> None:
        """The feedback store, the prediction log and the label service. A store
        that cannot be opened is logged with its reason: scoring goes on, the
        log counts its rows as failed and the Feedback API answers UNAVAILABLE."""
        fb = settings.feedback
        models_dir = settings.server.models_dir
        self.store: FeedbackStore
        try:
            self.store = open_store(fb.dsn, models_dir)
        except StoreError as e:
            log.error("feedback store unavailable", extra={"error": e.message})
            self.store = UnavailableStore(e.message)
        m = self.metrics
        self.prediction_log: PredictionLog | None = None
        if fb.log:
            key_file = Path(fb.hash_key_file) if fb.hash_key_file else None
            key = load_hash_key(key_file or models_dir / ".feedback" / "hash.key")
            self.prediction_log = PredictionLog(
                self.store,
                routing_key_hasher(key),
                LogCounters(
                    written=m.log_rows.labels("written").inc,
                    dropped=m.log_rows.labels("dropped").inc,
                    failed=m.log_rows.labels("failed").inc,
                ),
                queue_rows=fb.queue_rows,
                batch_rows=fb.batch_rows,
                flush_seconds=fb.flush_seconds,
            )
            self.dataplane.prediction_log = self.prediction_log

        def control_of(model: str) -> int | None:
            dep = self.dataplane.table.deployments.get(model)
            return None if dep is None else dep.live

        def count(acks: Sequence[LabelAck]) -> None:
            for result, n in count_by_result(acks).items():
                if n:
                    m.labels_in.labels(result).inc(n)

        self.outcomes = OutcomesCollector(
            lambda: [(n, tuple(d.versions)) for n, d in self.dataplane.table.deployments.items()]
        )
        if self.worker is None:  # with workers, the metrics process exports them
            self.registry.register(self.outcomes)
        self.feedback = FeedbackService(
            self.store,
            outcome_settings(fb),
            control_of=control_of,
            count_results=count,
        )

    async def _outcomes_loop(self) -> None:
        while True:
            await self.feedback.run(self.outcomes.refresh, self.feedback.compute)
            await asyncio.sleep(self.settings.feedback.outcomes_seconds)

    async def _purge_loop(self) -> None:
        fb = self.settings.feedback
        while True:
            try:
                purged = await self.feedback.run(
                    self.feedback.purge, fb.retention_days * 86400, fb.pending_days * 86400
                )
                if purged.predictions or purged.labels or purged.expired:
                    log.info("feedback store purged", extra=dataclasses.asdict(purged))
            except Exception as e:
                log.warning("feedback purge failed", extra={"error": str(e)})
            await asyncio.sleep(PURGE_SECONDS)

    async def start(self) -> None:
        s = self.settings
        if self.worker is None and s.server.metrics_port >= 0:
            self._http = serve_metrics(
                s.server.metrics_port, s.server.metrics_host, self.registry, s.security
            )
            self.metrics_port = int(self._http.server_port)
        if self.snapshots is not None:
            self.snapshots.write()
            self._tasks.append(asyncio.create_task(self._snapshot_loop()))
        else:  # with workers, the metrics process checks the merged counts
            self._tasks.append(asyncio.create_task(self._drift_loop()))
        if s.canary.enabled:
            self._tasks.append(asyncio.create_task(self.guard.run()))
        if self.worker is None or self.worker.index == 0:  # one purger per process group
            self._tasks.append(asyncio.create_task(self._purge_loop()))
        if self.worker is None:
            self._tasks.append(asyncio.create_task(self._outcomes_loop()))
        if s.admin.state_poll_seconds > 0:
            poll = s.admin.state_poll_seconds
            self._tasks.append(asyncio.create_task(self.deployments.watch(poll)))
        if s.compile.lightgbm:
            compiler = Compiler(
                s.compile.cache_dir.expanduser(),
                lambda: [
                    m
                    for d in self.dataplane.table.deployments.values()
                    for m in d.versions.values()
                ],
            )
            self._tasks.append(asyncio.create_task(compiler.run()))
        await self.grpc.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        where = {"host": s.server.host, "port": self.port, "pid": os.getpid()}
        if self.worker is None:
            log.info("serving", extra={**where, "metrics_port": self.metrics_port})
        else:
            log.info("worker serving", extra={**where, "worker": self.worker.index})
            os.write(self.worker.ready_fd, b"ready\n")
            os.close(self.worker.ready_fd)

    async def _snapshot_loop(self) -> None:
        assert self.snapshots is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            try:
                await loop.run_in_executor(None, self.snapshots.write)
            except Exception:
                log.exception("worker snapshot not written")

    async def _drift_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.drift.check_seconds)
            try:
                # PSI over every bin is cheap, but keep even that off the loop.
                await loop.run_in_executor(None, self.alerts.check)
            except Exception:
                log.exception("drift check failed")

    async def stop(
        self, drain_seconds: float | None = None, hurry: asyncio.Event | None = None
    ) -> None:
        """Stops without failing a call that was sent before the stop, in order:

        1. health NOT_SERVING (grpc.health.v1, "" and every service) and ServerReady
           false, at once;
        2. keep serving normally for `drain_seconds` (default the setting; `hurry`
           cuts it short) while load balancers stop sending here;
        3. refuse new calls. gRPC core cancels (CANCELLED) every call it has
           received that no handler has picked up yet when the server shuts down
           (grpc/grpc#41785), and under load there are always some: grpc.aio picks
           calls up one at a time. So first hold the replies of unary calls until
           no new call has come in for a moment (_Quiesce.hold): a client waiting
           for its reply sends nothing more, and the calls already sent are all
           picked up. Then shut the gRPC server down: the listener closes and
           every connection gets GOAWAY, so a client sends its next call on a new
           connection (to another worker or replica; else it is refused, and
           knows the call was not sent). Then release the replies;
        4. let in-flight calls finish, up to grace_seconds, then stop the
           background tasks and the compute pools and write the last worker
           snapshot."""
        s = self.settings.server
        drain = s.drain_seconds if drain_seconds is None else drain_seconds
        pid = os.getpid()
        log.info(
            "draining", extra={"drain_seconds": drain, "grace_seconds": s.grace_seconds, "pid": pid}
        )
        self.dataplane.ready = False
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        if drain > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((hurry or asyncio.Event()).wait(), drain)
        started = time.perf_counter()
        held = await self.quiesce.hold()
        stopping = asyncio.create_task(self.grpc.stop(s.grace_seconds))
        # The task shuts core down in its first step; a tick more puts each GOAWAY
        # ahead of the held replies, so no client sends again on a closing connection.
        await asyncio.sleep(QUIET_TICK)
        self.quiesce.release()
        self.health.close_watches()
        log.info("refusing new calls", extra={"held": held, "grace_seconds": s.grace_seconds})
        await stopping
        took = time.perf_counter() - started
        if took >= s.grace_seconds:
            log.warning(
                "grace period over: calls still running were cancelled",
                extra={"grace_seconds": s.grace_seconds},
            )
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dataplane.close()
        # The store closes only once nothing uses it: the label service's pool (purge,
        # outcomes, label writes) and the log writer, which commits what is queued
        # (after the drain every reply's rows are).
        self.feedback.close()
        writer_done = True
        if self.prediction_log is not None:
            writer_done = self.prediction_log.close(timeout=max(1.0, s.grace_seconds))
        if writer_done:
            self.store.close()
        if self.snapshots is not None:
            self.snapshots.write()  # the last counts, after the drain
        if self._http is not None:
            self._http.shutdown()
        log.info("stopped", extra={"seconds": round(took, 3), "pid": pid})


async def serve(settings: Settings, worker: WorkerContext | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then stops (Server.stop). A second signal
    cuts the drain delay short; SIGUSR1 stops without it (the supervisor's rolling
    restart: the kernel, not a load balancer, moves new connections to the
    replacement). In-flight calls get grace_seconds either way."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set() or sig is signal.SIGUSR1:
            hurry.set()
        stop.set()
        log.info("signal", extra={"signal": sig.name})

    # Handlers first: a SIGTERM right after "serving" must still drain.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(sig, on_signal, sig)
    server = Server(settings, worker)
    await server.start()
    await stop.wait()
    await server.stop(0.0 if hurry.is_set() else None, hurry)


#: Imported by lightgbm only for its scikit-learn, pandas and Dask interfaces, which
#: a server never uses (parsing and predicting with a Booster do not). Importing
#: scikit-learn and SciPy was most of the time a start took, and a restart after a
#: crash is a start: the serving process keeps them out.
def run(settings: Settings, worker: WorkerContext | None = None) -> None:
    """The serving process: serves until stopped."""
    import uvloop

    skip_lightgbm_extras()
    uvloop.run(serve(settings, worker))
