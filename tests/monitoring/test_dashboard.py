"""The Grafana dashboard file and riskserve.monitoring.dashboard's pure parts, without
Prometheus (tests/e2e/test_grafana_dashboard.py runs every expression against a real one).

* deploy/grafana/riskserve.json is a dashboard Grafana loads: valid JSON, a current
  schemaVersion, a Prometheus data source variable used by every panel and target,
  unique ids, panels inside the 24-column grid, not overlapping;
* every panel has a target, every variable used is defined, every series named is one
  riskserve exports (read from its real collectors) or a rule in rules.yml records,
  rates use $__rate_interval, histogram quantiles keep `le`;
* the provisioning files are what Grafana's provisioning expects;
* extraction (rows, collapsed rows, instant targets, threshold lines) and substitution
  (one value, several, All, escaping, the built-in time variables, unknown variables)
  on small documents, and the CLI's clear errors when no Prometheus answers."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from promserver import RULES, free_port

from riskserve import cli
from riskserve.errors import InvalidInput
from riskserve.feedback.exporter import OutcomesCollector
from riskserve.monitoring import dashboard as db
from riskserve.monitoring.fleet import Fleet, WorkerCollector
from riskserve.monitoring.metrics import Metrics, ServingCollector
from riskserve.registry import ModelRepository
from riskserve.training.watch import WatchMetrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "riskserve.json"
WINDOW = db.Window.ending(1_000_000.0, 3600.0, 15.0)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="module")
def dash() -> db.Dashboard:
    return db.load_dashboard(DASHBOARD)


def _all_panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from _all_panels(p.get("panels") or [])


# -- the file ---------------------------------------------------------------------------


def test_the_dashboard_is_a_current_grafana_dashboard(doc: dict[str, Any]) -> None:
    assert db.DEFAULT_DASHBOARD == DASHBOARD
    assert doc["schemaVersion"] >= 39  # Grafana 11 and later
    assert doc["uid"] == "riskserve" and doc["title"]
    assert doc["id"] is None  # provisioning and import assign it
    (ds,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert (ds["name"], ds["query"]) == ("datasource", "prometheus")
    panels = list(_all_panels(doc["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"panel {p['title']!r} has no description"
        assert p["fieldConfig"]["defaults"].get("unit"), f"panel {p['title']!r} has no unit"
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], (p["title"], t["refId"])
            assert t["refId"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_every_panel_has_a_target_and_every_variable_is_defined(dash: db.Dashboard) -> None:
    assert len(dash.panels) >= 20
    defined = {v.name for v in dash.variables}
    assert {"datasource", "model", "variant"} <= defined
    for p in dash.panels:
        assert p.targets, f"panel {p.title!r} has no target"
        for t in p.targets:
            assert t.expr.strip(), (p.title, t.ref)
            unknown = db.variables_in(t.expr) - defined - db.BUILTINS
            assert not unknown, f"panel {p.title!r} ({t.ref}) uses undefined {unknown}"
            # Substitution itself finds no unknown variable, and leaves no `$`.
            assert "$" not in db.substitute(t.expr, dash, {}, WINDOW)
    for v in dash.variables:
        assert not (db.variables_in(v.query) - defined), v.name
        if v.kind == "query":
            assert v.query.startswith("label_values(") and v.include_all and v.all_value
    # The template variables filter what they name.
    used = set().union(*(db.variables_in(t.expr) for _, t in dash.targets()))
    assert {"model", "variant", "__rate_interval", "__range"} <= used


def _exported_series(tmp_path: Path) -> set[str]:
    """Every sample name riskserve's collectors export, from the collectors themselves."""
    registry = CollectorRegistry()
    Metrics(registry)
    registry.register(ServingCollector(lambda: []))
    registry.register(OutcomesCollector(lambda: []))
    registry.register(WorkerCollector(Fleet(tmp_path, ModelRepository(tmp_path))))
    # `riskserve retrain-watch --metrics-port`: its own registry.
    watcher = WatchMetrics("fraud").registry
    names = set()
    for fam in [*registry.collect(), *watcher.collect()]:
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_count", "_sum")}
        else:
            names.add(fam.name)
    return names


