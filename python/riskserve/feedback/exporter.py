"""Outcomes per variant on /metrics: the latest Performance of each served model,
recomputed in the background every RISKSERVE_OUTCOME_REFRESH_SECONDS (a scrape
never queries the store).

Cardinality is bounded by what is served: one series per metric for each
loaded version's variant (`v<N>`) and its shadow group, and every one of them is
present from the start (NaN until enough labels have arrived), so a PromQL sum
or a dashboard panel never silently misses one."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from riskserve.feedback.outcomes import DELAY_BUCKETS, Performance, VariantOutcome

log = logging.getLogger(__name__)

#: What is served: (model, its loaded versions).
Served = Callable[[], Sequence[tuple[str, Sequence[int]]]]

RATES = (
    ("recall", "riskserve_outcome_recall", "Detection rate (recall) at the operating threshold"),
    (
        "false_positive_rate",
        "riskserve_outcome_false_positive_rate",
        "Share of legitimate transactions flagged at the operating threshold",
    ),
    ("precision", "riskserve_outcome_precision", "Share of flagged transactions that were fraud"),
    (
        "amount_recall",
        "riskserve_outcome_amount_recall",
        "Share of the fraud amount caught (labels with an amount)",
    ),
    ("auc", "riskserve_outcome_auc", "ROC AUC of the score on labelled rows"),
    ("coverage", "riskserve_outcome_label_coverage", "Share of mature predictions labelled"),
)
COUNTS = (
    ("predictions", "riskserve_outcome_predictions", "Mature predictions judged"),
    ("labelled", "riskserve_outcome_labelled", "Mature predictions with a label"),
    ("fraud", "riskserve_outcome_fraud_labels", "Mature predictions labelled fraud"),
)
DECISIONS = ("better", "worse", "no difference yet", "not enough labels yet")


def _value(x: float | int | None) -> float:
    return math.nan if x is None else float(x)


class OutcomesCollector(Collector):
    """The latest outcomes per model (module docstring)."""

    def __init__(self, served: Served) -> None:
        self._served = served
        self._lock = threading.Lock()
        self._latest: dict[str, Performance] = {}

    def refresh(self, compute: Callable[[str], Performance]) -> None:
        """Recomputes every served model's outcomes (blocking: run it off the loop)."""
        for model, _ in self._served():
            try:
                perf = compute(model)
            except Exception as e:
                log.warning("outcomes not computed", extra={"model": model, "error": str(e)})
                continue
            with self._lock:
                self._latest[model] = perf

    def describe(self) -> list[Metric]:
        return []

    def _groups(self) -> Iterator[tuple[str, str, str, VariantOutcome | None]]:
        with self._lock:
            latest = dict(self._latest)
        for model, versions in self._served():
            perf = latest.get(model)
            found = {} if perf is None else {(v.variant, v.version): v for v in perf.variants}
            keys = {(f"v{v}", v) for v in versions} | set(found)
            for variant, version in sorted(keys, key=lambda k: (k[1], k[0])):
                yield model, str(version), variant, found.get((variant, version))

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "variant"]
        groups = list(self._groups())
        for attr, name, doc in RATES:
            g = GaugeMetricFamily(
                name, doc + " (mature cohorts; NaN: too few labels).", labels=labels
            )
            for model, version, variant, o in groups:
                g.add_metric([model, version, variant], _value(getattr(o, attr, None)))
            yield g
        for attr, name, doc in COUNTS:
            g = GaugeMetricFamily(name, doc + ".", labels=labels)
            for model, version, variant, o in groups:
                g.add_metric([model, version, variant], float(getattr(o, attr, 0) or 0))
            yield g
        h = HistogramMetricFamily(
            "riskserve_label_delay_seconds",
            "Label time minus prediction time of the mature labelled predictions.",
            labels=labels,
        )
        for model, version, variant, o in groups:
            bounds = [("+Inf" if math.isinf(b) else f"{b:g}") for b in DELAY_BUCKETS]
            counts = [0] * len(bounds) if o is None else list(o.delay.counts)
            buckets = [(b, float(c)) for b, c in zip(bounds, counts, strict=True)]
            total = 0.0 if o is None else o.delay.sum
            h.add_metric([model, version, variant], buckets, total)
        yield h
        v = GaugeMetricFamily(
            "riskserve_ab_decision",
            "The A/B verdict per challenger against the control: 1 on its current decision.",
            labels=["model", "control", "challenger", "decision"],
        )
        with self._lock:
            latest = dict(self._latest)
        for model, perf in sorted(latest.items()):
            control = perf.verdict.control or ""
            for c in perf.verdict.comparisons:
                for d in DECISIONS:
                    v.add_metric([model, control, c.challenger, d], 1.0 if c.decision == d else 0.0)
        yield v
