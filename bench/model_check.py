"""Load cost of a model version with and without the check process (issue 10:
malformed model files are parsed in a child first), side by side in one run.

    .venv/bin/python bench/model_check.py MODELS [NAME] [VERSION] [REPEATS]

e.g. on the demo model of `make serve`: bench/model_check.py models fraud 1 7"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import lightgbm  # noqa: F401  (a serving process has it imported after its first model)
import onnxruntime  # noqa: F401

from riskserve.registry import ModelRepository
from riskserve.runtime import ModelCheck, load_version
from riskserve.runtime.loaded import open_model, read_version
from riskserve.runtime.probe import CHECKED_DIR


def main() -> None:
    root = Path(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "fraud"
    version = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    repo = ModelRepository(root)
    ref = repo.version(name, version)
    kinds = ("unchecked", "first load (check process)", "verdict on disk", "verdict in memory")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    child: list[float] = []

    def timed(kind: str, fn: object) -> None:
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times[kind].append(time.perf_counter() - t)

    for _ in range(n):
        timed("unchecked", lambda: open_model(read_version(repo, ref), drift_slots=0))
        shutil.rmtree(root / CHECKED_DIR, ignore_errors=True)
        first = ModelCheck()
        timed(
            "first load (check process)",
            lambda: load_version(repo, ref, drift_slots=0, check=first),  # noqa: B023
        )
        assert first.spawned == 1
        (kept,) = (root / CHECKED_DIR).glob("*.json")
        child.append(json.loads(kept.read_text())["checked"]["seconds"])
        again = ModelCheck()
        timed("verdict on disk", lambda: load_version(repo, ref, drift_slots=0, check=again))  # noqa: B023
        assert again.spawned == 0
        timed("verdict in memory", lambda: load_version(repo, ref, drift_slots=0, check=again))  # noqa: B023
    base = statistics.median(times["unchecked"])
    model = ref.path / ("model.onnx" if (ref.path / "model.onnx").exists() else "model.txt")
    print(f"{name}/{version}: model file {model.stat().st_size / 1e6:.2f} MB, {n} runs each")
    print(f"{'load':30} {'median ms (min-max)':>24} {'vs unchecked':>13}")
    for k, v in times.items():
        med = statistics.median(v)
        span = f"{med * 1e3:9.1f} ({min(v) * 1e3:6.1f}-{max(v) * 1e3:6.1f})"
        print(f"{k:30} {span:>24} {med / base:12.2f}x")
    print(f"check process alone (spawn to exit): median {statistics.median(child) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