def test_every_series_is_exported_or_recorded(dash: db.Dashboard, tmp_path: Path) -> None:
    exported = _exported_series(tmp_path)
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    known = exported | recorded | {"ALERTS"}
    used = set()
    for p, t in dash.targets():
        names = set(re.findall(r"\b(riskserve[_:][\w:]*|ALERTS)\b", t.expr))
        assert names, (p.title, t.expr)
        assert names <= known, f"panel {p.title!r}: {names - known} is not a series riskserve has"
        used |= names
        for alert in re.findall(r'alertname="(\w+)"', t.expr):
            assert alert in alerts, (p.title, alert)
    # The dashboard shows the feedback loop and the fleet-wide drift rule.
    assert {
        "riskserve_outcome_recall",
        "riskserve_outcome_false_positive_rate",
        "riskserve_outcome_precision",
        "riskserve_outcome_label_coverage",
        "riskserve_label_delay_seconds_bucket",
        "riskserve_prediction_log_rows_total",
        "riskserve_rollbacks_total",
        "riskserve_shadow_score_abs_diff_bucket",
        "riskserve:drift_psi:fleet_1h",
        "riskserve_retrain_runs_total",
        "riskserve_retrain_last_success_timestamp_seconds",
    } <= used


def test_rates_use_the_rate_interval_and_quantiles_keep_le(dash: db.Dashboard) -> None:
    for p, t in dash.targets():
        for fn, window in re.findall(r"\b(rate|irate|increase)\(.*?\[([^\]]+)\]", t.expr, re.S):
            assert window in ("$__rate_interval", "$__range"), (p.title, fn, window)
        for m in re.finditer(r"histogram_quantile\(\s*[\d.]+,\s*(\w+) by \(([^)]*)\)", t.expr):
            assert "le" in [s.strip() for s in m.group(2).split(",")], (p.title, t.expr)
        # Counter histograms are rated; the label-delay histogram is a current cohort,
        # recomputed from the store, so it is read as it is (no rate over it).
        if "riskserve_label_delay_seconds" in t.expr:
            assert "rate(" not in t.expr, p.title
        elif "_bucket" in t.expr:
            assert "rate(" in t.expr, p.title


def test_psi_panels_draw_the_025_line(dash: db.Dashboard) -> None:
    psi = [p for p in dash.panels if "PSI" in p.title]
    assert len(psi) == 2 and all(p.lines == (0.25,) for p in psi)
    assert any('feature="__score__"' in t.expr for p in psi for t in p.targets)
    assert any('feature!="__score__"' in t.expr for p in psi for t in p.targets)


def test_provisioning_files_are_what_grafana_expects(doc: dict[str, Any]) -> None:
    prov = GRAFANA / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards" / "riskserve.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provider["folder"] and provider["name"]
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    (ds,) = sources["datasources"]
    # The dashboard's data source variable offers Prometheus data sources; this one
    # is the default, so it is chosen.
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    assert ds["access"] == "proxy" and ds["url"]
    assert db.parse_prom_duration(ds["jsonData"]["timeInterval"]) == 15.0


# -- extraction and substitution --------------------------------------------------------

