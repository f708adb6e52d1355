"""The Grafana dashboard (deploy/grafana/riskserve.json) without Grafana.

`load_dashboard` reads the dashboard's panels, their PromQL targets and its template
variables; `substitute` replaces the variables in an expression the way Grafana
does (a chosen value regex-escaped, several as `(a|b)`, none as the variable's
`allValue`; `$__interval`, `$__rate_interval`, `$__range` from the time window);
`Prometheus` runs the expressions through Prometheus' HTTP API; `render_png` draws
every time-series panel into one PNG (`riskserve dashboard --png`).

The pure parts (parsing, substitution, legends) take no I/O and are unit-tested on
their own; tests/e2e/test_grafana_dashboard.py runs every expression against a real
Prometheus scraping a real server."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from riskserve.errors import InvalidInput, Unavailable

#: The dashboard in a checkout of the repository (`--dashboard` elsewhere).
DEFAULT_DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "riskserve.json"
#: Grafana's default scrape interval of a Prometheus data source ("timeInterval").
GRAFANA_SCRAPE_SECONDS = 15.0
#: Points per series in a range query (Grafana: about one per pixel of the panel).
DEFAULT_POINTS = 240
#: Grafana's built-in variables that depend on the time window.
BUILTINS = frozenset(
    {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms"}
)
#: `$name`, `${name}`, `${name:format}`, `[[name]]`, `[[name:format]]`.
_VARIABLE = re.compile(
    r"\$\{(?P<b>\w+)(?::(?P<bf>\w+))?\}|\[\[(?P<s>\w+)(?::(?P<sf>\w+))?\]\]|\$(?P<p>\w+)"
)
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<match>.*\S)\s*,\s*)?(?P<label>\w+)\s*\)\s*$"
)


class DashboardError(InvalidInput):
    """The dashboard file is unreadable, or an expression uses an unknown variable."""


class PrometheusUnavailable(Unavailable):
    """Prometheus cannot be reached, or what answers is not its HTTP API."""


class QueryRefused(InvalidInput):
    """Prometheus refused an expression (it names the panel and the expression)."""


# --------------------------------------------------------------------------------------
# The dashboard (pure)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    ref: str
    expr: str
    legend: str
    #: Evaluated once at the end of the window (tables, stats), not over it.
    instant: bool


@dataclasses.dataclass(frozen=True)
class Panel:
    id: int
    title: str
    kind: str
    #: Title of the row the panel sits under ("" above the first row).
    row: str
    unit: str
    targets: tuple[Target, ...]
    #: Threshold values Grafana draws as lines on the panel.
    lines: tuple[float, ...] = ()
    y_min: float | None = None
    y_max: float | None = None


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    kind: str
    #: The query of a `query` variable (`label_values(...)`), "" otherwise.
    query: str
    multi: bool
    include_all: bool
    all_value: str | None


@dataclasses.dataclass(frozen=True)
class Dashboard:
    title: str
    uid: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)

    def targets(self) -> Iterator[tuple[Panel, Target]]:
        for p in self.panels:
            for t in p.targets:
                yield p, t


def load_dashboard(path: Path = DEFAULT_DASHBOARD) -> Dashboard:
    """Reads a dashboard JSON file (as Grafana exports it, or a provisioned file)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DashboardError(f"no dashboard file {path} (give --dashboard PATH)") from None
    except (OSError, ValueError) as e:
        raise DashboardError(f"dashboard {path} is not readable JSON: {e}") from None
    return parse_dashboard(doc, str(path))


def _panels(items: Sequence[Any], row: str, where: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every non-row panel with the title of its row (collapsed rows hold theirs)."""
    for item in items:
        if not isinstance(item, dict):
            raise DashboardError(f"{where}: a panel is not an object")
        if item.get("type") == "row":
            row = str(item.get("title", ""))
            yield from _panels(item.get("panels") or [], row, where)
        else:
            yield item, row


def _lines(defaults: Mapping[str, Any]) -> tuple[float, ...]:
    style = ((defaults.get("custom") or {}).get("thresholdsStyle") or {}).get("mode", "off")
    if style not in ("line", "dashed", "line+area", "dashed+area"):
        return ()
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    return tuple(float(s["value"]) for s in steps if s.get("value") is not None)


def parse_dashboard(doc: Any, where: str = "dashboard") -> Dashboard:
    """The dashboard of a parsed JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("panels"), list):
        raise DashboardError(f"{where}: not a Grafana dashboard (no 'panels' list)")
    variables = []
    for v in (doc.get("templating") or {}).get("list") or []:
        query = v.get("query", "")
        if isinstance(query, dict):
            query = query.get("query", "")
        variables.append(
            Variable(
                name=str(v["name"]),
                kind=str(v.get("type", "")),
                query=str(query) if v.get("type") == "query" else "",
                multi=bool(v.get("multi")),
                include_all=bool(v.get("includeAll")),
                all_value=v.get("allValue") or None,
            )
        )
    panels = []
    for p, row in _panels(doc["panels"], "", where):
        defaults = (p.get("fieldConfig") or {}).get("defaults") or {}
        targets = tuple(
            Target(
                ref=str(t.get("refId", "")),
                expr=str(t.get("expr", "")),
                legend=str(t.get("legendFormat", "")),
                instant=bool(t.get("instant")) and not t.get("range"),
            )
            for t in p.get("targets") or []
            if not t.get("hide")
        )
        panels.append(
            Panel(
                id=int(p.get("id", 0)),
                title=str(p.get("title", "")),
                kind=str(p.get("type", "")),
                row=row,
                unit=str(defaults.get("unit", "")),
                targets=targets,
                lines=_lines(defaults),
                y_min=defaults.get("min"),
                y_max=defaults.get("max"),
            )
        )
    return Dashboard(
        title=str(doc.get("title", "")),
        uid=str(doc.get("uid", "")),
        variables=tuple(variables),
        panels=tuple(panels),
    )


