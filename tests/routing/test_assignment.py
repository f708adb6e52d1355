"""Traffic assignment and the canary guard, in process.

* ``bucket_of`` reproduces the MurmurHash3 x86_32 vectors shared with the Rust
  tests (``tests/native/hash_vectors.json``) and an independent implementation
  (``mmh3``) on salt + key;
* ``Deployment.assign`` gives every variant one contiguous bucket range, in version
  order, sized by its weight; moving weight between neighbours moves only the keys
  between the old and the new boundary;
* weights that do not sum to 100 are refused (the table and the manager);
* ``CanaryGuard.check`` / ``breaches`` / ``enforce`` and ``score_psi`` on
  constructed ``VariantStats``.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from riskserve._native import murmur3_32
from riskserve.config import Settings
from riskserve.errors import Conflict, InvalidInput
from riskserve.monitoring import Metrics
from riskserve.registry import ModelRepository
from riskserve.routing.guard import SCORE_EDGES, CanaryGuard, VariantStats, score_psi
from riskserve.routing.manager import DeploymentManager, ModelState, Revision
from riskserve.routing.table import BUCKETS, Deployment, RoutingTable, Variant, bucket_of

VECTORS = Path(__file__).resolve().parents[1] / "native" / "hash_vectors.json"
#: Stand-ins for loaded models: the table and the manager only look them up.
MODELS: Any = {1: object(), 2: object(), 3: object()}


def deployment(weights: dict[int, int], salt: str = "s") -> Deployment:
    variants = tuple(Variant(v, w) for v, w in weights.items())
    live = max(weights.items(), key=lambda vw: (vw[1], vw[0]))[0]
    return Deployment("fraud", MODELS, live, variants, salt)


# --------------------------------------------------------------------------------------
# the hash
# --------------------------------------------------------------------------------------


def _vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text())["vectors"]
    return vectors


def test_vectors_file_is_there_and_big_enough() -> None:
    vectors = _vectors()
    assert len(vectors) >= 10
    assert sum(1 for v in vectors if v["seed"] == 0) >= 6


@pytest.mark.parametrize("vec", _vectors(), ids=lambda v: f"{v['input'] or 'empty'}-{v['seed']}")
def test_murmur3_matches_the_shared_vectors(vec: dict[str, Any]) -> None:
    assert murmur3_32(bytes.fromhex(vec["input"]), vec["seed"]) == vec["expected"]


def _bucket_vectors() -> list[tuple[str, int]]:
    """The seed-0 vectors whose input is valid UTF-8: what bucket_of can be fed."""
    out = []
    for v in _vectors():
        if v["seed"] != 0:
            continue
        try:
            text = bytes.fromhex(v["input"]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append((text, v["expected"]))
    return out


def test_bucket_vectors_cover_several_lengths() -> None:
    lengths = {len(t) for t, _ in _bucket_vectors()}
    assert {0, 1, 2, 3, 4} <= lengths, lengths


@pytest.mark.parametrize("text,expected", _bucket_vectors(), ids=repr)
def test_bucket_of_reproduces_the_vectors_for_every_salt_key_split(
    text: str, expected: int
) -> None:
    """bucket_of(salt, key) hashes utf8(salt + key) with seed 0: wherever the
    string is cut into salt and key, the bucket is the vector's hash mod 10,000."""
    for cut in range(len(text) + 1):
        assert bucket_of(text[:cut], text[cut:]) == expected % BUCKETS


@pytest.mark.parametrize(
    "salt,key",
    [
        ("fraud", "card-0001"),
        ("", "customer-42"),
        ("abc", ""),
        ("ünïcödé/", "ключ-7"),
        ("salt", "🙂" * 5),
        ("x" * 37, "y" * 91),  # tails of every length mod 4
    ],
)
def test_bucket_of_agrees_with_an_independent_murmur3(salt: str, key: str) -> None:
    want = mmh3.hash((salt + key).encode("utf-8"), 0, signed=False) % BUCKETS
    assert bucket_of(salt, key) == want
    assert 0 <= want < BUCKETS


