"""Outcomes per variant and the A/B verdict (riskserve.feedback.outcomes), in process.

* every metric per group equals scikit-learn's on the same mature labelled rows
  (synthetic rows: three routed variants, an explicit one, shadow scorings sharing
  labels and routing keys, unlabelled and young rows, thresholds that changed);
* maturity keeps young cohorts out (0 judges everything), the window keeps old
  ones out; None and the reason below the minimums;
* the mixture SPRT keeps its level under 30 looks where a peeked z-test does not,
  finds a real difference and covers it; the AUC cluster bootstrap covers the true
  difference and is reproducible;
* to_json/from_json round-trips exactly through json; the verdict's summary lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import (  # type: ignore[import-untyped]
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from riskserve.feedback.outcomes import (
    DAY,
    DELAY_BUCKETS,
    AucSample,
    OutcomeSettings,
    Performance,
    VariantOutcome,
    auc_difference_interval,
    from_json,
    mixture_sprt,
    outcomes,
    rank_auc,
    to_json,
    wilson,
)
from riskserve.feedback.records import Joined

NOW = 1_700_000_000.0
DEFAULT = OutcomeSettings()
#: The defaults with fewer bootstrap replicates, where the AUC interval is not the point.
QUICK = OutcomeSettings(bootstrap=20)


def joined(cols: dict[str, npt.ArrayLike]) -> Joined:
    """A Joined ordered by ts, from column arrays."""
    order = np.argsort(np.asarray(cols["ts"], dtype=np.float64), kind="stable")
    return Joined(
        ts=np.asarray(cols["ts"], dtype=np.float64)[order],
        version=np.asarray(cols["version"], dtype=np.int64)[order],
        variant=np.asarray(cols["variant"], dtype=np.str_)[order],
        shadow=np.asarray(cols["shadow"], dtype=np.bool_)[order],
        key_hash=np.asarray(cols["key_hash"], dtype=np.str_)[order],
        score=np.asarray(cols["score"], dtype=np.float64)[order],
        threshold=np.asarray(cols["threshold"], dtype=np.float64)[order],
        flagged=np.asarray(cols["flagged"], dtype=np.bool_)[order],
        outcome=np.asarray(cols["outcome"], dtype=np.int8)[order],
        delay=np.asarray(cols["delay"], dtype=np.float64)[order],
        amount=np.asarray(cols["amount"], dtype=np.float64)[order],
    )


def synthetic(seed: int = 7, n: int = 9000) -> Joined:
    """Rows over 50 days: v1 (55 %), v2 (35 %), explicit v2 (10 %); a shadow v3
    scoring of ~40 % of them (same key, label, amount); 3 % fraud; labels arrive
    after an exponential delay (mean 4 days) and only if that is before NOW, and
    ~15 % never; 70 % of labels carry an amount; v1's threshold moved on day 25."""
    rng = np.random.default_rng(seed)
    ts = NOW - rng.uniform(0, 50 * DAY, n)
    keys = np.array([f"k{i:04d}" for i in rng.integers(0, 2500, n)])
    keys[rng.random(n) < 0.1] = ""
    u = rng.random(n)
    version = np.where(u < 0.55, 1, 2)
    variant = np.where(u < 0.55, "v1", np.where(u < 0.9, "v2", "explicit"))
    fraud = rng.random(n) < 0.03
    quality = np.where(version == 1, 1.6, 2.2)
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + quality * fraud - 2.5)))
    score = np.round(score, 3)  # ties
    threshold = np.where(version == 1, np.where(ts < NOW - 25 * DAY, 0.3, 0.25), 0.28)
    flagged = score >= threshold
    delay = rng.exponential(4 * DAY, n)
    labelled = (ts + delay <= NOW) & (rng.random(n) > 0.15)
    outcome = np.where(labelled, fraud.astype(np.int8), -1)
    delay = np.where(labelled, delay, np.nan)
    amount = np.where(labelled & (rng.random(n) < 0.7), rng.lognormal(4, 1, n), np.nan)

    sh = rng.random(n) < 0.4
    m = int(sh.sum())
    sh_score = np.round(1 / (1 + np.exp(-(rng.normal(0, 1, m) + 2.6 * fraud[sh] - 2.5))), 3)
    cols: dict[str, npt.ArrayLike] = {
        "ts": np.concatenate([ts, ts[sh] + 0.001]),
        "version": np.concatenate([version, np.full(m, 3)]),
        "variant": np.concatenate([variant, np.full(m, "shadow")]),
        "shadow": np.concatenate([np.zeros(n, bool), np.ones(m, bool)]),
        "key_hash": np.concatenate([keys, keys[sh]]),
        "score": np.concatenate([score, sh_score]),
        "threshold": np.concatenate([threshold, np.full(m, 0.3)]),
        "flagged": np.concatenate([flagged, sh_score >= 0.3]),
        "outcome": np.concatenate([outcome, outcome[sh]]),
        "delay": np.concatenate([delay, delay[sh]]),
        "amount": np.concatenate([amount, amount[sh]]),
    }
    return joined(cols)


