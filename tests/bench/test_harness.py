"""The load harness against a real server: bench/load.py (a tiny model, ~2 s of
closed-loop load, a short open-loop sweep, a stream run; sane JSON and PNGs) and
bench/loadgen, the Rust generator (built here with cargo; sane JSON, and requests
whose deadline expires leave no error in the server's log).

Self-contained: trains its own model and starts its own servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ServerHandle, train_model

from riskserve.training.datagen import run_datagen

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "bench" / "load.py"
MAKE_REQUESTS = ROOT / "bench" / "make_requests.py"
LOADGEN_TOML = ROOT / "bench" / "loadgen" / "Cargo.toml"
LOADGEN = ROOT / "bench" / "loadgen" / "target" / "release" / "loadgen"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("harness")
    run_datagen(3000, 0, d / "data.parquet")
    train_model(d / "data.parquet", d / "models", rounds=10)
    return d / "models"


@pytest.mark.timeout(240)
def test_load_generator_against_a_real_server(
    models: Path, tmp_path: Path, start_server: Callable[..., ServerHandle]
) -> None:
    h = start_server(models)
    port = h.port
    try:
        out, png = tmp_path / "load.json", tmp_path / "load.png"
        run = subprocess.run(
            [
                sys.executable,
                str(LOAD),
                "--target",
                f"127.0.0.1:{port}",
                "--model",
                "fraud",
                "--concurrency",
                "2",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--rows",
                "4",
                "--requests",
                "16",
                "--out",
                str(out),
                "--png",
                str(png),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert h.proc.poll() is None, "the server died under load"

        open_out, open_png = tmp_path / "open.json", tmp_path / "open.png"
        open_run = subprocess.run(
            [
                sys.executable,
                str(LOAD),
                "--target",
                f"127.0.0.1:{port}",
                "--model",
                "fraud",
                "--rates",
                "50,100",
                "--duration",
                "1.5",
                "--warmup",
                "0.3",
                "--requests",
                "16",
                "--out",
                str(open_out),
                "--png",
                str(open_png),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        assert open_run.returncode == 0, open_run.stdout + open_run.stderr
        assert h.proc.poll() is None, "the server died under open-loop load"

        stream_out = tmp_path / "stream.json"
        stream_run = subprocess.run(
            [
                sys.executable,
                str(LOAD),
                "--target",
                f"127.0.0.1:{port}",
                "--rpc",
                "stream",
                "--concurrency",
                "2",
                "--duration",
                "1",
                "--warmup",
                "0.3",
                "--rows",
                "4",
                "--requests",
                "16",
                "--out",
                str(stream_out),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        assert stream_run.returncode == 0, stream_run.stdout + stream_run.stderr
        sres = json.loads(stream_out.read_text())["result"]
        # Every reply on the streams was checked like a unary one (4 FP32 scores).
        assert sres["requests"] > 0 and sres["errors"] == 0, sres
        assert sres["rows_per_second"] == pytest.approx(4 * sres["throughput_rps"])
    finally:
        h.stop()

    doc = json.loads(out.read_text())
    res, lat = doc["result"], doc["result"]["latency_ms"]
    assert doc["config"]["concurrency"] == 2 and doc["config"]["rows"] == 4
    assert res["requests"] > 0
    assert res["errors"] == 0 and res["errors_by_code"] == {}
    assert res["throughput_rps"] > 0
    assert res["rows_per_second"] == pytest.approx(4 * res["throughput_rps"])
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert lat["max"] < 10_000  # ms; under the 10 s deadline
    assert sum(t["requests"] for t in res["timeline"]) == res["requests"]
    assert "req/s" in run.stdout  # the table

    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == PNG_MAGIC

    odoc = json.loads(open_out.read_text())
    assert odoc["mode"] == "open" and odoc["scenario"] == "sweep"
    assert odoc["offered_rps"] == [50, 100]
    assert odoc["config"]["concurrency"] == 1000  # the default cap in flight
    points = odoc["points"]
    assert [p["offered_rps"] for p in points] == [50, 100]
    for p in points:
        r, lat = p["result"], p["result"]["latency_ms"]
        assert r["offered_rps"] == p["offered_rps"]
        assert r["scheduled"] == pytest.approx(1.5 * p["offered_rps"], abs=1)
        assert r["achieved_rps"] == pytest.approx(p["offered_rps"], rel=0.3)
        assert r["errors"] == 0 and r["errors_by_code"] == {}
        assert r["dropped_by_generator"] == 0 and r["unfinished"] == 0
        assert r["requests"] == r["scheduled"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["send_lag_ms"]["p50"] >= 0  # never sent before its scheduled time
    assert "offered" in open_run.stdout and "achieved" in open_run.stdout
    assert open_png.stat().st_size > 1000
    assert open_png.read_bytes()[:8] == PNG_MAGIC


def _loadgen(port: int, requests: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(str(LOADGEN), "--target", f"127.0.0.1:{port}", "--requests", str(requests)),
            *("--duration", "1.5", "--warmup", "0.3", "--out", str(out), *args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # cargo builds bench/loadgen
@pytest.mark.timeout(600)
def test_rust_load_generator_against_a_real_server(
    models: Path, tmp_path: Path, start_server: Callable[..., ServerHandle]
) -> None:
    build = subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", str(LOADGEN_TOML)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert build.returncode == 0, build.stderr
    h = start_server(models)
    port = h.port
    try:
        reqs = {}
        for rows in (1, 64):
            reqs[rows] = tmp_path / f"req{rows}.bin"
            made = subprocess.run(
                [
                    *(sys.executable, str(MAKE_REQUESTS), "--target", f"127.0.0.1:{port}"),
                    *("--rows", str(rows), "--requests", "8", "--out", str(reqs[rows])),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
            )
            assert made.returncode == 0, made.stdout + made.stderr
        ok = _loadgen(port, reqs[1], tmp_path / "ok.json", "--concurrency", "4")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        opened = _loadgen(
            port, reqs[1], tmp_path / "open.json", "--rate", "200", "--concurrency", "100"
        )
        assert opened.returncode == 0, opened.stdout + opened.stderr
        # Deadlines far below a 64-row request's service time: every one expires.
        late = _loadgen(
            port, reqs[64], tmp_path / "late.json", "--rows", "64", "--concurrency", "16",
            "--timeout", "0.001",
        )  # fmt: skip
        assert late.returncode in (0, 1), late.stdout + late.stderr  # 1: no reply was OK
        assert h.proc.poll() is None, "the server died under load"
        # Still serving after the storm of expired deadlines. Right after it, gRPC core
        # may cancel new calls for a moment while it drains the thousands of cancelled
        # ones (seen for up to ~2 s): retry the first call for a while.
        for _ in range(15):
            after = _loadgen(port, reqs[64], tmp_path / "after.json", "--rows", "64")
            if "first ModelInfer" not in after.stderr:
                break
            time.sleep(1)
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        h.stop()
    log = h.lines

    doc = json.loads((tmp_path / "ok.json").read_text())
    lat = doc["latency_ms"]
    assert doc["concurrency"] == 4 and doc["requests"] > 0 and doc["errors"] == {}
    assert doc["req_per_s"] > 0 and doc["rows_per_s"] == pytest.approx(doc["req_per_s"])
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"] < 10_000
    assert 0 <= doc["generator_cpu_cores"] < 1.5
    assert "req/s" in ok.stdout

    # Open loop: every request scheduled in the 1.5 s window was sent on time and answered.
    odoc = json.loads((tmp_path / "open.json").read_text())
    assert odoc["mode"] == "open" and odoc["offered_rps"] == 200
    assert abs(odoc["requests"] - 300) <= 1 and odoc["errors"] == {} and odoc["dropped"] == 0
    assert 0 <= odoc["send_lag_ms"]["p50"] <= odoc["send_lag_ms"]["p99"] < 50
    olat = odoc["latency_ms"]
    assert 0 < olat["p50"] <= olat["p95"] <= olat["p99"] <= olat["max"] < 10_000
    assert doc["mode"] == "closed" and doc["dropped"] == 0

    late_doc = json.loads((tmp_path / "late.json").read_text())
    assert late_doc["errors"].get("DEADLINE_EXCEEDED", 0) > 0, late_doc
    # A reply that would come after the deadline is dropped as cancelled (nothing is
    # sent on a call gRPC core has ended); a client whose own timer is a hair later
    # than the deadline may see that CANCELLED before its timer fires.
    assert set(late_doc["errors"]) <= {"DEADLINE_EXCEEDED", "CANCELLED"}, late_doc
    after_doc = json.loads((tmp_path / "after.json").read_text())
    assert after_doc["requests"] > 0 and after_doc["errors"] == {}
    # An expired deadline is the client's business: no error, no traceback here.
    bad = [ln for ln in log if '"level": "error"' in ln or "Traceback" in ln]
    assert not bad, "".join(bad[:3])


@pytest.mark.timeout(300)
def test_hot_swap_scenario(
    models: Path, tmp_path: Path, start_server: Callable[..., ServerHandle]
) -> None:
    """load.py --swap-every: promotions through the admin API during the measured
    window, recorded with their times; no request fails."""
    two = tmp_path / "models"
    shutil.copytree(models, two)
    train_model(models.parent / "data.parquet", two, rounds=10, seed=7)
    token = "harness-swap-token"
    h = start_server(two, env={"RISKSERVE_ADMIN_TOKEN": token})
    port = h.port
    out = tmp_path / "swap.json"
    try:
        run = subprocess.run(
            [
                *(sys.executable, str(LOAD), "--target", f"127.0.0.1:{port}"),
                *("--concurrency", "4", "--duration", "2.5", "--warmup", "0.5"),
                *("--swap-every", "0.5", "--out", str(out), "--png", str(tmp_path / "swap.png")),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
            env={**os.environ, "RISKSERVE_ADMIN_TOKEN": token},
        )
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        h.stop()
    res = json.loads(out.read_text())["result"]
    assert res["errors"] == 0 and res["requests"] > 0
    swaps = res["swaps"]
    assert len(swaps) == 4  # at 0.5, 1.0, 1.5 and 2.0 s into the 2.5 s window
    assert [w["op"] for w in swaps] == ["promote v2", "promote v1", "promote v2", "promote v1"]
    revs = [w["revision"] for w in swaps]
    assert revs == sorted(revs) and len(set(revs)) == 4
    assert all(0 <= w["t"] <= 2.5 for w in swaps)
    around = res["around_swaps"]
    assert around["within_1s_after_a_swap"]["requests"] > 0
    assert "hot swaps: 4 promotions" in run.stdout
