"""The pure change functions of riskserve.deployments.history: no models, no files,
no event loop. Each change is a function from one revision to the next."""

from __future__ import annotations

import pytest

from riskserve.deployments import history as h
from riskserve.deployments.history import Revision
from riskserve.errors import Conflict, InvalidInput, NotFound

AT = "2026-01-01T00:00:00.000+00:00"


def rev(
    variants: tuple[tuple[int, int], ...] = ((1, 100), (2, 0)),
    *,
    revision: int = 1,
    loaded: tuple[int, ...] = (1, 2),
    shadow: int | None = None,
    percent: float = 0.0,
    action: str = "start",
    undo_from: int | None = None,
    thresholds: tuple[tuple[int, float], ...] = (),
) -> Revision:
    return Revision(
        revision=revision,
        action=action,
        variants=variants,
        salt="fraud",
        shadow_version=shadow,
        shadow_percent=percent,
        loaded=loaded,
        updated_at=AT,
        actor="t",
        reason="",
        undo_from=revision if undo_from is None else undo_from,
        thresholds=thresholds,
    )


def test_revision_json_round_trip() -> None:
    r = rev(((1, 90), (2, 10)), shadow=2, percent=5.0, revision=7, undo_from=3)
    assert Revision.from_json(r.to_json()) == r
    t = rev(thresholds=((1, 0.0), (2, 0.123456789)))
    assert Revision.from_json(t.to_json()) == t
    assert t.to_json()["thresholds"] == [[1, 0.0], [2, 0.123456789]]


def test_from_json_defaults_for_older_files() -> None:
    d = rev().to_json()
    for k in ("actor", "reason", "undo_from", "shadow_percent", "thresholds"):
        del d[k]
    r = Revision.from_json(d)
    assert r.actor == "" and r.undo_from == 1 and r.shadow_percent == 0.0
    assert r.thresholds == ()


@pytest.mark.parametrize("bad", [1.5, -0.5, "nan", "inf"])
def test_from_json_refuses_a_threshold_outside_0_1(bad: float | str) -> None:
    d = rev().to_json()
    d["thresholds"] = [[1, float(bad)]]
    with pytest.raises(ValueError, match="threshold"):  # the store: "unreadable"
        Revision.from_json(d)


@pytest.mark.parametrize(
    "variants,control",
    [
        (((1, 90), (2, 10)), 1),
        (((1, 10), (2, 90)), 2),
        (((1, 50), (2, 50)), 1),  # a tie: the older version is the control
        (((3, 50), (2, 50)), 2),
        (((1, 0), (2, 100)), 2),
    ],
)
def test_control_version(variants: tuple[tuple[int, int], ...], control: int) -> None:
    assert h.control_version(variants) == control
    assert rev(variants).control == control


def test_traffic_ignores_weight_zero_versions() -> None:
    assert rev(((1, 100), (2, 0))).traffic() == rev(((1, 100),), loaded=(1,)).traffic()
    assert rev(((1, 100),)).traffic() != rev(((1, 100),), shadow=2, percent=1.0).traffic()


def test_traffic_since_skips_revisions_that_keep_the_split() -> None:
    history = [
        rev(((1, 100),), revision=1),
        rev(((1, 90), (2, 10)), revision=2),
        rev(((1, 90), (2, 10), (3, 0)), revision=3, loaded=(1, 2, 3)),  # a load
        rev(((1, 90), (2, 10)), revision=4),  # an unload
    ]
    assert h.traffic_since(history) == 2
    assert h.traffic_since(history[:1]) == 1


def test_incompatibility_names_missing_and_new_inputs() -> None:
    have = [("amount", "FP64"), ("country", "BYTES")]
    assert h.incompatibility(1, have, list(reversed(have))) is None
    why = h.incompatibility(1, have, [("amount", "FP32"), ("country", "BYTES")])
    assert why == "inputs differ from version 1: missing ['amount:FP64'], new ['amount:FP32']"


