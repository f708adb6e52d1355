"""transport/admin.py without a server: the operating thresholds a Deployment
message reports for a revision."""

from __future__ import annotations

from riskserve.deployments import Revision
from riskserve.transport.admin import thresholds_pb


def _rev(loaded: tuple[int, ...], thresholds: tuple[tuple[int, float], ...]) -> Revision:
    return Revision(
        revision=4,
        action="set_threshold",
        variants=tuple((v, 100 if v == loaded[0] else 0) for v in loaded),
        salt="fraud",
        shadow_version=None,
        shadow_percent=0.0,
        loaded=loaded,
        updated_at="2026-01-01T00:00:00.000+00:00",
        actor="t",
        reason="",
        undo_from=4,
        thresholds=thresholds,
    )


def _rows(rev: Revision, own: dict[int, float]) -> list[tuple[int, float, bool, float | None]]:
    return [
        (
            t.version,
            t.threshold,
            t.overridden,
            t.manifest_threshold if t.HasField("manifest_threshold") else None,
        )
        for t in thresholds_pb(rev, own)
    ]


def test_every_loaded_version_with_its_effective_and_own_threshold() -> None:
    rev = _rev((1, 2, 3), ((2, 0.75),))
    assert _rows(rev, {1: 0.25, 2: 0.5, 3: 0.5}) == [
        (1, 0.25, False, 0.25),
        (2, 0.75, True, 0.5),
        (3, 0.5, False, 0.5),
    ]


def test_a_history_entry_of_versions_no_longer_loaded() -> None:
    # v1 overridden and v3 not, both unloaded since: v1's override still shows,
    # without the manifest threshold this server no longer knows; v3 is left out.
    rev = _rev((1, 2, 3), ((1, 0.0),))
    assert _rows(rev, {2: 0.5, 4: 0.9}) == [(1, 0.0, True, None), (2, 0.5, False, 0.5)]
