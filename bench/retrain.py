"""Wall time of `riskserve retrain` from a day's log of labelled predictions, by step.

    python bench/retrain.py [--rows 1000000] [--champion-rows 200000] [--rounds 300]
        [--work DIR] [--out bench/results/retrain.json] [--no-baseline]

Setup (timed, but not part of the goal):

* a champion `fraud` v1: `riskserve train` on `--champion-rows` generated payments
  (the fraud spec, `--rounds` boosting rounds, the default LightGBM parameters);
* the default SQLite feedback store under the models folder, filled directly through
  the store API (not through a server): `--rows` predictions of one day, 15 days ago
  (the fraud spec's 35 raw inputs as the server logs them, `_native.rows_json`), in
  batches of 2,000 like the prediction log's writer, and a label for every one of them
  (its generated `is_fraud`, the amount, a few days later) in batches of 1,000 like
  `riskserve labels send`.

Measured: `riskserve retrain --model fraud --models DIR --json` as a subprocess with
the defaults (maturity 14 d, window 30 d: the whole day), end to end (process start to
exit: imports, the snapshot, training, both evaluations, the gate, registering), and
the steps from the timestamps of its progress lines. Side by side, the baseline: the
same training rows from a file, `riskserve train --data <the snapshot>` (no log, a
random holdout): what retraining adds to training itself.

`--work DIR` keeps the models folder and store between runs (the setup is skipped when
DIR already holds them); every run registers one more version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"
DAY = 86400.0
GOAL_SECONDS = 300.0

#: A progress line of the CLI: "[retrain   12.3s] message".
LINE = re.compile(r"^\[(\w+)\s+([0-9.]+)s\] (.*)$")
#: Message prefix → the step that ends with it (the time since the previous line).
STEPS = (
    ("champion ", "start: imports, the champion read and verified"),
    ("snapshot of ", "opening the store"),
    ("read ", "reading the log: the store's stream, inputs JSON → Arrow"),
    ("writing the snapshot", "retried ids, canonical order, counts"),
    ("snapshot ", "Parquet written and hashed (the data version)"),
    ("time split", "time split, class checks"),
    ("fitting the feature spec", "importing LightGBM"),
    ("features from", "spec refit + both feature matrices (Rust)"),
    ("boosting round", "LightGBM training"),
    ("operating threshold", "holdout scored as served + threshold"),
    ("holdout AUC", "evaluation"),
    ("fitting drift reference", "evaluation"),
    ("scoring the holdout with", "drift reference bins"),
    ("gate ", "champion scored + the gate"),
    ("the gate refused", "the gate"),
    ("--dry-run", "the gate"),
    ("registered ", "registering (files written, fsynced, verified)"),
)


def step_of(message: str) -> str:
    for prefix, step in STEPS:
        if message.startswith(prefix) or (prefix == "features from" and prefix in message):
            return step
    return "other"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def setup(work: Path, rows: int, champion_rows: int, rounds: int) -> dict[str, Any]:
    """The champion and the filled store (skipped when `work` has them)."""
    from riskserve._native import rows_json
    from riskserve.feedback.records import Label, Outcome, PredictionRow
    from riskserve.feedback.sqlite import SqliteStore
    from riskserve.training.datagen import generate, run_datagen
    from riskserve.training.train import TrainConfig, columns_of, train

    models = work / "models"
    done = work / "setup.json"
    if done.is_file():
        info: dict[str, Any] = json.loads(done.read_text())
        if (info["rows"], info["champion_rows"], info["rounds"]) == (rows, champion_rows, rounds):
            print(f"reusing {work} (setup of {info['created_at']})", file=sys.stderr)
            return info
        raise SystemExit(f"{work} was set up for other arguments: {info}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = work / "champion.parquet"
    run_datagen(champion_rows, 1, data)
    train(
        TrainConfig(data=data, target="is_fraud", model="fraud", models_dir=models, spec=SPEC,
                    seed=1, rounds=rounds),
        progress=lambda m: print(f"  champion: {m}", file=sys.stderr),
    )  # fmt: skip
    champion_s = time.perf_counter() - t0

    names = [i["name"] for i in json.loads(SPEC.read_text())["inputs"]]
    store = SqliteStore(models / ".feedback" / "feedback.sqlite")
    day = time.time() - 15 * DAY
    step = DAY / rows
    t0 = time.perf_counter()
    written = 0
    label_s = 0.0
    chunk_rows = 100_000
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        table = generate(n, 1000 + start // chunk_rows)
        inputs = rows_json(columns_of(table, names), n)
        y = table.column("is_fraud").to_numpy()
        amount = table.column("amount").to_numpy()
        preds = [
            PredictionRow(
                id=f"txn-{start + i:08d}", ts=day + (start + i) * step, model="fraud",
                version=1, variant="v1", revision=1, key_hash=f"{(start + i) % 50000:032x}",
                score=0.01, threshold=0.5, flagged=False, shadow=False, inputs=inputs[i],
            )
            for i in range(n)
        ]  # fmt: skip
        for b in range(0, n, 2000):
            store.write_predictions(preds[b : b + 2000])
        labels = [
            Label(f"lab-{start + i:08d}", f"txn-{start + i:08d}", Outcome(int(y[i])),
                  day + (start + i) * step + 3 * DAY, "chargeback", float(amount[i]))
            for i in range(n)
        ]  # fmt: skip
        t1 = time.perf_counter()
        for b in range(0, n, 1000):
            store.write_labels(labels[b : b + 1000], time.time())
        label_s += time.perf_counter() - t1
        written += n
        print(f"  store: {written}/{rows} predictions and labels", file=sys.stderr)
    fill_s = time.perf_counter() - t0
    counts = store.counts()
    store.close()
    info = {
        "rows": rows,
        "champion_rows": champion_rows,
        "rounds": rounds,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "champion_train_seconds": round(champion_s, 1),
        "store_fill_seconds": round(fill_s, 1),
        "label_write_seconds": round(label_s, 1),
        "store_counts": {"predictions": counts.predictions, "labels": counts.labels},
        "store_bytes": (models / ".feedback" / "feedback.sqlite").stat().st_size,
    }
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str], float, float]:
    """Wall seconds, the process, its max RSS (MiB) and its CPU seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSERVE_")}
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "riskserve.cli", *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    return wall, proc, rss_mib(), cpu_seconds() - cpu0