def group_mask(rows: Joined, v: VariantOutcome) -> npt.NDArray[np.bool_]:
    mask = (rows.variant == v.variant) & (rows.version == v.version) & (rows.shadow == v.shadow)
    return np.asarray(mask, dtype=np.bool_)


@pytest.fixture(scope="module")
def rows() -> Joined:
    return synthetic()


@pytest.mark.parametrize("maturity_days", [14, 3, 0])
def test_every_metric_matches_scikit_learn(rows: Joined, maturity_days: int) -> None:
    s = OutcomeSettings(maturity_seconds=maturity_days * DAY, min_labels=10, min_auc_labels=10)
    perf = outcomes(rows, NOW, s)
    assert [(v.variant, v.version, v.shadow) for v in perf.variants] == [
        ("v1", 1, False),
        ("explicit", 2, False),
        ("v2", 2, False),
        ("shadow", 3, True),
    ]
    since = NOW - s.window_seconds - s.maturity_seconds
    cutoff = NOW - s.maturity_seconds
    for v in perf.variants:
        g = group_mask(rows, v) & (rows.ts >= since)
        mature = g & (rows.ts <= cutoff)
        lab = mature & (rows.outcome >= 0)
        y = rows.outcome[lab] == 1
        pred = rows.flagged[lab]
        assert v.predictions == mature.sum()
        assert v.labelled == lab.sum()
        assert v.coverage == pytest.approx(lab.sum() / mature.sum())
        assert (v.fraud, v.legit) == (y.sum(), (~y).sum())
        tn, fp, _fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
        assert (v.caught, v.false_positives) == (tp, fp)
        assert v.fraud >= 10, "the fixture must give every group enough labels"
        assert v.recall == pytest.approx(recall_score(y, pred), rel=1e-12)
        assert v.false_positive_rate == pytest.approx(fp / (fp + tn), rel=1e-12)
        assert v.precision == pytest.approx(precision_score(y, pred), rel=1e-12)
        assert v.auc == pytest.approx(roc_auc_score(y, rows.score[lab]), rel=1e-12)
        amt = rows.amount[lab]
        has = y & np.isfinite(amt)
        assert v.amount_recall == pytest.approx(amt[has & pred].sum() / amt[has].sum())
        # The stored decision counts, not score >= the current threshold: v1's moved.
        assert v.threshold == rows.threshold[g][-1]
        for rate, ci in (
            (v.recall, v.recall_ci),
            (v.false_positive_rate, v.fpr_ci),
            (v.precision, v.precision_ci),
        ):
            assert rate is not None and ci is not None
            assert 0 <= ci[0] <= rate <= ci[1] <= 1
        d = rows.delay[lab]
        assert v.delay.count == len(d) == v.delay.counts[-1]
        assert v.delay.counts == tuple(int((d <= le).sum()) for le in DELAY_BUCKETS)
        assert v.delay.sum == pytest.approx(d.sum())
        day = np.floor(rows.ts[lab] / DAY) * DAY
        assert [p.day_start for p in v.daily] == sorted(set(day.astype(int).tolist()))
        assert sum(p.labelled for p in v.daily) == v.labelled
        assert sum(p.caught for p in v.daily) == v.caught
        assert sum(p.false_positives for p in v.daily) == v.false_positives
        assert sum(p.fraud for p in v.daily) == v.fraud
        assert sum(p.legit for p in v.daily) == v.legit