def variables_in(text: str) -> set[str]:
    """Names of the variables an expression (or a variable query) uses."""
    return {next(g for g in m.group("b", "s", "p") if g) for m in _VARIABLE.finditer(text)}


@dataclasses.dataclass(frozen=True)
class Window:
    """A dashboard's time range: [start, end] unix seconds, one point per `step`."""

    start: float
    end: float
    step: float
    #: The data source's scrape interval (Grafana's "timeInterval").
    scrape: float = GRAFANA_SCRAPE_SECONDS

    @classmethod
    def ending(
        cls,
        end: float,
        seconds: float,
        scrape: float = GRAFANA_SCRAPE_SECONDS,
        points: int = DEFAULT_POINTS,
    ) -> Window:
        """The `seconds` before `end`; the step as Grafana picks `$__interval`: the
        range over the points, never below the scrape interval, whole seconds."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise InvalidInput(f"the time range must be > 0 seconds, got {seconds}")
        if not (math.isfinite(scrape) and scrape > 0):
            raise InvalidInput(f"the scrape interval must be > 0 seconds, got {scrape}")
        step = float(max(math.ceil(seconds / points), math.ceil(scrape)))
        return cls(end - seconds, end, step, scrape)

    @property
    def range_seconds(self) -> float:
        return self.end - self.start

    @property
    def rate_interval(self) -> float:
        """Grafana's `$__rate_interval`: max($__interval + scrape, 4 x scrape), so a
        rate always sees at least four samples of the series."""
        return max(self.step + self.scrape, 4 * self.scrape)

    def builtins(self) -> dict[str, str]:
        r = self.range_seconds
        return {
            "__interval": duration(self.step),
            "__interval_ms": str(round(self.step * 1000)),
            "__rate_interval": duration(self.rate_interval),
            "__range": duration(r),
            "__range_s": str(round(r)),
            "__range_ms": str(round(r * 1000)),
        }


def duration(seconds: float) -> str:
    """A PromQL duration: whole seconds when it is, else milliseconds."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def regex_escape(value: str) -> str:
    """A label value as a literal inside a PromQL regex string (Grafana's escaping:
    a backslash for the regex, doubled for the string literal)."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def substitute(
    text: str,
    dashboard: Dashboard,
    selection: Mapping[str, Sequence[str]],
    window: Window,
    where: str = "expression",
) -> str:
    """`text` with every variable replaced. `selection` maps a variable to its chosen
    values; a variable missing from it (or with no values) means All."""
    builtins = window.builtins()

    def value(m: re.Match[str]) -> str:
        name = next(g for g in m.group("b", "s", "p") if g)
        fmt = m.group("bf") or m.group("sf") or ""
        if name in builtins:
            return builtins[name]
        var = dashboard.variable(name)
        if var is None:
            raise DashboardError(f"{where} uses ${name}, which the dashboard does not define")
        chosen = list(selection.get(name) or [])
        if var.kind == "datasource":
            raise DashboardError(f"{where} uses the data source variable ${name} in PromQL")
        if not chosen:
            if var.all_value is None:
                raise DashboardError(f"variable ${name} has no allValue: choose a value for it")
            return var.all_value
        if len(chosen) > 1 and not var.multi:
            raise InvalidInput(f"variable ${name} takes one value, got {chosen}")
        if fmt == "raw":
            return "|".join(chosen)
        if fmt not in ("", "regex"):
            raise DashboardError(f"{where}: format {fmt!r} of ${name} is not supported")
        if not (var.multi or var.include_all) and not fmt:
            # Grafana escapes a single-valued variable for the string literal only.
            return chosen[0].replace("\\", "\\\\").replace("'", "\\'")
        escaped = [regex_escape(c) for c in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return _VARIABLE.sub(value, text)


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """A series' name: the legend format's {{label}}s filled in, or its labels."""
    if fmt.strip():
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


# --------------------------------------------------------------------------------------
# Prometheus' HTTP API
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    #: unix seconds
    times: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]

    @property
    def finite(self) -> bool:
        """At least one value is a number (not NaN or infinite)."""
        return bool(np.isfinite(self.values).any())


class Prometheus:
    """The few calls of Prometheus' HTTP API the dashboard needs (/api/v1)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(
        self, path: str, params: Sequence[tuple[str, str]], what: str, post: bool = False
    ) -> Any:
        """GETs /api/v1/<path> (or POSTs the form: a long expression fits); the `data`
        of a success."""
        url = f"{self.url}/api/v1/{path}"
        form = urllib.parse.urlencode(params)
        if post:
            req = urllib.request.Request(url, data=form.encode(), method="POST")
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        else:
            req = urllib.request.Request(f"{url}?{form}" if form else url)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            error = _api_error(raw)
            if error is not None and e.code in (400, 422):
                raise QueryRefused(f"Prometheus refused {what}: {error}") from None
            detail = error or raw[:200].decode(errors="replace")
            raise PrometheusUnavailable(
                f"Prometheus at {self.url}: HTTP {e.code}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusUnavailable(
                f"cannot reach Prometheus at {self.url}: {reason}"
            ) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise PrometheusUnavailable(
                f"{url} did not answer with Prometheus' JSON API (is {self.url} Prometheus?)"
            ) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error") if isinstance(doc, dict) else None
            raise QueryRefused(f"Prometheus refused {what}: {error or doc!r}")
        return doc.get("data")

    def query_range(self, expr: str, window: Window, what: str = "") -> list[Series]:
        data = self._call(
            "query_range",
            [
                ("query", expr),
                ("start", f"{window.start:.3f}"),
                ("end", f"{window.end:.3f}"),
                ("step", f"{window.step:g}"),
            ],
            what or repr(expr),
            post=True,
        )
        out = []
        for r in data.get("result", []):
            pts = r.get("values", [])
            times = np.array([float(t) for t, _ in pts], dtype=np.float64)
            values = np.array([float(v) for _, v in pts], dtype=np.float64)
            out.append(Series(dict(r.get("metric", {})), times, values))
        return out

    def query(self, expr: str, at: float, what: str = "") -> list[Series]:
        params = [("query", expr), ("time", f"{at:.3f}")]
        data = self._call("query", params, what or repr(expr), post=True)
        kind, result = data.get("resultType"), data.get("result", [])
        if kind == "scalar":
            result = [{"metric": {}, "value": result}]
        elif kind != "vector":
            result = []
        return [
            Series(
                dict(r.get("metric", {})),
                np.array([float(r["value"][0])], dtype=np.float64),
                np.array([float(r["value"][1])], dtype=np.float64),
            )
            for r in result
        ]

    def label_values(self, label: str, match: str | None, window: Window) -> list[str]:
        params = [("start", f"{window.start:.3f}"), ("end", f"{window.end:.3f}")]
        if match:
            params.append(("match[]", match))
        data = self._call(f"label/{urllib.parse.quote(label)}/values", params, f"label {label}")
        return sorted(str(v) for v in data or [])

    def scrape_interval(self) -> float | None:
        """The global scrape_interval of Prometheus' loaded configuration, if it says."""
        data = self._call("status/config", [], "its configuration")
        text = str((data or {}).get("yaml", ""))
        m = re.search(r"^global:\s*\n(?:[ \t]+.*\n)*?[ \t]+scrape_interval:\s*(\S+)", text, re.M)
        return None if m is None else parse_prom_duration(m.group(1))