def breakdown(stderr: str, wall: float) -> list[tuple[str, float]]:
    """Seconds per step, in the order steps first appear, from the progress lines."""
    out: dict[str, float] = {}
    last = 0.0
    for line in stderr.splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        t = float(m.group(2))
        step = step_of(m.group(3))
        out[step] = out.get(step, 0.0) + (t - last)
        last = t
    # Before the first line (Python starting, the CLI's imports) and after the last.
    out["outside the progress clock: start-up, imports, exit"] = max(0.0, wall - last)
    return list(out.items())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--champion-rows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--work", type=Path, default=None, help="kept between runs")
    p.add_argument("--out", type=Path, default=HERE / "results" / "retrain.json")
    p.add_argument("--no-baseline", action="store_true")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="riskserve-bench-retrain-"))
    info = setup(work, a.rows, a.champion_rows, a.rounds)
    models = work / "models"

    print(f"retrain from {a.rows:,} labelled predictions ...", file=sys.stderr)
    load = os.getloadavg()[0]
    wall, proc, rss, cpu = run_cli(
        ["retrain", "--model", "fraud", "--models", str(models), "--json"]
    )
    if proc.returncode not in (0, 3):
        print(proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"riskserve retrain exited with {proc.returncode}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = breakdown(proc.stderr, wall)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": info,
        "retrain": {
            "wall_seconds": round(wall, 1),
            "goal_seconds": GOAL_SECONDS,
            "goal_met": wall <= GOAL_SECONDS,
            "cpu_seconds": round(cpu, 1),
            "load_average_1m_before": round(load, 2),
            "max_rss_mib": round(rss),
            "exit_code": proc.returncode,
            "registered": doc["registered"],
            "version": doc["version"],
            "rows": doc["rows"],
            "gate": {k: doc["gate"][k] for k in ("passed", "champion", "challenger", "failures")},
            "steps": [{"step": s, "seconds": round(v, 2)} for s, v in steps],
        },
    }
    print(f"\n{'step':<60} {'seconds':>8} {'share':>6}")
    for s, v in steps:
        print(f"{s:<60} {v:>8.1f} {v / wall:>6.1%}")
    verdict = "met" if wall <= GOAL_SECONDS else "MISSED"
    print(f"{'end to end':<60} {wall:>8.1f}   (goal {GOAL_SECONDS:.0f} s: {verdict})")
    print(f"CPU {cpu:.1f} s (load average {load:.1f} before it ran on {os.cpu_count()} CPUs)")
    print(f"max RSS {rss:,.0f} MiB; gate passed: {doc['gate']['passed']}")

    if not a.no_baseline:
        snapshot = Path(doc["snapshot"])
        print(
            f"\nbaseline: riskserve train on the snapshot's {doc['rows']:,} rows ...",
            file=sys.stderr,
        )
        bload = os.getloadavg()[0]
        bwall, bproc, _, bcpu = run_cli(
            ["train", "--data", str(snapshot), "--target", "is_fraud", "--model", "baseline",
             "--models", str(work / "baseline-models"), "--spec", str(SPEC), "--seed", "1",
             "--rounds", str(a.rounds)]
        )  # fmt: skip
        if bproc.returncode != 0:
            print(bproc.stderr[-5000:], file=sys.stderr)
            raise SystemExit("riskserve train (baseline) failed")
        result["baseline_train"] = {
            "wall_seconds": round(bwall, 1),
            "cpu_seconds": round(bcpu, 1),
            "load_average_1m_before": round(bload, 2),
        }
        print(f"riskserve train on the same rows from a file: {bwall:.1f} s, CPU {bcpu:.1f} s")
        print(f"retrain / train: wall {wall / bwall:.2f}x, CPU {cpu / bcpu:.2f}x")
        result["retrain_over_train"] = {"wall": round(wall / bwall, 2), "cpu": round(cpu / bcpu, 2)}

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