@pytest.mark.parametrize(
    "variants,error,match",
    [
        ([(1, 50), (2, 40)], InvalidInput, "weights must sum to 100, got 90"),
        ([(1, 60), (2, 50)], InvalidInput, "weights must sum to 100, got 110"),
        ([], InvalidInput, "at least one variant"),
        ([(1, 50), (1, 50)], InvalidInput, "listed twice"),
        ([(1, 101), (2, -1)], InvalidInput, "must be in 0..100"),
        ([(1, 50), (3, 50)], Conflict, "fraud version 3 is not loaded"),
    ],
)
def test_set_traffic_refuses_bad_splits(
    variants: list[tuple[int, int]], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        h.set_traffic("fraud", rev(), {1, 2}, variants, "", "t", "", AT)


def test_set_traffic_sorts_keeps_salt_and_shadow() -> None:
    cur = rev(shadow=2, percent=3.0)
    nxt = h.set_traffic("fraud", cur, {1, 2}, [(2, 10), (1, 90)], "", "ann", "why", AT)
    assert nxt.revision == 2 and nxt.action == "set_traffic" and nxt.undo_from == 2
    assert nxt.variants == ((1, 90), (2, 10)) and nxt.salt == "fraud"
    assert (nxt.shadow_version, nxt.shadow_percent) == (2, 3.0)
    assert (nxt.actor, nxt.reason, nxt.updated_at) == ("ann", "why", AT)
    assert h.set_traffic("fraud", cur, {1, 2}, [(1, 100)], "s2", "t", "", AT).salt == "s2"


def test_load_keeps_traffic_and_records_what_is_loaded() -> None:
    nxt = h.load(rev(), {1, 2, 3}, "t", "", AT)
    assert nxt.variants == rev().variants and nxt.loaded == (1, 2, 3) and nxt.action == "load"


def test_first_load_gives_the_version_all_traffic_after_a_removal() -> None:
    removed = rev((), revision=5, loaded=(), action="remove")
    nxt = h.first_load("fraud", removed, 3, "t", "", AT)
    assert nxt.revision == 6 and nxt.variants == ((3, 100),) and nxt.loaded == (3,)
    assert nxt.reason == "first version of a new model"
    assert h.first_load("fraud", None, 1, "t", "", AT).revision == 1


def test_unload() -> None:
    cur = rev(((1, 100), (2, 0)), shadow=2, percent=5.0)
    nxt = h.unload("fraud", cur, {1, 2}, 2, "t", "", AT)
    assert nxt.variants == ((1, 100),) and nxt.loaded == (1,)
    assert nxt.shadow_version is None and nxt.shadow_percent == 0.0  # it was the shadow
    with pytest.raises(Conflict, match="takes traffic"):
        h.unload("fraud", cur, {1, 2}, 1, "t", "", AT)
    with pytest.raises(NotFound, match="version 9 is not loaded"):
        h.unload("fraud", cur, {1, 2}, 9, "t", "", AT)


def test_set_shadow() -> None:
    on = h.set_shadow("fraud", rev(), {1, 2}, 2, 10.0, "t", "", AT)
    assert (on.shadow_version, on.shadow_percent, on.variants) == (2, 10.0, rev().variants)
    off = h.set_shadow("fraud", on, {1, 2}, 2, 0.0, "t", "", AT)
    assert (off.shadow_version, off.shadow_percent) == (None, 0.0)
    assert h.set_shadow("fraud", on, {1, 2}, 0, 50.0, "t", "", AT).shadow_version is None
    with pytest.raises(InvalidInput, match=r"0\.\.100"):
        h.set_shadow("fraud", rev(), {1, 2}, 2, 100.5, "t", "", AT)
    with pytest.raises(Conflict, match="version 3 is not loaded"):
        h.set_shadow("fraud", rev(), {1, 2}, 3, 1.0, "t", "", AT)


def test_promote_keeps_others_at_zero_and_drops_a_promoted_shadow() -> None:
    cur = rev(((1, 90), (2, 10)), loaded=(1, 2, 3), shadow=3, percent=5.0)
    nxt = h.promote("fraud", cur, {1, 2, 3}, 3, "t", "", AT)
    assert nxt.variants == ((1, 0), (2, 0), (3, 100))
    assert nxt.shadow_version is None
    kept = h.promote("fraud", cur, {1, 2, 3}, 2, "t", "", AT)
    assert kept.shadow_version == 3 and kept.variants == ((1, 0), (2, 100))
    with pytest.raises(Conflict, match="version 4 is not loaded"):
        h.promote("fraud", cur, {1, 2, 3}, 4, "t", "", AT)


def test_remove() -> None:
    nxt = h.remove(rev(shadow=2, percent=1.0), "t", "gone", AT)
    assert nxt.action == "remove" and nxt.variants == () and nxt.loaded == ()
    assert nxt.removed and nxt.shadow_version is None


def _chain(*changes: Revision) -> list[Revision]:
    return list(changes)


def test_demote_gives_the_canary_s_share_to_the_control() -> None:
    cur = rev(((1, 80), (2, 10), (3, 10)), loaded=(1, 2, 3))
    nxt = h.demote("fraud", cur, {3}, "canary-guard", "bad", AT)
    assert nxt.variants == ((1, 90), (2, 10), (3, 0))
    assert nxt.action == "canary_rollback" and nxt.held == (3,) and nxt.undo_from == 2
    both = h.demote("fraud", cur, {2, 3}, "canary-guard", "bad", AT)
    assert both.variants == ((1, 100), (2, 0), (3, 0)) and both.held == (2, 3)
    with pytest.raises(Conflict, match="the control v1 cannot be demoted"):
        h.demote("fraud", cur, {1}, "canary-guard", "", AT)
    with pytest.raises(Conflict, match=r"versions \[4\] take no traffic"):
        h.demote("fraud", cur, {4}, "canary-guard", "", AT)


def test_no_weight_but_the_control_s_ever_rises_in_a_demotion() -> None:
    import itertools

    for w2, w3 in itertools.product(range(0, 50, 7), range(0, 50, 9)):
        cur = rev(((1, 100 - w2 - w3), (2, w2), (3, w3)), loaded=(1, 2, 3))
        for bad in ({2}, {3}, {2, 3}):
            if not all(dict(cur.live).get(v) for v in bad) or cur.control in bad:
                continue
            nxt = h.demote("fraud", cur, bad, "g", "", AT)
            before, after = dict(cur.variants), dict(nxt.variants)
            assert sum(after.values()) == 100
            for v in (1, 2, 3):
                assert v == cur.control or after[v] <= before[v]
            assert all(after[v] == 0 for v in bad)


def test_holds_survive_changes_until_an_operator_gives_the_version_traffic() -> None:
    held = h.demote("fraud", rev(((1, 90), (2, 10))), {2}, "g", "", AT)
    assert h.load(held, {1, 2, 3}, "t", "", AT).held == (2,)
    assert h.set_shadow("fraud", held, {1, 2}, 2, 5.0, "t", "", AT).held == (2,)
    assert h.set_traffic("fraud", held, {1, 2}, [(1, 100), (2, 0)], "", "t", "", AT).held == (2,)
    assert h.set_traffic("fraud", held, {1, 2}, [(1, 99), (2, 1)], "", "t", "", AT).held == ()
    assert h.promote("fraud", held, {1, 2}, 2, "t", "", AT).held == ()
    assert h.remove(held, "t", "", AT).held == ()
    assert Revision.from_json(held.to_json()).held == (2,)


def test_rollback_never_gives_a_held_version_traffic() -> None:
    history = [
        rev(((1, 100), (2, 0)), revision=1),
        rev(((1, 50), (2, 50)), revision=2),
        rev(((1, 90), (2, 10)), revision=3),
    ]
    history.append(h.demote("fraud", history[-1], {2}, "canary-guard", "", AT))
    with pytest.raises(Conflict, match="held by the canary guard"):
        h.rollback_target("fraud", history)
    # With another version in the history, undo goes to it, v2 kept at 0.
    history = [
        rev(((1, 0), (3, 100)), revision=1, loaded=(1, 2, 3)),
        rev(((1, 100), (2, 0), (3, 0)), revision=2, loaded=(1, 2, 3)),
        rev(((1, 50), (2, 50), (3, 0)), revision=3, loaded=(1, 2, 3)),
    ]
    history.append(h.demote("fraud", history[-1], {2}, "canary-guard", "", AT))
    target, variants = h.rollback_target("fraud", history)
    assert target.revision == 1 and dict(variants)[3] == 100
    nxt = h.rollback(history[-1], target, variants, {1, 2, 3}, "ops", "", AT)
    assert dict(nxt.variants).get(2, 0) == 0 and nxt.held == (2,)


def test_rollback_target_skips_revisions_without_a_traffic_change() -> None:
    history = _chain(
        rev(((1, 100),), revision=1, loaded=(1, 2)),
        rev(((1, 70), (2, 30)), revision=2),
        rev(((1, 100),), revision=3),
        rev(((1, 100), (2, 0)), revision=4),  # a load: the same traffic
    )
    assert h.rollback_target("fraud", history)[0].revision == 2


def test_rollback_target_skips_removals_and_respects_the_undo_point() -> None:
    history = _chain(
        rev(((1, 100),), revision=1),
        rev((), revision=2, action="remove", loaded=()),
        rev(((2, 100),), revision=3, loaded=(2,)),
    )
    assert h.rollback_target("fraud", history)[0].revision == 1
    undone = [*history, rev(((1, 100),), revision=4, undo_from=1, action="rollback")]
    with pytest.raises(Conflict, match="no earlier deployment revision"):
        h.rollback_target("fraud", undone)


def test_rollback_restores_the_split_without_unloaded_zero_weight_versions() -> None:
    target = rev(((1, 50), (2, 0), (3, 50)), revision=2, shadow=3, percent=2.0)
    cur = rev(((1, 100), (3, 0)), revision=4, loaded=(1, 3))
    nxt = h.rollback(cur, target, target.variants, {1, 3}, "t", "", AT)
    assert nxt.variants == ((1, 50), (3, 50)) and nxt.loaded == (1, 3)
    assert nxt.undo_from == 2 and nxt.revision == 5 and nxt.action == "rollback"
    assert nxt.reason == "roll back to revision 2" and nxt.shadow_version == 3


def test_reconcile_serves_a_complete_revision_as_it_is() -> None:
    assert h.reconcile(rev(), {1, 2}, AT) is None


def test_reconcile_drops_missing_versions_without_traffic() -> None:
    cur = rev(((1, 100), (2, 0)), loaded=(1, 2, 3), shadow=3, percent=5.0)
    nxt = h.reconcile(cur, {1}, AT)
    assert nxt is not None and nxt.action == "restore" and nxt.actor == h.SYSTEM_ACTOR
    assert nxt.variants == ((1, 100),) and nxt.loaded == (1,)
    assert nxt.shadow_version is None and nxt.revision == 2


def test_reconcile_refuses_when_a_version_with_traffic_is_missing() -> None:
    with pytest.raises(Conflict, match=r"versions \[2\] take traffic"):
        h.reconcile(rev(((1, 50), (2, 50))), {1}, AT)


def test_fresh_start_serves_the_newest() -> None:
    nxt = h.fresh_start("fraud", None, {1, 3, 2}, AT)
    assert nxt.revision == 1 and nxt.variants == ((3, 100),) and nxt.loaded == (1, 2, 3)
    after = h.fresh_start("fraud", rev(revision=9), {1}, AT)
    assert after.revision == 10 and after.action == "start"


# -- operating thresholds ------------------------------------------------------------


def test_set_threshold_overrides_sorted_and_clears() -> None:
    cur = rev(((1, 90), (2, 10)))
    one = h.set_threshold(cur, 2, 0.7, "ann", "fewer alerts", AT, {1, 2})
    assert one.thresholds == ((2, 0.7),) and one.action == "set_threshold"
    assert (one.revision, one.actor, one.reason, one.updated_at) == (2, "ann", "fewer alerts", AT)
    assert one.variants == cur.variants and one.loaded == cur.loaded
    both = h.set_threshold(one, 1, 0.25, "t", "", AT, {1, 2})
    assert both.thresholds == ((1, 0.25), (2, 0.7))
    again = h.set_threshold(both, 2, 0.0, "t", "", AT, {1, 2})  # 0 and 1 are allowed
    assert again.thresholds == ((1, 0.25), (2, 0.0))
    cleared = h.set_threshold(again, 1, None, "t", "", AT, {1, 2})
    assert cleared.thresholds == ((2, 0.0),)
    assert h.set_threshold(cleared, 1, None, "t", "", AT, {1, 2}).thresholds == ((2, 0.0),)


def test_a_threshold_change_is_not_a_traffic_change() -> None:
    history = [
        rev(((1, 100),), revision=1),
        rev(((1, 90), (2, 10)), revision=2),
    ]
    history.append(h.set_threshold(history[-1], 2, 0.8, "t", "", AT, {1, 2}))
    assert history[-1].traffic() == history[-2].traffic()
    assert h.traffic_since(history) == 2  # no new canary period
    assert history[-1].undo_from == history[-2].undo_from
    # a rollback undoes the split, not the threshold, and keeps the override
    target, variants = h.rollback_target("fraud", history)
    assert target.revision == 1
    back = h.rollback(history[-1], target, variants, {1, 2}, "t", "", AT)
    assert back.thresholds == ((2, 0.8),)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), float("-inf")])