def test_v1_threshold_change_is_judged_as_served(rows: Joined) -> None:
    perf = outcomes(rows, NOW, DEFAULT)
    v1 = next(v for v in perf.variants if v.variant == "v1")
    assert v1.threshold == 0.25
    in_window = (rows.ts >= NOW - 44 * DAY) & (rows.ts <= NOW - 14 * DAY)
    m = group_mask(rows, v1) & in_window & (rows.outcome == 1)
    recomputed = int((rows.score[m] >= 0.25).sum())
    assert v1.caught == int(rows.flagged[m].sum()) != recomputed


def test_order_and_groups(rows: Joined) -> None:
    perf = outcomes(rows, NOW, DEFAULT)
    keys = [(v.shadow, v.version) for v in perf.variants]
    assert keys == sorted(keys)
    assert [v.name for v in perf.variants if v.shadow] == ["shadow v3"]


def test_maturity_and_window_select_the_cohorts(rows: Joined) -> None:
    young = rows.ts > NOW - 14 * DAY
    old = rows.ts < NOW - 44 * DAY
    total = len(rows)
    p14 = outcomes(rows, NOW, DEFAULT)
    assert sum(v.predictions for v in p14.variants) == total - young.sum() - old.sum()
    p0 = outcomes(rows, NOW, dataclasses.replace(DEFAULT, maturity_seconds=0))
    assert sum(v.predictions for v in p0.variants) == (rows.ts >= NOW - 30 * DAY).sum()
    wide = dataclasses.replace(DEFAULT, maturity_seconds=0, window_seconds=60 * DAY)
    assert sum(v.predictions for v in outcomes(rows, NOW, wide).variants) == total
    # Young rows have fewer labels: judging them early would understate coverage.
    cov14 = {v.name: v.coverage for v in p14.variants}
    cov0 = {v.name: v.coverage for v in p0.variants}
    assert all(cov0[k] is not None and cov0[k] < cov14[k] for k in cov14)  # type: ignore[operator]


def test_no_rows() -> None:
    perf = outcomes(Joined.empty(), NOW, DEFAULT)
    assert perf.variants == []
    assert perf.verdict.summary == "no predictions in the window: nothing to compare"
    assert from_json(json.loads(json.dumps(to_json(perf)))) == perf


# ------------------------------------------------------------- built-to-order arms


def arm(
    variant: str,
    version: int,
    *,
    fraud: int,
    caught: int,
    legit: int,
    fps: int,
    shadow: bool = False,
    ts: float = NOW - 20 * DAY,
    seed: int = 0,
) -> dict[str, npt.NDArray[np.generic]]:
    """Exactly these counts of mature labelled rows (scores random, fraud higher)."""
    rng = np.random.default_rng(seed)
    n = fraud + legit
    y = np.r_[np.ones(fraud, bool), np.zeros(legit, bool)]
    flagged = np.r_[np.arange(fraud) < caught, np.arange(legit) < fps]
    return {
        "ts": np.full(n, ts) + rng.uniform(0, DAY, n),
        "version": np.full(n, version),
        "variant": np.full(n, variant),
        "shadow": np.full(n, shadow),
        "key_hash": np.array([f"{variant}{i}" for i in range(n)]),
        "score": rng.random(n) + 0.5 * y,
        "threshold": np.full(n, 0.5),
        "flagged": flagged,
        "outcome": y.astype(np.int8),
        "delay": np.full(n, 3600.0),
        "amount": np.full(n, np.nan),
    }


def rows_of(*arms: dict[str, npt.NDArray[np.generic]]) -> Joined:
    return joined({k: np.concatenate([a[k] for a in arms]) for k in arms[0]})


def test_below_the_minimums_is_none_with_the_reason() -> None:
    rows = rows_of(
        arm("v1", 1, fraud=200, caught=150, legit=6000, fps=60),
        arm("v2", 2, fraud=12, caught=10, legit=25, fps=1, seed=1),
    )
    perf = outcomes(rows, NOW, DEFAULT)
    v2 = perf.variants[1]
    assert (v2.fraud, v2.legit) == (12, 25)
    assert v2.recall is None and v2.recall_ci is None
    assert v2.false_positive_rate is None and v2.fpr_ci is None
    assert v2.precision is None  # 11 flagged and labelled
    assert v2.auc is None  # 12 fraud < 20
    assert v2.amount_recall is None  # no amounts
    assert perf.variants[0].auc is not None
    (c,) = perf.verdict.comparisons
    assert c.decision == "not enough labels yet"
    assert c.recall.reason == "not enough labels yet: 12 fraud labels in v2, need 30"
    assert c.false_positive_rate.reason == "not enough labels yet: 25 legit labels in v2, need 30"
    assert c.recall.difference is None and c.recall.p_value is None and not c.recall.significant
    assert c.auc.difference is None
    assert c.auc.reason == "not enough labels yet: 12 fraud labels in v2, need 20"
    assert perf.verdict.control == "v1"
    assert perf.verdict.summary == (
        "v2 vs v1: not enough labels yet (12 fraud labels in v2, need 30; "
        "25 legit labels in v2, need 30)"
    )


