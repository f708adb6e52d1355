"""riskserve vs a Python-gRPC floor vs MLServer: one closed-loop scenario, one run.

    .venv/bin/python bench/compare.py [--servers riskserve floor mlserver mlserver-tuned]
        [--rounds 2] [--concurrency 1 8] [--duration 10] [--warmup 2]
        [--out bench/results/compare.json]

(bench/run_compare.sh trains the model and creates MLServer's virtualenv first.)

Each server is started on its own, pinned to core 0 (``taskset -c 0``), loaded by the
generator pinned to core 1 at each concurrency (single-row requests, one connection per
client), then stopped (SIGTERM) before the next one starts. The generator is
bench/loadgen (Rust, ~30-60 µs of CPU per request, so even the floor server is measured
below the generator's ceiling; ``--generator load.py`` uses bench/load.py, which costs
~150-300 µs per request and tops out near 4,000 req/s on one core). With ``--rounds 2``
the order is interleaved (a1 b1 c1 a2 b2 c2), so slow drifts of a shared machine hit
every server alike.

Servers:

* ``riskserve``: ``riskserve serve --models bench/results/models``, model ``fraud``;
  raw-field requests (one input per raw column, as riskserve's clients send them).
* ``floor``: bench/floor_server.py, grpc.aio + uvloop answering ModelInfer with a canned
  response; the same raw-field requests. What Python gRPC alone costs.
* ``floor-generic``: the same floor with its handlers built by
  ``grpc.method_handlers_generic_handler`` instead of the generated stubs.
* ``floor-grpc175``: ``floor-generic`` on grpcio 1.75 (bench/.venv-grpc175, which
  bench/run_compare.sh creates), from before the registered-method change that grpc#43461
  reports as a per-RPC regression. floor-generic vs floor-grpc175 is the grpcio version
  alone; floor vs floor-generic is the registration path alone.
* ``mlserver``: MLServer + mlserver-lightgbm from bench/.venv-mlserver serving the same
  model.txt, in its default configuration (settings.json sets only host and ports; so
  ``parallel_workers`` keeps its default, 1 in MLServer 1.7.1: the gRPC front process hands
  each request to one inference worker process; ``debug`` stays true, which logs every
  gRPC call).
* ``mlserver-tuned``: the best single-core setup found: ``parallel_workers: 0`` (inference
  in the front process), ``debug: false`` and OMP_NUM_THREADS=1 for LightGBM.

MLServer's LightGBM runtime takes the model's feature matrix, not raw fields, so it gets
one FP32 input of shape [1, 97] per request, transformed up front by the generator with
riskserve's FeaturePipeline(features.json): **MLServer does less work per request than
riskserve** (no raw-field decoding, no feature transform).

Writes bench/results/compare.json (every run plus per-server medians and the ratios
riskserve/floor and riskserve/MLServer) and prints a table. If MLServer is not installed
or does not start, its rows say why and the rest of the comparison still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv/bin/python"
RISKSERVE = ROOT / ".venv/bin/riskserve"
MLSERVER = ROOT / "bench/.venv-mlserver/bin/mlserver"
GRPC175_PY = ROOT / "bench/.venv-grpc175/bin/python"
LOADGEN = ROOT / "bench/loadgen/target/release/loadgen"
ALL_SERVERS = (
    "riskserve",
    "riskserve-nolog",
    "riskserve-python",
    "floor",
    "floor-generic",
    "floor-grpc175",
    "mlserver",
    "mlserver-tuned",
)
#: Ratios between floors, besides riskserve's against every other server.
FLOOR_RATIOS = (
    ("floor-generic", "floor-grpc175"),
    ("floor", "floor-grpc175"),
    ("floor", "floor-generic"),
)


def rel(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def model_dir(models: Path, name: str) -> Path:
    versions = sorted(
        (p for p in (models / name).iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise SystemExit(f"no trained version under {models / name}; run bench/run_compare.sh")
    return versions[-1]


def mlserver_config(kind: str, out: Path, model_file: Path, ports: tuple[int, int, int]) -> Path:
    """Writes settings.json + fraud/model-settings.json under out/kind; returns that folder."""
    folder = out / kind
    (folder / "fraud").mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port = ports
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
    }
    if kind == "mlserver-tuned":
        settings |= {"parallel_workers": 0, "debug": False}
    model_settings = {
        "name": "fraud",
        "implementation": "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": str(model_file.resolve())},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "fraud" / "model-settings.json").write_text(
        json.dumps(model_settings, indent=2) + "\n"
    )
    return folder


class Server:
    def __init__(self, name: str, cmd: list[str], log: Path, cwd: Path, env: dict[str, str]):
        self.name, self.cmd, self.log = name, cmd, log
        self.fh = log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )

    def wait_ready(self, target: str, model: str, timeout: float = 90) -> None:
        import grpc

        from riskserve.pb.inference import grpc_service_pb2 as pb
        from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode} before it was ready")
                try:
                    if (
                        stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
                        and stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=1).ready
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its child processes (MLServer's workers)."""
        hz = os.sysconf("SC_CLK_TCK")
        total = 0.0
        pids = [self.proc.pid]
        try:
            out = subprocess.run(
                ["pgrep", "-s", str(self.proc.pid)], capture_output=True, text=True
            ).stdout
            pids = sorted({self.proc.pid, *(int(x) for x in out.split())})
        except OSError:
            pass
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / hz
            except (OSError, IndexError, ValueError):
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # our session: server + workers
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.fh.close()

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_server(
    name: str, a: argparse.Namespace, port: int, results: Path, model_file: Path
) -> tuple[Server | None, str, str | None]:
    """Returns (server, request kind, reason it is unavailable)."""
    pin = ["taskset", "-c", str(a.server_core)]
    env = dict(os.environ)
    log = results / f"compare-{name}.log"
    if name.startswith("riskserve"):
        # riskserve-nolog: the same server without the prediction log (its cost);
        # riskserve-python: without the native path (every request decoded in Python
        # and scored through the batch queue, as before issue 13).
        if name == "riskserve-nolog":
            env["RISKSERVE_PREDICTION_LOG"] = "false"
        if name == "riskserve-python":
            env["RISKSERVE_NATIVE_PATH"] = "false"
        cmd = [str(RISKSERVE), "serve", "--models", str(a.models), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--metrics-port", str(port + 1)]
        return Server(name, pin + cmd, log, ROOT, env), "raw-fields", None
    if name.startswith("floor"):
        py = PY
        if name == "floor-grpc175":
            if not GRPC175_PY.exists():
                return None, "raw-fields", f"{GRPC175_PY} not found (bench/run_compare.sh makes it)"
            py = GRPC175_PY
            # riskserve's sources (the protobuf messages, the built extension) without
            # the package's dependencies: that venv holds grpcio 1.75 and nothing newer.
            env["PYTHONPATH"] = str(ROOT / "python")
        cmd = [str(py), str(ROOT / "bench/floor_server.py"), "--port", str(port)]
        cmd += ["--features", str(model_file.parent / "features.json")]  # same raw inputs
        cmd += ["--handlers", "generated" if name == "floor" else "generic"]
        return Server(name, pin + cmd, log, ROOT, env), "raw-fields", None
    if not MLSERVER.exists():
        return None, "matrix", f"{MLSERVER} not found (bench/run_compare.sh installs it)"
    folder = mlserver_config(name, results / "mlserver", model_file, (port, port + 1, port + 2))
    if name == "mlserver-tuned":
        env["OMP_NUM_THREADS"] = "1"
    # The working directory holds MLServer's .metrics / .envs folders.
    srv = Server(name, [*pin, str(MLSERVER), "start", str(folder)], log, folder, env)
    return srv, "matrix", None


def run_load(
    a: argparse.Namespace, target: str, kind: str, c: int, out: Path, features: Path
) -> dict[str, Any]:
    if a.generator == "loadgen":
        return run_loadgen(a, target, kind, c, out, features)
    cmd = ["taskset", "-c", str(a.client_core), str(PY), str(ROOT / "bench/load.py")]
    cmd += ["--target", target, "--model", "fraud", "--concurrency", str(c)]
    cmd += ["--duration", str(a.duration), "--warmup", str(a.warmup), "--rows", "1"]
    cmd += ["--request-kind", kind, "--out", str(out)]
    if kind == "matrix":
        cmd += ["--features", str(features)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"load.py failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(out.read_text())


def run_loadgen(
    a: argparse.Namespace, target: str, kind: str, c: int, out: Path, features: Path
) -> dict[str, Any]:
    """bench/loadgen, its report mapped onto load.py's fields."""
    reqs = out.parent / f"compare-requests-{kind}.bin"
    if not reqs.exists():  # the same requests for every server of a kind
        cmd = [str(PY), str(ROOT / "bench/make_requests.py"), "--target", target]
        cmd += ["--model", "fraud", "--request-kind", kind, "--out", str(reqs)]
        cmd += ["--features", str(features)]
        made = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"make_requests.py failed: {made.stderr[-800:]}")
    cmd = ["taskset", "-c", str(a.client_core), str(LOADGEN), "--target", target]
    cmd += ["--requests", str(reqs), "--concurrency", str(c), "--connections", str(c)]
    cmd += ["--duration", str(a.duration), "--warmup", str(a.warmup), "--out", str(out)]
    if kind == "matrix":
        cmd += ["--any-output"]  # MLServer answers FP64 typed contents
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr[-800:]}")
    doc = json.loads(out.read_text())
    errors = doc["errors"]
    return {
        "config": {"request_bytes": doc["request_bytes_mean"], "generator": "loadgen"},
        "result": {
            "requests": doc["requests"],
            "errors": sum(errors.values()),
            "errors_by_code": errors,
            "throughput_rps": doc["req_per_s"],
            "latency_ms": {**doc["latency_ms"], "p99.9": doc["latency_ms"]["p999"]},
            "generator_cpu": {"cores": doc["generator_cpu_cores"]},
        },
    }


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        if "result" not in r:
            continue
        key = f"{r['server']}@c{r['concurrency']}"
        s = out.setdefault(
            key,
            {"server": r["server"], "concurrency": r["concurrency"], "errors": 0}
            | {q: [] for q in ("rps", "p50", "p95", "p99")},
        )
        s["rps"].append(r["result"]["throughput_rps"])
        for q in ("p50", "p95", "p99"):
            s[q].append(r["result"]["latency_ms"][q])
        s["errors"] += r["result"]["errors"]
    for s in out.values():
        for q in ("rps", "p50", "p95", "p99"):
            s[f"{q}_median"] = med(s[q])
    return out


