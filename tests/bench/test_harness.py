"""bench/load.py against a real server: a tiny model, ~2 s of closed-loop load and a short
open-loop sweep (2 rates x 1.5 s), sane JSON and PNGs.

Self-contained: trains its own model into tmp_path and starts its own server.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from riskserve.training.datagen import TARGET, run_datagen
from riskserve.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "bench" / "load.py"
SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _start_server(models: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    """Starts `riskserve serve --port 0`; returns it, its port and its stderr lines so far."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "riskserve.cli",
            "serve",
            "--models",
            str(models),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:  # drains stderr for the server's whole life
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            proc.kill()
            raise AssertionError("no 'serving' log line within 60 s:\n" + "".join(seen)) from None
        if line is None:
            raise AssertionError("server exited before serving:\n" + "".join(seen))
        seen.append(line)
        try:
            rec: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "serving":
            return proc, int(rec["port"]), seen


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.timeout(240)
def test_load_generator_against_a_real_server(tmp_path: Path) -> None:
    data = tmp_path / "data.parquet"
    run_datagen(3000, 0, data)
    train(
        TrainConfig(
            data=data,
            target=TARGET,
            model="fraud",
            models_dir=tmp_path / "models",
            spec=SPEC,
            rounds=10,
        )
    )

    proc, port, _ = _start_server(tmp_path / "models")
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
        assert proc.poll() is None, "the server died under load"

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
        assert proc.poll() is None, "the server died under open-loop load"

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
        _stop(proc)

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
