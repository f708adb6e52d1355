"""The canary guard in process: ``check`` / ``breaches`` / ``enforce`` and
``score_psi`` on constructed ``VariantStats``, over a deployment service with
stand-in versions (tests/deployments/service_rig.py)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
from service_rig import rig

from riskserve.config import CanarySettings
from riskserve.deployments.canary import (
    SCORE_EDGES,
    CanaryGuard,
    VariantStats,
    row_class,
    score_psi,
)
from riskserve.errors import Conflict

# --------------------------------------------------------------------------------------
# the canary guard
# --------------------------------------------------------------------------------------

SETTINGS = CanarySettings(
    min_requests=100,
    max_error_ratio=0.02,
    max_p95_ratio=2.0,
    p95_slack_seconds=0.005,
    max_score_psi=0.25,
)


def stats(
    requests: int,
    errors: int = 0,
    latency: float = 0.002,
    scores: np.ndarray | None = None,
    rows: int = 1,
) -> VariantStats:
    st = VariantStats(requests=requests, errors=errors)
    for _ in range(requests - errors):
        st.add_latency(latency, rows)
    if scores is not None:
        st.add_scores(scores)
    return st


def low_scores(n: int, seed: int = 0) -> np.ndarray:
    """Fraud-like probabilities: mostly tiny, a few large."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=-6.0, sigma=1.5, size=n), 0.0, 1.0).astype(np.float32)


class Guard(CanaryGuard):
    """The guard with the rollbacks it counted."""

    counted: list[tuple[str, str]]


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    counted: list[tuple[str, str]] = []
    g = Guard(SETTINGS, rig(tmp_path).service, lambda m, r: counted.append((m, r)))
    g.counted = counted
    return g


def test_score_psi_known_values() -> None:
    assert score_psi(np.array([5, 5]), np.array([5, 5])) == 0.0
    assert score_psi(np.array([0, 0]), np.array([5, 5])) == 0.0  # no data → no PSI
    want = 0.4 * math.log(0.5 / 0.9) * -1 + 0.4 * math.log(0.5 / 0.1)
    assert score_psi(np.array([50, 50]), np.array([90, 10])) == pytest.approx(want)
    # an empty share is floored at 1e-4, not log(0)
    floored = (1 - 1e-4) * math.log(1 / 1e-4) + (1e-4 - 1) * math.log(1e-4 / 1)
    assert score_psi(np.array([10, 0]), np.array([0, 10])) == pytest.approx(floored)


def test_add_scores_bins_on_the_log_spaced_edges() -> None:
    st = VariantStats()
    # float64 here: float32(1e-4) is a hair below the float64 edge 1e-4
    st.add_scores(np.array([0.0, 1e-4, 0.00099, 0.3, 0.5, 0.99], dtype=np.float64))
    assert len(st.scores) == len(SCORE_EDGES) + 1
    assert st.scores.sum() == 6
    assert st.scores[0] == 1  # below 1e-4
    assert st.scores[1] == 1  # exactly 1e-4: [1e-4, 3e-4)
    assert st.scores[2] == 1  # [3e-4, 1e-3)
    assert st.scores[-2] == 1  # [0.2, 0.5)
    assert st.scores[-1] == 2  # 0.5 and up


def test_check_error_ratio_breach(guard: Guard) -> None:
    b = guard.check("fraud", 2, stats(1_000, errors=21), stats(1_000))
    assert b is not None and (b.model, b.version, b.kind) == ("fraud", 2, "error_ratio")
    assert "0.0210 > 0.02" in b.detail and "1000 requests" in b.detail


def test_check_error_ratio_at_the_bound_is_no_breach(guard: Guard) -> None:
    assert guard.check("fraud", 2, stats(1_000, errors=20), stats(1_000)) is None


@pytest.mark.parametrize(
    "rows,cls", [(1, 0), (2, 1), (8, 1), (9, 2), (64, 2), (65, 3), (512, 3), (513, 4), (10**6, 4)]
)
def test_row_classes(rows: int, cls: int) -> None:
    assert row_class(rows) == cls


