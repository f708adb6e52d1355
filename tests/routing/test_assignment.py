"""Traffic assignment, in process.

* ``bucket_of`` reproduces the MurmurHash3 x86_32 vectors shared with the Rust
  tests (``tests/native/hash_vectors.json``) and an independent implementation
  (``mmh3``) on salt + key;
* ``Deployment.assign`` gives every variant one contiguous bucket range, in version
  order, sized by its weight; moving weight between neighbours moves only the keys
  between the old and the new boundary;
* weights that do not sum to 100 are refused by the table (the deployment
  service's checks are in tests/deployments);
* every routed request carries its version's effective operating threshold (the
  deployment's override, else the version's own), and its shadow's.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pytest

from riskserve._native import murmur3_32
from riskserve.routing.table import BUCKETS, Deployment, RoutingTable, Variant, bucket_of

VECTORS = Path(__file__).resolve().parents[1] / "native" / "hash_vectors.json"
#: Stand-ins for loaded models: the table only looks them up (and their own
#: operating thresholds, v1 0.1, v2 0.2, v3 0.3).
MODELS: Any = {v: types.SimpleNamespace(version=v, threshold=v / 10) for v in (1, 2, 3)}


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


# --------------------------------------------------------------------------------------
# operating thresholds
# --------------------------------------------------------------------------------------


def test_threshold_of_is_the_override_else_the_version_s_own() -> None:
    dep = Deployment("fraud", MODELS, 1, thresholds={2: 0.75})
    assert dep.threshold_of(1) == 0.1  # its own (the manifest's)
    assert dep.threshold_of(2) == 0.75  # the deployment's override
    assert dep.threshold_of(3) == 0.3
    assert Deployment("fraud", MODELS, 1).threshold_of(2) == 0.2  # no overrides
    with pytest.raises(KeyError):
        dep.threshold_of(4)


def test_route_carries_the_served_and_shadow_versions_thresholds() -> None:
    split = (Variant(1, 50), Variant(2, 50))
    dep = Deployment("fraud", MODELS, 1, split, "s", 4, 3, 100.0, thresholds={1: 0.9, 3: 0.05})
    table = RoutingTable({"fraud": dep})
    seen = set()
    for i in range(300):
        r = table.route("fraud", key=f"k{i}")
        v = dep.assign(f"k{i}")
        seen.add(v)
        assert r.threshold == {1: 0.9, 2: 0.2}[v]
        assert r.shadow is MODELS[3] and r.shadow_threshold == 0.05
    assert seen == {1, 2}
    plain = RoutingTable({"fraud": Deployment("fraud", MODELS, 2, (Variant(2, 100),), "s")})
    r = plain.route("fraud", key="k1")
    assert (r.threshold, r.shadow, r.shadow_threshold) == (0.2, None, 0.0)


def test_a_shadow_equal_to_the_assigned_variant_has_no_threshold() -> None:
    dep = Deployment("fraud", MODELS, 1, (Variant(1, 100),), "s", 1, 1, 100.0, thresholds={1: 0.4})
    r = RoutingTable({"fraud": dep}).route("fraud", key="k")
    assert (r.threshold, r.shadow, r.shadow_threshold) == (0.4, None, 0.0)


def test_an_explicit_version_serves_with_its_effective_threshold() -> None:
    dep = Deployment("fraud", MODELS, 1, (Variant(1, 100),), "s", thresholds={3: 0.66})
    table = RoutingTable({"fraud": dep})
    assert table.route("fraud", "3", "k").threshold == 0.66  # the override
    explicit = table.route("fraud", "2", "k")
    assert (explicit.model, explicit.variant, explicit.threshold) == (MODELS[2], "explicit", 0.2)


@pytest.mark.parametrize(
    ("thresholds", "match"),
    [
        ({4: 0.5}, "threshold of version 4, not loaded"),
        ({1: 1.5}, "threshold of version 1 is 1.5"),
        ({1: -0.1}, "threshold of version 1 is -0.1"),
        ({1: math.nan}, "threshold of version 1 is nan"),
    ],
)
def test_table_refuses_bad_threshold_overrides(thresholds: dict[int, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Deployment("fraud", MODELS, 1, thresholds=thresholds)