def test_set_threshold_refuses_values_outside_0_1(bad: float) -> None:
    with pytest.raises(InvalidInput, match="threshold must be a finite number in"):
        h.set_threshold(rev(), 1, bad, "t", "", AT, {1, 2})


def test_set_threshold_needs_a_loaded_version() -> None:
    with pytest.raises(Conflict, match="fraud version 3 is not loaded; load it first"):
        h.set_threshold(rev(), 3, 0.5, "t", "", AT, {1, 2}, name="fraud")
    with pytest.raises(Conflict, match="version 3 is not loaded"):
        h.set_threshold(rev(), 3, None, "t", "", AT, {1, 2})


def test_other_changes_carry_the_overrides_forward() -> None:
    cur = rev(((1, 90), (2, 10)), loaded=(1, 2, 3), thresholds=((1, 0.3), (3, 0.9)))
    kept = ((1, 0.3), (3, 0.9))
    assert h.load(cur, {1, 2, 3, 4}, "t", "", AT).thresholds == kept
    assert (
        h.set_traffic("fraud", cur, {1, 2, 3}, [(1, 50), (3, 50)], "", "t", "", AT).thresholds
        == kept
    )
    assert h.set_shadow("fraud", cur, {1, 2, 3}, 3, 5.0, "t", "", AT).thresholds == kept
    assert h.promote("fraud", cur, {1, 2, 3}, 3, "t", "", AT).thresholds == kept
    assert h.demote("fraud", cur, {2}, "g", "", AT).thresholds == kept
    assert h.reconcile(cur, {1, 2, 3}, AT) is None  # served as it is, overrides and all
    assert h.fresh_start("fraud", cur, {1, 2, 3}, AT).thresholds == kept


def test_overrides_of_a_version_that_leaves_are_dropped() -> None:
    cur = rev(((1, 100), (2, 0)), loaded=(1, 2, 3), thresholds=((1, 0.3), (3, 0.9)))
    assert h.unload("fraud", cur, {1, 2, 3}, 3, "t", "", AT).thresholds == ((1, 0.3),)
    assert h.unload("fraud", cur, {1, 2, 3}, 2, "t", "", AT).thresholds == ((1, 0.3), (3, 0.9))
    restored = h.reconcile(cur, {1, 2}, AT)  # v3 did not load at start
    assert restored is not None and restored.thresholds == ((1, 0.3),)
    assert h.fresh_start("fraud", cur, {2}, AT).thresholds == ()
    removed = h.remove(cur, "t", "", AT)
    assert removed.thresholds == ()
    # back after the removal: the version serves with its own threshold again
    assert h.first_load("fraud", removed, 3, "t", "", AT).thresholds == ()
