"""The canary guard: watches every canary (a variant with traffic that is not the
control) against its bounds over a minimum count and, on a breach, takes its
traffic away by itself (weight 0, its share to the control; no other weight ever
rises), logging why and counting it.

Bounds a client cannot trip on its own: latency is compared with the control's on
requests of the same row-count class, never against an absolute figure that a
client sending huge requests to the canary would break; scores are compared with
the control's by PSI; errors are server faults only.

The data plane reports each request of a split deployment through `record`, with
plain values (no data-plane type crosses into this module)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from riskserve._native import psi_between
from riskserve.config import CanarySettings
from riskserve.deployments.history import control_version
from riskserve.deployments.service import DeploymentService
from riskserve.errors import RiskserveError

log = logging.getLogger(__name__)

#: Score bins for comparing a canary's scores with the control's: fraud
#: probabilities crowd near 0, so the edges are log-spaced.
SCORE_EDGES = np.array([1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5])
#: Latencies kept per row-count class and variant.
LATENCY_SAMPLES = 4096
#: Row-count classes whose latencies are compared (upper bounds, inclusive):
#: a request is only compared with control requests of about its size.
ROW_CLASSES = (1, 8, 64, 512, 1 << 62)


def row_class(rows: int) -> int:
    """The index of the row-count class of a request of `rows` rows."""
    for i, upper in enumerate(ROW_CLASSES):
        if rows <= upper:
            return i
    return len(ROW_CLASSES) - 1


def _class_label(i: int) -> str:
    lower = 1 if i == 0 else ROW_CLASSES[i - 1] + 1
    upper = ROW_CLASSES[i]
    if lower == upper:
        return f"{lower}-row"
    return f"{lower}+ row" if i == len(ROW_CLASSES) - 1 else f"{lower}-{upper} row"


def _p95(samples: collections.deque[float]) -> float:
    return float(np.quantile(np.fromiter(samples, float), 0.95))


#: The actor recorded on the guard's rollbacks.
ACTOR = "canary-guard"


def _latency_classes() -> list[collections.deque[float]]:
    return [collections.deque(maxlen=LATENCY_SAMPLES) for _ in ROW_CLASSES]


@dataclasses.dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    #: Latencies of successful requests, per row-count class (ROW_CLASSES).
    latencies: list[collections.deque[float]] = dataclasses.field(default_factory=_latency_classes)
    scores: npt.NDArray[np.uint64] = dataclasses.field(
        default_factory=lambda: np.zeros(len(SCORE_EDGES) + 1, dtype=np.uint64)
    )

    def add_scores(self, probs: npt.NDArray[np.float32]) -> None:
        idx = np.searchsorted(SCORE_EDGES, probs, side="right")
        self.scores += np.bincount(idx, minlength=len(self.scores)).astype(np.uint64)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def add_latency(self, seconds: float, rows: int) -> None:
        self.latencies[row_class(rows)].append(seconds)


def score_psi(a: npt.NDArray[np.uint64], e: npt.NDArray[np.uint64]) -> float:
    """PSI of score counts `a` (canary) against `e` (control): the core's PSI."""
    return psi_between(np.asarray(a, dtype=np.uint64), np.asarray(e, dtype=np.uint64))


@dataclasses.dataclass(frozen=True)
class Breach:
    model: str
    version: int
    kind: str  # error_ratio | latency | score_psi
    detail: str
    #: The deployment revision the breach was measured on.
    revision: int = 0


def latency_breach(
    s: CanarySettings, st: VariantStats, ctl: VariantStats | None
) -> tuple[str, float, float] | None:
    """(class, canary p95, control p95) of the first row-count class in which the
    canary is slower than the control by more than the ratio and the slack, both
    sides with at least min_requests samples there; None otherwise."""
    if ctl is None:
        return None
    for i, (mine, theirs) in enumerate(zip(st.latencies, ctl.latencies, strict=True)):
        if len(mine) < s.min_requests or len(theirs) < s.min_requests:
            continue
        a, b = _p95(mine), _p95(theirs)
        if a > b * s.max_p95_ratio and a - b > s.p95_slack_seconds:
            return _class_label(i), a, b
    return None