def test_bucket_of_pinned_values() -> None:
    """Literal values, so a change of hash, seed, encoding or modulus is caught."""
    assert bucket_of("", "") == 0
    assert bucket_of("te", "st") == 3127628307 % BUCKETS == 8307
    assert bucket_of("", "!Ce") == 2118813236 % BUCKETS == 3236


def test_buckets_are_uniform_enough() -> None:
    buckets = np.array([bucket_of("uniform", f"k{i}") for i in range(100_000)])
    counts = np.bincount(buckets // 1000, minlength=10)  # ten ranges of 1,000 buckets
    assert counts.min() > 9_500 and counts.max() < 10_500, counts


# --------------------------------------------------------------------------------------
# assignment
# --------------------------------------------------------------------------------------


def _owner_by_bucket(dep: Deployment) -> list[int]:
    """Which version owns each bucket, found through assign() with keys of known buckets."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < BUCKETS:
        k = f"probe-{i}"
        keys.setdefault(bucket_of(dep.salt, k), k)
        i += 1
    return [dep.assign(keys[b]) for b in range(BUCKETS)]


@pytest.mark.parametrize(
    "weights",
    [
        {1: 20, 2: 30, 3: 50},
        {3: 50, 1: 20, 2: 30},  # order given does not matter: version order does
        {1: 0, 2: 60, 3: 40},
        {1: 90, 2: 10},
        {1: 1, 2: 98, 3: 1},
    ],
    ids=str,
)
def test_assign_gives_contiguous_ranges_in_version_order(weights: dict[int, int]) -> None:
    owner = _owner_by_bucket(deployment(weights))
    lo = 0
    for version in sorted(weights):
        size = weights[version] * (BUCKETS // 100)
        assert owner[lo : lo + size] == [version] * size, version
        lo += size
    assert lo == BUCKETS
    assert set(owner) == {v for v, w in weights.items() if w > 0}


def test_assign_single_variant_and_zero_weights() -> None:
    dep = deployment({1: 0, 2: 100, 3: 0})
    assert {dep.assign(f"k{i}") for i in range(2_000)} == {2}
    assert {dep.assign(None) for _ in range(200)} == {2}


def test_assign_without_a_key_is_random_over_live_variants() -> None:
    dep = deployment({1: 50, 2: 0, 3: 50})
    got = [dep.assign(None) for _ in range(4_000)]
    assert set(got) == {1, 3}
    assert 0.45 < got.count(1) / len(got) < 0.55


def test_assign_is_sticky_and_salted() -> None:
    a, b = deployment({1: 50, 2: 50}, "one"), deployment({1: 50, 2: 50}, "one")
    keys = [f"card-{i}" for i in range(5_000)]
    assert [a.assign(k) for k in keys] == [b.assign(k) for k in keys]
    other = deployment({1: 50, 2: 50}, "two")
    changed = sum(a.assign(k) != other.assign(k) for k in keys) / len(keys)
    assert 0.4 < changed < 0.6  # a new salt reshuffles about half the keys


def test_moving_weight_moves_only_boundary_keys() -> None:
    before, after = deployment({1: 50, 2: 50}), deployment({1: 60, 2: 40})
    keys = [f"user-{i}" for i in range(100_000)]
    moved = [(before.assign(k), after.assign(k)) for k in keys]
    changes = [(x, y) for x, y in moved if x != y]
    assert 0.09 <= len(changes) / len(keys) <= 0.11
    assert set(changes) == {(2, 1)}
    for k, (x, y) in zip(keys, moved, strict=True):
        if x != y:
            assert 5_000 <= bucket_of("s", k) < 6_000


def test_shadow_sample_uses_its_own_salt() -> None:
    dep = Deployment("fraud", MODELS, 1, (Variant(1, 100),), "s", 1, 2, 25.0)
    keys = [f"k{i}" for i in range(20_000)]
    sampled = [k for k in keys if dep.wants_shadow(k)]
    assert 0.23 < len(sampled) / len(keys) < 0.27
    assert all(bucket_of("s/shadow", k) < 2_500 for k in sampled)
    assert not Deployment("fraud", MODELS, 1, (Variant(1, 100),), "s").wants_shadow("k1")


def test_route_skips_a_shadow_equal_to_the_assigned_variant() -> None:
    dep = Deployment("fraud", MODELS, 1, (Variant(1, 50), Variant(2, 50)), "s", 9, 2, 100.0)
    table = RoutingTable({"fraud": dep})
    for i in range(500):
        r = table.route("fraud", key=f"k{i}")
        assert r.revision == 9
        assert r.variant == f"v{dep.assign(f'k{i}')}"
        assert (r.shadow is None) == (r.model is MODELS[2])
    explicit = table.route("fraud", "2", "k1")
    assert explicit.variant == "explicit" and explicit.shadow is None


# --------------------------------------------------------------------------------------
# refused weights
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [{1: 90, 2: 5}, {1: 90, 2: 20}, {1: 0}, {1: 0, 2: 0}])
def test_table_refuses_weights_not_summing_to_100(weights: dict[int, int]) -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        deployment(weights)


def test_table_refuses_a_variant_that_is_not_loaded() -> None:
    with pytest.raises(ValueError, match="not loaded"):
        Deployment("fraud", {1: MODELS[1]}, 1, (Variant(1, 50), Variant(2, 50)))


def _manager(tmp_path: Path, **settings: Any) -> tuple[DeploymentManager, list[RoutingTable]]:
    published: list[RoutingTable] = []
    mgr = DeploymentManager(Settings(**settings), ModelRepository(tmp_path), published.append)
    start = Revision(
        revision=1,
        action="start",
        variants=((1, 100), (2, 0)),
        salt="fraud",
        shadow_version=None,
        shadow_percent=0.0,
        loaded=(1, 2),
        updated_at="2026-01-01T00:00:00.000+00:00",
        actor="riskserve",
        reason="test",
        undo_from=1,
    )
    # The manager's state for one model with two "loaded" versions.
    mgr._states["fraud"] = ModelState("fraud", [start], {1: MODELS[1], 2: MODELS[2]})
    return mgr, published


@pytest.mark.parametrize(
    "variants,error,match",
    [
        ([(1, 50), (2, 40)], InvalidInput, "weights must sum to 100, got 90"),
        ([(1, 60), (2, 50)], InvalidInput, "weights must sum to 100, got 110"),
        ([], InvalidInput, "at least one variant"),
        ([(1, 50), (1, 50)], InvalidInput, "listed twice"),
        ([(1, 101), (2, -1)], InvalidInput, "must be in 0..100"),
        ([(1, 50), (3, 50)], Conflict, "version 3 is not loaded"),
    ],
)
def test_manager_refuses_bad_splits_and_changes_nothing(
    tmp_path: Path, variants: list[tuple[int, int]], error: type[Exception], match: str
) -> None:
    mgr, published = _manager(tmp_path)
    with pytest.raises(error, match=match):
        asyncio.run(mgr.set_traffic("fraud", variants, "", "test", ""))
    assert mgr.state("fraud").current.revision == 1
    assert published == []
    assert not (tmp_path / "fraud" / "deployment.json").exists()


def test_manager_accepts_a_split_and_publishes_it(tmp_path: Path) -> None:
    mgr, published = _manager(tmp_path)
    rev = asyncio.run(mgr.set_traffic("fraud", [(2, 10), (1, 90)], "new-salt", "t", "why"))
    assert rev.revision == 2 and rev.variants == ((1, 90), (2, 10)) and rev.salt == "new-salt"
    dep = published[-1].deployment("fraud")
    assert dep.revision == 2 and dep.live == 1 and dep.salt == "new-salt"
    state = json.loads((tmp_path / "fraud" / "deployment.json").read_text())
    assert state["current"] == 2 and state["history"][-1]["variants"] == [[1, 90], [2, 10]]


def test_rollback_after_an_unload_leaves_the_unloaded_version_out(tmp_path: Path) -> None:
    mgr, published = _manager(tmp_path)
    mgr.state("fraud").models[3] = MODELS[3]

    async def script() -> Revision:
        await mgr.set_traffic("fraud", [(1, 50), (2, 0), (3, 50)], "", "t", "")
        await mgr.set_traffic("fraud", [(1, 100), (2, 0), (3, 0)], "", "t", "")
        await mgr.unload("fraud", 2, "t", "")
        return await mgr.rollback("fraud", "t", "")

    rev = asyncio.run(script())
    assert rev.variants == ((1, 50), (3, 50))  # v2 (weight 0, unloaded) is not restored
    assert rev.loaded == (1, 3)
    assert published[-1].deployment("fraud").revision == rev.revision


def test_rollback_undoes_the_last_traffic_change_not_a_load(tmp_path: Path) -> None:
    """Entries at weight 0 are not traffic: a revision that only adds one is skipped."""
    mgr, _ = _manager(tmp_path)

    async def script() -> Revision:
        await mgr.set_traffic("fraud", [(1, 70), (2, 30)], "", "t", "")
        await mgr.set_traffic("fraud", [(1, 100)], "", "t", "")
        await mgr.set_traffic("fraud", [(1, 100), (2, 0)], "", "t", "")
        return await mgr.rollback("fraud", "t", "")

    assert asyncio.run(script()).variants == ((1, 70), (2, 30))


def test_rollback_with_nothing_to_undo_is_refused(tmp_path: Path) -> None:
    mgr, _ = _manager(tmp_path)
    with pytest.raises(Conflict, match="no earlier deployment revision"):
        asyncio.run(mgr.rollback("fraud", "t", ""))


# --------------------------------------------------------------------------------------
# the canary guard
# --------------------------------------------------------------------------------------

GUARD_SETTINGS = {
    "canary_min_requests": 100,
    "canary_max_error_ratio": 0.02,
    "canary_max_p95_seconds": 0.05,
    "canary_max_score_psi": 0.25,
}


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


@pytest.fixture
def guard(tmp_path: Path) -> CanaryGuard:
    mgr, _ = _manager(tmp_path, **GUARD_SETTINGS)
    return CanaryGuard(mgr.settings, mgr, Metrics(CollectorRegistry()))


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


def test_check_error_ratio_breach(guard: CanaryGuard) -> None:
    b = guard.check("fraud", 2, stats(1_000, errors=21), stats(1_000))
    assert b is not None and (b.model, b.version, b.kind) == ("fraud", 2, "error_ratio")
    assert "0.0210 > 0.02" in b.detail and "1000 requests" in b.detail


def test_check_error_ratio_at_the_bound_is_no_breach(guard: CanaryGuard) -> None:
    assert guard.check("fraud", 2, stats(1_000, errors=20), stats(1_000)) is None


def test_check_latency_breach(guard: CanaryGuard) -> None:
    st = stats(200, latency=0.002)
    st.latencies.extend([0.2] * 20)  # ~9% slow: the p95 is 200 ms
    b = guard.check("fraud", 2, st, stats(1_000))
    assert b is not None and b.kind == "latency"
    assert "p95 200.00 ms > 50.00 ms" in b.detail


def test_check_latency_just_below_the_bound(guard: CanaryGuard) -> None:
    assert guard.check("fraud", 2, stats(500, latency=0.049), stats(500)) is None


def test_check_score_psi_breach(guard: CanaryGuard) -> None:
    ctl = stats(1_000, scores=low_scores(1_000))
    bad = stats(1_000, scores=np.clip(low_scores(1_000, 1) * 200, 0, 1))
    psi = score_psi(bad.scores, ctl.scores)
    assert psi > 0.25
    b = guard.check("fraud", 2, bad, ctl)
    assert b is not None and b.kind == "score_psi"
    assert f"{psi:.3f} > 0.25" in b.detail


def test_check_no_breach_below_every_bound(guard: CanaryGuard) -> None:
    ctl = stats(2_000, errors=10, scores=low_scores(1_990))
    canary = stats(2_000, errors=30, latency=0.01, scores=low_scores(1_970, 7))
    assert score_psi(canary.scores, ctl.scores) < 0.05
    assert guard.check("fraud", 2, canary, ctl) is None


def test_check_skips_psi_until_the_control_has_enough_requests(guard: CanaryGuard) -> None:
    bad = stats(1_000, scores=np.full(1_000, 0.9, dtype=np.float32))
    few = stats(99, scores=low_scores(99))
    assert guard.check("fraud", 2, bad, few) is None
    assert guard.check("fraud", 2, bad, None) is None
    enough = stats(100, scores=low_scores(100))
    b = guard.check("fraud", 2, bad, enough)
    assert b is not None and b.kind == "score_psi"


def _record(guard: CanaryGuard, version: int, revision: int, ok: int, failed: int) -> None:
    for _ in range(ok):
        guard.record("fraud", version, revision, 0.001, True, None)
    for _ in range(failed):
        guard.record("fraud", version, revision, 0.0, False, None)


def test_breaches_wait_for_the_minimum_count(guard: CanaryGuard) -> None:
    asyncio.run(guard.manager.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    _record(guard, 1, 2, 500, 0)
    _record(guard, 2, 2, 0, 99)  # all failed, but below canary_min_requests
    assert guard.breaches() == []
    _record(guard, 2, 2, 0, 1)
    (b,) = guard.breaches()
    assert (b.version, b.kind) == (2, "error_ratio")


def test_breaches_ignore_other_revisions(guard: CanaryGuard) -> None:
    asyncio.run(guard.manager.set_traffic("fraud", [(1, 90), (2, 10)], "", "t", ""))
    _record(guard, 2, 1, 0, 500)  # an old revision's failures
    assert guard.breaches() == []


def test_enforce_rolls_back_counts_and_forgets(guard: CanaryGuard) -> None:
    mgr = guard.manager
    asyncio.run(mgr.set_traffic("fraud", [(1, 80), (2, 20)], "", "t", ""))
    _record(guard, 1, 2, 400, 0)
    _record(guard, 2, 2, 90, 10)
    (b,) = asyncio.run(guard.enforce())
    assert (b.version, b.kind) == (2, "error_ratio")
    cur = mgr.state("fraud").current
    assert cur.revision == 3 and cur.variants == ((1, 100), (2, 0))
    assert cur.action == "rollback" and cur.actor == "canary-guard"
    assert cur.reason.startswith("canary v2: error ratio 0.1000 > 0.02")
    got = guard.metrics.registry.get_sample_value(
        "riskserve_rollbacks_total", {"model": "fraud", "reason": "canary_error_ratio"}
    )
    assert got == 1.0
    assert ("fraud", 2) not in guard.stats  # the old revision's stats are dropped
    assert asyncio.run(guard.enforce()) == []


def test_a_broken_canary_at_an_even_split_is_caught(guard: CanaryGuard) -> None:
    """At 50/50 the incumbent (lower version) is the control: a failing new
    version must not escape the guard by being taken for the control."""
    asyncio.run(guard.manager.set_traffic("fraud", [(1, 50), (2, 50)], "", "t", ""))
    _record(guard, 1, 2, 300, 0)
    _record(guard, 2, 2, 200, 100)
    (b,) = guard.breaches()
    assert (b.version, b.kind) == (2, "error_ratio")
