"""The model inside one request, side by side in one run: LightGBM's Booster.predict,
the LightGBM C API as the server calls it today (LightGBMRuntime), lleaves-compiled
LightGBM as the server swaps it in (CompiledLightGBM) and its compiled function
called bare (ctypes, inputs prepared: about what calling it from Rust would cost),
and the Rust tree evaluator (riskserve._native.Gbdt), at batch 1 and 64.

    .venv/bin/python bench/model_speed.py [--models bench/results/models] [--cpu 0]
        [--calls 10000] [--out bench/results/model_speed.json]

The model is the bench model (bench/common.sh: 50,000 datagen rows, the fraud spec,
300 rounds of 63 leaves), trained here the same way if MODELS has no `fraud`; lleaves
compiles it once into the server's compile cache (~2.5 minutes of one core; later runs
load it). Rows are fresh datagen rows (seed 1) through the model's FeaturePipeline,
cycled through so no runtime sees the same batch twice in a row.

Method: every round calls each runtime once on the same batch, in an order that
rotates per round (so none always runs first or on a cache another warmed); GC off.
Reported per batch size and runtime: median, p99, mean and min µs per call, rows/s
at the median, and each runtime's median and p99 over Gbdt's. Before timing, every
runtime's scores are compared with Booster.predict on all the rows (max |diff|).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from transforms import machine  # noqa: E402

from riskserve._native import FeaturePipeline, Gbdt  # noqa: E402
from riskserve.config import CompileSettings  # noqa: E402
from riskserve.registry import ModelRepository  # noqa: E402
from riskserve.runtime.compiled import CompiledLightGBM, compile_to, object_path  # noqa: E402
from riskserve.runtime.runtimes import LightGBMRuntime  # noqa: E402
from riskserve.training.datagen import generate, run_datagen  # noqa: E402
from riskserve.training.train import TrainConfig, columns_of, train  # noqa: E402

SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"
BATCHES = (1, 64)
SCORE_ROWS = 16_384
TOLERANCE = 1e-6

Matrix = npt.NDArray[np.float32]
Runtime = Callable[[Matrix], Any]


def ensure_model(models: Path, data: Path) -> None:
    """The bench model, as bench/common.sh's ensure_bench_model trains it."""
    if (models / "fraud").is_dir():
        return
    if not data.exists():
        print(f"== datagen 50000 rows -> {data}", file=sys.stderr)
        run_datagen(50_000, 0, data)
    print(f"== train fraud (fraud spec, 300 rounds) -> {models}", file=sys.stderr)
    train(
        TrainConfig(
            data=data, target="is_fraud", model="fraud", models_dir=models, spec=SPEC, rounds=300
        ),
        progress=lambda m: print(m, file=sys.stderr),
    )


def stats_us(ns: npt.NDArray[np.int64]) -> dict[str, float]:
    us = ns / 1e3
    return {
        "median": float(np.median(us)),
        "p99": float(np.percentile(us, 99)),
        "mean": float(us.mean()),
        "min": float(us.min()),
    }


def rotated(runtimes: dict[str, Runtime], batches: list[Matrix], rounds: int) -> dict[str, Any]:
    """ns per call of each runtime; round i calls them all on batch i, starting at
    runtime i mod n."""
    names = list(runtimes)
    times = {n: np.empty(rounds, dtype=np.int64) for n in names}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            b = batches[i % len(batches)]
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                f = runtimes[name]
                t0 = clock()
                f(b)
                times[name][i] = clock() - t0
    finally:
        gc.enable()
    return times