def test_the_summary_lines() -> None:
    v1 = arm("v1", 1, fraud=1000, caught=600, legit=20000, fps=200)
    better = rows_of(v1, arm("v2", 2, fraud=1000, caught=800, legit=20000, fps=200, seed=1))
    perf = outcomes(better, NOW, QUICK)
    (c,) = perf.verdict.comparisons
    assert c.decision == "better"
    assert c.recall.significant and c.recall.difference == pytest.approx(0.2)
    assert not c.false_positive_rate.significant
    num = r"[+\u2212]\d\.\d{%d}"
    pattern = (
        rf"v2 vs v1: better \u2014 recall \+0\.200 \[{num % 3}, {num % 3}\], "
        rf"false-positive rate \+0\.0000 \[\u2212\d\.\d{{4}}, \+\d\.\d{{4}}\]"
    )
    assert re.fullmatch(pattern, perf.verdict.summary), perf.verdict.summary

    worse = rows_of(v1, arm("v2", 2, fraud=1000, caught=600, legit=20000, fps=400, seed=1))
    perf = outcomes(worse, NOW, QUICK)
    assert perf.verdict.comparisons[0].decision == "worse"
    assert perf.verdict.summary.startswith("v2 vs v1: worse \u2014 recall +0.000 [\u2212")

    lower = rows_of(v1, arm("v2", 2, fraud=1000, caught=400, legit=20000, fps=200, seed=1))
    assert outcomes(lower, NOW, QUICK).verdict.comparisons[0].decision == "worse"

    same = rows_of(v1, arm("v2", 2, fraud=1000, caught=610, legit=20000, fps=205, seed=1))
    perf = outcomes(same, NOW, QUICK)
    assert perf.verdict.comparisons[0].decision == "no difference yet"
    assert perf.verdict.summary.startswith("v2 vs v1: no difference yet \u2014 recall +0.010 [")

    one = outcomes(rows_of(v1), NOW, QUICK)
    assert one.verdict.comparisons == []
    assert one.verdict.summary == "one variant: nothing to compare"
    assert one.verdict.control == "v1"


def test_control_choice_shadow_and_explicit() -> None:
    rows = rows_of(
        arm("v1", 1, fraud=100, caught=60, legit=3000, fps=30),
        arm("v2", 2, fraud=300, caught=180, legit=9000, fps=90, seed=1),
        arm("explicit", 3, fraud=900, caught=600, legit=9000, fps=90, seed=2),
        arm("shadow", 4, fraud=300, caught=200, legit=9000, fps=90, shadow=True, seed=3),
    )
    perf = outcomes(rows, NOW, QUICK)
    # The most predictions among routed variants (explicit requests are not an arm).
    assert (perf.verdict.control, perf.verdict.control_version) == ("v2", 2)
    names = [(c.challenger, c.challenger_version, c.shadow) for c in perf.verdict.comparisons]
    assert names == [("v1", 1, False), ("shadow", 4, True)]
    assert perf.verdict.summary.split("; ")[1].startswith("shadow v4 vs v2: ")

    given = outcomes(rows, NOW, QUICK, control_version=1)
    assert given.verdict.control == "v1"
    assert [c.challenger for c in given.verdict.comparisons] == ["v2", "shadow"]
    d = given.verdict.comparisons[0].recall.difference
    assert d is not None and d == pytest.approx(0.0)

    missing = outcomes(rows, NOW, QUICK, control_version=9)
    assert missing.verdict.comparisons == []
    assert missing.verdict.summary == (
        "control v9 has no predictions in the window: nothing to compare"
    )

    tie = rows_of(
        arm("v2", 2, fraud=100, caught=60, legit=3000, fps=30),
        arm("v1", 1, fraud=100, caught=60, legit=3000, fps=30, seed=1),
    )
    assert outcomes(tie, NOW, QUICK).verdict.control == "v1"


