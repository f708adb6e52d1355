"""Stopping and restarting without failing a request.

A stop (riskserve.server.Server.stop) goes: health NOT_SERVING at once, keep
serving for RISKSERVE_DRAIN_SECONDS, refuse new calls and connections (GOAWAY),
finish what is in flight, exit 0. Checked here over real sockets, with client
threads that each hold their own channel (their own TCP connection):

* during the drain health says NOT_SERVING while inference answers, on old and
  new connections; after it the port refuses connections while an in-flight
  stream on a draining connection still gets answers; exit 0, no traceback;
* every call in flight at SIGTERM completes OK (16 single-row clients and a
  2,000-row one, with and without a drain delay); no call is CANCELLED;
* SIGHUP to `--workers 2` replaces each worker in turn under load, with no
  failed call; when a new worker cannot start, the old ones keep serving;
* a single process killed with SIGKILL mid-load and started again on the same
  folder and port serves the same deployment (revision, split, salt) within 3 s.

The clients send each call with a 20 s deadline (no retries). Refused calls must
be refusals a client can trust: UNAVAILABLE "failed to connect" (nothing was
sent). The rolling-restart clients run both ways: wait_for_ready=True, as payment
clients with keepalive do (a call made while the channel reconnects after GOAWAY
waits for the new connection instead of failing fast), and fail-fast, which
shows that nothing there depends on waiting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_deployments import (  # the deployment tests' fixtures and helpers
    GUARD_IDLE,
    MODEL,
    Admin,
    Traffic,
    base_models,
    input_columns,
    models_copy,
    servers,
    settings_env,
    traffic,
    train_data,
    wait_for,
    weights_of,
    workdir,
)

from riskserve.client import build_request
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.inference import grpc_service_pb2_grpc as igrpc
from riskserve.transport.inference import SERVICE_NAME

pytestmark = pytest.mark.timeout(240)

__all__ = ["base_models", "models_copy", "servers", "traffic", "train_data", "workdir"]

RPC_TIMEOUT = 20.0
BIG_ROWS = 2_000
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    client: int
    rows: int
    #: time.monotonic() when the call was made and when it ended.
    t0: float
    t1: float
    code: str
    details: str
    revision: int | None


def channel(target: str) -> grpc.Channel:
    """A channel of its own: its own connection (no subchannel sharing)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def is_refusal(c: Call) -> bool:
    """UNAVAILABLE because the client could not connect: the call never left it."""
    return c.code == "UNAVAILABLE" and "failed to connect" in c.details.lower()


class Load:
    """Client threads, each on its own channel, each sending its next call as soon as
    the last one ended (1 row; client 0 sends BIG_ROWS rows when `big`), until
    stop(), or, with `until_refused`, until one of its calls is refused."""

    def __init__(
        self,
        target: str,
        traffic: Traffic,
        clients: int,
        *,
        big: bool = False,
        wait_for_ready: bool = False,
        until_refused: bool = False,
    ) -> None:
        self.target = target
        self.traffic = traffic
        self.wait_for_ready = wait_for_ready
        self.until_refused = until_refused
        self.big = big_request(traffic) if big else None
        self.calls: list[Call] = []
        #: Set whenever client 0 makes a big call.
        self.big_started = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(RPC_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._threads), "a client hung"

    def _client(self, c: int) -> None:
        ch = channel(self.target)
        stub = igrpc.GRPCInferenceServiceStub(ch)
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                if self.big is not None and c == 0:
                    req, rows = self.big, BIG_ROWS
                    self.big_started.set()
                else:
                    req, rows = self.traffic.request(c * 1000 + n, f"c{c}-{n}"), 1
                t0 = time.monotonic()
                code, details, revision = "OK", "", None
                try:
                    r = stub.ModelInfer(
                        req, timeout=RPC_TIMEOUT, wait_for_ready=self.wait_for_ready
                    )
                    revision = int(r.parameters["deployment_revision"].string_param)
                    assert len(r.raw_output_contents[0]) == 4 * rows
                except grpc.RpcError as e:
                    code, details = e.code().name, e.details() or ""
                call = Call(c, rows, t0, time.monotonic(), code, details, revision)
                with self._lock:
                    self.calls.append(call)
                if self.until_refused and is_refusal(call):
                    return
        finally:
            ch.close()

    def finished(self) -> bool:
        """Every client has stopped (with until_refused: each was refused)."""
        return not any(t.is_alive() for t in self._threads)

    def in_flight_at(self, t: float) -> list[Call]:
        return [c for c in self.calls if c.t0 < t < c.t1]

    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK"]


