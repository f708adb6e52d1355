"""The canary guard: watches every canary (a variant with traffic that is not the
control) against its bounds over a minimum count, and rolls the deployment back
by itself on a breach, logging why and counting it."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from riskserve.config import Settings
from riskserve.errors import RiskserveError

if TYPE_CHECKING:
    from riskserve.dataplane import InferResult
    from riskserve.monitoring import Metrics
    from riskserve.routing.manager import DeploymentManager

log = logging.getLogger(__name__)

#: Score bins for comparing a canary's scores with the control's: fraud
#: probabilities crowd near 0, so the edges are log-spaced.
SCORE_EDGES = np.array([1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5])
SHARE_FLOOR = 1e-4
LATENCY_SAMPLES = 4096


@dataclasses.dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    latencies: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES)
    )
    scores: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(len(SCORE_EDGES) + 1, dtype=np.int64)
    )

    def add_scores(self, probs: np.ndarray) -> None:
        idx = np.searchsorted(SCORE_EDGES, probs, side="right")
        self.scores += np.bincount(idx, minlength=len(self.scores))

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95(self) -> float:
        return (
            float(np.quantile(np.fromiter(self.latencies, float), 0.95)) if self.latencies else 0.0
        )


def score_psi(a: np.ndarray, e: np.ndarray) -> float:
    """PSI of count vectors a (canary) against e (control), shares floored at 1e-4."""
    if a.sum() == 0 or e.sum() == 0:
        return 0.0
    pa = np.maximum(a / a.sum(), SHARE_FLOOR)
    pe = np.maximum(e / e.sum(), SHARE_FLOOR)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


@dataclasses.dataclass(frozen=True)
class Breach:
    model: str
    version: int
    kind: str  # error_ratio | latency | score_psi
    detail: str
    #: The deployment revision the breach was measured on.
    revision: int = 0


class CanaryGuard:
    def __init__(self, settings: Settings, manager: DeploymentManager, metrics: Metrics) -> None:
        self.s = settings
        self.manager = manager
        self.metrics = metrics
        #: (model, revision the split began) → version → stats; a new split starts
        #: afresh, while loads or shadow changes that keep the split do not.
        self.stats: dict[tuple[str, int], dict[int, VariantStats]] = {}

    def record(
        self,
        model: str,
        version: int,
        revision: int,
        seconds: float,
        ok: bool,
        result: InferResult | None,
    ) -> None:
        per = self.stats.setdefault((model, revision), {})
        st = per.get(version)
        if st is None:
            st = per[version] = VariantStats()
        st.requests += 1
        if ok:
            st.latencies.append(seconds)
            if result is not None:
                st.add_scores(result.probability)
        else:
            st.errors += 1

    def breaches(self) -> list[Breach]:
        out = []
        for name in self.manager.names():
            cur = self.manager.state(name).current
            live = [(v, w) for v, w in cur.variants if w > 0]
            if len(live) < 2:
                continue
            # The control has the largest weight; on a tie the older (lower) version,
            # so that a new version at an even split is watched, not trusted.
            control = max(live, key=lambda vw: (vw[1], -vw[0]))[0]
            per = self.stats.get((name, self.manager.traffic_since(name)), {})
            ctl = per.get(control)
            for v, _w in live:
                if v == control:
                    continue
                st = per.get(v)
                if st is None or st.requests < self.s.canary_min_requests:
                    continue
                b = self.check(name, v, st, ctl)
                if b is not None:
                    out.append(dataclasses.replace(b, revision=cur.revision))
                    break  # one rollback per model per check: it undoes the whole split
        return out

    def check(
        self, name: str, version: int, st: VariantStats, ctl: VariantStats | None
    ) -> Breach | None:
        s = self.s
        if st.error_ratio > s.canary_max_error_ratio:
            return Breach(
                name,
                version,
                "error_ratio",
                f"error ratio {st.error_ratio:.4f} > {s.canary_max_error_ratio} "
                f"over {st.requests} requests",
            )
        p95 = st.p95
        if p95 > s.canary_max_p95_seconds:
            return Breach(
                name,
                version,
                "latency",
                f"p95 {p95 * 1000:.2f} ms > {s.canary_max_p95_seconds * 1000:.2f} ms",
            )
        if ctl is not None and ctl.requests >= s.canary_min_requests:
            psi = score_psi(st.scores, ctl.scores)
            if math.isfinite(psi) and psi > s.canary_max_score_psi:
                return Breach(
                    name,
                    version,
                    "score_psi",
                    f"score PSI against the control {psi:.3f} > {s.canary_max_score_psi}",
                )
        return None

    async def enforce(self) -> list[Breach]:
        acted = []
        for b in self.breaches():
            try:
                await self.manager.rollback(
                    b.model,
                    "canary-guard",
                    f"canary v{b.version}: {b.detail}",
                    expected_revision=b.revision,
                )
            except RiskserveError as e:
                log.error(
                    "canary guard could not roll back",
                    extra={"model": b.model, "version": b.version, "reason": e.message},
                )
                continue
            self.metrics.rollbacks.labels(b.model, f"canary_{b.kind}").inc()
            log.warning(
                "canary rolled back",
                extra={
                    "model": b.model,
                    "version": b.version,
                    "breach": b.kind,
                    "detail": b.detail,
                },
            )
            acted.append(b)
        # Forget stats of splits that are no longer current.
        current = {(n, self.manager.traffic_since(n)) for n in self.manager.names()}
        for key in list(self.stats):
            if key not in current:
                del self.stats[key]
        return acted

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.s.canary_check_seconds)
            try:
                await self.enforce()
            except Exception:
                log.exception("canary guard failed")