SMALL = {
    "title": "t",
    "uid": "u",
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {
                "name": "model",
                "type": "query",
                "query": {"query": "label_values(riskserve_model_info, model)"},
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
            },
            {
                "name": "one",
                "type": "query",
                "query": "label_values(x)",
                "multi": False,
                "includeAll": False,
            },
        ]
    },
    "panels": [
        {
            "type": "timeseries",
            "id": 1,
            "title": "top",
            "fieldConfig": {
                "defaults": {
                    "unit": "s",
                    "min": 0,
                    "custom": {"thresholdsStyle": {"mode": "dashed"}},
                    "thresholds": {"steps": [{"value": None}, {"value": 0.05}, {"value": 1}]},
                }
            },
            "targets": [
                {"refId": "A", "expr": 'a{model=~"$model"}', "legendFormat": "{{model}}"},
                {"refId": "B", "expr": "hidden", "hide": True},
            ],
        },
        {"type": "row", "id": 2, "title": "open row", "collapsed": False, "panels": []},
        {
            "type": "stat",
            "id": 3,
            "title": "in open row",
            "targets": [{"refId": "A", "expr": "b[$__range]", "instant": True}],
        },
        {
            "type": "row",
            "id": 4,
            "title": "collapsed row",
            "collapsed": True,
            "panels": [
                {
                    "type": "timeseries",
                    "id": 5,
                    "title": "inside",
                    "fieldConfig": {
                        "defaults": {
                            "custom": {"thresholdsStyle": {"mode": "off"}},
                            "thresholds": {"steps": [{"value": None}, {"value": 3}]},
                        }
                    },
                    "targets": [{"refId": "A", "expr": "rate(c[$__rate_interval])"}],
                }
            ],
        },
    ],
}


def test_extraction_walks_rows_and_reads_targets() -> None:
    d = db.parse_dashboard(SMALL)
    assert [(p.id, p.title, p.kind, p.row) for p in d.panels] == [
        (1, "top", "timeseries", ""),
        (3, "in open row", "stat", "open row"),
        (5, "inside", "timeseries", "collapsed row"),
    ]
    top, stat, inside = d.panels
    assert [t.ref for t in top.targets] == ["A"]  # the hidden target is not run
    assert top.targets[0] == db.Target("A", 'a{model=~"$model"}', "{{model}}", False)
    assert stat.targets[0].instant and not inside.targets[0].instant
    assert (top.unit, top.lines, top.y_min) == ("s", (0.05, 1.0), 0)
    assert inside.lines == ()  # thresholds that are not drawn
    model = d.variable("model")
    assert model is not None and model.query == "label_values(riskserve_model_info, model)"
    assert d.variable("datasource") is not None and d.variable("nope") is None
    assert [t.expr for _, t in d.targets()] == [
        'a{model=~"$model"}',
        "b[$__range]",
        "rate(c[$__rate_interval])",
    ]


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ([], 'a{model=~".*"}'),
        (["fraud"], 'a{model=~"fraud"}'),
        (["fraud", "fraud_onnx"], 'a{model=~"(fraud|fraud_onnx)"}'),
        (["a.b+c"], r'a{model=~"a\\.b\\+c"}'),
    ],
)
def test_substitution_of_a_chosen_value_several_and_all(chosen: list[str], expected: str) -> None:
    d = db.parse_dashboard(SMALL)
    assert db.substitute('a{model=~"$model"}', d, {"model": chosen}, WINDOW) == expected
    # The other syntaxes Grafana accepts.
    for form in ("${model}", "${model:regex}", "[[model]]"):
        assert db.substitute(f'a{{model=~"{form}"}}', d, {"model": chosen}, WINDOW) == expected
    assert db.substitute("${model:raw}", d, {"model": ["x", "y"]}, WINDOW) == "x|y"


def test_substitution_of_the_time_variables() -> None:
    d = db.parse_dashboard(SMALL)
    # An hour at Grafana's default 15 s scrape: 240 points of 15 s, rates over 1 m.
    w = db.Window.ending(10_000.0, 3600.0, 15.0)
    assert (w.start, w.end, w.step, w.rate_interval) == (6400.0, 10_000.0, 15.0, 60.0)
    text = "$__interval $__interval_ms $__rate_interval $__range $__range_s $__range_ms"
    assert db.substitute(text, d, {}, w) == "15s 15000 60s 3600s 3600 3600000"
    # Five minutes at a 1 s scrape: a 2 s step (300 / 240, rounded up), rates over 4 s.
    w = db.Window.ending(10_000.0, 300.0, 1.0)
    assert (w.step, w.rate_interval) == (2.0, 4.0)
    assert db.substitute("rate(x[$__rate_interval])", d, {}, w) == "rate(x[4s])"
    # A day: the step grows past the scrape interval, and the rate window with it.
    w = db.Window.ending(10_000.0, 86400.0, 15.0)
    assert (w.step, w.rate_interval) == (360.0, 375.0)
    assert db.duration(0.25) == "250ms" and db.duration(90) == "90s"
    with pytest.raises(InvalidInput, match="range"):
        db.Window.ending(10_000.0, 0.0, 15.0)


