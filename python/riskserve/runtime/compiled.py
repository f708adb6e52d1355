"""LightGBM models compiled to native code (lleaves: the trees become LLVM IR,
then machine code for this CPU), swapped in behind the C API runtime.

A LightGBM version always starts on the C API (LightGBMRuntime), so loading
stays fast. With `RISKSERVE_LIGHTGBM_COMPILE=true` the server then compiles it
in a separate, low-priority process (compiling a 300-tree model takes ~30 s of
one core; a process keeps that off the serving GIL, and an object file LLVM
cannot load aborts that process, not the server). That process and then the
server check the compiled scores against the C API's on 512 wide random
feature rows (≤ 1e-6); only then is the version's runtime replaced — one
reference assignment, so requests in flight finish on the runtime they read.

Compiled objects are cached by model sha256, llvmlite version and CPU under
`RISKSERVE_COMPILE_CACHE_DIR` (default ~/.cache/riskserve/compiled): a restart, a
second worker or a second replica on the same machine type loads it in ~20 ms.
A cached file that fails to load or to match is refused, logged, and the C
API stays.

Measured (bench/README.md): 300 trees x 63 leaves, one core: 1 row 8.8 µs vs
24.5 µs, 64 rows 0.40 ms vs 1.65 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import re
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from riskserve.runtime.child import run_module
from riskserve.runtime.runtimes import (
    PARITY_TOLERANCE,
    FloatMatrix,
    LightGBMRuntime,
    Scores,
    parity_rows,
)

log = logging.getLogger(__name__)


def _sanitised(model_txt: bytes) -> str:
    """model.txt with plain feature names: lleaves' parser refuses names that
    contain '=' (our one-hot columns are named like `currency=USD`); names play
    no part in prediction."""
    text = model_txt.decode()

    def plain(m: re.Match[str]) -> str:
        n = len(m.group(1).split(" "))
        return "feature_names=" + " ".join(f"f{i}" for i in range(n))

    return re.sub(r"^feature_names=(.*)$", plain, text, count=1, flags=re.MULTILINE)


def cache_key() -> str:
    """What a compiled object depends on besides the model: the compiler and the CPU."""
    import llvmlite
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    cpu = re.sub(r"[^A-Za-z0-9_.-]", "_", llvm.get_host_cpu_name())
    return f"{platform.machine()}-{cpu}-llvmlite{llvmlite.__version__}"


def object_path(cache_dir: Path, model_sha256: str) -> Path:
    return cache_dir / f"lightgbm-{model_sha256}-{cache_key()}.o"


class CompiledLightGBM:
    """lleaves-compiled forest (binary objective): predict returns probabilities."""

    platform = "lightgbm"

    def __init__(self, model_txt: bytes, obj: Path, n_features: int) -> None:
        import lleaves

        with tempfile.TemporaryDirectory(prefix="riskserve-lleaves-") as d:
            path = Path(d) / "model.txt"
            path.write_text(_sanitised(model_txt))
            self._model = lleaves.Model(model_file=str(path))
            if self._model.num_feature() != n_features:
                raise ValueError(
                    f"compiled model expects {self._model.num_feature()} features, "
                    f"the feature spec produces {n_features}"
                )
            self._model.compile(cache=str(obj))  # loads the object when it exists
        self._n_features = n_features

    def predict(self, features: FloatMatrix) -> Scores:
        # float64 like LightGBM: float32 → float64 is exact, the thresholds are doubles.
        x = np.ascontiguousarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise ValueError(f"expected {self._n_features} features, got shape {x.shape}")
        out: npt.NDArray[np.float64] = self._model.predict(x, n_jobs=1)
        return out.astype(np.float32)


def compile_to(model_txt: Path, obj: Path) -> None:
    """Compiles model.txt to `obj` (atomically; once, under a lock on `obj`.lock,
    so workers racing for the same model compile it once)."""
    import lleaves

    obj.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{obj}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if obj.exists():
            return
        with tempfile.TemporaryDirectory(prefix="riskserve-lleaves-", dir=obj.parent) as d:
            src = Path(d) / "model.txt"
            src.write_text(_sanitised(model_txt.read_bytes()))
            tmp = Path(d) / "forest.o"
            lleaves.Model(model_file=str(src)).compile(cache=str(tmp))
            os.replace(tmp, obj)


class Compiler:
    """Compiles the LightGBM versions of a routing table in the background."""

    def __init__(
        self,
        cache_dir: Path,
        models: Callable[[], list[Any]],
        nice: int = 10,
    ) -> None:
        self.cache_dir = cache_dir
        self._models = models
        self._nice = nice
        self._tried: weakref.WeakSet[Any] = weakref.WeakSet()  # LoadedModels seen

    async def run(self, interval: float = 0.5) -> None:
        while True:
            for m in self._models():
                if m in self._tried or not isinstance(m.runtime, LightGBMRuntime):
                    continue
                self._tried.add(m)
                try:
                    await self.compile(m)
                except Exception:
                    log.exception(
                        "compiling the model failed; it stays on the LightGBM C API",
                        extra={"model": m.name, "version": m.version},
                    )
            await asyncio.sleep(interval)

    async def compile(self, m: Any) -> bool:
        """Compiles (or loads from the cache) and swaps `m`'s runtime; False if
        the compiled code is refused."""
        runtime = m.runtime
        if not isinstance(runtime, LightGBMRuntime):
            return False
        loop = asyncio.get_running_loop()
        obj = object_path(self.cache_dir, m.manifest.model_sha256)
        text = runtime.model_text()  # the verified model, as LightGBM holds it
        if not obj.exists():
            log.info("compiling model", extra={"model": m.name, "version": m.version})
        # Always in a subprocess, cached object or not: it compiles when needed and
        # loads and checks the object first (a bad one can abort its process).
        with tempfile.TemporaryDirectory(prefix="riskserve-compile-") as d:
            src = Path(d) / "model.txt"
            src.write_bytes(text)
            args = [str(src), str(obj), str(self._nice)]
            proc = await loop.run_in_executor(None, run_module, "riskserve.runtime.compiled", args)
        if proc.returncode == 3:
            log.error(
                "compiled model refused: its scores differ from LightGBM's",
                extra={"model": m.name, "version": m.version, "reason": proc.stderr[-400:]},
            )
            return False
        if proc.returncode != 0:
            why = f"{proc.how()}: {proc.stderr[-800:]}"
            raise RuntimeError(f"compiler exited {proc.returncode} ({why})")
        return await loop.run_in_executor(None, self._swap, m, runtime, text, obj)

    @staticmethod
    def _swap(m: Any, old: LightGBMRuntime, text: bytes, obj: Path) -> bool:
        n = m.pipeline.n_features
        new = CompiledLightGBM(text, obj, n)
        x = parity_rows(n)
        diff = float(np.max(np.abs(new.predict(x) - old.predict(x))))
        if not diff <= PARITY_TOLERANCE:
            log.error(
                "compiled model refused: its scores differ from LightGBM's",
                extra={"model": m.name, "version": m.version, "max_abs_diff": diff},
            )
            return False
        m.runtime = new  # one reference: requests in flight keep the one they read
        log.info(
            "model compiled",
            extra={"model": m.name, "version": m.version, "max_abs_diff": diff, "object": str(obj)},
        )
        return True


def verify(model_txt: Path, obj: Path) -> float:
    """Loads `obj` and returns its largest score difference from LightGBM's C API
    on the parity rows. Run in the compiler's process: an object file LLVM cannot
    load aborts the process that loads it, and that must not be the server."""
    text = model_txt.read_bytes()
    capi = LightGBMRuntime(text, _num_feature(text))
    n = capi.n_features
    new = CompiledLightGBM(text, obj, n)
    x = parity_rows(n)
    return float(np.max(np.abs(new.predict(x) - capi.predict(x))))


def _num_feature(model_txt: bytes) -> int:
    m = re.search(rb"^max_feature_idx=(\d+)$", model_txt, flags=re.MULTILINE)
    if m is None:
        raise ValueError("model.txt has no max_feature_idx")
    return int(m.group(1)) + 1


def main(argv: list[str] | None = None) -> int:
    """python -m riskserve.runtime.compiled MODEL_TXT OBJECT [NICE]: compiles
    MODEL_TXT to OBJECT unless it exists, then checks OBJECT against LightGBM.
    Exit 0: OBJECT is good; 3: its scores differ; anything else: it failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(f"usage: {main.__doc__}", file=sys.stderr)
        return 2
    if len(args) == 3:
        with contextlib.suppress(OSError):  # lower priority than the server it helps
            os.nice(int(args[2]))
    model_txt, obj = Path(args[0]), Path(args[1])
    compile_to(model_txt, obj)
    diff = verify(model_txt, obj)
    if not diff <= PARITY_TOLERANCE:
        print(f"compiled scores differ from LightGBM's by {diff}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
