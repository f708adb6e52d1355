"""Deployment service failure paths with real models on a real registry: a
restart after a weight-0 version vanished, a state write that fails (memory must
stay equal to disk), and a canary guard facing two failing canaries at once."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from conftest import train_model

from riskserve.config import CanarySettings
from riskserve.deployments import STATE_FILE, DeploymentService
from riskserve.deployments.canary import CanaryGuard, VariantStats
from riskserve.errors import Conflict, Unavailable
from riskserve.registry import ModelRepository, VersionRef
from riskserve.routing import RoutingTable
from riskserve.runtime import LoadedModel, load_version
from riskserve.training.datagen import run_datagen


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/fraud/{1,2,3}: three real versions (different seeds)."""
    d = tmp_path_factory.mktemp("mgr")
    run_datagen(2500, 0, d / "train.parquet")
    for seed in (1, 2, 3):
        train_model(d / "train.parquet", d / "models", rounds=8, seed=seed)
    return d / "models"


@pytest.fixture
def models(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "models")
    return tmp_path / "models"


def manager(models: Path) -> tuple[DeploymentService, list[RoutingTable]]:
    """A service loading the real versions (drift counting off)."""
    published: list[RoutingTable] = []
    repo = ModelRepository(models)

    def loader(ref: VersionRef) -> LoadedModel:
        return load_version(repo, ref, drift_slots=0)

    return DeploymentService(repo, loader, published.append), published


def guard_of(mgr: DeploymentService) -> CanaryGuard:
    s = CanarySettings(min_requests=10, max_error_ratio=0.05)
    return CanaryGuard(s, mgr, lambda model, reason: None)


def test_restart_after_a_zero_weight_version_vanished(models: Path) -> None:
    mgr, _ = manager(models)
    mgr.restore()

    async def change() -> None:
        await mgr.promote("fraud", 1, "t", "back to v1")  # v2, v3 stay loaded at weight 0

    asyncio.run(change())
    shutil.rmtree(models / "fraud" / "2")
    mgr2, published = manager(models)
    table = mgr2.restore()  # must not raise
    dep = table.deployment("fraud")
    assert dep.live == 1 and 2 not in dep.versions
    assert all(v.version != 2 for v in dep.variants)
    assert mgr2.state("fraud").current.action == "restore"
    assert published[-1] is table


def test_a_failed_state_write_leaves_memory_equal_to_disk(models: Path) -> None:
    mgr, published = manager(models)
    mgr.restore()
    path = models / "fraud" / STATE_FILE
    before = json.loads(path.read_text())
    rev_before = mgr.state("fraud").current.revision
    tables_before = len(published)
    path.unlink()
    path.mkdir()  # os.replace onto a directory fails: a disk that will not write

    async def fail() -> None:
        with pytest.raises(Unavailable, match="cannot write"):
            await mgr.set_traffic("fraud", [(3, 90), (2, 10)], "", "t", "")
        with pytest.raises(Unavailable):
            await mgr.promote("fraud", 2, "t", "")

    asyncio.run(fail())
    st = mgr.state("fraud")
    assert st.current.revision == rev_before and len(published) == tables_before
    assert sorted(st.models) == [1, 2, 3]
    path.rmdir()

    async def succeed() -> None:
        rev = await mgr.set_traffic("fraud", [(3, 90), (2, 10)], "", "t", "")
        assert rev.revision == rev_before + 1

    asyncio.run(succeed())
    after = json.loads(path.read_text())
    assert after["current"] == rev_before + 1
    assert [r["revision"] for r in after["history"]] == [
        *(r["revision"] for r in before["history"]),
        rev_before + 1,
    ]
    # The in-memory history and the file agree revision for revision.
    assert [r.revision for r in mgr.state("fraud").history] == [
        r["revision"] for r in after["history"]
    ]


def test_a_failed_first_load_of_a_new_model_leaves_no_state(models: Path) -> None:
    shutil.copytree(models / "fraud", models / "other", ignore=shutil.ignore_patterns("2", "3"))
    manifest = models / "other" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["name"] = "other"
    manifest.write_text(json.dumps(data))
    mgr, _ = manager(models)
    mgr.restore()
    asyncio.run(mgr.remove("other", "t", "out of service"))
    (models / "other" / STATE_FILE).unlink()
    (models / "other" / STATE_FILE).mkdir()

    async def run() -> None:
        with pytest.raises(Unavailable):
            await mgr.load("other", 1, "t", "")
        assert "other" not in mgr.names()
        # Every other model still takes changes.
        rev = await mgr.set_traffic("fraud", [(3, 50), (1, 50)], "", "t", "")
        assert rev.variants == ((1, 50), (3, 50))

    asyncio.run(run())


def test_two_failing_canaries_roll_back_once(models: Path) -> None:
    mgr, _ = manager(models)
    mgr.restore()  # v3 live (newest)

    async def run() -> None:
        await mgr.promote("fraud", 2, "t", "v2 live")
        split = await mgr.set_traffic("fraud", [(2, 80), (3, 10), (1, 10)], "", "t", "")
        guard = guard_of(mgr)
        for v in (1, 2, 3):
            guard.stats.setdefault(("fraud", split.revision), {})[v] = VariantStats(
                requests=100, errors=50 if v != 2 else 0
            )
        acted = await guard.enforce()
        assert sorted(b.version for b in acted) == [1, 3]
        assert {b.revision for b in acted} == {split.revision}
        cur = mgr.state("fraud").current
        # Both canaries to 0 in one change, their share to the control v2.
        assert cur.revision == split.revision + 1
        assert tuple((v, w) for v, w in cur.variants if w) == ((2, 100),)
        assert cur.actor == "canary-guard" and cur.held == (1, 3)
        # A breach measured on an older revision is stale: no second rollback.
        with pytest.raises(Conflict, match="not rolling back"):
            await mgr.demote("fraud", [3], "canary-guard", "late", split.revision)

    asyncio.run(run())


def test_canary_stats_survive_changes_that_keep_the_split(models: Path) -> None:
    mgr, _ = manager(models)
    mgr.restore()  # v1, v2, v3 loaded; v3 live

    async def run() -> None:
        split = await mgr.set_traffic("fraud", [(3, 90), (2, 10)], "", "t", "canary v2")
        since = mgr.traffic_since("fraud")
        assert since == split.revision
        guard = guard_of(mgr)
        guard.stats[("fraud", since)] = {
            3: VariantStats(requests=100),
            2: VariantStats(requests=100, errors=40),
        }
        unloaded = await mgr.unload("fraud", 1, "t", "tidy up")  # not part of the split
        assert unloaded.revision == split.revision + 1
        assert mgr.traffic_since("fraud") == since  # same canary period
        (breach,) = guard.breaches()
        assert breach.version == 2 and breach.kind == "error_ratio"
        assert breach.revision == unloaded.revision  # checked against the current revision
        await mgr.set_traffic("fraud", [(3, 80), (2, 20)], "", "t", "more canary")
        assert mgr.traffic_since("fraud") == unloaded.revision + 1  # a new split: new period
        assert guard.breaches() == []

    asyncio.run(run())