def test_substitution_refuses_what_grafana_could_not_mean() -> None:
    d = db.parse_dashboard(SMALL)
    with pytest.raises(db.DashboardError, match=r"panel 'p' uses \$nope, which the dashboard"):
        db.substitute("x{a=~'$nope'}", d, {}, WINDOW, "panel 'p'")
    with pytest.raises(db.DashboardError, match="data source variable"):
        db.substitute("$datasource", d, {}, WINDOW)
    with pytest.raises(db.DashboardError, match=r"\$one has no allValue"):
        db.substitute("$one", d, {}, WINDOW)
    with pytest.raises(InvalidInput, match=r"\$one takes one value"):
        db.substitute("$one", d, {"one": ["a", "b"]}, WINDOW)
    assert db.substitute("$one", d, {"one": ["a"]}, WINDOW) == "a"
    # A single-valued variable is not regex-escaped (Grafana's rule), only for the string.
    assert db.substitute("$one", d, {"one": ["a.b"]}, WINDOW) == "a.b"
    assert db.substitute("$one", d, {"one": ["a\\b"]}, WINDOW) == "a\\\\b"
    assert db.variables_in("$a ${b} ${c:raw} [[d]] $__range") == {"a", "b", "c", "d", "__range"}


def test_bad_dashboard_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(db.DashboardError, match="no dashboard file"):
        db.load_dashboard(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(db.DashboardError, match="not readable JSON"):
        db.load_dashboard(bad)
    bad.write_text('{"title": "no panels"}')
    with pytest.raises(db.DashboardError, match="no 'panels' list"):
        db.load_dashboard(bad)


def test_legends_and_durations() -> None:
    labels = {"__name__": "m", "model": "fraud", "variant": "v2"}
    assert db.legend("{{model}} {{ variant }} {{missing}}", labels) == "fraud v2"
    assert db.legend("", labels) == 'm{model="fraud", variant="v2"}'
    assert db.legend("", {}) == "{}"
    assert db.parse_prom_duration("1m30s") == 90.0
    assert db.parse_prom_duration("500ms") == 0.5
    for bad in ("", "15", "1x", "s1"):
        with pytest.raises(InvalidInput, match="not a Prometheus duration"):
            db.parse_prom_duration(bad)


# -- clear errors without a Prometheus --------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli.main(["dashboard", *args])
    return rc, capsys.readouterr().err


def test_cli_when_no_prometheus_answers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "d.png"
    closed = f"http://127.0.0.1:{free_port()}"
    rc, err = _run(capsys, "--prometheus", closed, "--png", str(png))
    assert rc == 1 and err.startswith(f"riskserve dashboard: cannot reach Prometheus at {closed}")
    assert "Traceback" not in err and not png.exists()
    rc, err = _run(capsys, "--prometheus", closed, "--png", str(png), "--range", "soon")
    assert rc == 2 and "soon" in err
    rc, err = _run(capsys, "--prometheus", closed, "--png", str(png), "--scrape-interval", "9")
    assert rc == 1 and "not a Prometheus duration: '9'" in err
    rc, err = _run(
        capsys, "--prometheus", closed, "--png", str(png), "--dashboard", str(tmp_path / "x")
    )
    assert rc == 1 and "no dashboard file" in err


def test_cli_when_something_else_answers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A web server that is not Prometheus (here: HTML, then a 404)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if "status/config" in self.path else 404
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not prometheus</html>")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        png = str(tmp_path / "d.png")
        rc, err = _run(capsys, "--prometheus", url, "--png", png)
        assert rc == 1 and "did not answer with Prometheus' JSON API" in err, err
        rc, err = _run(capsys, "--prometheus", url, "--png", png, "--scrape-interval", "15s")
        assert rc == 1 and f"Prometheus at {url}: HTTP 404" in err, err
    finally:
        httpd.shutdown()
        httpd.server_close()
