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
from riskserve.deployments.canary import SCORE_EDGES, CanaryGuard, VariantStats, score_psi

# --------------------------------------------------------------------------------------
# the canary guard
# --------------------------------------------------------------------------------------

SETTINGS = CanarySettings(
    min_requests=100, max_error_ratio=0.02, max_p95_seconds=0.05, max_score_psi=0.25
)


def stats(
    requests: int,
    errors: int = 0,
    latency: float = 0.002,
    scores: np.ndarray | None = None,
) -> VariantStats:
    st = VariantStats(requests=requests, errors=errors)
    st.latencies.extend([latency] * (requests - errors))
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


def test_check_latency_breach(guard: Guard) -> None:
    st = stats(200, latency=0.002)
    st.latencies.extend([0.2] * 20)  # ~9% slow: the p95 is 200 ms
    b = guard.check("fraud", 2, st, stats(1_000))
    assert b is not None and b.kind == "latency"
    assert "p95 200.00 ms > 50.00 ms" in b.detail


def test_check_latency_just_below_the_bound(guard: Guard) -> None:
    assert guard.check("fraud", 2, stats(500, latency=0.049), stats(500)) is None


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
    canary = stats(2_000, errors=30, latency=0.01, scores=low_scores(1_970, 7))
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
    assert cur.action == "rollback" and cur.actor == "canary-guard"
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
