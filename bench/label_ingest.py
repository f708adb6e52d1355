"""Label ingest over StreamLabels into a real server's SQLite store.

    .venv/bin/python bench/label_ingest.py [--labels 200000] [--batch 1000 5000] [--rounds 3]

A copy of bench/results/models (bench/run_compare.sh trains it) is served by
`riskserve serve` pinned to core 0; the prediction log is filled beforehand with
one prediction per label (written straight into the store), so every label is
joined, as in production. The client (core 1) streams pre-built messages and
counts a label once its batch's reply (sent after the commit) arrives. Prints a
table and writes bench/results/label_ingest.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from riskserve.feedback.records import PredictionRow
from riskserve.feedback.sqlite import SqliteStore
from riskserve.ids import uuid7
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as fpb
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2_grpc as fgrpc

ROOT = Path(__file__).resolve().parents[1]

TOKEN = "bench-feedback-token"


def fill_predictions(models: Path, ids: list[str]) -> None:
    store = SqliteStore(models / ".feedback" / "feedback.sqlite")
    now = time.time() - 86400
    for i in range(0, len(ids), 5000):
        store.write_predictions(
            [
                PredictionRow(
                    id=r,
                    ts=now,
                    model="fraud",
                    version=1,
                    variant="v1",
                    revision=1,
                    key_hash=None,
                    score=0.1,
                    threshold=0.5,
                    flagged=False,
                    shadow=False,
                    inputs="{}",
                )
                for r in ids[i : i + 5000]
            ]
        )
    store.close()


def start(models: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RISKSERVE_FEEDBACK_TOKEN": TOKEN}
    cmd = ["taskset", "-c", "0", str(ROOT / ".venv/bin/riskserve"), "serve", "--models"]
    cmd += [str(models), "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while '"serving"' not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"server did not start; see {log}")
        time.sleep(0.2)
    return proc


def run(target: str, ids: list[str], batch: int) -> float:
    msgs = [
        fpb.SendLabelsRequest(
            labels=[
                fpb.Label(
                    request_id=r,
                    outcome=fpb.OUTCOME_FRAUD if j % 30 == 0 else fpb.OUTCOME_LEGITIMATE,
                    source="chargeback",
                    label_id=f"b{batch}-{r}",
                    label_time_ms=int(time.time() * 1000),
                )
                for j, r in enumerate(ids[i : i + batch])
            ]
        )
        for i in range(0, len(ids), batch)
    ]
    with grpc.insecure_channel(target) as ch:
        stub = fgrpc.FeedbackStub(ch)
        md = [("authorization", f"Bearer {TOKEN}")]
        started = time.perf_counter()
        acked = 0
        for reply in stub.StreamLabels(iter(msgs), metadata=md, timeout=600):
            acked += len(reply.results)
            if reply.counts["rejected"]:
                sys.exit(f"labels rejected: {reply.results[0].reason}")
        took = time.perf_counter() - started
    assert acked == len(ids), (acked, len(ids))
    return len(ids) / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=200_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=18600)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/label_ingest.json")
    a = ap.parse_args()
    os.sched_setaffinity(0, {1})
    src = ROOT / "bench/results/models"
    if not (src / "fraud").is_dir():
        sys.exit(f"{src}/fraud missing: run bench/run_compare.sh once (it trains it)")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for batch in a.batch:
                models = Path(tmp) / f"models-{r}-{batch}"
                shutil.copytree(src, models, ignore=shutil.ignore_patterns(".feedback"))
                ids = [uuid7() for _ in range(a.labels)]
                fill_predictions(models, ids)
                log = Path(tmp) / f"server-{r}-{batch}.log"
                proc = start(models, a.port, log)
                try:
                    rate = run(f"127.0.0.1:{a.port}", ids, batch)
                finally:
                    proc.terminate()
                    proc.wait(30)
                results.setdefault(f"batch {batch}", []).append(rate)
                print(f"round {r + 1} batch {batch}: {rate:,.0f} labels/s", flush=True)
    summary = {k: {"median": statistics.median(v), "runs": v} for k, v in results.items()}
    print(f"\n{'messages of':<14} {'labels/s (median of ' + str(a.rounds) + ')':>26}")
    for k, v in summary.items():
        print(f"{k:<14} {v['median']:>26,.0f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"labels": a.labels, "rounds": a.rounds, "summary": summary}, indent=2)
    )


if __name__ == "__main__":
    main()
