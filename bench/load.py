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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLOCK = time.monotonic  # CLOCK_MONOTONIC: comparable across processes on one host


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
    rpc: str = "infer"  # or "live": ServerLive, the transport floor
    lenient: bool = False  # accept FP32/FP64, raw or typed contents (matrix requests)


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


async def _run_clients(job: ProcJob, sync: Any) -> dict[str, Any]:
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
    live = job.rpc == "live"
    live_req = pb.ServerLiveRequest()
    for s in stubs:
        await s.ModelInfer(requests[0], timeout=job.timeout)

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
        i = k * 7919  # spread the clients over the request set
        clock = CLOCK
        while True:
            t0 = clock()
            if t0 >= measure_to:
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
        res = _event_loop_runner(job.use_uvloop)(_run_clients(job, sync))
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
) -> tuple[list[dict[str, Any]], float, float]:
    """Runs the clients; returns per-process samples and the measurement window."""
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

        res = _event_loop_runner(use_uvloop)(_run_clients(jobs[0], sync))
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


def print_table(doc: dict[str, Any]) -> None:
    r, lat = doc["result"], doc["result"]["latency_ms"]
    cfg = doc["config"]

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

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
        f"{r['throughput_rps']:>9.1f} {r['rows_per_second']:>10.1f} | {f(lat['p50']):>7} "
        f"{f(lat['p95']):>7} {f(lat['p99']):>7} {f(lat['p99.9']):>7} {f(lat['max']):>7}       | "
        f"{r['requests']:>8} {r['errors']:>6} | {busy:.0%}"
    )
    if r["errors_by_code"]:
        print("errors by status: " + ", ".join(f"{k}={v}" for k, v in r["errors_by_code"].items()))
    if busy is not None and busy > 0.9 * cfg["procs"]:
        print("note: the generator used ~all of its CPU; try --procs or more cores for the client")


def plot(doc: dict[str, Any], ends: np.ndarray, lats: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cfg, res = doc["config"], doc["result"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    title = (
        f"riskserve {cfg['model']}: concurrency {cfg['concurrency']}, {cfg['rows']} row(s)/req, "
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
    tl = [t for t in res["timeline"] if t["requests"]]
    secs = [t["second"] + 0.5 for t in tl]
    ax1.plot(secs, [t["p50_ms"] for t in tl], "o-", color="tab:blue", label="p50 per second")
    ax1.plot(secs, [t["p99_ms"] for t in tl], "s-", color="tab:red", label="p99 per second")
    ax1.set_xlabel("seconds into the measurement window")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax1.grid(True, which="both", alpha=0.3)
    ax1b = ax1.twinx()
    ax1b.plot(secs, [t["requests"] for t in tl], "--", color="tab:green", label="req/s")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    ap.add_argument("--model", default="fraud")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="clients in flight")
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
        choices=("infer", "live"),
        default="infer",
        help="infer: ModelInfer (default); live: ServerLive, to measure the transport floor "
        "and the generator's own ceiling",
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
    ap.add_argument("--out", help="write the report as JSON here")
    ap.add_argument("--png", help="write a latency plot here")
    a = ap.parse_args(argv)
    if a.concurrency < 1 or a.duration <= 0 or a.warmup < 0 or a.rows < 1 or a.requests < 1:
        ap.error("need concurrency >= 1, duration > 0, warmup >= 0, rows >= 1, requests >= 1")
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
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out}")
    if a.png:
        plot(doc, ends, lats, Path(a.png))
        print(f"wrote {a.png}")
    return 0 if res["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
