"""The fuzzer (bench/fuzz.py) inside `make test`: over 10,000 derandomized cases
against a real server — mutated and structurally wrong ModelInfer requests,
streams, admin and repository calls with hostile names, with and without the
token — each ending in a documented status within 2 s; afterwards the server is
alive, serves a good request and has logged no traceback. `bench/fuzz.py
--cases 200000` is the long run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, ServerHandle, train_model

TOKEN = "fuzz-token"
CASES = 10_000


def _load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "riskserve_bench_fuzz", ROOT / "bench" / "fuzz.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()


@pytest.fixture(scope="module")
def fuzz_server(
    launch_server: Callable[..., ServerHandle],
    models_dir: Path,
    train_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    """fraud and fraud_onnx, plus `victim` (two versions) for admin cases to change."""
    models = tmp_path_factory.mktemp("fuzz") / "models"
    shutil.copytree(models_dir, models)
    for v in range(2):
        train_model(train_data, models, rounds=5, seed=v, model="victim")
    h = launch_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
    try:
        yield h
    finally:
        h.stop_and_check()


@pytest.mark.timeout(240)
def test_fuzz_every_rpc(fuzz_server: ServerHandle, tmp_path: Path) -> None:
    target = fuzz.Target(fuzz_server.target, TOKEN)
    try:
        stats = fuzz.fuzz(target, CASES)
        assert stats.cases >= CASES
        print("\nfuzz:", json.dumps(stats.as_json(), indent=1))
        assert fuzz_server.proc.poll() is None, "the server died"
        assert target.serves_a_good_request()
    finally:
        target.close()
    assert fuzz_server.bad_lines() == []