def _api_error(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return str(doc.get("error")) if isinstance(doc, dict) and doc.get("error") else None


_PROM_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_prom_duration(text: str) -> float:
    """A Prometheus duration ("1m30s", "15s", "500ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidInput(f"not a Prometheus duration: {text!r}")
    units = {**_PROM_UNITS, "y": 365 * 86400.0}
    return sum(float(n) * units[u] for n, u in parts)


def variable_values(
    prom: Prometheus,
    dashboard: Dashboard,
    var: Variable,
    selection: Mapping[str, Sequence[str]],
    window: Window,
) -> list[str]:
    """What Grafana would offer for a `label_values(...)` query variable."""
    m = _LABEL_VALUES.match(var.query)
    if m is None:
        raise DashboardError(f"variable ${var.name}: query {var.query!r} is not label_values(...)")
    match = m.group("match")
    if match is not None:
        match = substitute(match, dashboard, selection, window, f"variable ${var.name}")
    return prom.label_values(m.group("label"), match, window)


# --------------------------------------------------------------------------------------
# Evaluating and drawing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TargetResult:
    panel: Panel
    target: Target
    #: The expression as sent, variables substituted.
    expr: str
    series: list[Series]


def evaluate(
    prom: Prometheus,
    dashboard: Dashboard,
    selection: Mapping[str, Sequence[str]],
    window: Window,
    panels: Sequence[Panel] | None = None,
) -> list[TargetResult]:
    """Every target of `panels` (all of the dashboard's by default): a range query
    over the window, or an instant query at its end for instant targets."""
    out = []
    for panel in dashboard.panels if panels is None else panels:
        for t in panel.targets:
            where = f"panel {panel.title!r} ({t.ref})"
            expr = substitute(t.expr, dashboard, selection, window, where)
            what = f"the expression of {where}:\n  {expr}"
            if t.instant:
                series = prom.query(expr, window.end, what)
            else:
                series = prom.query_range(expr, window, what)
            out.append(TargetResult(panel, t, expr, series))
    return out


def _y_formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    if unit == "percentunit":
        return PercentFormatter(1.0)
    if unit == "s":

        def seconds(v: float, _pos: float) -> str:
            a = abs(v)
            if a == 0:
                return "0"
            if a < 1e-3:
                return f"{v * 1e6:g} µs"
            if a < 1:
                return f"{v * 1e3:g} ms"
            if a < 120:
                return f"{v:g} s"
            if a < 7200:
                return f"{v / 60:.3g} min"
            return f"{v / 3600:.3g} h"

        return FuncFormatter(seconds)
    suffix = (
        " req/s" if unit == "reqps" else unit.removeprefix("suffix:") if "suffix:" in unit else ""
    )
    return FuncFormatter(lambda v, _pos: f"{v:g}{suffix}")


#: Legend entries drawn per panel; the rest are counted.
MAX_LEGEND = 8


def render_png(
    results: Sequence[TargetResult], path: Path, title: str, window: Window, columns: int = 3
) -> int:
    """Draws every time-series panel of `results` into one PNG, one axes per panel in
    dashboard order, with its threshold lines; returns the number of panels drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise Unavailable("drawing the PNG needs matplotlib (pip install matplotlib)") from None

    by_panel: dict[int, tuple[Panel, list[TargetResult]]] = {}
    for r in results:
        if r.panel.kind == "timeseries" and not r.target.instant:
            by_panel.setdefault(r.panel.id, (r.panel, []))[1].append(r)
    if not by_panel:
        raise DashboardError("the dashboard has no time-series panel to draw")
    n = len(by_panel)
    rows = math.ceil(n / columns)
    height = 3.3 * rows + 1.2
    fig = Figure(figsize=(6.4 * columns, height))
    FigureCanvasAgg(fig)
    # Fixed margins: a constrained layout measures every tick label twice (most of
    # the drawing time with two dozen panels).
    fig.subplots_adjust(
        left=0.05, right=0.99, bottom=0.6 / height, top=1 - 0.8 / height, wspace=0.22, hspace=0.45
    )
    axes = fig.subplots(rows, columns, squeeze=False)
    start = np.datetime64(int(window.start), "s")
    end = np.datetime64(int(window.end), "s")
    for ax, (panel, targets) in zip(axes.flat, by_panel.values(), strict=False):
        drawn = 0
        for r in targets:
            for s in r.series:
                if not s.finite:
                    continue
                x = s.times.astype("datetime64[s]")
                # A series with a point or two (a burst shorter than the step) is drawn
                # as dots, or it would not show at all.
                few = int(np.isfinite(s.values).sum()) < 3
                ax.plot(
                    x,
                    s.values,
                    linewidth=1.0,
                    marker="." if few else None,
                    label=legend(r.target.legend, s.labels),
                )
                drawn += 1
        for value in panel.lines:
            ax.axhline(value, color="red", linestyle="--", linewidth=0.9, alpha=0.8)
        ax.set_title(f"{panel.row} · {panel.title}" if panel.row else panel.title, fontsize=9)
        ax.set_xlim(start, end)
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.yaxis.set_major_formatter(_y_formatter(panel.unit))
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if panel.y_min is not None and drawn:
            ax.set_ylim(bottom=panel.y_min)
        if panel.y_max is not None and drawn:
            ax.set_ylim(top=panel.y_max)
        if drawn == 0:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) > MAX_LEGEND:
            more = len(handles) - (MAX_LEGEND - 1)
            handles = [*handles[: MAX_LEGEND - 1], Line2D([], [], alpha=0.0)]
            labels = [*labels[: MAX_LEGEND - 1], f"+{more} more"]
        ax.legend(handles, labels, fontsize=6, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, y=1 - 0.25 / height)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=80)
    return n
