"""Outcomes per variant and the A/B verdict, computed from joined rows.

Pure: no I/O, and the clock is passed in (`now`). numpy and math only (the server
keeps scikit-learn and scipy out of its process, for start-up time).

What is counted
---------------
Rows with ``since = now - window - maturity <= ts`` are considered (the caller
queries that range; they are filtered again here). A cohort is *mature* when
``ts <= now - maturity``: its labels have had `maturity_seconds` to arrive, so its
recall is not biased upwards by the fraud that has not been reported yet. Every
count in a `VariantOutcome` is over mature rows (maturity 0 judges everything up
to `now`); only `threshold` looks at the most recent row, mature or not.

Rows are grouped by (variant, version); shadow scorings are their own groups
(variant "shadow", one per version). The decision `flagged` is the stored one (made
at the threshold the row was scored with), never recomputed from the score, so a
threshold change in the window is judged as it was served.

The verdict
-----------
The control (given, or the routed group with the most mature predictions, the
lower version on a tie) is compared with every other routed group and every
shadow group. Requests that asked for a version explicitly (variant "explicit")
are reported in `variants` but left out of the verdict: they are not randomised
traffic, so comparing them with an arm of the split says nothing about the model.

Recall and false-positive rate are compared with a mixture sequential probability
ratio test (`mixture_sprt`), which may be looked at every day; AUC with a cluster
bootstrap (`auc_difference_interval`), which is a fixed-sample interval, shown for
information only. The `decision` uses the sequential tests alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from riskserve.feedback.records import Joined

DAY = 86400.0

#: Upper bounds ("le", seconds) of the label-delay histogram buckets, cumulative like
#: Prometheus: 1 h, 6 h, 1 d, 3 d, 7 d, 14 d, 30 d, 60 d, +Inf.
DELAY_BUCKETS: tuple[float, ...] = (
    3600.0,
    6 * 3600.0,
    DAY,
    3 * DAY,
    7 * DAY,
    14 * DAY,
    30 * DAY,
    60 * DAY,
    math.inf,
)

#: The 97.5 % quantile of the standard normal (Wilson 95 % intervals).
Z95 = 1.959963984540054

#: Variants that are not randomised arms of the split: reported, never compared.
UNRANDOMISED_VARIANTS = frozenset({"explicit"})

SHADOW = "shadow"

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no difference yet"
NOT_ENOUGH = "not enough labels yet"

#: A (low, high) interval.
Interval = tuple[float, float]

F64 = npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeSettings:
    #: A row is judged once it is this old (its labels have had time to arrive).
    maturity_seconds: float = 14 * DAY
    #: How far back mature rows are judged: since = now - window - maturity.
    window_seconds: float = 30 * DAY
    #: Fewer fraud labels than this in an arm: recall is None (legit labels: FPR,
    #: flagged-and-labelled rows: precision).
    min_labels: int = 30
    #: Fewer labels of either class than this: AUC is None.
    min_auc_labels: int = 20
    #: Significance level of the sequential tests (and 1 - level of their intervals).
    alpha: float = 0.05
    #: Scale of the N(0, tau^2) mixture over the true difference (mSPRT): the size of
    #: difference the test is most sensitive to; any tau > 0 keeps the level.
    tau: float = 0.05
    #: Bootstrap replicates of the AUC difference (0: no AUC interval).
    bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.maturity_seconds >= 0 and math.isfinite(self.maturity_seconds)):
            raise ValueError(f"maturity_seconds must be >= 0, got {self.maturity_seconds}")
        if not (self.window_seconds >= 0 and math.isfinite(self.window_seconds)):
            raise ValueError(f"window_seconds must be >= 0, got {self.window_seconds}")
        if self.min_labels < 1 or self.min_auc_labels < 1:
            raise ValueError("min_labels and min_auc_labels must be >= 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")


@dataclasses.dataclass(frozen=True, slots=True)
class DelayHistogram:
    """Label delays (label time - prediction time) of the mature labelled rows, over
    DELAY_BUCKETS: `counts[i]` is the number of delays <= DELAY_BUCKETS[i]
    (cumulative; the last is +Inf, equal to `count`). A negative delay (a clock
    ahead of the server's) lands in the first bucket."""

    counts: tuple[int, ...]
    sum: float
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class DailyPoint:
    """The mature labelled rows scored on one UTC day (counts of that day only)."""

    #: Unix seconds of the day's 00:00 UTC.
    day_start: int
    labelled: int
    fraud: int
    caught: int
    legit: int
    false_positives: int


@dataclasses.dataclass(frozen=True, slots=True)
class VariantOutcome:
    variant: str
    version: int
    shadow: bool
    #: The threshold of the group's most recent row (None if it was not finite).
    threshold: float | None
    #: Mature rows.
    predictions: int
    #: Mature rows with a label.
    labelled: int
    #: labelled / predictions (None without predictions).
    coverage: float | None
    fraud: int
    legit: int
    #: Flagged fraud.
    caught: int
    #: Flagged legit.
    false_positives: int
    #: caught / fraud (None below min_labels fraud labels).
    recall: float | None
    recall_ci: Interval | None
    #: false_positives / legit (None below min_labels legit labels).
    false_positive_rate: float | None
    fpr_ci: Interval | None
    #: caught / flagged-and-labelled (None below min_labels of those).
    precision: float | None
    precision_ci: Interval | None
    #: Amount of the caught fraud / amount of all fraud, over fraud labels with an
    #: amount (None if none has one, or their total is not positive).
    amount_recall: float | None
    #: Rank AUC (ties averaged) of the score (None below min_auc_labels of a class).
    auc: float | None
    delay: DelayHistogram
    daily: list[DailyPoint]

    @property
    def name(self) -> str:
        """How reasons and summaries name the group: "v2", "explicit", "shadow v3"."""
        return f"shadow v{self.version}" if self.shadow else self.variant


@dataclasses.dataclass(frozen=True, slots=True)
class SequentialTest:
    """A mixture SPRT of challenger - control on one proportion (`mixture_sprt`).
    `difference`, `ci` and `p_value` are None, `significant` False and `reason`
    says why when an arm has too few labels."""

    #: "recall" or "false_positive_rate".
    metric: str
    #: The denominators: fraud labels (recall) or legit labels (FPR) per arm.
    control_n: int
    challenger_n: int
    difference: float | None
    #: Always-valid (1 - alpha) interval of the difference.
    ci: Interval | None
    #: Always-valid p-value (1 / likelihood ratio, at most 1).
    p_value: float | None
    significant: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapInterval:
    """AUC(challenger) - AUC(control) with a 95 % cluster-bootstrap percentile
    interval. A fixed-sample interval: not valid under repeated looks, so shown for
    information and never used by the decision."""

    difference: float | None
    ci: Interval | None
    replicates: int
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    #: The challenger's variant ("v2", or "shadow").
    challenger: str
    challenger_version: int
    shadow: bool
    recall: SequentialTest
    false_positive_rate: SequentialTest
    auc: BootstrapInterval
    #: "better", "worse", "no difference yet" or "not enough labels yet".
    decision: str


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    #: The control's variant ("v1"); None when there is nothing to compare with.
    control: str | None
    control_version: int | None
    comparisons: list[Comparison]
    #: One line for a human.
    summary: str


@dataclasses.dataclass(frozen=True, slots=True)
class Performance:
    now: float
    maturity_seconds: float
    #: Routed and explicit groups in version order, then the shadow groups.
    variants: list[VariantOutcome]
    verdict: Verdict


@dataclasses.dataclass(frozen=True, slots=True)
class AucSample:
    """One arm's labelled rows for the AUC bootstrap: score, fraud (bool) and the
    routing-key hash ("" for none: each such row is a cluster of its own)."""

    score: F64
    fraud: npt.NDArray[np.bool_]
    key_hash: npt.NDArray[np.str_]

    @property
    def positives(self) -> int:
        return int(np.count_nonzero(self.fraud))

    @property
    def negatives(self) -> int:
        return int(len(self.fraud) - np.count_nonzero(self.fraud))


# --------------------------------------------------------------------------- rates


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of successes/n (None when n == 0). It always
    contains successes/n, and stays inside [0, 1]."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return (max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p)))


def _auc_by_groups(
    group: npt.NDArray[np.intp],
    fraud: npt.NDArray[np.bool_],
    weight: F64 | None,
    n_groups: int,
) -> float:
    """AUC from rows' score-group index (groups in ascending score order) and
    optional weights: P(score+ > score-) + P(tie)/2, i.e. rank AUC with ties
    averaged. NaN when a class has no weight."""
    w: F64 = np.ones(len(group)) if weight is None else weight
    pos = np.bincount(group, weights=np.where(fraud, w, 0.0), minlength=n_groups)
    neg = np.bincount(group, weights=np.where(fraud, 0.0, w), minlength=n_groups)
    total_pos = float(pos.sum())
    total_neg = float(neg.sum())
    if total_pos <= 0 or total_neg <= 0:
        return math.nan
    below = np.cumsum(neg) - neg
    return float(np.dot(pos, below + 0.5 * neg)) / (total_pos * total_neg)


def rank_auc(score: npt.ArrayLike, fraud: npt.ArrayLike) -> float:
    """Rank AUC (Mann-Whitney U / n+ n-) with tied scores averaged: what
    sklearn.metrics.roc_auc_score gives. NaN when a class is empty."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(fraud, dtype=np.bool_)
    uniq, group = np.unique(s, return_inverse=True)
    return _auc_by_groups(group.astype(np.intp), y, None, len(uniq))


# ------------------------------------------------------------------- mixture SPRT


def _arm_variance(x: F64, n: F64) -> F64:
    """p(1-p)/n per arm; where the observed proportion is 0 or 1 (0 variance), the
    Jeffreys-type estimate q = (x + 1/2) / (n + 1) is used instead, so an arm with
    0 of 40 caught is not taken as known exactly and V > 0 whenever n > 0."""
    p = x / n
    v = p * (1 - p)
    q = (x + 0.5) / (n + 1)
    return np.where(v > 0, v, q * (1 - q)) / n


def mixture_sprt(
    x_a: npt.ArrayLike,
    n_a: npt.ArrayLike,
    x_b: npt.ArrayLike,
    n_b: npt.ArrayLike,
    *,
    tau: float,
    alpha: float,
) -> tuple[F64, F64, F64, F64]:
    """Mixture SPRT for the difference of two proportions, B - A (arrays
    broadcast, so a whole simulation is one call). Returns (difference, ci low,
    ci high, p-value).

    Normal approximation (Johari, Pekelis & Walsh 2017, "Always valid inference:
    continuous monitoring of A/B tests"; Optimizely's Stats Engine): with
    d = pB - pA and V = pA(1-pA)/nA + pB(1-pB)/nB, the mixture N(0, tau^2) over the
    true difference gives the likelihood ratio

        L = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))

    p = min(1, 1/L), and the always-valid interval is the set of differences the
    test would not reject:

        d +- sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))

    (p < alpha exactly when the interval excludes 0). V = 0 (both arms at 0 % or
    100 %) is guarded per arm: see `_arm_variance`.

    Why daily peeking is allowed: under H0 (equal proportions) L_n, as the data
    accumulates, is a nonnegative martingale with mean 1 (a test martingale: the
    mixture likelihood ratio). Ville's inequality bounds the chance it *ever*
    reaches 1/alpha by alpha, so checking p < alpha after every day, and stopping
    the first time it holds, keeps the false-positive rate at alpha however often
    one looks. A fixed-horizon z-test has level alpha at one pre-planned look only:
    each look is another chance for noise to cross 1.96, and over many looks the
    chance that some look crosses grows towards 1 (law of the iterated logarithm);
    tests/feedback/test_outcomes.py shows both.

    The guarantee assumes the looks see accumulating data. This module is
    stateless (it returns the current 1/L, not the running minimum over past
    looks); rows leaving the window, or late labels and revisions of old rows,
    make successive looks not strictly nested, and the normal approximation with
    a plug-in V is asymptotic, so the level holds approximately, not exactly.
    """
    xa = np.asarray(x_a, dtype=np.float64)
    na = np.asarray(n_a, dtype=np.float64)
    xb = np.asarray(x_b, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    d = xb / nb - xa / na
    v = _arm_variance(xa, na) + _arm_variance(xb, nb)
    t2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
    p = np.minimum(1.0, np.exp(-log_lr))
    half = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    lo = np.clip(d - half, -1.0, 1.0)
    hi = np.clip(d + half, -1.0, 1.0)
    return d, lo, hi, p


def _sequential(
    metric: str, control: VariantOutcome, challenger: VariantOutcome, s: OutcomeSettings
) -> SequentialTest:
    if metric == "recall":
        unit = "fraud"
        xa, na, xb, nb = control.caught, control.fraud, challenger.caught, challenger.fraud
    else:
        unit = "legit"
        xa, na = control.false_positives, control.legit
        xb, nb = challenger.false_positives, challenger.legit
    short = [
        f"{n} {unit} labels in {arm.name}, need {s.min_labels}"
        for n, arm in ((nb, challenger), (na, control))
        if n < s.min_labels
    ]
    if short:
        return SequentialTest(
            metric, na, nb, None, None, None, False, f"{NOT_ENOUGH}: " + "; ".join(short)
        )
    d, lo, hi, p = mixture_sprt(xa, na, xb, nb, tau=s.tau, alpha=s.alpha)
    pv = float(p)
    return SequentialTest(metric, na, nb, float(d), (float(lo), float(hi)), pv, pv < s.alpha)


# ------------------------------------------------------------------ AUC bootstrap


class _BootArm:
    """One arm prepared for resampling: score groups and cluster index per row."""

    def __init__(self, sample: AucSample) -> None:
        uniq, group = np.unique(sample.score, return_inverse=True)
        self.group = group.astype(np.intp)
        self.n_groups = len(uniq)
        self.fraud = sample.fraud
        keys = sample.key_hash
        _, cluster = np.unique(keys, return_inverse=True)
        cluster = cluster.astype(np.intp)
        lone = keys == ""
        # Rows without a routing key are each their own cluster.
        cluster[lone] = cluster.max(initial=-1) + 1 + np.arange(int(lone.sum()))
        _, compact = np.unique(cluster, return_inverse=True)
        self.cluster = compact.astype(np.intp)
        self.n_clusters = int(compact.max(initial=-1)) + 1

    def auc(self, rng: np.random.Generator | None) -> float:
        if rng is None:
            return _auc_by_groups(self.group, self.fraud, None, self.n_groups)
        draws = rng.integers(0, self.n_clusters, size=self.n_clusters)
        per_cluster = np.bincount(draws, minlength=self.n_clusters).astype(np.float64)
        return _auc_by_groups(self.group, self.fraud, per_cluster[self.cluster], self.n_groups)


def auc_difference_interval(
    control: AucSample,
    challenger: AucSample,
    replicates: int,
    seed: int | Sequence[int],
) -> tuple[float, Interval | None]:
    """AUC(challenger) - AUC(control) and its 95 % percentile interval from a
    cluster bootstrap: each replicate resamples routing keys with replacement
    within each arm independently (all rows of a drawn key come along, so the
    rows of one customer, which are correlated, count as one unit). Seeded: the
    same data and seed give the same interval.

    This is a fixed-sample interval, NOT always-valid: looked at daily it will
    exclude the truth more often than 5 % of the time, which is why the decision
    does not use it. Shadow rows share their keys with the control's rows;
    resampling the arms independently ignores that positive correlation, which
    makes the interval wider (conservative), not narrower."""
    a = _BootArm(control)
    b = _BootArm(challenger)
    point = b.auc(None) - a.auc(None)
    if replicates <= 0:
        return point, None
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates)
    for i in range(replicates):
        auc_a = a.auc(rng)
        diffs[i] = b.auc(rng) - auc_a
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return point, None
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return point, (float(lo), float(hi))


def _auc_comparison(
    control: VariantOutcome,
    challenger: VariantOutcome,
    samples: Mapping[tuple[str, int, bool], AucSample],
    s: OutcomeSettings,
) -> BootstrapInterval:
    short: list[str] = []
    for arm in (challenger, control):
        sample = samples[(arm.variant, arm.version, arm.shadow)]
        for n, unit in ((sample.positives, "fraud"), (sample.negatives, "legit")):
            if n < s.min_auc_labels:
                short.append(f"{n} {unit} labels in {arm.name}, need {s.min_auc_labels}")
    if short:
        return BootstrapInterval(None, None, s.bootstrap, f"{NOT_ENOUGH}: " + "; ".join(short))
    seed = (s.seed, challenger.version, int(challenger.shadow), control.version)
    point, ci = auc_difference_interval(
        samples[(control.variant, control.version, control.shadow)],
        samples[(challenger.variant, challenger.version, challenger.shadow)],
        s.bootstrap,
        seed,
    )
    reason = ""
    if ci is None:
        reason = (
            "bootstrap disabled (0 replicates)"
            if s.bootstrap <= 0
            else "no bootstrap replicate had both classes"
        )
    return BootstrapInterval(point, ci, s.bootstrap, reason)


# ------------------------------------------------------------------------ verdict


def decide(recall: SequentialTest, fpr: SequentialTest) -> str:
    """The decision from the two sequential tests only (never from the AUC
    bootstrap, which is not valid under peeking): better when recall is
    significantly higher and the FPR not significantly higher; worse when recall is
    significantly lower or the FPR significantly higher (and recall not
    significantly higher); otherwise no difference yet. A significant gain in
    recall *with* a significant rise in FPR is a trade-off the numbers cannot
    settle: "no difference yet", and the summary shows both."""
    if recall.difference is None or fpr.difference is None:
        return NOT_ENOUGH
    recall_up = recall.significant and recall.difference > 0
    recall_down = recall.significant and recall.difference < 0
    fpr_up = fpr.significant and fpr.difference > 0
    if recall_up and not fpr_up:
        return BETTER
    if (recall_down or fpr_up) and not recall_up:
        return WORSE
    return NO_DIFFERENCE


def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def _describe(t: SequentialTest, label: str, digits: int) -> str:
    assert t.difference is not None and t.ci is not None
    lo, hi = t.ci
    return f"{label} {_signed(t.difference, digits)} [{_signed(lo, digits)}, {_signed(hi, digits)}]"


def _summary_of(c: Comparison, control_name: str) -> str:
    name = f"shadow v{c.challenger_version}" if c.shadow else c.challenger
    head = f"{name} vs {control_name}: {c.decision}"
    if c.decision == NOT_ENOUGH:
        details = [
            t.reason.removeprefix(f"{NOT_ENOUGH}: ")
            for t in (c.recall, c.false_positive_rate)
            if t.reason
        ]
        return f"{head} ({'; '.join(details)})"
    return (
        f"{head} \u2014 {_describe(c.recall, 'recall', 3)}, "
        f"{_describe(c.false_positive_rate, 'false-positive rate', 4)}"
    )


def _verdict(
    groups: list[VariantOutcome],
    samples: Mapping[tuple[str, int, bool], AucSample],
    s: OutcomeSettings,
    control_version: int | None,
) -> Verdict:
    if not groups:
        return Verdict(
            None, control_version, [], "no predictions in the window: nothing to compare"
        )
    routed = [g for g in groups if not g.shadow and g.variant not in UNRANDOMISED_VARIANTS]
    if control_version is not None:
        candidates = [g for g in routed if g.version == control_version]
        if not candidates:
            return Verdict(
                None,
                control_version,
                [],
                f"control v{control_version} has no predictions in the window: nothing to compare",
            )
    else:
        candidates = routed
    if not candidates:
        return Verdict(None, None, [], "no routed predictions in the window: nothing to compare")
    control = min(candidates, key=lambda g: (-g.predictions, g.version, g.variant))
    challengers = [g for g in routed if g is not control] + [g for g in groups if g.shadow]
    if not challengers:
        return Verdict(control.variant, control.version, [], "one variant: nothing to compare")
    comparisons: list[Comparison] = []
    for ch in challengers:
        recall = _sequential("recall", control, ch, s)
        fpr = _sequential("false_positive_rate", control, ch, s)
        comparisons.append(
            Comparison(
                challenger=ch.variant,
                challenger_version=ch.version,
                shadow=ch.shadow,
                recall=recall,
                false_positive_rate=fpr,
                auc=_auc_comparison(control, ch, samples, s),
                decision=decide(recall, fpr),
            )
        )
    summary = "; ".join(_summary_of(c, control.name) for c in comparisons)
    return Verdict(control.variant, control.version, comparisons, summary)


# ----------------------------------------------------------------------- outcomes


def _rate(num: int, den: int, minimum: int) -> tuple[float | None, Interval | None]:
    if den < minimum or den == 0:
        return None, None
    return num / den, wilson(num, den)


def _delay_histogram(delay: F64) -> DelayHistogram:
    d = np.sort(delay[np.isfinite(delay)])
    counts = tuple(
        len(d) if math.isinf(le) else int(np.searchsorted(d, le, side="right"))
        for le in DELAY_BUCKETS
    )
    return DelayHistogram(counts, float(d.sum()), len(d))


def _daily(
    ts: F64, fraud: npt.NDArray[np.bool_], flagged: npt.NDArray[np.bool_]
) -> list[DailyPoint]:
    if len(ts) == 0:
        return []
    day = (np.floor(ts / DAY) * DAY).astype(np.int64)
    days, idx = np.unique(day, return_inverse=True)
    n = len(days)
    labelled = np.bincount(idx, minlength=n)
    frauds = np.bincount(idx, weights=fraud, minlength=n)
    caught = np.bincount(idx, weights=fraud & flagged, minlength=n)
    fps = np.bincount(idx, weights=~fraud & flagged, minlength=n)
    return [
        DailyPoint(
            day_start=int(days[i]),
            labelled=int(labelled[i]),
            fraud=int(frauds[i]),
            caught=int(caught[i]),
            legit=int(labelled[i] - frauds[i]),
            false_positives=int(fps[i]),
        )
        for i in range(n)
    ]


def _group(
    rows: Joined,
    sel: npt.NDArray[np.intp],
    variant: str,
    version: int,
    shadow: bool,
    cutoff: float,
    s: OutcomeSettings,
) -> tuple[VariantOutcome, AucSample]:
    ts = rows.ts[sel]
    last = int(np.flatnonzero(ts == ts.max())[-1])
    threshold = float(rows.threshold[sel][last])
    mature = sel[ts <= cutoff]
    outcome = rows.outcome[mature]
    lab = mature[outcome >= 0]
    y = rows.outcome[lab] == 1
    flagged = rows.flagged[lab]
    fraud = int(np.count_nonzero(y))
    legit = len(lab) - fraud
    caught = int(np.count_nonzero(y & flagged))
    fps = int(np.count_nonzero(~y & flagged))
    recall, recall_ci = _rate(caught, fraud, s.min_labels)
    fpr, fpr_ci = _rate(fps, legit, s.min_labels)
    precision, precision_ci = _rate(caught, caught + fps, s.min_labels)

    amount = rows.amount[lab]
    with_amount = y & np.isfinite(amount)
    total = float(amount[with_amount].sum())
    amount_recall = (
        float(amount[with_amount & flagged].sum()) / total
        if np.any(with_amount) and total > 0
        else None
    )

    score = rows.score[lab]
    scored = np.isfinite(score)
    sample = AucSample(score[scored], y[scored], rows.key_hash[lab][scored])
    auc: float | None = None
    if min(sample.positives, sample.negatives) >= s.min_auc_labels:
        auc = rank_auc(sample.score, sample.fraud)

    n_pred = len(mature)
    out = VariantOutcome(
        variant=variant,
        version=version,
        shadow=shadow,
        threshold=threshold if math.isfinite(threshold) else None,
        predictions=n_pred,
        labelled=len(lab),
        coverage=len(lab) / n_pred if n_pred else None,
        fraud=fraud,
        legit=legit,
        caught=caught,
        false_positives=fps,
        recall=recall,
        recall_ci=recall_ci,
        false_positive_rate=fpr,
        fpr_ci=fpr_ci,
        precision=precision,
        precision_ci=precision_ci,
        amount_recall=amount_recall,
        auc=auc,
        delay=_delay_histogram(rows.delay[lab]),
        daily=_daily(rows.ts[lab], y, flagged),
    )
    return out, sample


def outcomes(
    rows: Joined, now: float, s: OutcomeSettings, control_version: int | None = None
) -> Performance:
    """Outcomes per (variant, version) group and the verdict, as of `now`.

    `control_version`: the control of the split (deployments' control_version);
    None picks the routed group with the most mature predictions (the lower
    version on a tie)."""
    since = now - s.window_seconds - s.maturity_seconds
    cutoff = now - s.maturity_seconds
    considered = np.flatnonzero(rows.ts >= since).astype(np.intp)
    shadow = rows.shadow[considered]
    variant = np.where(shadow, SHADOW, rows.variant[considered])
    variants, var_idx = np.unique(variant, return_inverse=True)
    versions, ver_idx = np.unique(rows.version[considered], return_inverse=True)
    code = (var_idx.astype(np.int64) * len(versions) + ver_idx) * 2 + shadow
    codes, group_idx = np.unique(code, return_inverse=True)

    built: list[tuple[VariantOutcome, AucSample]] = []
    for g, c in enumerate(codes.tolist()):
        is_shadow = bool(c % 2)
        v_i, ver_i = divmod(c // 2, len(versions))
        built.append(
            _group(
                rows,
                considered[group_idx == g],
                str(variants[v_i]),
                int(versions[ver_i]),
                is_shadow,
                cutoff,
                s,
            )
        )
    built.sort(key=lambda b: (b[0].shadow, b[0].version, b[0].variant))
    groups = [b[0] for b in built]
    samples = {(o.variant, o.version, o.shadow): sample for o, sample in built}
    return Performance(
        now=float(now),
        maturity_seconds=float(s.maturity_seconds),
        variants=groups,
        verdict=_verdict(groups, samples, s, control_version),
    )


# --------------------------------------------------------------------------- JSON


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _interval_json(ci: Interval | None) -> list[float | None] | None:
    return None if ci is None else [_num(ci[0]), _num(ci[1])]


def _interval(d: Any) -> Interval | None:
    return None if d is None else (float(d[0]), float(d[1]))


def _opt_float(d: Any) -> float | None:
    return None if d is None else float(d)


def _test_json(t: SequentialTest) -> dict[str, Any]:
    return {
        "metric": t.metric,
        "control_n": t.control_n,
        "challenger_n": t.challenger_n,
        "difference": _num(t.difference),
        "ci": _interval_json(t.ci),
        "p_value": _num(t.p_value),
        "significant": t.significant,
        "reason": t.reason,
    }


def _test(d: Mapping[str, Any]) -> SequentialTest:
    return SequentialTest(
        metric=str(d["metric"]),
        control_n=int(d["control_n"]),
        challenger_n=int(d["challenger_n"]),
        difference=_opt_float(d["difference"]),
        ci=_interval(d["ci"]),
        p_value=_opt_float(d["p_value"]),
        significant=bool(d["significant"]),
        reason=str(d["reason"]),
    )


def _variant_json(v: VariantOutcome) -> dict[str, Any]:
    return {
        "variant": v.variant,
        "version": v.version,
        "shadow": v.shadow,
        "threshold": _num(v.threshold),
        "predictions": v.predictions,
        "labelled": v.labelled,
        "coverage": _num(v.coverage),
        "fraud": v.fraud,
        "legit": v.legit,
        "caught": v.caught,
        "false_positives": v.false_positives,
        "recall": _num(v.recall),
        "recall_ci": _interval_json(v.recall_ci),
        "false_positive_rate": _num(v.false_positive_rate),
        "fpr_ci": _interval_json(v.fpr_ci),
        "precision": _num(v.precision),
        "precision_ci": _interval_json(v.precision_ci),
        "amount_recall": _num(v.amount_recall),
        "auc": _num(v.auc),
        "delay": {
            "buckets": [
                {"le": "+Inf" if math.isinf(le) else le, "count": n}
                for le, n in zip(DELAY_BUCKETS, v.delay.counts, strict=True)
            ],
            "sum": v.delay.sum,
            "count": v.delay.count,
        },
        "daily": [dataclasses.asdict(p) for p in v.daily],
    }


def _variant(d: Mapping[str, Any]) -> VariantOutcome:
    buckets = d["delay"]["buckets"]
    les = tuple(math.inf if b["le"] == "+Inf" else float(b["le"]) for b in buckets)
    if les != DELAY_BUCKETS:
        raise ValueError(f"delay buckets {les} are not {DELAY_BUCKETS}")
    return VariantOutcome(
        variant=str(d["variant"]),
        version=int(d["version"]),
        shadow=bool(d["shadow"]),
        threshold=_opt_float(d["threshold"]),
        predictions=int(d["predictions"]),
        labelled=int(d["labelled"]),
        coverage=_opt_float(d["coverage"]),
        fraud=int(d["fraud"]),
        legit=int(d["legit"]),
        caught=int(d["caught"]),
        false_positives=int(d["false_positives"]),
        recall=_opt_float(d["recall"]),
        recall_ci=_interval(d["recall_ci"]),
        false_positive_rate=_opt_float(d["false_positive_rate"]),
        fpr_ci=_interval(d["fpr_ci"]),
        precision=_opt_float(d["precision"]),
        precision_ci=_interval(d["precision_ci"]),
        amount_recall=_opt_float(d["amount_recall"]),
        auc=_opt_float(d["auc"]),
        delay=DelayHistogram(
            counts=tuple(int(b["count"]) for b in buckets),
            sum=float(d["delay"]["sum"]),
            count=int(d["delay"]["count"]),
        ),
        daily=[
            DailyPoint(
                day_start=int(p["day_start"]),
                labelled=int(p["labelled"]),
                fraud=int(p["fraud"]),
                caught=int(p["caught"]),
                legit=int(p["legit"]),
                false_positives=int(p["false_positives"]),
            )
            for p in d["daily"]
        ],
    )


def _comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "challenger": c.challenger,
        "challenger_version": c.challenger_version,
        "shadow": c.shadow,
        "decision": c.decision,
        "tests": {
            "recall": _test_json(c.recall),
            "false_positive_rate": _test_json(c.false_positive_rate),
        },
        "auc": {
            "difference": _num(c.auc.difference),
            "ci": _interval_json(c.auc.ci),
            "replicates": c.auc.replicates,
            "reason": c.auc.reason,
            "always_valid": False,
        },
    }


def _comparison(d: Mapping[str, Any]) -> Comparison:
    auc = d["auc"]
    return Comparison(
        challenger=str(d["challenger"]),
        challenger_version=int(d["challenger_version"]),
        shadow=bool(d["shadow"]),
        recall=_test(d["tests"]["recall"]),
        false_positive_rate=_test(d["tests"]["false_positive_rate"]),
        auc=BootstrapInterval(
            difference=_opt_float(auc["difference"]),
            ci=_interval(auc["ci"]),
            replicates=int(auc["replicates"]),
            reason=str(auc["reason"]),
        ),
        decision=str(d["decision"]),
    )


def to_json(p: Performance) -> dict[str, Any]:
    """A JSON-ready dict (no NaN or infinity: json.dumps(allow_nan=False) works);
    `from_json` inverts it exactly."""
    return {
        "now": p.now,
        "maturity_seconds": p.maturity_seconds,
        "variants": [_variant_json(v) for v in p.variants],
        "verdict": {
            "control": p.verdict.control,
            "control_version": p.verdict.control_version,
            "comparisons": [_comparison_json(c) for c in p.verdict.comparisons],
            "summary": p.verdict.summary,
        },
    }


def from_json(d: Mapping[str, Any]) -> Performance:
    v = d["verdict"]
    cv = v["control_version"]
    return Performance(
        now=float(d["now"]),
        maturity_seconds=float(d["maturity_seconds"]),
        variants=[_variant(x) for x in d["variants"]],
        verdict=Verdict(
            control=None if v["control"] is None else str(v["control"]),
            control_version=None if cv is None else int(cv),
            comparisons=[_comparison(c) for c in v["comparisons"]],
            summary=str(v["summary"]),
        ),
    )
