"""The routing table: an immutable snapshot mapping model names to deployments
(loaded versions, traffic split, shadow, threshold overrides). It is replaced as
a whole, never mutated, so a request that resolved a version keeps it (and its
threshold) for its whole life.

Assignment (docs/architecture.md): bucket = murmur3_x86_32(salt + routing_key) mod 10,000;
variants own contiguous bucket ranges in version order, sized by their weights.
Every process and host computes the same bucket for the same key and salt, and
moving weight from one variant to its neighbour moves only the keys between the
old and the new boundary."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from types import MappingProxyType

from riskserve._native import murmur3_32
from riskserve.errors import NotFound
from riskserve.runtime import LoadedModel
from riskserve.runtime.loaded import LEGACY_THRESHOLD

BUCKETS = 10_000


def bucket_of(salt: str, key: str) -> int:
    """The key's traffic bucket in [0, 10000): murmur3_x86_32(utf8(salt + key), 0)."""
    return murmur3_32((salt + key).encode(), 0) % BUCKETS


@dataclasses.dataclass(frozen=True)
class Variant:
    version: int
    weight: int  # percent


@dataclasses.dataclass(frozen=True)
class Routed:
    """Where one request goes."""

    model: LoadedModel
    variant: str
    revision: int
    shadow: LoadedModel | None = None
    #: More than one variant takes traffic: the canary guard watches this request.
    split: bool = False
    #: Revision at which the current split began (the canary guard's period).
    traffic_since: int = 0
    #: The served version's effective operating threshold (a score >= it is flagged).
    threshold: float = LEGACY_THRESHOLD
    #: The shadow's effective threshold; 0.0 when there is no shadow.
    shadow_threshold: float = 0.0


_NO_OVERRIDES: Mapping[int, float] = MappingProxyType({})
_NO_ROUTES: Mapping[tuple[int, bool | None], Routed] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Deployment:
    name: str
    #: Every loaded version (including those at weight 0).
    versions: Mapping[int, LoadedModel]
    #: The control (riskserve.deployments.history.control_version).
    live: int
    variants: tuple[Variant, ...] = ()
    salt: str = ""
    revision: int = 1
    shadow_version: int | None = None
    shadow_percent: float = 0.0
    #: Revision at which the current traffic split began (0: this revision).
    traffic_since: int = 0
    #: Operating thresholds set for this deployment, overriding the versions' own.
    thresholds: Mapping[int, float] = dataclasses.field(default_factory=lambda: _NO_OVERRIDES)
    _ranges: tuple[tuple[int, int], ...] = dataclasses.field(default=(), repr=False)
    #: Every Routed this deployment can give (`routes`), built once: (version,
    #: shadowed) → Routed for the split's variants, (version, None) → the
    #: explicit-version route.
    _routes: Mapping[tuple[int, bool | None], Routed] = dataclasses.field(
        default_factory=lambda: _NO_ROUTES, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        variants = self.variants or (Variant(self.live, 100),)
        variants = tuple(sorted(variants, key=lambda v: v.version))
        if sum(v.weight for v in variants) != 100:
            raise ValueError(f"{self.name}: weights must sum to 100")
        for v in variants:
            if v.version not in self.versions:
                raise ValueError(f"{self.name}: variant version {v.version} is not loaded")
        for version, t in self.thresholds.items():
            if version not in self.versions:
                raise ValueError(f"{self.name}: threshold of version {version}, not loaded")
            if not (math.isfinite(t) and 0.0 <= t <= 1.0):
                raise ValueError(f"{self.name}: threshold of version {version} is {t}")
        upper, ranges = 0, []
        for v in variants:
            if v.weight > 0:
                upper += v.weight * (BUCKETS // 100)
                ranges.append((upper, v.version))
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "_ranges", tuple(ranges))

    def routes(self) -> Mapping[tuple[int, bool | None], Routed]:
        """The routes of `route`, one object each (a request only reads its Routed),
        built at the first request."""
        if self._routes:
            return self._routes
        routes: dict[tuple[int, bool | None], Routed] = {}
        split = len(self._ranges) > 1
        since = self.traffic_since or self.revision
        shadow = None if self.shadow_version is None else self.versions.get(self.shadow_version)
        for v in self.versions:
            threshold = self.threshold_of(v)
            routes[(v, None)] = Routed(
                self.versions[v], "explicit", self.revision, threshold=threshold
            )
            for shadowed in (False, True):
                with_shadow = shadowed and shadow is not None and self.shadow_version != v
                routes[(v, shadowed)] = Routed(
                    self.versions[v],
                    f"v{v}",
                    self.revision,
                    shadow if with_shadow else None,
                    split,
                    since,
                    threshold=threshold,
                    shadow_threshold=(
                        self.threshold_of(self.shadow_version)  # type: ignore[arg-type]
                        if with_shadow
                        else 0.0
                    ),
                )
        out = MappingProxyType(routes)
        object.__setattr__(self, "_routes", out)
        return out

    @property
    def live_model(self) -> LoadedModel:
        return self.versions[self.live]

    def threshold_of(self, version: int) -> float:
        """The operating threshold `version` serves with: this deployment's override,
        else the version's own (its manifest's). KeyError if it is not loaded."""
        t = self.thresholds.get(version)
        return self.versions[version].threshold if t is None else t

    def assign(self, key: str | None) -> int:
        """The version for a routing key (None → uniformly at random)."""
        if len(self._ranges) == 1:
            return self._ranges[0][1]
        b = random.randrange(BUCKETS) if key is None else bucket_of(self.salt, key)
        for upper, version in self._ranges:
            if b < upper:
                return version
        return self._ranges[-1][1]

    def wants_shadow(self, key: str | None) -> bool:
        if self.shadow_version is None or self.shadow_percent <= 0:
            return False
        b = random.randrange(BUCKETS) if key is None else bucket_of(self.salt + "/shadow", key)
        return b < self.shadow_percent * (BUCKETS / 100)


@dataclasses.dataclass(frozen=True)
class RoutingTable:
    deployments: Mapping[str, Deployment]

    def deployment(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"unknown model {name!r}")
        return dep

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The control version, or the explicitly requested one (which must be loaded)."""
        dep = self.deployment(name)
        if not version:
            return dep.live_model
        return dep.versions[_explicit(dep, version)]

    def route(self, name: str, version: str = "", key: str | None = None) -> Routed:
        """Routes one request: an explicit version bypasses the split."""
        dep = self.deployment(name)
        routes = dep._routes or dep.routes()
        if version:
            return routes[(_explicit(dep, version), None)]
        return routes[(dep.assign(key), dep.wants_shadow(key))]


def _explicit(dep: Deployment, version: str) -> int:
    """The explicitly requested version, which must be loaded."""
    try:
        v = int(version)
    except ValueError:
        raise NotFound(f"model {dep.name!r} has no version {version!r}") from None
    if v not in dep.versions:
        raise NotFound(f"model {dep.name!r} version {version} is not loaded")
    return v