# -------------------------------------------------------------------- statistics


def test_wilson_contains_the_point_and_matches_the_formula() -> None:
    for x, n in [(0, 30), (30, 30), (1, 31), (17, 40), (500, 1000)]:
        ci = wilson(x, n)
        assert ci is not None
        assert 0 <= ci[0] <= x / n <= ci[1] <= 1
    # Known value: 8/10 → (0.4902, 0.9433).
    lo, hi = wilson(8, 10)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) is None


def test_rank_auc_averages_ties_like_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.2
    s = np.round(rng.random(500) + 0.3 * y, 1)
    assert rank_auc(s, y) == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    assert math.isnan(rank_auc([0.1, 0.2], [False, False]))


LOOKS = 30
STEP = 40  # fraud labels per arm added between looks


def test_msprt_keeps_its_level_under_30_looks_where_a_peeked_z_test_does_not() -> None:
    """200 A/A experiments (true recall 0.7 in both arms), each looked at 30 times
    as labels accumulate (40 more per arm each time, up to 1,200)."""
    rng = np.random.default_rng(11)
    experiments = 200
    x = rng.binomial(STEP, 0.7, size=(experiments, LOOKS, 2)).cumsum(axis=1)
    n = STEP * np.arange(1, LOOKS + 1)[None, :]
    _, lo, hi, p = mixture_sprt(x[..., 0], n, x[..., 1], n, tau=0.05, alpha=0.05)
    ever_msprt = (p < 0.05).any(axis=1).mean()
    pa, pb = x[..., 0] / n, x[..., 1] / n
    z = (pb - pa) / np.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n)
    ever_z = (np.abs(z) > 1.959964).any(axis=1).mean()
    once_z = (np.abs(z[:, -1]) > 1.959964).mean()
    assert ever_msprt < 0.08
    assert ever_z > 0.12 and ever_z > 2 * ever_msprt + 0.05, (ever_z, ever_msprt)
    assert once_z < 0.1  # one planned look is fine; peeking is what breaks it
    # The interval and the p-value agree: p < alpha exactly when 0 is outside.
    assert np.array_equal(p < 0.05, (lo > 0) | (hi < 0))


def test_msprt_finds_a_real_difference_and_its_interval_covers_it() -> None:
    """Recall 0.6 (control) vs 0.8: significant well before 1,200 labels per arm,
    and the always-valid interval holds the true 0.2 at every look at once."""
    rng = np.random.default_rng(12)
    experiments = 200
    xa = rng.binomial(STEP, 0.6, size=(experiments, LOOKS)).cumsum(axis=1)
    xb = rng.binomial(STEP, 0.8, size=(experiments, LOOKS)).cumsum(axis=1)
    n = STEP * np.arange(1, LOOKS + 1)[None, :]
    d, lo, hi, p = mixture_sprt(xa, n, xb, n, tau=0.05, alpha=0.05)
    assert (p[:, -1] < 0.05).all()
    first = np.argmax(p < 0.05, axis=1)
    assert np.median(first) < 10
    missed = ((lo > 0.2) | (hi < 0.2)).any(axis=1).mean()
    assert missed < 0.08
    assert (lo[:, -1] < 0.2).all() or missed > 0
    # Through outcomes(): one such experiment at its last look.
    rows = rows_of(
        arm("v1", 1, fraud=int(n[0, -1]), caught=int(xa[0, -1]), legit=5000, fps=50),
        arm("v2", 2, fraud=int(n[0, -1]), caught=int(xb[0, -1]), legit=5000, fps=50, seed=1),
    )
    t = outcomes(rows, NOW, DEFAULT).verdict.comparisons[0].recall
    assert t.significant and t.ci is not None and t.ci[0] < 0.2 < t.ci[1]
    assert t.difference == pytest.approx(float(d[0, -1]))
    assert t.p_value == pytest.approx(float(p[0, -1]))


def test_msprt_with_no_variance_stays_finite() -> None:
    # Every fraud caught in both arms: V would be 0; the guard keeps it positive.
    d, lo, hi, p = mixture_sprt(50, 50, 80, 80, tau=0.05, alpha=0.05)
    assert d == 0 and 0 < float(p) <= 1 and lo < 0 < hi
    assert np.isfinite([lo, hi, p]).all()
    d, lo, hi, p = mixture_sprt(0, 400, 40, 400, tau=0.05, alpha=0.05)
    assert float(p) < 0.05 and 0 < lo < 0.1 < hi


