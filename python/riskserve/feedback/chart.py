"""The outcomes chart: recall and false-positive rate per variant over time.

matplotlib is imported inside `draw` (the server never draws; the CLI does, from
the JSON it receives), and only its Agg canvas is used: no pyplot, no display, no
global backend switch."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt

from riskserve.feedback.outcomes import Z95, Performance, VariantOutcome

#: A line starts once its cumulative denominator (fraud labels for recall, legit
#: labels for FPR) reaches this: the first handful of labels would draw 0 % or 100 %
#: with a band over the whole axis and squash the rest of the panel.
MIN_POINT_LABELS = 10


def _wilson_band(
    successes: npt.NDArray[np.float64], n: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p = successes / n
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 / denom * np.sqrt(np.maximum(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return np.clip(np.minimum(centre - half, p), 0, 1), np.clip(np.maximum(centre + half, p), 0, 1)


def _label(v: VariantOutcome, perf: Performance) -> str:
    control = (
        not v.shadow
        and v.variant == perf.verdict.control
        and v.version == perf.verdict.control_version
    )
    return f"{v.name} (control)" if control else v.name


def draw(perf: Performance, path: Path, title: str) -> None:
    """Writes a PNG to `path`: two panels sharing a date axis, recall (top) and
    false-positive rate (bottom), one line per variant with its Wilson 95 % band.

    Each point is *cumulative to date*: the rate over all mature labelled rows from
    the start of the window to the end of that UTC day. Per-day rates would be
    mostly noise: at a ~3 % fraud rate a day brings a handful of fraud labels per
    variant, so a daily recall jumps between 0 and 1. The cumulative line settles
    as labels accumulate, its band narrows the way the evidence does, and its last
    point is the headline number of the outcomes table (same rows, same rate).
    A line starts on the day its cumulative denominator reaches MIN_POINT_LABELS."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.ticker import PercentFormatter

    # One line per comparison of the verdict under the panels (at most 4).
    lines = [ln for part in perf.verdict.summary.split("; ") for ln in textwrap.wrap(part, 130)]
    lines = lines[:4]
    bottom = 0.015 + 0.022 * len(lines)
    fig = Figure(figsize=(10, 7.5), layout=ConstrainedLayoutEngine(rect=(0, bottom, 1, 1 - bottom)))
    FigureCanvasAgg(fig)
    ax_recall, ax_fpr = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title)
    colours = [f"C{i}" for i in range(10)]
    drawn = 0
    for i, v in enumerate(perf.variants):
        if not v.daily:
            continue
        days = sorted(v.daily, key=lambda p: p.day_start)
        x = np.array([p.day_start for p in days], dtype="datetime64[s]")
        fraud = np.cumsum([p.fraud for p in days], dtype=np.float64)
        caught = np.cumsum([p.caught for p in days], dtype=np.float64)
        legit = np.cumsum([p.legit for p in days], dtype=np.float64)
        fps = np.cumsum([p.false_positives for p in days], dtype=np.float64)
        colour = colours[i % len(colours)]
        style = "--" if v.shadow else "-"
        label = _label(v, perf)
        for ax, num, den in ((ax_recall, caught, fraud), (ax_fpr, fps, legit)):
            ok = den >= MIN_POINT_LABELS
            if not ok.any():
                continue
            lo, hi = _wilson_band(num[ok], den[ok])
            ax.plot(x[ok], num[ok] / den[ok], style, color=colour, marker=".", label=label)
            ax.fill_between(x[ok], lo, hi, color=colour, alpha=0.15, linewidth=0)
        drawn += 1

    ax_recall.set_ylabel("recall (cumulative)")
    ax_fpr.set_ylabel("false-positive rate (cumulative)")
    for ax in (ax_recall, ax_fpr):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    if drawn:
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax_fpr.xaxis.set_major_locator(locator)
        ax_fpr.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax_fpr.set_xlabel("day scored (UTC); bands: Wilson 95 %")
    else:
        for ax in (ax_recall, ax_fpr):
            ax.text(
                0.5,
                0.5,
                "no mature labelled rows yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    fig.text(0.01, 0.008, "\n".join(lines), fontsize="small", ha="left", va="bottom")
    fig.savefig(path, format="png", dpi=100)
