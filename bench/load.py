"""Closed-loop gRPC load generator for riskserve (Open Inference Protocol, ModelInfer).

    python bench/load.py --target HOST:PORT --model fraud --concurrency C \
        --duration T --warmup W [--rows R] [--procs P] [--channels N] \
        [--request-kind raw-fields|matrix --features features.json] [--model-version V] \
        [--out FILE.json] [--png FILE.png]

C clients each keep exactly one request in flight: send, wait for the reply, send the next.
Requests are built once up front from datagen rows (``--requests`` distinct ones of
``--rows`` rows each, raw_input_contents, datatypes from ModelMetadata) and cycled, so the
generator only pays for the RPC itself. Clients run on grpc.aio (uvloop when available);
they are spread over ``--channels`` channels per process, each its own HTTP/2 connection.
``--procs P`` runs the clients in P processes (spawned, started together) and merges their
samples, for when one Python process cannot keep up.

The first W seconds are warm-up. Measured: requests that *complete* inside the following
T seconds. Reported: req/s, rows/s, latency p50/p95/p99/p99.9/max in ms, errors by status
code, a per-second timeline and the generator's own CPU use (when it nears 100% of a core
the generator, not the server, is the bottleneck).

``--request-kind matrix`` is for servers that take the feature matrix (e.g. MLServer's
LightGBM runtime): each request is one FP32 input ``input-0`` of shape [rows, n_features],
the same datagen rows transformed up front with riskserve's FeaturePipeline(``--features``),
so the server skips the raw-field decoding and the feature transform. Its replies are
accepted with one FP32 or FP64 output of ``rows`` elements (raw or typed contents);
raw-fields replies must be exactly one raw FP32 output of 4 x rows bytes, as before.

Open loop (``--rate R``, ``--rates R1,R2,...``, ``--step``): requests are scheduled at
t0 + i/R whatever the replies do, and latency runs from each request's *scheduled* time
(no coordinated omission). ``--concurrency`` is then the cap on requests in flight; a
request due while the cap is reached is counted as dropped_by_generator. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLOCK = time.monotonic  # CLOCK_MONOTONIC: comparable across processes on one host
OPEN_CAP = 1000  # open loop: default cap on requests in flight


@dataclass(frozen=True)
class ProcJob:
    """What one generator process needs (picklable for spawned processes)."""

    index: int
    target: str
    clients: int
    channels: int
    payloads: list[bytes]  # serialized ModelInferRequest
    rows: int
    timeout: float
    use_uvloop: bool
    rpc: str = "infer"  # "stream": ModelStreamInfer; "live": ServerLive, the transport floor
    lenient: bool = False  # accept FP32/FP64, raw or typed contents (matrix requests)
    # Open loop: (start offset s, end offset s, rate req/s) segments from the shared start;
    # empty for the closed loop. This process sends every nprocs-th scheduled request, and
    # `clients` is then its cap on requests in flight.
    schedule: tuple[tuple[float, float, float], ...] = ()
    nprocs: int = 1


# --------------------------------------------------------------------------- requests


def fetch_metadata(target: str, model: str, wait: float, version: str = "") -> dict[str, Any]:
    """Waits for ServerReady and ModelReady, then returns the model's metadata."""
    import grpc

    from riskserve.pb.inference import grpc_service_pb2 as pb
    from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + wait
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    break
            except grpc.RpcError as e:
                last = e
            time.sleep(0.2)
        else:
            raise SystemExit(f"server at {target} not ready after {wait:.0f}s ({last})")
        ready_req = pb.ModelReadyRequest(name=model, version=version)
        while not stub.ModelReady(ready_req, timeout=5).ready:
            if time.monotonic() > deadline:
                raise SystemExit(f"model {model!r} is not ready")
            time.sleep(0.2)
        md = stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), timeout=5)
        return {
            "name": md.name,
            "versions": list(md.versions),
            "platform": md.platform,
            "datatypes": {i.name: i.datatype for i in md.inputs},
        }


def build_payloads(
    model: str, datatypes: dict[str, str], rows: int, count: int, seed: int, version: str = ""
) -> list[bytes]:
    """`count` distinct serialized requests of `rows` datagen rows each."""
    from riskserve.client import build_request
    from riskserve.training.datagen import generate
    from riskserve.training.train import columns_of

    table = generate(rows * count, seed)
    missing = [n for n in datatypes if n not in table.column_names]
    if missing:
        raise SystemExit(f"datagen has no column(s) {missing} that model {model!r} reads")
    cols = columns_of(table, list(datatypes))
    out = []
    for i in range(count):
        batch = {k: v[i * rows : (i + 1) * rows] for k, v in cols.items()}
        out.append(build_request(model, batch, datatypes, version=version).SerializeToString())
    return out


def build_matrix_payloads(
    model: str, features: Path, rows: int, count: int, seed: int, version: str = ""
) -> list[bytes]:
    """`count` distinct serialized requests, each one FP32 input of shape [rows, n_features]:
    datagen rows already transformed by FeaturePipeline(features.json)."""
    from riskserve._native import FeaturePipeline
    from riskserve.pb.inference import grpc_service_pb2 as pb
    from riskserve.training.datagen import generate
    from riskserve.training.train import columns_of

    pipeline = FeaturePipeline(features.read_text())
    table = generate(rows * count, seed)
    x = pipeline.transform(columns_of(table, [name for name, _ in pipeline.inputs]))
    x = np.ascontiguousarray(x, dtype="<f4")
    out = []
    for i in range(count):
        req = pb.ModelInferRequest(model_name=model, model_version=version)
        req.inputs.add(name="input-0", datatype="FP32", shape=[rows, pipeline.n_features])
        req.raw_input_contents.append(x[i * rows : (i + 1) * rows].tobytes())
        out.append(req.SerializeToString())
    return out