def clustered_arm(
    rng: np.random.Generator, mu: float, keys: int, rows_per_key: int, prefix: str
) -> AucSample:
    """Labels are per key (so every fraud/legit pair is across keys) and scores
    share a per-key effect: marginally fraud ~ N(mu, 1), legit ~ N(0, 1), so the
    true AUC is Phi(mu / sqrt 2), but rows of a key are correlated."""
    fraud_key = rng.random(keys) < 0.1
    effect = rng.normal(0, math.sqrt(0.6), keys)
    k = np.repeat(np.arange(keys), rows_per_key)
    score = mu * fraud_key[k] + effect[k] + rng.normal(0, math.sqrt(0.4), len(k))
    key_hash = np.array([f"{prefix}{i}" for i in k])
    key_hash[rng.random(len(k)) < 0.05] = ""
    return AucSample(score, fraud_key[k], key_hash)


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_auc_bootstrap_covers_the_true_difference_and_is_reproducible() -> None:
    true = phi(1.5 / math.sqrt(2)) - phi(1.0 / math.sqrt(2))
    rng = np.random.default_rng(5)
    covered = 0
    sims = 40
    for i in range(sims):
        a = clustered_arm(rng, 1.0, 400, 4, "a")
        b = clustered_arm(rng, 1.5, 400, 4, "b")
        point, ci = auc_difference_interval(a, b, 200, seed=i)
        assert ci is not None and ci[0] <= point <= ci[1]
        covered += ci[0] <= true <= ci[1]
    assert covered / sims >= 0.85
    again = auc_difference_interval(a, b, 200, seed=sims - 1)
    assert again == (point, ci)
    assert auc_difference_interval(a, b, 200, seed=12345)[1] != ci


def test_the_auc_comparison_through_outcomes_is_seeded(rows: Joined) -> None:
    s = OutcomeSettings(min_labels=10, min_auc_labels=10)
    one = outcomes(rows, NOW, s)
    two = outcomes(rows, NOW, s)
    other = outcomes(rows, NOW, dataclasses.replace(s, seed=1))
    c1, c2, c3 = (p.verdict.comparisons[0].auc for p in (one, two, other))
    assert c1.ci is not None and c1 == c2
    assert c3.difference == c1.difference and c3.ci != c1.ci
    ctrl = next(v for v in one.variants if v.variant == one.verdict.control)
    chal = next(v for v in one.variants if v.variant == one.verdict.comparisons[0].challenger)
    assert ctrl.auc is not None and chal.auc is not None
    assert c1.difference == pytest.approx(chal.auc - ctrl.auc)


# ---------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact(rows: Joined) -> None:
    for s in (DEFAULT, OutcomeSettings(maturity_seconds=0, min_labels=10, min_auc_labels=10)):
        perf = outcomes(rows, NOW, s)
        text = json.dumps(to_json(perf), allow_nan=False)
        back = from_json(json.loads(text))
        assert back == perf
        assert isinstance(back, Performance)
    d = to_json(outcomes(rows, NOW, DEFAULT))
    v = d["variants"][0]
    keys = {"variant", "version", "shadow", "threshold", "predictions", "labelled"}
    keys |= {"coverage", "recall", "false_positive_rate", "precision", "amount_recall", "auc"}
    keys |= {"recall_ci", "fpr_ci", "precision_ci", "delay", "daily"}
    assert keys <= set(v)
    assert v["delay"]["buckets"][-1]["le"] == "+Inf"
    c = d["verdict"]["comparisons"][0]
    assert set(c["tests"]) == {"recall", "false_positive_rate"}
    assert "decision" in c and "summary" in d["verdict"] and "control" in d["verdict"]


def test_nan_threshold_becomes_none_and_round_trips() -> None:
    a = arm("v1", 1, fraud=40, caught=20, legit=100, fps=5)
    a["threshold"] = np.full(len(a["ts"]), np.nan)
    perf = outcomes(rows_of(a), NOW, DEFAULT)
    assert perf.variants[0].threshold is None
    assert from_json(json.loads(json.dumps(to_json(perf), allow_nan=False))) == perf


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="tau"):
        OutcomeSettings(tau=0)
    with pytest.raises(ValueError, match="alpha"):
        OutcomeSettings(alpha=1)
