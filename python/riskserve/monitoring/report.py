"""Drift read-outs from a server's /metrics: a PSI table and a PNG of reference
vs live shares for the most drifted fields."""

from __future__ import annotations

import dataclasses
import math
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str, str]  # model, version, feature


@dataclasses.dataclass
class FieldDrift:
    model: str
    version: str
    feature: str
    psi: float | None = None
    bins: list[str] = dataclasses.field(default_factory=list)
    reference: list[float] = dataclasses.field(default_factory=list)
    counts: list[float] = dataclasses.field(default_factory=list)

    @property
    def live(self) -> list[float]:
        total = sum(self.counts)
        return [c / total if total else 0.0 for c in self.counts]


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def parse_drift(text: str, window: str = "sliding") -> list[FieldDrift]:
    """Fields with their PSI (None below the minimum count), worst first."""
    fields: dict[Key, FieldDrift] = {}

    def get(labels: dict[str, str]) -> FieldDrift:
        key = (labels["model"], labels["version"], labels["feature"])
        if key not in fields:
            fields[key] = FieldDrift(*key)
        return fields[key]

    bins: dict[Key, dict[str, list[float]]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "riskserve_drift_psi" and s.labels.get("window") == window:
                get(s.labels).psi = s.value
            elif s.name == "riskserve_drift_reference_ratio":
                f = get(s.labels)
                bins[(f.model, f.version, f.feature)].setdefault(s.labels["bin"], [0.0, 0.0])[0] = (
                    s.value
                )
            elif s.name == "riskserve_drift_bin_observations_total":
                f = get(s.labels)
                bins[(f.model, f.version, f.feature)].setdefault(s.labels["bin"], [0.0, 0.0])[1] = (
                    s.value
                )
    for key, per_bin in bins.items():
        f = fields[key]
        f.bins = list(per_bin)
        f.reference = [v[0] for v in per_bin.values()]
        f.counts = [v[1] for v in per_bin.values()]
    return sorted(fields.values(), key=lambda f: -(f.psi if f.psi is not None else -1.0))


def format_table(rows: list[FieldDrift], threshold: float = 0.25) -> str:
    out = [f"{'model':<12} {'version':>7} {'feature':<28} {'psi':>9}  status"]
    for r in rows:
        if r.psi is None:
            psi, status = "-", "not enough data"
        else:
            psi = f"{r.psi:9.4f}"
            status = "ALERT" if r.psi > threshold else "ok"
        out.append(f"{r.model:<12} {r.version:>7} {r.feature:<28} {psi:>9}  {status}")
    return "\n".join(out)


def draw_report(rows: list[FieldDrift], out: Path, top: int = 6) -> int:
    """Reference vs live shares per bin for the `top` most drifted fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r.bins and r.psi is not None][:top]
    if not chosen:
        chosen = [r for r in rows if r.bins][:top]
    if not chosen:
        raise ValueError("no drift bins in the metrics (is RISKSERVE_DRIFT_BINS off?)")
    cols = 2
    nrows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 3.6 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, chosen, strict=False):
        x = range(len(r.bins))
        ax.bar([i - 0.2 for i in x], r.reference, width=0.4, label="training")
        ax.bar([i + 0.2 for i in x], r.live, width=0.4, label="live")
        psi = "n/a" if r.psi is None else f"{r.psi:.3f}"
        ax.set_title(f"{r.model} v{r.version} · {r.feature} · PSI {psi}")
        ax.set_xticks(list(x))
        ax.set_xticklabels(r.bins, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(chosen)
