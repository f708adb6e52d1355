"""The outcomes chart (riskserve.feedback.chart): a PNG from a synthetic
Performance, drawn with matplotlib's Agg canvas and no display (no pyplot)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from riskserve.feedback.chart import draw
from riskserve.feedback.outcomes import (
    DAY,
    DailyPoint,
    DelayHistogram,
    OutcomeSettings,
    Performance,
    VariantOutcome,
    Verdict,
    outcomes,
)
from riskserve.feedback.records import Joined

PNG = b"\x89PNG\r\n\x1a\n"
NOW = 1_700_000_000.0


def variant(name: str, version: int, recall: float, shadow: bool = False) -> VariantOutcome:
    rng = np.random.default_rng(version)
    first = int(NOW // DAY * DAY) - 44 * 86400
    daily = []
    for d in range(30):
        fraud = int(rng.integers(0, 8))
        legit = int(rng.integers(150, 250))
        daily.append(
            DailyPoint(
                day_start=first + d * 86400,
                labelled=fraud + legit,
                fraud=fraud,
                caught=int(rng.binomial(fraud, recall)),
                legit=legit,
                false_positives=int(rng.binomial(legit, 0.01)),
            )
        )
    fraud = sum(p.fraud for p in daily)
    caught = sum(p.caught for p in daily)
    legit = sum(p.legit for p in daily)
    fps = sum(p.false_positives for p in daily)
    return VariantOutcome(
        variant=name,
        version=version,
        shadow=shadow,
        threshold=0.5,
        predictions=fraud + legit + 100,
        labelled=fraud + legit,
        coverage=(fraud + legit) / (fraud + legit + 100),
        fraud=fraud,
        legit=legit,
        caught=caught,
        false_positives=fps,
        recall=caught / fraud,
        recall_ci=None,
        false_positive_rate=fps / legit,
        fpr_ci=None,
        precision=None,
        precision_ci=None,
        amount_recall=None,
        auc=None,
        delay=DelayHistogram(counts=(0,) * 9, sum=0.0, count=0),
        daily=daily,
    )


def performance() -> Performance:
    return Performance(
        now=NOW,
        maturity_seconds=14 * DAY,
        variants=[
            variant("v1", 1, 0.6),
            variant("v2", 2, 0.8),
            variant("shadow", 3, 0.7, shadow=True),
        ],
        verdict=Verdict("v1", 1, [], "v2 vs v1: no difference yet \u2014 a long line " * 6),
    )


def test_draws_a_png(tmp_path: Path) -> None:
    out = tmp_path / "outcomes.png"
    draw(performance(), out, "fraud: recall and false-positive rate")
    data = out.read_bytes()
    assert data[:8] == PNG
    assert len(data) > 20_000


def test_draws_with_nothing_to_show(tmp_path: Path) -> None:
    out = tmp_path / "empty.png"
    draw(outcomes(Joined.empty(), NOW, OutcomeSettings()), out, "nothing yet")
    assert out.read_bytes()[:8] == PNG
    p = performance()
    young = dataclasses.replace(p, variants=[dataclasses.replace(p.variants[0], daily=[])])
    draw(young, tmp_path / "young.png", "no labels yet")
    assert (tmp_path / "young.png").read_bytes()[:8] == PNG


def test_uses_agg_without_a_display_or_pyplot(tmp_path: Path) -> None:
    """In a fresh interpreter with no display and a GUI backend asked for: the
    chart still draws (Agg canvas) and neither pyplot nor a GUI backend loads."""
    out = tmp_path / "agg.png"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_chart import performance\n"
        "from riskserve.feedback.chart import draw\n"
        "draw(performance(), Path(sys.argv[1]), 't')\n"
        "mods = [m for m in sys.modules if m.startswith('matplotlib.backends.')]\n"
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no-pyplot', *sorted(mods))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    words = done.stdout.split()
    assert words[0] == "no-pyplot", done.stdout
    assert "matplotlib.backends.backend_agg" in words
    assert not any("tk" in w.lower() or "qt" in w.lower() for w in words[1:]), words
    assert out.read_bytes()[:8] == PNG