def bare_lleaves(compiled: CompiledLightGBM, batches: list[Matrix]) -> Runtime:
    """The compiled forest's entry point called directly through ctypes on inputs
    already widened to float64 (outside the timing), into a preallocated output:
    close to what calling the compiled function from Rust would cost."""
    entry = compiled._model._c_entry_func  # lleaves' (in, out, start, end) function
    prepared = {}
    for b in batches:
        in64 = np.ascontiguousarray(b, dtype=np.float64)
        out64 = np.zeros(len(b), dtype=np.float64)
        ptrs = (
            in64.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            out64.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        prepared[id(b)] = (in64, out64, ptrs, len(b))

    def call(b: Matrix) -> Any:
        _, out64, (pin, pout), n = prepared[id(b)]
        entry(pin, pout, 0, n)
        return out64

    return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(HERE / "results" / "models"))
    ap.add_argument("--data", default=str(HERE / "results" / "data" / "payments.csv"))
    ap.add_argument("--cache-dir", default=str(CompileSettings().cache_dir.expanduser()))
    ap.add_argument(
        "--calls", type=int, default=10_000, help="calls per runtime at batch 1 (a tenth at 64)"
    )
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU")
    ap.add_argument("--out", default=str(HERE / "results" / "model_speed.json"))
    a = ap.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})

    models = Path(a.models)
    ensure_model(models, Path(a.data))
    repo = ModelRepository(models)
    ref = repo.version("fraud", 1)
    sha = repo.verify(ref).model_sha256
    model_txt = ref.path / "model.txt"
    text = model_txt.read_bytes()
    pipeline = FeaturePipeline((ref.path / "features.json").read_text())
    n = pipeline.n_features
    names = [name for name, _ in pipeline.inputs]
    x = pipeline.transform(columns_of(generate(SCORE_ROWS, 1), names))

    obj = object_path(Path(a.cache_dir), sha)
    if not obj.exists():
        print(f"compiling with lleaves -> {obj} (minutes)", file=sys.stderr)
        t0 = time.perf_counter()
        compile_to(model_txt, obj)
        print(f"compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    import lightgbm

    booster = lightgbm.Booster(model_str=text.decode())
    capi = LightGBMRuntime(text, n)
    compiled = CompiledLightGBM(text, obj, n)
    t0 = time.perf_counter()
    gbdt = Gbdt(text.decode())
    parse_ms = (time.perf_counter() - t0) * 1e3

    runtimes: dict[str, Runtime] = {
        "Booster.predict": lambda b: booster.predict(b, num_threads=1),
        "C API (today)": capi.predict,
        "lleaves": compiled.predict,
        "Gbdt (Rust)": gbdt.predict,
    }
    want = booster.predict(x)
    parity = {
        name: float(np.max(np.abs(np.asarray(f(x), dtype=np.float64) - want)))
        for name, f in runtimes.items()
    }
    bit_identical = bool(np.array_equal(gbdt.predict(x), want))
    for name, diff in parity.items():
        print(f"parity {name}: {len(x)} rows, max |diff| = {diff:.3g}", file=sys.stderr)
    # The runtimes that return float32 differ from the float64 reference by rounding.
    if parity["Gbdt (Rust)"] > TOLERANCE or parity["lleaves"] > TOLERANCE:
        raise SystemExit("scores differ from LightGBM's")

    results = []
    for batch in BATCHES:
        batches = [np.ascontiguousarray(x[i : i + batch]) for i in range(0, len(x), batch)]
        runtimes["lleaves, bare call"] = bare_lleaves(compiled, batches)
        rounds = a.calls if batch == 1 else max(200, a.calls // 10)
        rotated(runtimes, batches, min(rounds, 50))  # warm-up
        times = rotated(runtimes, batches, rounds)
        ours = stats_us(times["Gbdt (Rust)"])
        row: dict[str, Any] = {"batch": batch, "rounds": rounds, "runtimes": {}}
        for name, ns in times.items():
            s = stats_us(ns)
            row["runtimes"][name] = {
                "us_per_call": s,
                "rows_per_s": batch / (s["median"] / 1e6),
                "median_over_gbdt": s["median"] / ours["median"],
                "p99_over_gbdt": s["p99"] / ours["p99"],
            }
        results.append(row)

    print(
        f"\nThe bench model ({gbdt.num_trees} trees, {n} features), one thread; "
        "µs per call, ratios to Gbdt"
    )
    hdr = (
        f"{'batch':>5} {'runtime':<16} | {'median':>8} {'p99':>8} {'mean':>8} {'min':>8} | "
        f"{'rows/s':>9} | {'med/Gbdt':>8} {'p99/Gbdt':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for row in results:
        for name, r in row["runtimes"].items():
            s = r["us_per_call"]
            print(
                f"{row['batch']:>5} {name:<16} | {s['median']:>8.1f} {s['p99']:>8.1f} "
                f"{s['mean']:>8.1f} {s['min']:>8.1f} | {r['rows_per_s']:>9,.0f} | "
                f"{r['median_over_gbdt']:>7.2f}x {r['p99_over_gbdt']:>7.2f}x"
            )
    print(
        f"\nGbdt parses model.txt in {parse_ms:.1f} ms; bit-identical to Booster.predict: "
        f"{bit_identical}"
    )

    doc = {
        "benchmark": "model_speed",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "model": {
            "path": str(ref.path),
            "model_sha256": sha,
            "trees": gbdt.num_trees,
            "n_features": n,
            "lleaves_object": str(obj),
        },
        "libraries": {
            "lightgbm": lightgbm.__version__,
            "lleaves": _version("lleaves"),
            "llvmlite": _version("llvmlite"),
        },
        "rows": f"FeaturePipeline(features.json).transform(generate({SCORE_ROWS}, seed=1))",
        "method": "rounds call every runtime once on the same batch, order rotating; GC off",
        "parity_max_abs_diff_vs_booster_predict": parity,
        "gbdt_bit_identical": bit_identical,
        "gbdt_parse_ms": parse_ms,
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


if __name__ == "__main__":
    sys.exit(main())