def ratios(summary: dict[str, dict[str, Any]], servers: list[str], conc: list[int]) -> list[Any]:
    res = []
    pairs = [("riskserve", other) for other in servers if other != "riskserve"]
    pairs += [p for p in FLOOR_RATIOS if p[0] in servers and p[1] in servers]
    for one, other in pairs:
        for c in conc:
            a, b = summary.get(f"{one}@c{c}"), summary.get(f"{other}@c{c}")
            if not a or not b:
                continue
            res.append(
                {
                    "ratio": f"{one}/{other}",
                    "concurrency": c,
                    "rps": a["rps_median"] / b["rps_median"],
                    "p50": a["p50_median"] / b["p50_median"],
                    "p99": a["p99_median"] / b["p99_median"],
                }
            )
    return res


def print_report(doc: dict[str, Any]) -> None:
    print(
        f"\ncompare: {doc['config']['rounds']} round(s), {doc['config']['duration']}s measured "
        f"after {doc['config']['warmup']}s warm-up, 1 row/request, server on core "
        f"{doc['config']['server_core']}, generator on core {doc['config']['client_core']}"
    )
    hdr = (
        f"{'server':<15} {'c':>2} {'req/s (median)':>14} {'per round':>17} | "
        f"{'p50':>6} {'p95':>6} {'p99':>6} (ms, median) | {'errors':>6} | {'srv cpu':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    cpu: dict[str, list[float]] = {}
    for r in doc["runs"]:
        if r.get("request_kind") == "raw-fields" and r["request_bytes"] < 100:
            print(f"warning: {r['server']} got {r['request_bytes']}-byte requests (no inputs?)")
        if "server_cpu_cores" in r:
            cpu.setdefault(f"{r['server']}@c{r['concurrency']}", []).append(r["server_cpu_cores"])
    for key, s in doc["summary"].items():
        rounds = "/".join(f"{x:.0f}" for x in s["rps"])
        srv_cpu = med(cpu.get(key, []))
        print(
            f"{s['server']:<15} {s['concurrency']:>2} {s['rps_median']:>14.0f} {rounds:>17} | "
            f"{s['p50_median']:>6.2f} {s['p95_median']:>6.2f} {s['p99_median']:>6.2f}"
            f"{'':14}| {s['errors']:>6} | {srv_cpu or 0:>6.0%}"
        )
    for name, why in doc["unavailable"].items():
        print(f"{name:<15}  UNAVAILABLE: {why}")
    if doc["ratios"]:
        print("\nratios of medians (req/s: >1 means riskserve is faster; latency: <1 means lower)")
        for r in doc["ratios"]:
            print(
                f"  {r['ratio']:<26} c={r['concurrency']:<2} req/s {r['rps']:.2f}x   "
                f"p50 {r['p50']:.2f}x   p99 {r['p99']:.2f}x"
            )
    print(
        "\nnote: MLServer gets the 97-feature FP32 matrix, transformed by the generator, so it "
        "does LESS work per request than riskserve (no raw-field decoding, no feature "
        "transform). floor gets riskserve's raw-field requests and does no model work."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", nargs="+", default=list(ALL_SERVERS), choices=ALL_SERVERS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--models", type=Path, default=ROOT / "bench/results/models")
    ap.add_argument("--port", type=int, default=18400, help="base port; each server gets +10")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--generator", choices=("loadgen", "load.py"), default="loadgen")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/compare.json")
    a = ap.parse_args(argv)

    a.out = a.out.resolve()
    if a.generator == "loadgen":
        build = ["cargo", "build", "--release", "--quiet", "--manifest-path"]
        subprocess.run([*build, str(ROOT / "bench/loadgen/Cargo.toml")], check=True)
        for stale in a.out.parent.glob("compare-requests-*.bin"):  # made anew per run
            stale.unlink()
    results = a.out.parent
    results.mkdir(parents=True, exist_ok=True)
    vdir = model_dir(a.models, "fraud")
    model_file, features = vdir / "model.txt", vdir / "features.json"
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}

    for rnd in range(1, a.rounds + 1):
        for i, name in enumerate(a.servers):
            if name in unavailable:
                continue
            port = a.port + 10 * i
            target = f"127.0.0.1:{port}"
            print(f"== round {rnd}: {name} on {target} (core {a.server_core})", flush=True)
            srv, kind, why = start_server(name, a, port, results, model_file)
            if srv is None:
                unavailable[name] = why or "unavailable"
                print(f"   {name}: UNAVAILABLE: {why}", flush=True)
                continue
            try:
                t_ready = time.monotonic()
                srv.wait_ready(target, "fraud")
                print(f"   ready in {time.monotonic() - t_ready:.1f}s", flush=True)
                for c in a.concurrency:
                    out = results / f"compare-{name}-r{rnd}-c{c}.json"
                    cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                    doc = run_load(a, target, kind, c, out, features)
                    cpu1, t1 = srv.cpu_seconds(), time.monotonic()
                    res = doc["result"]
                    lat = res["latency_ms"]
                    print(
                        f"   c={c}: {res['throughput_rps']:.0f} req/s, p50 {lat['p50']:.2f} "
                        f"p95 {lat['p95']:.2f} p99 {lat['p99']:.2f} ms, errors {res['errors']}, "
                        f"server cpu {(cpu1 - cpu0) / (t1 - t0):.0%}",
                        flush=True,
                    )
                    runs.append(
                        {
                            "server": name,
                            "round": rnd,
                            "concurrency": c,
                            "request_kind": kind,
                            "request_bytes": doc["config"]["request_bytes"],
                            "result": {
                                k: res[k]
                                for k in (
                                    "requests",
                                    "errors",
                                    "errors_by_code",
                                    "throughput_rps",
                                    "latency_ms",
                                    "generator_cpu",
                                )
                            },
                            # over the whole load.py run (setup + warm-up + window)
                            "server_cpu_cores": (cpu1 - cpu0) / (t1 - t0),
                            "load_json": rel(out),
                        }
                    )
            except Exception as e:  # one server failing must not sink the comparison
                reason = f"{type(e).__name__}: {e}"
                tail = srv.log_tail()
                print(f"   {name} FAILED: {reason}\n{tail}", flush=True)
                runs.append({"server": name, "round": rnd, "failed": reason, "log_tail": tail})
                if name.startswith("mlserver"):
                    unavailable[name] = f"{reason} (log: {srv.log})"
            finally:
                srv.stop()
            time.sleep(1)

    summary = summarize(runs)
    doc = {
        "benchmark": "compare",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "servers": a.servers,
            "rounds": a.rounds,
            "order": "interleaved: each round starts and stops every server in turn",
            "concurrency": a.concurrency,
            "duration": a.duration,
            "warmup": a.warmup,
            "rows_per_request": 1,
            "server_core": a.server_core,
            "client_core": a.client_core,
            "generator": a.generator,
            "model_dir": rel(vdir),
            "requests": {
                "riskserve": "raw fields: one input per raw column (35), raw_input_contents",
                "floor": "the same raw-field requests; canned FP32 [batch] reply",
                "mlserver": "one FP32 [1, n_features] matrix, pre-transformed by the "
                "generator with FeaturePipeline(features.json): MLServer does less work",
            },
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "runs": runs,
        "summary": summary,
        "ratios": ratios(summary, a.servers, a.concurrency),
        "unavailable": unavailable,
    }
    print_report(doc)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0 if any("result" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
