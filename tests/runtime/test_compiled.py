"""LightGBM compiled to native code (lleaves), for real: a trained model is
compiled in the subprocess the server uses, its scores match LightGBM's own
Booster.predict, the cache is used the second time, and compiled code that does
not match (a wrong or broken cache file) is refused with the C API kept."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
from conftest import train_model

from riskserve.registry import ModelRepository
from riskserve.runtime import LoadedModel, load_version
from riskserve.runtime.compiled import CompiledLightGBM, Compiler, object_path
from riskserve.runtime.runtimes import LightGBMRuntime
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    d = tmp_path_factory.mktemp("compiled")
    run_datagen(3000, 5, d / "train.parquet")
    for seed in (1, 2):
        train_model(d / "train.parquet", d / "models", rounds=25, seed=seed)
    return ModelRepository(d / "models")


def loaded(repo: ModelRepository, version: int) -> LoadedModel:
    return load_version(repo, repo.version("fraud", version), drift_slots=0)


def compile_now(m: LoadedModel, cache: Path) -> bool:
    return asyncio.run(Compiler(cache, lambda: [m]).compile(m))


def test_compiled_scores_equal_lightgbm_and_the_cache_is_reused(
    repo: ModelRepository, tmp_path: Path
) -> None:
    m = loaded(repo, 1)
    cols = columns_of(generate(2000, 17), [i.name for i in m.inputs])
    before = m.score(cols)
    assert compile_now(m, tmp_path)
    assert isinstance(m.runtime, CompiledLightGBM)
    obj = object_path(tmp_path, m.manifest.model_sha256)
    assert obj.exists()

    after = m.score(cols)
    booster = lightgbm.Booster(model_file=str(repo.version("fraud", 1).path / "model.txt"))
    expected = booster.predict(m.pipeline.transform(cols))
    assert np.max(np.abs(after - expected)) <= 1e-6
    assert np.max(np.abs(after - before)) <= 1e-6

    # A second load of the same model: the cached object, not a new compile.
    stamp = obj.stat().st_mtime_ns
    again = loaded(repo, 1)
    assert compile_now(again, tmp_path)
    assert isinstance(again.runtime, CompiledLightGBM)
    assert obj.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.score(cols), after)


def test_compiled_code_that_does_not_match_is_refused(
    repo: ModelRepository, tmp_path: Path
) -> None:
    one, two = loaded(repo, 1), loaded(repo, 2)
    assert compile_now(one, tmp_path / "a")
    # Version 1's object filed under version 2's key: it loads, but scores differently.
    wrong = object_path(tmp_path / "b", two.manifest.model_sha256)
    wrong.parent.mkdir(parents=True)
    shutil.copy(object_path(tmp_path / "a", one.manifest.model_sha256), wrong)
    assert not compile_now(two, tmp_path / "b")
    assert isinstance(two.runtime, LightGBMRuntime)

    # A broken object: LLVM aborts the process that loads it, which is the
    # compiler's process, not this one; the C API stays.
    broken = loaded(repo, 2)
    bad = object_path(tmp_path / "c", broken.manifest.model_sha256)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an object file")
    with pytest.raises(RuntimeError, match="compiler exited"):
        compile_now(broken, tmp_path / "c")
    assert isinstance(broken.runtime, LightGBMRuntime)


def test_the_background_compiler_swaps_every_lightgbm_version(
    repo: ModelRepository, tmp_path: Path
) -> None:
    models = [loaded(repo, 1), loaded(repo, 2)]

    async def main() -> list[Any]:
        task = asyncio.create_task(Compiler(tmp_path, lambda: models).run(interval=0.05))
        for _ in range(1200):
            if all(isinstance(m.runtime, CompiledLightGBM) for m in models):
                break
            await asyncio.sleep(0.1)
        task.cancel()
        return [type(m.runtime) for m in models]

    assert asyncio.run(main()) == [CompiledLightGBM, CompiledLightGBM]