def test_check_latency_breach_against_the_control(guard: Guard) -> None:
    st = stats(200, latency=0.002)
    for _ in range(20):
        st.add_latency(0.2, 1)  # ~9% slow: the p95 is 200 ms
    b = guard.check("fraud", 2, st, stats(1_000, latency=0.002))
    assert b is not None and b.kind == "latency"
    assert "p95 of 1-row requests 200.00 ms > 2 x the control's 2.00 ms (+5 ms)" in b.detail


def test_check_latency_within_the_ratio_or_the_slack(guard: Guard) -> None:
    # 1.9x the control: within the ratio
    assert guard.check("fraud", 2, stats(500, latency=0.019), stats(500, latency=0.010)) is None
    # 4x the control but only 3 ms slower: within the slack
    assert guard.check("fraud", 2, stats(500, latency=0.004), stats(500, latency=0.001)) is None
    b = guard.check("fraud", 2, stats(500, latency=0.021), stats(500, latency=0.010))
    assert b is not None and b.kind == "latency"


def test_big_requests_are_compared_only_with_big_control_requests(guard: Guard) -> None:
    """The probe that tripped the old absolute bound: a client pins its routing key to
    the canary and sends 2,000-row requests. The control never served any that big,
    so they are not compared; 1-row requests of both are, and match."""
    canary = stats(300, latency=0.002)
    for _ in range(300):
        canary.add_latency(0.5, 2_000)
    assert guard.check("fraud", 2, canary, stats(1_000, latency=0.002)) is None
    control = stats(1_000, latency=0.002)
    for _ in range(300):
        control.add_latency(0.45, 2_000)  # big control requests as slow: still fine
    assert guard.check("fraud", 2, canary, control) is None
    for _ in range(300):
        canary.add_latency(2.0, 2_000)  # now much slower than the control's
    b = guard.check("fraud", 2, canary, control)
    assert b is not None and "513+ row requests" in b.detail


def test_latency_is_judged_only_with_enough_samples_on_both_sides(guard: Guard) -> None:
    assert guard.check("fraud", 2, stats(99, latency=1.0), stats(1_000)) is None
    assert guard.check("fraud", 2, stats(1_000, latency=1.0), stats(99)) is None
    assert guard.check("fraud", 2, stats(1_000, latency=1.0), None) is None


def test_check_score_psi_breach(guard: Guard) -> None:
    ctl = stats(1_000, scores=low_scores(1_000))
    bad = stats(1_000, scores=np.clip(low_scores(1_000, 1) * 200, 0, 1))
    psi = score_psi(bad.scores, ctl.scores)
    assert psi > 0.25
    b = guard.check("fraud", 2, bad, ctl)
    assert b is not None and b.kind == "score_psi"
    assert f"{psi:.3f} > 0.25" in b.detail


def test_check_no_breach_below_every_bound(guard: Guard) -> None:
    ctl = stats(2_000, errors=10, scores=low_scores(1_990))
    canary = stats(2_000, errors=30, latency=0.003, scores=low_scores(1_970, 7))
    assert score_psi(canary.scores, ctl.scores) < 0.05
    assert guard.check("fraud", 2, canary, ctl) is None


def test_check_skips_psi_until_the_control_has_enough_requests(guard: Guard) -> None:
    bad = stats(1_000, scores=np.full(1_000, 0.9, dtype=np.float32))
    few = stats(99, scores=low_scores(99))
    assert guard.check("fraud", 2, bad, few) is None
    assert guard.check("fraud", 2, bad, None) is None
    enough = stats(100, scores=low_scores(100))
    b = guard.check("fraud", 2, bad, enough)
    assert b is not None and b.kind == "score_psi"


def _record(guard: Guard, version: int, revision: int, ok: int, failed: int) -> None:
    for _ in range(ok):
        guard.record("fraud", version, revision, 0.001, True, None)
    for _ in range(failed):
        guard.record("fraud", version, revision, 0.0, False, None)


