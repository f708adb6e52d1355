"""The deployment service in process: changes are validated, persisted, published,
undone on failure, and restored at start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from service_rig import START, Rig, rig

from riskserve.deployments import Revision, VersionState
from riskserve.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
def r(tmp_path: Path) -> Rig:
    return rig(tmp_path)


def test_restore_serves_the_recorded_revision(r: Rig) -> None:
    assert r.service.current("fraud") == START
    assert r.service.names() == ["fraud"]
    assert sorted(r.service.state("fraud").models) == [1, 2]


@pytest.mark.parametrize(
    "variants,error,match",
    [
        ([(1, 50), (2, 40)], InvalidInput, "weights must sum to 100, got 90"),
        ([(1, 50), (1, 50)], InvalidInput, "listed twice"),
        ([(1, 50), (3, 50)], Conflict, "version 3 is not loaded"),
    ],
)
def test_a_refused_split_changes_nothing(
    r: Rig, variants: list[tuple[int, int]], error: type[Exception], match: str
) -> None:
    before = r.state_file.read_text()
    with pytest.raises(error, match=match):
        asyncio.run(r.service.set_traffic("fraud", variants, "", "test", ""))
    assert r.service.current("fraud").revision == 1
    assert r.published == []
    assert r.state_file.read_text() == before


def test_a_split_is_persisted_and_published(r: Rig) -> None:
    rev = asyncio.run(r.service.set_traffic("fraud", [(2, 10), (1, 90)], "new-salt", "t", "why"))
    assert rev.revision == 2 and rev.variants == ((1, 90), (2, 10)) and rev.salt == "new-salt"
    dep = r.published[-1].deployment("fraud")
    assert dep.revision == 2 and dep.live == 1 and dep.salt == "new-salt"
    assert dep.traffic_since == 2
    state = json.loads(r.state_file.read_text())
    assert state["current"] == 2 and state["history"][-1]["variants"] == [[1, 90], [2, 10]]


def test_rollback_after_an_unload_leaves_the_unloaded_version_out(r: Rig) -> None:
    async def script() -> Revision:
        await r.service.load("fraud", 3, "t", "")
        await r.service.set_traffic("fraud", [(1, 50), (2, 0), (3, 50)], "", "t", "")
        await r.service.set_traffic("fraud", [(1, 100), (2, 0), (3, 0)], "", "t", "")
        await r.service.unload("fraud", 2, "t", "")
        return await r.service.rollback("fraud", "t", "")

    rev = asyncio.run(script())
    assert rev.variants == ((1, 50), (3, 50))  # v2 (weight 0, unloaded) is not restored
    assert rev.loaded == (1, 3)
    assert r.published[-1].deployment("fraud").revision == rev.revision


def test_rollback_reloads_a_version_it_needs(r: Rig) -> None:
    async def script() -> Revision:
        await r.service.set_traffic("fraud", [(1, 50), (2, 50)], "", "t", "")
        await r.service.promote("fraud", 1, "t", "")
        await r.service.unload("fraud", 2, "t", "")
        return await r.service.rollback("fraud", "t", "")

    rev = asyncio.run(script())
    assert rev.variants == ((1, 50), (2, 50)) and rev.loaded == (1, 2)
    assert sorted(r.service.state("fraud").models) == [1, 2]


def test_rollback_undoes_the_last_traffic_change_not_a_load(r: Rig) -> None:
    async def script() -> Revision:
        await r.service.set_traffic("fraud", [(1, 70), (2, 30)], "", "t", "")
        await r.service.set_traffic("fraud", [(1, 100)], "", "t", "")
        await r.service.set_traffic("fraud", [(1, 100), (2, 0)], "", "t", "")
        return await r.service.rollback("fraud", "t", "")

    assert asyncio.run(script()).variants == ((1, 70), (2, 30))


def test_rollback_with_nothing_to_undo_is_refused(r: Rig) -> None:
    with pytest.raises(Conflict, match="no earlier deployment revision"):
        asyncio.run(r.service.rollback("fraud", "t", ""))


def test_a_demotion_measured_on_a_stale_revision_is_refused(r: Rig) -> None:
    asyncio.run(r.service.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    asyncio.run(r.service.set_traffic("fraud", [(1, 80), (2, 20)], "", "t", ""))
    with pytest.raises(Conflict, match="moved from revision 2 to 3"):
        asyncio.run(r.service.demote("fraud", [2], "canary-guard", "late", expected_revision=2))
    rev = asyncio.run(r.service.demote("fraud", [2], "canary-guard", "now", expected_revision=3))
    assert rev.variants == ((1, 100), (2, 0)) and rev.held == (2,)
    state = json.loads(r.state_file.read_text())
    assert state["history"][-1]["held"] == [2]  # every process sees the hold


def test_load_of_a_missing_version_is_not_found_and_changes_nothing(r: Rig) -> None:
    with pytest.raises(NotFound, match="no version 9"):
        asyncio.run(r.service.load("fraud", 9, "t", ""))
    assert r.service.current("fraud").revision == 1 and r.published == []


def test_remove_then_load_starts_after_the_removed_history(r: Rig) -> None:
    async def script() -> Revision:
        await r.service.remove("fraud", "t", "gone")
        assert r.service.names() == []
        return await r.service.load("fraud", 3, "t", "")

    rev = asyncio.run(script())
    assert rev.revision == 3 and rev.variants == ((3, 100),)
    assert "fraud" not in r.published[0].deployments  # the removal was published
    assert [h.action for h in r.service.history("fraud")] == ["load", "remove", "start"]


def test_load_and_promote_defaults_to_the_newest_version(r: Rig) -> None:
    rev = asyncio.run(r.service.load_and_promote("fraud", None, "t"))
    assert rev.action == "promote" and rev.variants == ((1, 0), (2, 0), (3, 100))


def test_a_threshold_override_is_persisted_published_and_not_a_traffic_change(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path)
    asyncio.run(r.service.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    rev = asyncio.run(r.service.set_threshold("fraud", 2, 0.65, "ann", "fewer alerts"))
    assert rev.revision == 3 and rev.action == "set_threshold" and rev.thresholds == ((2, 0.65),)
    dep = r.published[-1].deployment("fraud")
    assert dep.revision == 3 and dep.traffic_since == 2  # the canary period goes on
    assert (dep.threshold_of(1), dep.threshold_of(2)) == (0.1, 0.65)
    state = json.loads(r.state_file.read_text())
    assert state["history"][-1]["thresholds"] == [[2, 0.65]]
    # another process on the folder, and a restart, serve the override
    again = rig(tmp_path, start=r.service.current("fraud"))
    assert again.service.current("fraud").thresholds == ((2, 0.65),)
    cleared = asyncio.run(r.service.set_threshold("fraud", 2, None, "ann", "back"))
    assert cleared.thresholds == ()
    assert r.published[-1].deployment("fraud").threshold_of(2) == 0.2


@pytest.mark.parametrize(
    ("version", "threshold", "error", "match"),
    [
        (9, 0.5, NotFound, "no version 9"),  # not in the registry
        (3, 0.5, Conflict, "fraud version 3 is not loaded"),  # in it, not loaded
        (1, 1.5, InvalidInput, "threshold must be a finite number in"),
        (1, float("nan"), InvalidInput, "threshold must be a finite number in"),
    ],
)
def test_a_refused_threshold_changes_nothing(
    r: Rig, version: int, threshold: float, error: type[Exception], match: str
) -> None:
    before = r.state_file.read_text()
    with pytest.raises(error, match=match):
        asyncio.run(r.service.set_threshold("fraud", version, threshold, "t", ""))
    assert r.service.current("fraud").revision == 1 and r.published == []
    assert r.state_file.read_text() == before


def test_listing_is_typed(r: Rig) -> None:
    (model,) = r.service.list_models()
    states = {v.version: v.state for v in model.versions}
    assert states[1] is VersionState.LOADED and states[2] is VersionState.LOADED
    assert states[3] is VersionState.REFUSED  # a stand-in folder has no manifest
    v3 = next(v for v in model.versions if v.version == 3)
    assert "manifest.json: missing" in v3.reason
    assert r.service.loaded_status("fraud", 1).sha256 == "sha-1"


def test_another_process_s_write_is_followed(tmp_path: Path) -> None:
    a = rig(tmp_path)
    b = rig(tmp_path, start=a.service.current("fraud"))  # a second process on the folder

    async def script() -> None:
        await a.service.set_traffic("fraud", [(1, 80), (2, 20)], "", "t", "")
        await b.service.refresh()

    asyncio.run(script())
    assert b.service.current("fraud").variants == ((1, 80), (2, 20))
    assert b.published[-1].deployment("fraud").revision == 2


def test_a_change_on_top_of_another_process_s_write_keeps_it(tmp_path: Path) -> None:
    a = rig(tmp_path)
    b = rig(tmp_path, start=a.service.current("fraud"))

    async def script() -> Revision:
        await a.service.set_traffic("fraud", [(1, 80), (2, 20)], "", "t", "")
        return await b.service.set_shadow("fraud", 2, 5.0, "t", "")  # b has not polled

    rev = asyncio.run(script())
    assert rev.revision == 3 and rev.variants == ((1, 80), (2, 20)) and rev.shadow_version == 2


def test_a_start_that_cannot_write_its_state_serves_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """deployment.json cannot be written (here: a directory in its place). The start
    serves the newest version from memory, and the log says exactly that; admin
    changes fail with UNAVAILABLE until the file can be written."""
    from service_rig import stand_in

    from riskserve.deployments import DeploymentService
    from riskserve.errors import Unavailable
    from riskserve.registry import ModelRepository

    for v in (1, 2):
        (tmp_path / "fraud" / str(v)).mkdir(parents=True)
    (tmp_path / "fraud" / "deployment.json").mkdir()
    published: list[Any] = []
    svc = DeploymentService(ModelRepository(tmp_path), stand_in, published.append)
    with caplog.at_level("INFO"):
        table = svc.restore()
    assert table.deployment("fraud").live == 2
    (msg,) = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert "serving revision 1 from memory" in msg and "deployment.json can be written" in msg
    assert not any("not served" in r.getMessage() for r in caplog.records)
    with pytest.raises(Unavailable, match="cannot write the deployment state"):
        asyncio.run(svc.set_traffic("fraud", [(1, 100)], "", "t", ""))
    assert svc.current("fraud").revision == 1
    (tmp_path / "fraud" / "deployment.json").rmdir()
    assert asyncio.run(svc.set_traffic("fraud", [(1, 100)], "", "t", "")).revision == 2