def big_request(traffic: Traffic) -> ipb.ModelInferRequest:
    from riskserve.training.datagen import generate

    spec = json.loads(FRAUD_SPEC.read_text())
    dts = {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}
    return build_request(MODEL, input_columns(generate(BIG_ROWS, 2024)), dts)


def health_of(ch: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    return int(resp.status)


def refused(port: int) -> bool:
    """A new TCP connection to the port is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def event_times(srv: ServerHandle, name: str) -> list[float]:
    import datetime as dt

    return [dt.datetime.fromisoformat(e["ts"]).timestamp() for e in srv.events(name)]


def summary(calls: list[Call]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in calls:
        out[c.code] = out.get(c.code, 0) + 1
    return out


# --------------------------------------------------------------------------------------
# the stop sequence
# --------------------------------------------------------------------------------------


def test_stop_sequence(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    drain = 3.0
    srv = servers(models_copy("models"), drain_seconds=drain)
    old = channel(srv.target)  # a connection made before the stop
    stub = igrpc.GRPCInferenceServiceStub(old)
    assert stub.ModelInfer(traffic.request(0, "before"), timeout=RPC_TIMEOUT).model_version

    # A client-side health watcher, and an open ModelStreamInfer stream that is still
    # in flight when the drain ends.
    watched: list[int] = []
    watch_ended: list[str] = []  # the status the watch ended with

    def watch() -> None:
        hs = health_pb2_grpc.HealthStub(old)
        try:
            for r in hs.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME)):
                watched.append(int(r.status))
            watch_ended.append("OK")
        except grpc.RpcError as e:
            watch_ended.append(e.code().name)

    threading.Thread(target=watch, daemon=True).start()
    wait_for(lambda: watched == [SERVING], 10, "the watcher to see SERVING")
    sent: queue.Queue[ipb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[ipb.ModelInferRequest]:
        while (r := sent.get()) is not None:
            yield r

    stream = stub.ModelStreamInfer(requests(), timeout=60)
    sent.put(traffic.request(1, "stream-1"))
    assert next(stream).error_message == ""

    t_signal = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: srv.events("draining"), 10, "the drain to start")

    # 1. NOT_SERVING at once, for "" and the inference service; ServerReady false.
    # 2. ... while inference answers as usual, on the old connection and on new ones.
    assert health_of(old, "") == NOT_SERVING
    assert health_of(old, SERVICE_NAME) == NOT_SERVING
    assert not stub.ServerReady(ipb.ServerReadyRequest(), timeout=RPC_TIMEOUT).ready
    wait_for(lambda: NOT_SERVING in watched, 10, "the watcher to see NOT_SERVING")
    for i in range(20):
        assert stub.ModelInfer(traffic.request(i, f"drain-{i}"), timeout=RPC_TIMEOUT).model_version
    fresh = channel(srv.target)
    try:
        assert health_of(fresh, SERVICE_NAME) == NOT_SERVING
        fresh_stub = igrpc.GRPCInferenceServiceStub(fresh)
        assert fresh_stub.ModelInfer(traffic.request(3, "fresh"), timeout=RPC_TIMEOUT).model_version
    finally:
        fresh.close()
    assert time.monotonic() - t_signal < drain, "the checks above outlasted the drain"
    assert not srv.events("refusing new calls")

    # 3. After the drain: the port refuses connections, although the process is still
    # finishing the open stream; the watcher's stream ended rather than holding the
    # stop; 4. the stream on the draining connection still gets answers.
    wait_for(lambda: srv.events("refusing new calls"), drain + 10, "the drain to end")
    wait_for(lambda: refused(srv.port), 5, "the port to refuse connections")
    assert srv.proc.poll() is None, "the server exited with a stream in flight"
    wait_for(lambda: watch_ended, 5, "the health watch to end")
    assert (watched, watch_ended) == ([SERVING, NOT_SERVING], ["OK"])
    sent.put(traffic.request(2, "stream-2"))
    late = next(stream)
    assert late.error_message == "" and late.infer_response.id == "stream-2"
    sent.put(None)
    assert list(stream) == []

    # 5. Exit 0 soon after the last call ends (not at the end of the grace period).
    rc = srv.proc.wait(10)
    old.close()
    srv.check_exit(rc)
    names = [e["event"] for e in srv.events() if e.get("logger") == "riskserve.server"]
    assert names[-4:] == ["signal", "draining", "refusing new calls", "stopped"], names
    (drained_at,) = event_times(srv, "draining")
    (refusing_at,) = event_times(srv, "refusing new calls")
    assert drain <= refusing_at - drained_at < drain + 2


@pytest.mark.parametrize("drain", [0.0, 1.0], ids=["no-drain", "drain-1s"])
def test_calls_in_flight_at_sigterm_all_complete(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    drain: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = servers(models_copy("models"), drain_seconds=drain)
    # 16 single-row clients and one sending 2,000-row calls
    with Load(srv.target, traffic, 17, big=True, until_refused=True) as load:
        wait_for(lambda: len(load.calls) > 300, 60, "the clients to warm up")
        load.big_started.clear()
        assert load.big_started.wait(30)
        t_signal = time.monotonic()  # a 2,000-row call has just been sent
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(drain + 30)
        wait_for(load.finished, 30, "every client to be refused")
    srv.check_exit(rc)

    in_flight = load.in_flight_at(t_signal)
    with capsys.disabled():
        print(
            f"\n[shutdown drain={drain}] in flight at SIGTERM: {summary(in_flight)}; "
            f"made after it: {summary([c for c in load.calls if c.t0 >= t_signal])}"
        )
    assert len(in_flight) >= 12, summary(in_flight)  # most of the 17 clients
    assert any(c.rows == BIG_ROWS for c in in_flight)
    assert all(c.code == "OK" for c in in_flight), [c for c in in_flight if c.code != "OK"]
    # Nothing else failed either: every failure is a refused connection, after the stop.
    bad = [c for c in load.failures() if not (is_refusal(c) and c.t0 >= t_signal)]
    assert not bad, bad[:5]
    if drain:  # the clients were answered during the drain, not refused
        assert sum(c.code == "OK" and c.t0 > t_signal + 0.5 for c in load.calls) > 50


# --------------------------------------------------------------------------------------
# rolling restart
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wait_for_ready", [True, False], ids=["wait-for-ready", "fail-fast"])
def test_sighup_replaces_every_worker_under_load(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    wait_for_ready: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The drain delay is for load balancers: a rolling restart does not wait for it.
    srv = servers(models_copy("models"), workers=2, drain_seconds=5)
    before = {int(p) for p in srv.events("serving")[0]["workers"]}
    with Load(srv.target, traffic, 8, big=True, wait_for_ready=wait_for_ready) as load:
        wait_for(lambda: len(load.calls) > 200, 60, "the clients to warm up")
        t_hup = time.monotonic()
        srv.proc.send_signal(signal.SIGHUP)
        done = wait_for(lambda: srv.events("rolling restart done"), 120, "the rolling restart")
        took = time.monotonic() - t_hup
        n_done = len(load.calls)
        wait_for(lambda: len(load.calls) > n_done + 200, 60, "calls to the new workers")
    after = {int(p) for p in done[0]["workers"]}
    replaced = srv.events("worker replaced")

    during = [c for c in load.calls if c.t1 > t_hup]
    with capsys.disabled():
        print(
            f"\n[rolling restart, wait_for_ready={wait_for_ready}] 2 workers replaced in "
            f"{took:.1f} s under load: {summary(during)} (calls after SIGHUP)"
        )
    assert not load.failures(), load.failures()[:5]
    assert len(replaced) == 2 and {e["old"] for e in replaced} == before
    assert len(after) == 2 and not after & before
    assert not srv.events("worker exited badly"), srv.events("worker exited badly")
    assert not srv.events("worker process died; restarting")
    assert sum(c.rows == BIG_ROWS for c in during) > 0
    drains = [e for e in srv.events("draining") if e["pid"] in before]
    assert [e["drain_seconds"] for e in drains] == [0.0, 0.0], drains
    # The old workers are gone; the new ones answer.
    for pid in before:
        wait_for(lambda pid=pid: _gone(pid), 10, f"old worker {pid} to exit")
    assert done[0]["seconds"] < 60


def test_a_rolling_restart_whose_new_worker_fails_keeps_the_old_ones(
    models_copy: Callable[[str], Path],
    start_server: Callable[..., ServerHandle],
    traffic: Traffic,
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("rolling-token\n")
    env = {**settings_env(None, **GUARD_IDLE), "RISKSERVE_ADMIN_TOKEN_FILE": str(token)}
    srv = start_server(models_copy("models"), env=env, workers=2)
    before = {int(p) for p in srv.events("serving")[0]["workers"]}
    token.write_text("")  # a new worker now refuses to start (empty token file)
    with Load(srv.target, traffic, 4) as load:
        wait_for(lambda: len(load.calls) > 100, 60, "the clients to warm up")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: srv.events("rolling restart abandoned"), 60, "the restart to give up")
        n = len(load.calls)
        wait_for(lambda: len(load.calls) > n + 100, 60, "calls after it")
    assert not load.failures(), load.failures()[:5]
    assert not srv.events("worker replaced")
    assert all(not _gone(p) for p in before)  # the old workers still serve
    # Once the folder is fixed, the next SIGHUP goes through.
    token.write_text("rolling-token\n")
    srv.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: srv.events("rolling restart done"), 120, "the second restart")
    assert not {int(p) for p in done[0]["workers"]} & before
    # The one traceback: the new worker's start failing on the empty token file.
    bad = srv.bad_lines()
    assert bad and all("admin token file" in b and "is empty" in b for b in bad), bad
    srv.allow_internal_errors = True  # checked just above


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


# --------------------------------------------------------------------------------------
# kill -9 and start again
# --------------------------------------------------------------------------------------


def test_restart_after_kill_9_serves_the_same_deployment_quickly(
    models_copy: Callable[[str], Path],
    launch_server: Callable[..., ServerHandle],
    start_server: Callable[..., ServerHandle],
    traffic: Traffic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = models_copy("models")
    env = settings_env(**GUARD_IDLE)
    first = launch_server(models, env=env)  # killed below, so not checked at teardown
    admin = Admin(first.channel)
    admin.traffic({1: 70, 2: 30}, "kill-salt")
    deployed = admin.deployment()
    port = first.port
    with Load(first.target, traffic, 4, wait_for_ready=True) as load:
        wait_for(lambda: len(load.calls) > 200, 60, "the clients to warm up")
        first.proc.kill()
        first.proc.wait(10)
        t_kill = time.monotonic()
        t0 = time.perf_counter()
        second = start_server(models, "--port", str(port), "--metrics-port", "0", env=env)
        to_serving = time.perf_counter() - t0

        def answered() -> dict[int, float]:
            """Each client's first answer after the kill, seconds after it."""
            out: dict[int, float] = {}
            for c in list(load.calls):
                if c.code == "OK" and c.t0 > t_kill:
                    out[c.client] = min(out.get(c.client, 1e9), c.t1 - t_kill)
            return out

        # Every client reconnects by itself (its channel's backoff: 1 s, then x1.6).
        wait_for(lambda: len(answered()) == 4, 30, "every client to be answered again")
    firsts = sorted(answered().values())
    with capsys.disabled():
        print(
            f"\n[kill -9] restart command → serving in {to_serving:.2f} s; each client's "
            f"first answer after the kill: {', '.join(f'{t:.2f}' for t in firsts)} s; "
            f"calls failed by the kill: {summary(load.failures())}"
        )
    assert to_serving < 3.0
    assert second.port == port
    assert Admin(second.channel).deployment() == deployed  # revision, split, salt, ...
    assert weights_of(deployed) == {1: 70, 2: 30}
    restored = second.events("deployment restored")
    assert [e["revision"] for e in restored] == [deployed.revision]
    after = [c for c in load.calls if c.t0 > t_kill and c.code == "OK"]
    assert {c.revision for c in after} == {deployed.revision}
    # The kill fails the calls it interrupted (UNAVAILABLE), and no more: the calls
    # made while the server was down waited for it (wait_for_ready).
    assert len(load.failures()) <= 2 * 4, load.failures()
    assert all(c.code == "UNAVAILABLE" for c in load.failures()), load.failures()