def test_breaches_wait_for_the_minimum_count(guard: Guard) -> None:
    asyncio.run(guard.deployments.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    _record(guard, 1, 2, 500, 0)
    _record(guard, 2, 2, 0, 99)  # all failed, but below canary_min_requests
    assert guard.breaches() == []
    _record(guard, 2, 2, 0, 1)
    (b,) = guard.breaches()
    assert (b.version, b.kind) == (2, "error_ratio")


def test_breaches_ignore_other_revisions(guard: Guard) -> None:
    asyncio.run(guard.deployments.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    _record(guard, 2, 1, 0, 500)  # an old revision's failures
    assert guard.breaches() == []


def test_enforce_rolls_back_counts_and_forgets(guard: Guard) -> None:
    svc = guard.deployments
    asyncio.run(svc.set_traffic("fraud", [(1, 80), (2, 20)], "", "t", ""))
    _record(guard, 1, 2, 400, 0)
    _record(guard, 2, 2, 90, 10)
    (b,) = asyncio.run(guard.enforce())
    assert (b.version, b.kind) == (2, "error_ratio")
    cur = svc.current("fraud")
    assert cur.revision == 3 and cur.variants == ((1, 100), (2, 0))
    assert cur.action == "canary_rollback" and cur.actor == "canary-guard"
    assert cur.held == (2,)
    assert cur.reason.startswith("canary v2: error ratio 0.1000 > 0.02")
    assert guard.counted == [("fraud", "canary_error_ratio")]
    assert ("fraud", 2) not in guard.stats  # the old revision's stats are dropped
    assert asyncio.run(guard.enforce()) == []


def test_a_broken_canary_at_an_even_split_is_caught(guard: Guard) -> None:
    """At 50/50 the incumbent (lower version) is the control: a failing new
    version must not escape the guard by being taken for the control."""
    asyncio.run(guard.deployments.set_traffic("fraud", [(1, 50), (2, 50)], "", "t", ""))
    _record(guard, 1, 2, 300, 0)
    _record(guard, 2, 2, 200, 100)
    (b,) = guard.breaches()
    assert (b.version, b.kind) == (2, "error_ratio")


def test_the_guard_lowers_a_canary_and_never_raises_another_weight(guard: Guard) -> None:
    """90/10 after 50/50: undoing the last change would raise the failing canary to
    50 %; the guard sets it to 0 and gives its 10 to the control."""
    svc = guard.deployments
    asyncio.run(svc.set_traffic("fraud", [(1, 50), (2, 50)], "", "t", ""))
    asyncio.run(svc.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    _record(guard, 1, 3, 500, 0)
    _record(guard, 2, 3, 50, 50)
    (breach,) = asyncio.run(guard.enforce())
    assert breach.version == 2
    assert svc.current("fraud").variants == ((1, 100), (2, 0))
    # A manual rollback keeps its undo meaning but never gives v2 traffic again.
    with pytest.raises(Conflict, match=r"keeps \[2\] \(held by the canary guard\) at weight 0"):
        asyncio.run(svc.rollback("fraud", "ops", "undo"))
    # Only an explicit split does.
    asyncio.run(svc.set_traffic("fraud", [(1, 95), (2, 5)], "", "ops", "try again"))
    assert svc.current("fraud").held == ()


def test_two_failing_canaries_go_in_one_change(guard: Guard) -> None:
    svc = guard.deployments
    asyncio.run(svc.load("fraud", 3, "t", ""))
    split = asyncio.run(svc.set_traffic("fraud", [(1, 80), (2, 10), (3, 10)], "", "t", ""))
    for v, bad in ((1, 0), (2, 50), (3, 40)):
        _record(guard, v, split.revision, 100 - bad, bad)
    acted = asyncio.run(guard.enforce())
    assert sorted(b.version for b in acted) == [2, 3]
    cur = svc.current("fraud")
    assert cur.revision == split.revision + 1
    assert cur.variants == ((1, 100), (2, 0), (3, 0)) and cur.held == (2, 3)
    assert sorted(guard.counted) == [("fraud", "canary_error_ratio")] * 2
