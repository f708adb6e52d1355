"""Rust FeaturePipeline vs a vectorised numpy reference, on the real fraud spec.

    python bench/transforms.py [--out bench/results/transforms.json]

Fits ``python/riskserve/training/specs/fraud.json`` with ``riskserve._native.fit_spec`` on
``datagen.generate(20000, 0)``, checks that ``bench/numpy_reference.py`` reproduces the Rust
output (|diff| <= 1e-6) on fresh rows and on an edge-case batch, then times both on fresh
rows (``generate(.., seed=1)``) at batch 1, 64 and 1024.

The two implementations are interleaved in rounds on the same batch so that they share
the machine's noise; the order inside a round alternates (A,B then B,A) so neither always
runs on a cold cache. GC is off while timing. Reported per batch size: median / p95 / mean
µs per batch for each, the ratio numpy/rust of medians and of p95s, and the median of the
per-round (paired) ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from numpy_reference import feature_names, reference_transform  # noqa: E402

from riskserve._native import FeaturePipeline, fit_spec  # noqa: E402
from riskserve.training.datagen import generate  # noqa: E402
from riskserve.training.train import columns_of  # noqa: E402

SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"
BATCHES = (1, 64, 1024)
#: Minimum speed-up (numpy / rust, median µs per batch) we aim for.
TARGETS = {1: 20.0, 64: None, 1024: 5.0}
TOLERANCE = 1e-6
#: Distinct fresh batches cycled through per batch size.
DISTINCT = 32

Columns = dict[str, Any]


def slice_columns(cols: Columns, start: int, stop: int) -> Columns:
    out: Columns = {}
    for k, v in cols.items():
        out[k] = np.ascontiguousarray(v[start:stop]) if isinstance(v, np.ndarray) else v[start:stop]
    return out


def edge_case_batch(cols: Columns, spec: dict[str, Any]) -> Columns:
    """64 fresh rows with missing, unseen, non-finite and out-of-range values injected."""
    b = slice_columns(cols, 0, 64)
    dtypes = {i["name"]: i["dtype"] for i in spec["inputs"]}
    rng = np.random.default_rng(7)
    odd_floats = [np.nan, np.inf, -np.inf, -3.5, 0.0, -0.0, 1e300, -1e300, 1e-300]
    odd_strings: list[str | None] = [None, "", "zz-unseen", "ünïcödé", "a" * 41, "x"]
    for name, dtype in dtypes.items():
        rows = rng.choice(64, size=12, replace=False)
        if dtype == "float":
            col = b[name].copy()
            col[rows] = rng.choice(odd_floats, size=12)
            b[name] = col
        elif dtype == "string":
            col = list(b[name])
            for r in rows:
                col[r] = odd_strings[int(rng.integers(len(odd_strings)))]
            b[name] = col
        elif dtype == "int":
            col = b[name].copy()
            col[rows] = rng.choice([-5, 0, 10**9, -(10**9)], size=12)
            b[name] = col
    b["avg_amount_30d"][:4] = 0.0  # ratio denominators of zero
    return b


def check_parity(
    pipe: FeaturePipeline, spec: dict[str, Any], batches: list[Columns]
) -> dict[str, Any]:
    if feature_names(spec) != list(pipe.feature_names):
        raise SystemExit("numpy reference feature names differ from the Rust pipeline's")
    worst, rows, mismatched = 0.0, 0, 0
    for b in batches:
        a, r = pipe.transform(b), reference_transform(spec, b)
        if a.shape != r.shape or a.dtype != r.dtype:
            raise SystemExit(
                f"shape/dtype differ: rust {a.shape} {a.dtype}, numpy {r.shape} {r.dtype}"
            )
        diff = np.abs(a.astype(np.float64) - r.astype(np.float64))
        worst = max(worst, float(diff.max(initial=0.0)))
        mismatched += int((diff > TOLERANCE).sum())
        rows += a.shape[0]
    if mismatched:
        raise SystemExit(f"numpy reference differs from Rust: {mismatched} cells > {TOLERANCE}")
    return {"rows_checked": rows, "max_abs_diff": worst, "tolerance": TOLERANCE, "ok": True}


def stats_us(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {
        "median": float(np.median(us)),
        "p95": float(np.percentile(us, 95)),
        "mean": float(us.mean()),
        "min": float(us.min()),
    }


def interleaved(
    fa: Callable[[Columns], Any],
    fb: Callable[[Columns], Any],
    batches: list[Columns],
    rounds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Times fa and fb on the same batch each round, alternating which goes first."""
    ta = np.empty(rounds, dtype=np.int64)
    tb = np.empty(rounds, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            b = batches[i % len(batches)]
            if i % 2 == 0:
                t0 = clock()
                fa(b)
                t1 = clock()
                fb(b)
                t2 = clock()
                ta[i], tb[i] = t1 - t0, t2 - t1
            else:
                t0 = clock()
                fb(b)
                t1 = clock()
                fa(b)
                t2 = clock()
                tb[i], ta[i] = t1 - t0, t2 - t1
    finally:
        gc.enable()
    return ta, tb


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]  # read-only calls
    try:
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rev += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git_rev": rev,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "transforms.json"))
    ap.add_argument("--fit-rows", type=int, default=20000)
    ap.add_argument(
        "--seconds",
        type=float,
        default=4.0,
        help="time budget per batch size (sets the number of rounds, 200..5000)",
    )
    ap.add_argument("--rounds", type=int, help="fixed number of rounds per batch size")
    a = ap.parse_args(argv)

    template = SPEC.read_text()
    names = [i["name"] for i in json.loads(template)["inputs"]]
    t0 = time.perf_counter()
    spec_json = fit_spec(template, columns_of(generate(a.fit_rows, 0), names))
    spec = json.loads(spec_json)
    pipe = FeaturePipeline(spec_json)
    fresh = columns_of(generate(max(BATCHES) * DISTINCT, 1), names)
    print(
        f"fitted {SPEC.name} on {a.fit_rows} rows: {pipe.n_features} features "
        f"({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
    )

    plan: dict[int, list[Columns]] = {
        b: [slice_columns(fresh, i * b, (i + 1) * b) for i in range(DISTINCT)] for b in BATCHES
    }
    parity_batches = [fresh, edge_case_batch(fresh, spec)] + [x for bs in plan.values() for x in bs]
    parity = check_parity(pipe, spec, parity_batches)
    print(
        f"parity: {parity['rows_checked']} rows, max |rust - numpy| = {parity['max_abs_diff']:.3g}",
        file=sys.stderr,
    )

    def rust(b: Columns) -> Any:
        return pipe.transform(b)

    def numpy_ref(b: Columns) -> Any:
        return reference_transform(spec, b)

    results = []
    for b in BATCHES:
        batches = plan[b]
        warm_a, warm_b = interleaved(rust, numpy_ref, batches, 20)
        per_round = float(np.median(warm_a) + np.median(warm_b)) / 1e9
        rounds = a.rounds or int(min(5000, max(200, a.seconds / per_round)))
        ta, tb = interleaved(rust, numpy_ref, batches, rounds)
        rs, ns = stats_us(ta), stats_us(tb)
        target = TARGETS.get(b)
        ratio = ns["median"] / rs["median"]
        row = {
            "batch": b,
            "rounds": rounds,
            "rust_us": rs,
            "numpy_us": ns,
            "ratio_median": ratio,
            "ratio_p95": ns["p95"] / rs["p95"],
            "ratio_paired_median": float(np.median(tb / ta)),
            "rust_ns_per_row": rs["median"] * 1e3 / b,
            "numpy_ns_per_row": ns["median"] * 1e3 / b,
            "target": target,
            "meets_target": None if target is None else bool(ratio >= target),
        }
        results.append(row)
        print(f"batch {b}: {rounds} rounds done", file=sys.stderr)

    hdr = (
        f"{'batch':>5} {'rounds':>6} | {'rust med':>9} {'rust p95':>9} | "
        f"{'numpy med':>10} {'numpy p95':>10} | {'ratio med':>9} {'ratio p95':>9} "
        f"{'paired':>7} | target"
    )
    print(
        f"\nRust FeaturePipeline vs numpy reference, fraud spec ({pipe.n_features} features), "
        "µs per batch"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        tgt = (
            "—"
            if r["target"] is None
            else (f">= {r['target']:.0f}x " + ("PASS" if r["meets_target"] else "FAIL"))
        )
        print(
            f"{r['batch']:>5} {r['rounds']:>6} | {r['rust_us']['median']:>9.1f} "
            f"{r['rust_us']['p95']:>9.1f} | {r['numpy_us']['median']:>10.1f} "
            f"{r['numpy_us']['p95']:>10.1f} | {r['ratio_median']:>8.1f}x {r['ratio_p95']:>8.1f}x "
            f"{r['ratio_paired_median']:>6.1f}x | {tgt}"
        )

    doc = {
        "benchmark": "transforms",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "spec": {
            "path": str(SPEC.relative_to(ROOT)),
            "fit_rows": a.fit_rows,
            "n_features": pipe.n_features,
            "fitted_sha256": hashlib.sha256(spec_json.encode()).hexdigest(),
        },
        "inputs": "columns_of(generate(32768, seed=1)): numpy arrays + lists of str",
        "method": "interleaved rounds on the same batch, order alternating per round, GC off",
        "parity": parity,
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