_ITEMSIZE = {"FP32": 4, "FP64": 8}


def _reply_ok(resp: Any, rows: int, lenient: bool) -> bool:
    """Strict: one raw FP32 output of `rows` values. Lenient: one FP32/FP64 output of `rows`
    values, raw or in typed contents."""
    if not lenient:
        return len(resp.raw_output_contents) == 1 and len(resp.raw_output_contents[0]) == 4 * rows
    if len(resp.outputs) != 1 or resp.outputs[0].datatype not in _ITEMSIZE:
        return False
    out = resp.outputs[0]
    if resp.raw_output_contents:
        return len(resp.raw_output_contents[0]) == _ITEMSIZE[out.datatype] * rows
    vals = out.contents.fp32_contents if out.datatype == "FP32" else out.contents.fp64_contents
    return len(vals) == rows


# --------------------------------------------------------------------------- clients


async def _connect(job: ProcJob) -> tuple[list[Any], list[Any], list[Any]]:
    """Opens the channels and sends one real request per channel; returns channels, stubs and
    the parsed requests."""
    import grpc

    from riskserve.pb.inference import grpc_service_pb2 as pb
    from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

    opts = [
        # A distinct TCP connection per channel (no global subchannel sharing).
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    channels = [grpc.aio.insecure_channel(job.target, options=opts) for _ in range(job.channels)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    requests = [pb.ModelInferRequest.FromString(p) for p in job.payloads]
    for c in channels:
        await asyncio.wait_for(c.channel_ready(), timeout=30)
    # One real request per channel before the clock starts.
    for s in stubs:
        await s.ModelInfer(requests[0], timeout=job.timeout)
    return channels, stubs, requests


async def _run_clients(job: ProcJob, sync: Any) -> dict[str, Any]:
    import grpc

    from riskserve.pb.inference import grpc_service_pb2 as pb

    channels, stubs, requests = await _connect(job)
    live = job.rpc == "live"
    live_req = pb.ServerLiveRequest()

    start, _measure_from, measure_to = sync()
    while CLOCK() < start:
        await asyncio.sleep(min(0.01, max(0.0, start - CLOCK())))

    ends: list[float] = []
    lats: list[float] = []
    errors: list[tuple[float, str]] = []
    rows, lenient = job.rows, job.lenient
    n_req = len(requests)

    async def client(k: int) -> None:
        stub = stubs[k % len(stubs)]
        call = stub.ServerLive if live else stub.ModelInfer
        if job.rpc == "stream":
            # One bidirectional ModelStreamInfer stream per client, one message in
            # flight on it: what a unary call costs against a message on a stream.
            stream = stub.ModelStreamInfer()

            async def call(req: Any, timeout: float) -> Any:
                await stream.write(req)
                msg = await asyncio.wait_for(stream.read(), timeout)
                if msg is grpc.aio.EOF or msg.error_message:
                    raise RuntimeError(getattr(msg, "error_message", "stream ended"))
                return msg.infer_response

        i = k * 7919  # spread the clients over the request set
        clock = CLOCK
        while True:
            t0 = clock()
            if t0 >= measure_to:
                if job.rpc == "stream":
                    await stream.done_writing()
                return
            req = live_req if live else requests[i % n_req]
            i += 1
            try:
                resp = await call(req, timeout=job.timeout)
            except grpc.aio.AioRpcError as e:
                errors.append((clock(), e.code().name))
                continue
            except Exception as e:  # counted, never fatal
                errors.append((clock(), type(e).__name__))
                continue
            t1 = clock()
            if live:
                if not resp.live:
                    errors.append((t1, "BAD_RESPONSE"))
                    continue
            elif not _reply_ok(resp, rows, lenient):
                errors.append((t1, "BAD_RESPONSE"))
                continue
            ends.append(t1)
            lats.append(t1 - t0)

    cpu0 = time.process_time()
    await asyncio.gather(*(client(k) for k in range(job.clients)))
    cpu = time.process_time() - cpu0
    for c in channels:
        await c.close()
    return {
        "ends": np.asarray(ends, dtype=np.float64),
        "lats": np.asarray(lats, dtype=np.float64),
        "errors": errors,
        "cpu_seconds": cpu,
        "wall_seconds": measure_to - start,
    }


def _schedule_of(job: ProcJob, start: float) -> np.ndarray:
    """This process's scheduled send times (absolute CLOCK): start + s + i / rate for every
    segment, keeping i = index, index + nprocs, ... so the processes interleave."""
    parts = []
    for off0, off1, rate in job.schedule:
        n = max(0, math.ceil((off1 - off0) * rate - 1e-9))
        i = np.arange(job.index, n, job.nprocs, dtype=np.float64)
        parts.append(start + off0 + i / rate)
    return np.concatenate(parts) if parts else np.zeros(0)


async def _run_open(job: ProcJob, sync: Any) -> dict[str, Any]:
    """Open loop: sends each request at its scheduled time, whatever the replies do.

    Latency is measured from the *scheduled* time, so a late send (generator behind) or a
    queue at the server shows up in the latency instead of silently lowering the rate. A
    request whose time comes while `job.clients` requests are already in flight is not sent:
    it is counted as dropped_by_generator."""
    import grpc

    from riskserve.pb.inference import grpc_service_pb2 as pb

    channels, stubs, requests = await _connect(job)
    live = job.rpc == "live"
    live_req = pb.ServerLiveRequest()
    start, _measure_from, _measure_to = sync()
    sched = _schedule_of(job, start)

    ok_sched: list[float] = []
    ok_end: list[float] = []
    sent_sched: list[float] = []
    sent_lag: list[float] = []
    errors: list[tuple[float, str]] = []  # (scheduled time, code)
    dropped: list[float] = []
    rows, lenient, cap = job.rows, job.lenient, job.clients
    n_req = len(requests)
    clock = CLOCK
    inflight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int, ts: float) -> None:
        nonlocal inflight
        stub = stubs[k % len(stubs)]
        try:
            sent = clock()
            sent_sched.append(ts)
            sent_lag.append(sent - ts)
            if live:
                resp = await stub.ServerLive(live_req, timeout=job.timeout)
            else:
                resp = await stub.ModelInfer(requests[k % n_req], timeout=job.timeout)
            t1 = clock()
            if (not resp.live) if live else not _reply_ok(resp, rows, lenient):
                errors.append((ts, "BAD_RESPONSE"))
                return
            ok_sched.append(ts)
            ok_end.append(t1)
        except grpc.aio.AioRpcError as e:
            errors.append((ts, e.code().name))
        except Exception as e:  # counted, never fatal
            errors.append((ts, type(e).__name__))
        finally:
            inflight -= 1

    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    for k, ts in enumerate(sched.tolist()):
        # Never early: the event loop's timers have ~1 ms resolution and can wake early.
        # sleep(0) still yields, so replies are handled even when the generator runs late.
        await asyncio.sleep(max(0.0, ts - clock()))
        while clock() < ts:
            await asyncio.sleep(max(0.0, ts - clock()))
        if inflight >= cap:
            dropped.append(ts)
            continue
        inflight += 1
        t = loop.create_task(one(k * job.nprocs + job.index, ts))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:  # the last replies (each has its own deadline)
        await asyncio.wait(set(tasks), timeout=job.timeout + 5)
    cpu = time.process_time() - cpu0
    wall = clock() - start
    for c in channels:
        await c.close()
    return {
        "sched": sched,
        "ok_sched": np.asarray(ok_sched, dtype=np.float64),
        "ok_end": np.asarray(ok_end, dtype=np.float64),
        "sent_sched": np.asarray(sent_sched, dtype=np.float64),
        "sent_lag": np.asarray(sent_lag, dtype=np.float64),
        "errors": errors,
        "dropped": np.asarray(dropped, dtype=np.float64),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def _event_loop_runner(use_uvloop: bool) -> Any:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


def _proc_main(job: ProcJob, barrier: Any, times: Any, queue: Any) -> None:
    """Entry point of a spawned generator process."""

    def sync() -> tuple[float, float, float]:
        barrier.wait()  # every process connected and warmed
        barrier.wait()  # main has written the start times
        return times[0], times[1], times[2]

    try:
        run = _run_open if job.schedule else _run_clients
        res = _event_loop_runner(job.use_uvloop)(run(job, sync))
        queue.put((job.index, res))
    except BaseException as e:
        barrier.abort()
        queue.put((job.index, {"fatal": repr(e)}))


def run_load(
    target: str,
    payloads: list[bytes],
    rows: int,
    concurrency: int,
    duration: float,
    warmup: float,
    procs: int,
    channels: int,
    timeout: float,
    use_uvloop: bool,
    rpc: str = "infer",
    lenient: bool = False,
    schedule: tuple[tuple[float, float, float], ...] = (),
) -> tuple[list[dict[str, Any]], float, float]:
    """Runs the clients; returns per-process samples and the measurement window.

    With a `schedule` (open loop), `concurrency` is the cap on requests in flight, split
    over the processes, and the window is (start, start + warmup + duration)."""
    procs = max(1, min(procs, concurrency))
    per_proc = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    jobs = [
        ProcJob(
            i,
            target,
            c,
            max(1, min(channels, c)),
            payloads,
            rows,
            timeout,
            use_uvloop,
            rpc,
            lenient,
            schedule,
            procs,
        )
        for i, c in enumerate(per_proc)
    ]

    def window() -> tuple[float, float, float]:
        start = CLOCK() + 0.05
        return start, start + warmup, start + warmup + duration

    if procs == 1:
        box: list[tuple[float, float, float]] = []

        def sync() -> tuple[float, float, float]:
            box.append(window())
            return box[0]

        run = _run_open if schedule else _run_clients
        res = _event_loop_runner(use_uvloop)(run(jobs[0], sync))
        return [res], box[0][1], box[0][2]

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    times = ctx.Array("d", 3, lock=False)
    queue = ctx.Queue()
    workers = [ctx.Process(target=_proc_main, args=(j, barrier, times, queue)) for j in jobs]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=120)
        times[0], times[1], times[2] = window()
        barrier.wait(timeout=30)
    except Exception:  # a worker failed to start; its message is on the queue
        pass
    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + warmup + duration + timeout + 120
    while len(results) < procs and time.monotonic() < deadline:
        try:
            idx, res = queue.get(timeout=1)
            results[idx] = res
        except Exception:  # queue.Empty
            if not any(w.is_alive() for w in workers) and queue.empty():
                break
    for w in workers:
        w.join(timeout=10)
    fatal = [r["fatal"] for r in results.values() if "fatal" in r]
    if fatal or len(results) < procs:
        raise SystemExit(f"generator process failed: {fatal or 'no result'}")
    return [results[i] for i in range(procs)], times[1], times[2]


# --------------------------------------------------------------------------- report


def code_revision() -> str:
    """The repo's commit (+dirty when tracked files differ), as training records it."""
    from riskserve.training.train import code_revision as revision

    return revision()


def summarize(
    samples: list[dict[str, Any]], t0: float, t1: float, rows: int, duration: float
) -> dict[str, Any]:
    ends = np.concatenate([s["ends"] for s in samples])
    lats = np.concatenate([s["lats"] for s in samples])
    keep = (ends >= t0) & (ends <= t1)
    ends, lats = ends[keep] - t0, lats[keep] * 1e3  # seconds into the window, ms
    order = np.argsort(ends)
    ends, lats = ends[order], lats[order]
    errors: dict[str, int] = {}
    for s in samples:
        for t, code in s["errors"]:
            if t0 <= t <= t1:
                errors[code] = errors.get(code, 0) + 1
    n = int(lats.size)

    def pct(q: float) -> float | None:
        return float(np.percentile(lats, q)) if n else None

    latency = {
        "p50": pct(50),
        "p90": pct(90),
        "p95": pct(95),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": float(lats.max()) if n else None,
        "min": float(lats.min()) if n else None,
        "mean": float(lats.mean()) if n else None,
    }
    timeline = []
    n_bins = max(1, math.ceil(duration))
    bins = np.minimum(np.floor(ends), n_bins - 1).astype(np.int64)  # end == duration: last bin
    for sec in range(n_bins):
        m = bins == sec
        if m.any():
            w = lats[m]
            timeline.append(
                {
                    "second": sec,
                    "requests": int(m.sum()),
                    "p50_ms": float(np.percentile(w, 50)),
                    "p99_ms": float(np.percentile(w, 99)),
                }
            )
        else:
            timeline.append({"second": sec, "requests": 0, "p50_ms": None, "p99_ms": None})
    cpu = sum(s["cpu_seconds"] for s in samples)
    wall = max(s["wall_seconds"] for s in samples)
    return {
        "requests": n,
        "errors": sum(errors.values()),
        "errors_by_code": dict(sorted(errors.items())),
        "throughput_rps": n / duration,
        "rows_per_second": n * rows / duration,
        "latency_ms": latency,
        "timeline": timeline,
        "generator_cpu": {
            "seconds": cpu,
            "cores_busy": cpu / wall if wall > 0 else None,  # over warm-up + measurement
        },
        "_ends": ends,
        "_lats": lats,
    }


def summarize_open(
    samples: list[dict[str, Any]], w0: float, w1: float, rows: int, offered: float
) -> dict[str, Any]:
    """Open-loop report for the window [w0, w1): requests are attributed to the window by
    their *scheduled* time, latency runs from that time to the reply. The achieved rate
    counts the good replies that arrive inside the window."""
    duration = w1 - w0

    def cat(key: str) -> np.ndarray:
        return np.concatenate([s[key] for s in samples])

    def inside(t: np.ndarray) -> np.ndarray:
        return (t >= w0) & (t < w1)

    sched, ok_sched, ok_end = cat("sched"), cat("ok_sched"), cat("ok_end")
    sent_sched, sent_lag, dropped = cat("sent_sched"), cat("sent_lag"), cat("dropped")
    keep = inside(ok_sched)
    starts, lats = ok_sched[keep] - w0, (ok_end[keep] - ok_sched[keep]) * 1e3
    order = np.argsort(starts)
    starts, lats = starts[order], lats[order]
    lag = sent_lag[inside(sent_sched)] * 1e3
    errors: dict[str, int] = {}
    for smp in samples:
        for t, code in smp["errors"]:
            if w0 <= t < w1:
                errors[code] = errors.get(code, 0) + 1
    n, n_sched = int(lats.size), int(inside(sched).sum())
    n_dropped, n_err = int(inside(dropped).sum()), sum(errors.values())

    def pct(x: np.ndarray, q: float) -> float | None:
        return float(np.percentile(x, q)) if x.size else None

    latency = {
        "p50": pct(lats, 50),
        "p90": pct(lats, 90),
        "p95": pct(lats, 95),
        "p99": pct(lats, 99),
        "p99.9": pct(lats, 99.9),
        "max": float(lats.max()) if n else None,
        "min": float(lats.min()) if n else None,
        "mean": float(lats.mean()) if n else None,
    }
    achieved = int(inside(ok_end).sum()) / duration
    timeline = []
    n_bins = max(1, math.ceil(duration - 1e-9))
    bins = np.minimum(np.floor(starts), n_bins - 1).astype(np.int64)
    sched_bins = np.minimum(np.floor(sched[inside(sched)] - w0), n_bins - 1).astype(np.int64)
    for sec in range(n_bins):
        m = bins == sec
        w = lats[m]
        timeline.append(
            {
                "second": sec,
                "scheduled": int((sched_bins == sec).sum()),
                "requests": int(m.sum()),
                "p50_ms": pct(w, 50),
                "p99_ms": pct(w, 99),
            }
        )
    return {
        "offered_rps": offered,
        "achieved_rps": achieved,
        "throughput_rps": achieved,
        "rows_per_second": achieved * rows,
        "scheduled": n_sched,
        "requests": n,
        "errors": n_err,
        "errors_by_code": dict(sorted(errors.items())),
        "dropped_by_generator": n_dropped,
        "unfinished": n_sched - n - n_err - n_dropped,  # no reply within --timeout + 5 s
        "latency_ms": latency,
        "send_lag_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99), "max": pct(lag, 100)},
        "timeline": timeline,
        "_ends": starts,
        "_lats": lats,
    }


def generator_cpu(samples: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = sum(s["cpu_seconds"] for s in samples)
    wall = max(s["wall_seconds"] for s in samples)
    return {"seconds": cpu, "cores_busy": cpu / wall if wall > 0 else None}


def ms(v: float | None) -> str:
    """A latency for the tables: 2 decimals, or a dash when there is none."""
    return "—" if v is None else f"{v:.2f}"


def print_errors(by_code: dict[str, int], indent: str = "") -> None:
    if by_code:
        print(f"{indent}errors by status: " + ", ".join(f"{k}={v}" for k, v in by_code.items()))


def print_open_table(doc: dict[str, Any]) -> None:
    cfg = doc["config"]

    print(
        f"\nriskserve open-loop load: {cfg['target']} rpc={cfg['rpc']} model={cfg['model']} "
        f"rows/req={cfg['rows']} cap in flight={cfg['concurrency']} procs={cfg['procs']} "
        f"warmup={cfg['warmup']}s duration={cfg['duration']}s; latency from scheduled send"
    )
    hdr = (
        f"{'phase':>8} {'offered':>8} {'achieved':>8} | {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'p99.9':>7} {'max':>8}  (ms) | {'ok':>6} {'errors':>6} {'dropped':>7} | "
        f"lag p99"
    )
    print(hdr)
    print("-" * len(hdr))
    rows = doc.get("points") or doc.get("phases") or [{"label": "all", "result": doc["result"]}]
    for pt in rows:
        r, lat = pt["result"], pt["result"]["latency_ms"]
        label = pt.get("label", f"{r['offered_rps']:g}/s")
        print(
            f"{label:>8} {r['offered_rps']:>8.1f} {r['achieved_rps']:>8.1f} | {ms(lat['p50']):>7} "
            f"{ms(lat['p95']):>7} {ms(lat['p99']):>7} {ms(lat['p99.9']):>7} {ms(lat['max']):>8}"
            f"       | {r['requests']:>6} {r['errors']:>6} {r['dropped_by_generator']:>7} | "
            f"{ms(r['send_lag_ms']['p99'])}"
        )
        print_errors(r["errors_by_code"], "  ")
    busy = doc["generator_cpu"]["cores_busy"]
    print(f"generator cpu: {busy:.0%} of a core (whole run, all processes)")
    if busy is not None and busy > 0.9 * cfg["procs"]:
        print("note: the generator used ~all of its CPU; its send lag is in the latencies")


def print_table(doc: dict[str, Any]) -> None:
    r, lat = doc["result"], doc["result"]["latency_ms"]
    cfg = doc["config"]

    print(
        f"\nriskserve load: {cfg['target']} rpc={cfg['rpc']} model={cfg['model']} "
        f"rows/req={cfg['rows']} "
        f"concurrency={cfg['concurrency']} procs={cfg['procs']} channels/proc={cfg['channels']} "
        f"warmup={cfg['warmup']}s duration={cfg['duration']}s"
    )
    hdr = (
        f"{'req/s':>9} {'rows/s':>10} | {'p50':>7} {'p95':>7} {'p99':>7} {'p99.9':>7} "
        f"{'max':>7}  (ms) | {'requests':>8} {'errors':>6} | gen cpu"
    )
    print(hdr)
    print("-" * len(hdr))
    busy = r["generator_cpu"]["cores_busy"]
    print(
        f"{r['throughput_rps']:>9.1f} {r['rows_per_second']:>10.1f} | {ms(lat['p50']):>7} "
        f"{ms(lat['p95']):>7} {ms(lat['p99']):>7} {ms(lat['p99.9']):>7} {ms(lat['max']):>7}"
        "       | "
        f"{r['requests']:>8} {r['errors']:>6} | {busy:.0%}"
    )
    print_errors(r["errors_by_code"])
    if busy is not None and busy > 0.9 * cfg["procs"]:
        print("note: the generator used ~all of its CPU; try --procs or more cores for the client")


def plot(doc: dict[str, Any], ends: np.ndarray, lats: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cfg, res = doc["config"], doc["result"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if doc.get("mode") == "open":
        offered = " → ".join(f"{p['result']['offered_rps']:g}" for p in doc.get("phases", []))
        title = (
            f"riskserve {cfg['model']}: open loop, offered {offered or doc['offered_rps']} req/s, "
            f"achieved {res['achieved_rps']:.0f}, p99 {res['latency_ms']['p99'] or 0:.2f} ms "
            "(from scheduled send)"
        )
    else:
        title = (
            f"riskserve {cfg['model']}: concurrency {cfg['concurrency']}, "
            f"{cfg['rows']} row(s)/req, "
            f"{res['throughput_rps']:.0f} req/s, p99 {res['latency_ms']['p99'] or 0:.2f} ms"
        )
    fig.suptitle(title)

    if lats.size:
        step = max(1, lats.size // 20000)
        ax1.scatter(
            ends[::step],
            lats[::step],
            s=2,
            alpha=0.25,
            color="tab:gray",
            label="requests" + (f" (1 in {step})" if step > 1 else ""),
        )
    for k, w in enumerate(res.get("swaps", [])):
        ax1.axvline(w["t"], color="tab:green", alpha=0.4, label="hot swap" if k == 0 else None)
    tl = [t for t in res["timeline"] if t["requests"]]
    secs = [t["second"] + 0.5 for t in tl]
    ax1.plot(secs, [t["p50_ms"] for t in tl], "o-", color="tab:blue", label="p50 per second")
    ax1.plot(secs, [t["p99_ms"] for t in tl], "s-", color="tab:red", label="p99 per second")
    ax1.set_xlabel(
        "scheduled send, seconds into the measurement window"
        if doc.get("mode") == "open"
        else "seconds into the measurement window"
    )
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax1.grid(True, which="both", alpha=0.3)
    ax1b = ax1.twinx()
    ax1b.plot(secs, [t["requests"] for t in tl], "--", color="tab:green", label="req/s")
    if doc.get("mode") == "open":
        ax1b.plot(
            [t["second"] + 0.5 for t in res["timeline"]],
            [t["scheduled"] for t in res["timeline"]],
            ":",
            color="tab:olive",
            label="offered req/s",
        )
    ax1b.set_ylabel("requests per second", color="tab:green")
    ax1b.set_ylim(bottom=0)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)

    # Percentile spectrum: x = 1 / (1 - quantile) on a log axis.
    if lats.size:
        srt = np.sort(lats)
        q = (np.arange(1, srt.size + 1) - 0.5) / srt.size
        ax2.plot(1.0 / (1.0 - q), srt, color="tab:blue")
        for name, val in res["latency_ms"].items():
            if name.startswith("p") and val is not None:
                qq = float(name[1:]) / 100
                ax2.plot([1 / (1 - qq)], [val], "o", color="tab:red")
                ax2.annotate(
                    f"{name} {val:.2f}",
                    (1 / (1 - qq), val),
                    fontsize=8,
                    textcoords="offset points",
                    xytext=(4, -10),
                )
    ax2.set_xscale("log")
    ticks = [2, 10, 100, 1000, 10000]
    ax2.set_xticks(ticks, ["p50", "p90", "p99", "p99.9", "p99.99"])
    ax2.set_xlabel("percentile")
    ax2.set_ylabel("latency (ms)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.set_title("latency by percentile", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(doc: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered load (left), achieved against offered (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cfg, pts = doc["config"], doc["points"]
    x = [p["offered_rps"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    fig.suptitle(
        f"riskserve {cfg['model']}: open loop, {cfg['rows']} row(s)/req, "
        f"{cfg['duration']:g} s per point after {cfg['warmup']:g} s warm-up"
    )
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ys = [p["result"]["latency_ms"][q] for p in pts]
        ax1.plot(x, [float("nan") if y is None else y for y in ys], style, label=q)
    ax1.set_xlabel("offered load (req/s)")
    ax1.set_ylabel("latency from scheduled send (ms)")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("latency percentiles against offered load", fontsize=10)
    ax2.plot(x, [p["result"]["achieved_rps"] for p in pts], "o-", label="achieved (good replies)")
    ax2.plot(x, x, ":", color="gray", label="achieved = offered")
    bad = [p["result"]["errors"] + p["result"]["dropped_by_generator"] for p in pts]
    if any(bad):
        ax2.bar(x, bad, width=max(x) * 0.02, color="tab:red", label="errors + dropped (count)")
    ax2.set_xlabel("offered load (req/s)")
    ax2.set_ylabel("req/s")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("achieved against offered", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be > 0")
    return rates


class Swapper:
    """The hot-swap scenario: a thread that, every `--swap-every` seconds of the
    measured window, promotes the other of two versions (a routing-table swap that
    in-flight requests must survive) and records when each change was made."""

    def __init__(self, a: argparse.Namespace) -> None:
        import grpc

        from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
        from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc

        self.apb, self.every, self.model = apb, a.swap_every, a.model
        token = os.environ.get("RISKSERVE_ADMIN_TOKEN", "")
        if not token:
            raise SystemExit("--swap-every needs RISKSERVE_ADMIN_TOKEN (the server's token)")
        self.md = (("authorization", f"Bearer {token}"), ("x-actor", "bench/load.py"))
        self.channel = grpc.insecure_channel(a.target)
        self.stub = agrpc.ModelAdminStub(self.channel)
        self.versions = [int(v) for v in a.swap_versions.split(",")]
        if len(self.versions) != 2:
            raise SystemExit("--swap-versions needs two versions, e.g. 1,2")
        for v in self.versions:  # both loaded, the first live
            self.stub.LoadVersion(
                apb.LoadVersionRequest(model=a.model, version=v), metadata=self.md, timeout=120
            )
        self._promote(self.versions[0])
        self.events: list[dict[str, Any]] = []
        self.thread: threading.Thread | None = None

    def _promote(self, v: int) -> int:
        req = self.apb.PromoteRequest(model=self.model, version=v, reason="bench hot swap")
        return int(self.stub.Promote(req, metadata=self.md, timeout=30).revision)

    def start(self, begin: float, duration: float) -> None:
        def run() -> None:
            k = 1
            while True:
                at = begin + k * self.every
                if at >= begin + duration:
                    return
                time.sleep(max(0.0, at - CLOCK()))
                v = self.versions[k % 2]
                t = CLOCK()
                rev = self._promote(v)
                self.events.append(
                    {"t": t, "op": f"promote v{v}", "revision": rev, "seconds": CLOCK() - t}
                )
                k += 1

        self.thread = threading.Thread(target=run, name="swapper", daemon=True)
        self.thread.start()

    def finish(self, t0: float) -> list[dict[str, Any]]:
        if self.thread is not None:
            self.thread.join(60)
        self.channel.close()
        return [{**e, "t": e["t"] - t0} for e in self.events]


def around_swaps(ends: np.ndarray, lats: np.ndarray, swaps: list[float]) -> dict[str, Any]:
    """Latency of requests that completed within 1 s after a swap vs all the others."""
    near = np.zeros(ends.shape, dtype=bool)
    for t in swaps:
        near |= (ends >= t) & (ends < t + 1.0)

    def stats(x: np.ndarray) -> dict[str, Any]:
        if not x.size:
            return {"requests": 0, "p50": None, "p99": None, "max": None}
        return {
            "requests": int(x.size),
            "p50": float(np.percentile(x, 50)),
            "p99": float(np.percentile(x, 99)),
            "max": float(x.max()),
        }

    return {"within_1s_after_a_swap": stats(lats[near]), "other": stats(lats[~near])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    ap.add_argument("--model", default="fraud")
    ap.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="closed loop: clients in flight (default 1); open loop: cap on requests in "
        f"flight, beyond which requests are dropped by the generator (default {OPEN_CAP})",
    )
    rate = ap.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate",
        type=float,
        help="open loop: send at this constant rate (req/s), latency from scheduled send",
    )
    rate.add_argument(
        "--rates",
        type=_rates,
        help="open-loop sweep R1,R2,...: each rate for --warmup then --duration seconds",
    )
    ap.add_argument(
        "--step",
        action="store_true",
        help="with --rate R: warm up at R, then R for duration/2 and 2R for duration/2, "
        "reported as two phases",
    )
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--requests", type=int, default=256, help="distinct pre-built requests")
    ap.add_argument("--seed", type=int, default=11, help="datagen seed for the request rows")
    ap.add_argument("--procs", type=int, default=1, help="generator processes")
    ap.add_argument(
        "--channels",
        type=int,
        default=1,
        help="channels (HTTP/2 connections) per process; clients share them",
    )
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, s")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for readiness")
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    ap.add_argument(
        "--rpc",
        choices=("infer", "stream", "live"),
        default="infer",
        help="infer: ModelInfer (default); stream: ModelStreamInfer, one stream per client; "
        "live: ServerLive, to measure the transport floor and the generator's own ceiling",
    )
    ap.add_argument(
        "--request-kind",
        choices=("raw-fields", "matrix"),
        default="raw-fields",
        help="raw-fields: one input per raw column, as riskserve takes them (default); "
        "matrix: one FP32 [rows, n_features] input, pre-transformed with --features",
    )
    ap.add_argument(
        "--features", help="features.json of the model (needed with --request-kind matrix)"
    )
    ap.add_argument("--model-version", default="", help="model_version to request (default any)")
    ap.add_argument(
        "--swap-every",
        type=float,
        default=0.0,
        help="hot-swap scenario (closed loop): every S seconds of the measured window, "
        "promote the other of --swap-versions through the admin API (token from "
        "RISKSERVE_ADMIN_TOKEN)",
    )
    ap.add_argument("--swap-versions", default="1,2", help="the two versions to swap between")
    ap.add_argument("--out", help="write the report as JSON here")
    ap.add_argument("--png", help="write a latency plot here")
    a = ap.parse_args(argv)
    open_loop = a.rate is not None or a.rates is not None
    if a.concurrency is None:
        a.concurrency = OPEN_CAP if open_loop else 1
    if a.step and a.rate is None:
        ap.error("--step needs --rate R")
    if a.rate is not None and a.rate <= 0:
        ap.error("--rate must be > 0")
    if a.concurrency < 1 or a.duration <= 0 or a.warmup < 0 or a.rows < 1 or a.requests < 1:
        ap.error("need concurrency >= 1, duration > 0, warmup >= 0, rows >= 1, requests >= 1")
    if open_loop and a.rpc == "stream":
        ap.error("--rpc stream is closed loop only (one message in flight per stream)")
    if a.swap_every < 0 or (a.swap_every > 0 and open_loop):
        ap.error("--swap-every S needs S > 0 and the closed loop")
    matrix = a.request_kind == "matrix"
    if matrix and not a.features:
        ap.error("--request-kind matrix needs --features PATH/features.json")

    md = fetch_metadata(a.target, a.model, a.wait, a.model_version)
    if matrix:
        payloads = build_matrix_payloads(
            a.model, Path(a.features), a.rows, a.requests, a.seed, a.model_version
        )
    else:
        payloads = build_payloads(
            a.model, md["datatypes"], a.rows, a.requests, a.seed, a.model_version
        )
    started = dt.datetime.now(dt.UTC)
    if open_loop:
        return _main_open(a, md, payloads, matrix, started)
    swapper = Swapper(a) if a.swap_every > 0 else None
    if swapper is not None:
        swapper.start(CLOCK() + 0.05 + a.warmup, a.duration)
    samples, t0, t1 = run_load(
        a.target,
        payloads,
        a.rows,
        a.concurrency,
        a.duration,
        a.warmup,
        a.procs,
        a.channels,
        a.timeout,
        not a.no_uvloop,
        a.rpc,
        matrix,
    )
    res = summarize(samples, t0, t1, a.rows, a.duration)
    ends, lats = res.pop("_ends"), res.pop("_lats")
    if swapper is not None:
        res["swaps"] = swapper.finish(t0)
        res["around_swaps"] = around_swaps(ends, lats, [w["t"] for w in res["swaps"]])
    doc = {
        "benchmark": "load",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "target": a.target,
            "model": a.model,
            "rpc": a.rpc,
            "request_kind": a.request_kind,
            "model_version": a.model_version,
            "concurrency": a.concurrency,
            "duration": a.duration,
            "warmup": a.warmup,
            "rows": a.rows,
            "distinct_requests": a.requests,
            "procs": max(1, min(a.procs, a.concurrency)),
            "channels": a.channels,
            "timeout": a.timeout,
            "event_loop": "asyncio" if a.no_uvloop else "uvloop",
            "request_bytes": len(payloads[0]),
        },
        "model": {k: v for k, v in md.items() if k != "datatypes"},
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "code_revision": code_revision(),
        },
        "result": res,
    }
    print_table(doc)
    if "swaps" in res:
        around = res["around_swaps"]

        def line(x: dict[str, Any]) -> str:
            return f"{x['requests']} requests, p50 {x['p50'] or 0:.2f} p99 {x['p99'] or 0:.2f} ms"

        print(
            f"hot swaps: {len(res['swaps'])} promotions; within 1 s after one: "
            f"{line(around['within_1s_after_a_swap'])}; other: {line(around['other'])}"
        )
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out}")
    if a.png:
        plot(doc, ends, lats, Path(a.png))
        print(f"wrote {a.png}")
    return 0 if res["requests"] > 0 else 1


def _main_open(
    a: argparse.Namespace,
    md: dict[str, Any],
    payloads: list[bytes],
    matrix: bool,
    started: dt.datetime,
) -> int:
    """--rate R [--step] or --rates R1,R2,...: one schedule, run once, cut into windows."""
    span = a.warmup + a.duration
    if a.rates is not None:
        schedule = tuple((j * span, (j + 1) * span, r) for j, r in enumerate(a.rates))
        windows = [
            (f"{r:g}/s", j * span + a.warmup, (j + 1) * span, r) for j, r in enumerate(a.rates)
        ]
    elif a.step:
        half = a.warmup + a.duration / 2
        schedule = ((0.0, half, a.rate), (half, span, 2 * a.rate))
        windows = [("R", a.warmup, half, a.rate), ("2R", half, span, 2 * a.rate)]
    else:
        schedule = ((0.0, span, a.rate),)
        windows = [("all", a.warmup, span, a.rate)]
    total = schedule[-1][1]
    samples, start, _ = run_load(
        a.target,
        payloads,
        a.rows,
        a.concurrency,
        total,
        0.0,
        a.procs,
        a.channels,
        a.timeout,
        not a.no_uvloop,
        a.rpc,
        matrix,
        schedule,
    )
    parts = []
    for label, w0, w1, offered in windows:
        res = summarize_open(samples, start + w0, start + w1, a.rows, offered)
        parts.append((label, res.pop("_ends"), res.pop("_lats"), res))
    doc: dict[str, Any] = {
        "benchmark": "load",
        "mode": "open",
        "scenario": "sweep" if a.rates is not None else ("step" if a.step else "constant"),
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "offered_rps": a.rates if a.rates is not None else a.rate,
        "config": {
            "target": a.target,
            "model": a.model,
            "rpc": a.rpc,
            "request_kind": a.request_kind,
            "model_version": a.model_version,
            "concurrency": a.concurrency,  # the cap on requests in flight
            "duration": a.duration,
            "warmup": a.warmup,
            "rows": a.rows,
            "distinct_requests": a.requests,
            "procs": max(1, min(a.procs, a.concurrency)),
            "channels": a.channels,
            "timeout": a.timeout,
            "event_loop": "asyncio" if a.no_uvloop else "uvloop",
            "request_bytes": len(payloads[0]),
            "schedule": [{"from_s": s0, "to_s": s1, "rate": r} for s0, s1, r in schedule],
        },
        "model": {k: v for k, v in md.items() if k != "datatypes"},
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "code_revision": code_revision(),
        },
        "generator_cpu": generator_cpu(samples),
    }
    ends = lats = None
    if a.rates is not None:
        doc["points"] = [{"offered_rps": r["offered_rps"], "result": r} for _, _, _, r in parts]
    else:
        # The whole measured window, plus the two phases of a step.
        res = summarize_open(samples, start + a.warmup, start + span, a.rows, a.rate)
        ends, lats = res.pop("_ends"), res.pop("_lats")
        if a.step:
            res["offered_rps"] = a.rate * 1.5  # mean over the window
            doc["phases"] = [
                {
                    "label": label,
                    "offered_rps": r["offered_rps"],
                    "from_s": w[1] - a.warmup,
                    "result": r,
                }
                for (label, _, _, r), w in zip(parts, windows, strict=True)
            ]
        doc["result"] = res
    print_open_table(doc)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out}")
    if a.png:
        if a.rates is not None:
            plot_sweep(doc, Path(a.png))
        else:
            plot(doc, ends, lats, Path(a.png))
        print(f"wrote {a.png}")
    return 0 if all(r["requests"] > 0 for _, _, _, r in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