class CanaryGuard:
    def __init__(
        self,
        settings: CanarySettings,
        deployments: DeploymentService,
        count_rollback: Callable[[str, str], None],
    ) -> None:
        self.s = settings
        self.deployments = deployments
        #: Called with (model, reason) for every rollback the guard makes.
        self._count_rollback = count_rollback
        #: (model, revision the split began) → version → stats; a new split starts
        #: afresh, while loads or shadow changes that keep the split do not.
        self.stats: dict[tuple[str, int], dict[int, VariantStats]] = {}

    def record(
        self,
        model: str,
        version: int,
        period: int,
        seconds: float,
        ok: bool,
        scores: npt.NDArray[np.float32] | None,
    ) -> None:
        """One request of a split deployment: served by `version` during the split
        that began at revision `period`; its scores when it succeeded."""
        per = self.stats.setdefault((model, period), {})
        st = per.get(version)
        if st is None:
            st = per[version] = VariantStats()
        st.requests += 1
        if ok:
            if scores is not None:
                st.add_latency(seconds, len(scores))
                st.add_scores(scores)
        else:
            st.errors += 1

    def breaches(self) -> list[Breach]:
        out = []
        for name in self.deployments.names():
            cur = self.deployments.current(name)
            live = cur.live
            if len(live) < 2:
                continue
            control = control_version(live)
            per = self.stats.get((name, self.deployments.traffic_since(name)), {})
            ctl = per.get(control)
            for v, _w in live:
                if v == control:
                    continue
                st = per.get(v)
                if st is None or st.requests < self.s.min_requests:
                    continue
                b = self.check(name, v, st, ctl)
                if b is not None:
                    out.append(dataclasses.replace(b, revision=cur.revision))
        return out

    def check(
        self, name: str, version: int, st: VariantStats, ctl: VariantStats | None
    ) -> Breach | None:
        s = self.s
        if st.error_ratio > s.max_error_ratio:
            return Breach(
                name,
                version,
                "error_ratio",
                f"error ratio {st.error_ratio:.4f} > {s.max_error_ratio} "
                f"over {st.requests} requests",
            )
        slow = latency_breach(s, st, ctl)
        if slow is not None:
            label, a, b = slow
            return Breach(
                name,
                version,
                "latency",
                f"p95 of {label} requests {a * 1000:.2f} ms > {s.max_p95_ratio:g} x the "
                f"control's {b * 1000:.2f} ms (+{s.p95_slack_seconds * 1000:g} ms)",
            )
        if ctl is not None and ctl.requests >= s.min_requests:
            psi = score_psi(st.scores, ctl.scores)
            if math.isfinite(psi) and psi > s.max_score_psi:
                return Breach(
                    name,
                    version,
                    "score_psi",
                    f"score PSI against the control {psi:.3f} > {s.max_score_psi}",
                )
        return None

    async def enforce(self) -> list[Breach]:
        """Takes the traffic of every breaching canary away, one change per model."""
        acted = []
        by_model: dict[str, list[Breach]] = {}
        for b in self.breaches():
            by_model.setdefault(b.model, []).append(b)
        for model, found in by_model.items():
            why = "; ".join(f"canary v{b.version}: {b.detail}" for b in found)
            try:
                await self.deployments.demote(
                    model, [b.version for b in found], ACTOR, why, found[0].revision
                )
            except RiskserveError as e:
                log.error(
                    "canary guard could not roll back",
                    extra={
                        "model": model,
                        "versions": [b.version for b in found],
                        "reason": e.message,
                    },
                )
                continue
            for b in found:
                self._count_rollback(b.model, f"canary_{b.kind}")
                log.warning(
                    "canary rolled back",
                    extra={
                        "model": b.model,
                        "version": b.version,
                        "breach": b.kind,
                        "detail": b.detail,
                    },
                )
            acted += found
        # Forget stats of splits that are no longer current.
        current = {(n, self.deployments.traffic_since(n)) for n in self.deployments.names()}
        for key in list(self.stats):
            if key not in current:
                del self.stats[key]
        return acted

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.s.check_seconds)
            try:
                await self.enforce()
            except Exception:
                log.exception("canary guard failed")
