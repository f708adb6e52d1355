"""deploy/grafana/riskserve.json against a real Prometheus scraping a real fleet.

Three versions of `fraud` are trained on generated payments and served by one
`riskserve serve --workers 2` (the production shape: prometheus_client's
multiprocess mode, the metrics process merging the workers' drift counts):
v1 and v2 split 50/50 with v3 shadowing every request, after a split change that
was rolled back by hand. The traffic has its amounts x 10 (drifted) and comes in
three parts, each scraped before the next (a rate needs two samples of a series);
four requests fail with INVALID_ARGUMENT (two per variant); 90 % of the rows get
their true label through the Feedback API, with outcomes judged at maturity 0 and
refreshed every 0.5 s. `riskserve retrain-watch` watches the server, sees the
drift hold once 1,000 rows are labelled, runs one real `riskserve retrain` that
registers version 4 (not started: the deployment stays as it was), and exports its
own series. A real Prometheus scrapes both every 2 s with deploy/prometheus/rules.yml
loaded.

Then every PromQL expression of the dashboard, its template variables substituted
as Grafana would (model fraud, variant All and v2), returns data: a series with a
number in it, not merely an expression that parses. A few panels are checked
against what the test did (rollbacks, versions, revision, label coverage, no log
drops, the drift alert, the retrain), the template
variables' queries offer the served values, and `riskserve dashboard --png` draws a
real image from the same Prometheus, and names an expression Prometheus refuses."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerHandle, run_cli, train_model, wait_for
from PIL import Image
from promserver import Prom, start_prometheus
from watchproc import WatchHandle, start_watch

from riskserve.client import Client, build_request
from riskserve.labels_client import FeedbackClient
from riskserve.monitoring import dashboard as db
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as fpb
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(600)

MODEL = "fraud"
ADMIN = "dashboard-test-admin-token"
FEEDBACK = "dashboard-test-label-token"
TRAIN_ROWS, ROUNDS = 3000, 15
TRAFFIC_ROWS, TRAFFIC_SEED, ROWS_PER_REQUEST, CARDS = 3000, 7, 10, 150
AMOUNT_FACTOR = 10.0
LABELLED_SHARE = 0.9
#: Prometheus scrapes and evaluates the rules this often (seconds). A merged /metrics
#: of two workers and three versions takes ~0.5 s on a loaded 2-core machine: at 1 s
#: some scrapes time out, and every series of the target goes stale for a moment.
SCRAPE = 2.0
WAIT = 90.0
#: The watcher retrains once the drift holds and 1,000 rows are labelled; the gate's
#: margins are wide open (this is about the dashboard, not the gate) and the new
#: version is only registered, so the deployment the panels show does not change.
RETRAIN_ARGS = (
    "--maturity 0d --rounds 10 --min-holdout-fraud 5 --max-auc-drop 1 --max-recall-drop 1 "
    "--max-precision-drop 1 --max-amount-recall-drop 1"
)


# --------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    prom: Prom
    srv: ServerHandle
    watcher: WatchHandle
    #: When Prometheus first scraped both targets (unix seconds).
    t0: float
    #: labelled rows per variant
    labelled: dict[str, int]
    #: rows served per variant
    served: dict[str, int]
    #: the deployment revision after the rollback
    revision: int
    #: when the set-up was done (unix seconds)
    ready: float

    def window(self) -> db.Window:
        return db.Window(self.t0, time.time(), SCRAPE, SCRAPE)


def admin(srv: ServerHandle, *args: str) -> str:
    r = run_cli("admin", "--server", srv.target, "--token", ADMIN, "--reason", "dashboard", *args)
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout


def metric_values(srv: ServerHandle, sample: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    from riskserve.monitoring.report import fetch_metrics

    text = fetch_metrics(f"http://127.0.0.1:{srv.metrics_port}/metrics")
    return [
        (s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == sample
    ]


def settings_env(**settings: Any) -> dict[str, str]:
    return {f"RISKSERVE_{k.upper()}": str(v) for k, v in settings.items()}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerHandle]
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("dashboard")
    data = work / "train.parquet"
    run_datagen(TRAIN_ROWS, 0, data)
    models = work / "models"
    for seed in (1, 2, 3):
        train_model(data, models, ROUNDS, seed)

    env = settings_env(
        admin_token=ADMIN,
        feedback_token=FEEDBACK,
        outcome_maturity_seconds=0,
        outcome_refresh_seconds=0.5,
        outcome_min_labels=5,
        canary_min_requests=10**9,  # no automatic rollback: the one rollback is manual
    )
    srv = launch_server(models, env=env, workers=2)
    watcher: WatchHandle | None = None
    prom: Prom | None = None
    clients: list[Any] = []
    try:
        watcher = start_watch(
            models, srv, MODEL, ADMIN, "--poll-seconds", "0.5",
            "--drift-hold-seconds", "0", "--min-labels", "1000", "--start", "none",
            "--retrain-args", RETRAIN_ARGS,
        )  # fmt: skip
        server_target = f"127.0.0.1:{srv.metrics_port}"
        watcher_target = f"127.0.0.1:{watcher.metrics_port}"
        prom = start_prometheus(
            work,
            {"riskserve": [server_target], "riskserve-retrain": [watcher_target]},
            interval=f"{SCRAPE:g}s",
        )
        prom.wait_up("riskserve", [server_target])
        prom.wait_up("riskserve-retrain", [watcher_target])
        t0 = time.time()

        # v3 serves after a fresh start. A 50/50 split of v1 and v2 with v3 in shadow,
        # then a change to 90/10 that is rolled back by hand.
        admin(srv, "load", MODEL, "1")
        admin(srv, "load", MODEL, "2")
        admin(srv, "set-traffic", MODEL, "1=50", "2=50")
        admin(srv, "shadow", MODEL, "3", "100")
        admin(srv, "set-traffic", MODEL, "1=90", "2=10")
        out = admin(srv, "rollback", MODEL)
        revision = int(out.split("revision", 1)[1].split()[0])

        def workers_follow() -> bool:
            revs = {v for _, v in metric_values(srv, "riskserve_worker_deployment_revision")}
            newest = [v for _, v in metric_values(srv, "riskserve_deployment_revision")]
            return len(revs) == 1 and newest == list(revs)

        wait_for("both workers on the rolled-back revision", workers_follow, WAIT)

        client = Client(srv.target, timeout=30)
        clients.append(client)
        datatypes = client.datatypes(MODEL)
        table = generate(TRAFFIC_ROWS, TRAFFIC_SEED)
        cols = columns_of(table, list(datatypes))
        cols["amount"] = cols["amount"] * AMOUNT_FACTOR
        truth = np.asarray(table.column("is_fraud").to_numpy(), dtype=bool)

        row_ids: list[str] = []
        row_variant: list[str] = []
        key_variant: dict[str, str] = {}

        def send(lo: int) -> None:
            hi = lo + ROWS_PER_REQUEST
            key = f"card-{(lo // ROWS_PER_REQUEST) % CARDS}"
            part = {k: v[lo:hi] for k, v in cols.items()}
            req = build_request(MODEL, part, datatypes, parameters={"routing_key": key})
            resp = client.stub.ModelInfer(req, timeout=30)
            variant = resp.parameters["variant"].string_param
            key_variant[key] = variant
            row_ids.extend(f"{resp.id}/{j}" for j in range(ROWS_PER_REQUEST))
            row_variant.extend([variant] * ROWS_PER_REQUEST)

        def fail(variant: str) -> None:
            """A request on `variant` (a key it serves: assignment is sticky) with amount
            as FP32 where the model wants FP64: INVALID_ARGUMENT."""
            key = next(k for k, v in key_variant.items() if v == variant)
            part = {k: v[:ROWS_PER_REQUEST] for k, v in cols.items()}
            req = build_request(
                MODEL, part, {**datatypes, "amount": "FP32"}, parameters={"routing_key": key}
            )
            with pytest.raises(grpc.RpcError) as err:
                client.stub.ModelInfer(req, timeout=30)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        def scraped(what: str, promql: str, n: int) -> None:
            prom.wait_for(what, lambda: len(prom.query(promql)) == n)

        # The traffic in three parts, each seen by a scrape before the next: a rate
        # needs two samples of a series, and a series starts at its first request.
        # First, until both variants have served a request.
        lo = 0
        while len(set(row_variant)) < 2:
            send(lo)
            lo += ROWS_PER_REQUEST
        assert set(row_variant) == {"v1", "v2"}, set(row_variant)
        ok = f'riskserve_request_duration_seconds_count{{model="{MODEL}"}}'
        scraped("both variants' first requests", ok, 2)
        # Then half of the rest, and one failure on each variant.
        half, first = TRAFFIC_ROWS // 2, lo
        for lo in range(first, half, ROWS_PER_REQUEST):
            send(lo)
        for variant in ("v1", "v2"):
            fail(variant)
        scraped("the failures", 'riskserve_requests_total{code="INVALID_ARGUMENT"}', 2)
        # The other half, with a second failure on each variant half-way.
        for lo in range(half, TRAFFIC_ROWS, ROWS_PER_REQUEST):
            send(lo)
            if lo == half + TRAFFIC_ROWS // 4:
                for variant in ("v1", "v2"):
                    fail(variant)
        assert len(row_variant) == TRAFFIC_ROWS

        # Labels for 90 % of the rows: their true outcome.
        rng = np.random.default_rng(5)
        chosen = np.sort(rng.choice(TRAFFIC_ROWS, int(LABELLED_SHARE * TRAFFIC_ROWS), False))
        labels = [
            fpb.Label(
                request_id=row_ids[i],
                outcome=fpb.OUTCOME_FRAUD if truth[i] else fpb.OUTCOME_LEGITIMATE,
                source="chargeback",
            )
            for i in chosen
        ]
        fb = FeedbackClient(srv.target, token=FEEDBACK, timeout=60)
        clients.append(fb)
        replies = fb.stream(labels, batch=500)
        results = [r.result for reply in replies for r in reply.results]
        assert len(results) == len(labels)
        assert set(results) <= {fpb.ACCEPTED, fpb.PENDING}, set(results)
        labelled: dict[str, int] = {}
        for i in chosen:
            labelled[row_variant[i]] = labelled.get(row_variant[i], 0) + 1
        served = {v: row_variant.count(v) for v in ("v1", "v2")}

        # Every label joined and judged: the outcomes the metrics process exports.
        def judged() -> bool:
            got = {
                m["variant"]: v
                for m, v in prom.query(f'riskserve_outcome_labelled{{model="{MODEL}"}}')
            }
            return all(got.get(v) == n for v, n in labelled.items())

        prom.wait_for("the labelled rows in the outcomes", judged, timeout=WAIT)

        # The held drift and the labels start one retrain; it registers version 4.
        def retrained() -> bool:
            runs = {
                m["result"]: v
                for m, v in prom.query(
                    f'sum by (result) (riskserve_retrain_runs_total{{model="{MODEL}"}})'
                )
            }
            failed = {r: n for r, n in runs.items() if r != "registered" and n > 0}
            if failed:
                pytest.fail(f"retrain runs {failed}:\n" + "".join(watcher.lines)[-6000:])
            return runs.get("registered", 0) >= 1

        prom.wait_for("a registered retrain", retrained, timeout=300)
        yield Stack(prom, srv, watcher, t0, labelled, served, revision, time.time())
    finally:
        for c in clients:
            c.close()
        if prom is not None:
            prom.stop()
        rc = watcher.stop() if watcher is not None else 0
        srv.stop_and_check()
        assert rc == 0, f"retrain-watch exited with {rc}:\n" + "".join(
            watcher.lines if watcher else []
        )


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

Key = tuple[int, int, str]
SELECTIONS: tuple[Mapping[str, Sequence[str]], ...] = (
    {"model": [MODEL]},  # variant: All
    {"model": [MODEL], "variant": ["v2"]},
)


def _with_data(prom: db.Prometheus, dash: db.Dashboard, window: db.Window) -> set[Key]:
    """(selection, panel id, target) of every target that returned a number."""
    found = set()
    for i, selection in enumerate(SELECTIONS):
        for r in db.evaluate(prom, dash, selection, window):
            if any(s.finite for s in r.series):
                found.add((i, r.panel.id, r.target.ref))
    return found


def test_every_expression_returns_data(stack: Stack) -> None:
    """Each expression, for each selection, returns a number in some evaluation over
    the whole run (a scrape that times out leaves a moment without series)."""
    dash = db.load_dashboard()
    prom = db.Prometheus(stack.prom.url)
    wanted = {(i, p.id, t.ref) for i in range(len(SELECTIONS)) for p, t in dash.targets()}
    assert len(wanted) == 2 * len(list(dash.targets())) >= 80
    found: set[Key] = set()

    def all_have_data() -> bool:
        found.update(_with_data(prom, dash, stack.window()))
        return found >= wanted

    try:
        wait_for("every expression to return data", all_have_data, timeout=60)
    except pytest.fail.Exception:
        lines = []
        for i, pid, ref in sorted(wanted - found):
            panel = next(p for p in dash.panels if p.id == pid)
            (t,) = [t for t in panel.targets if t.ref == ref]
            expr = db.substitute(t.expr, dash, SELECTIONS[i], stack.window())
            lines.append(f"  {dict(SELECTIONS[i])} {panel.title} ({ref}):\n    {expr}")
        pytest.fail(
            f"{len(lines)} of {len(wanted)} expressions return no data:\n" + "\n".join(lines)
        )


def _settled(stack: Stack) -> float:
    """A rule evaluation after the fixture was done that saw the server's series (a
    time to query at: after a scrape that timed out, the series are stale until the
    next one)."""
    sel = f'riskserve:drift_psi:fleet_1h{{model="{MODEL}",feature="amount",version="1"}}'
    at: list[float] = []

    def evaluated() -> bool:
        rows = stack.prom.query(f"timestamp({sel})")
        if rows and rows[0][1] > stack.ready:
            at.append(rows[0][1] + 0.0005)
        return bool(at)

    stack.prom.wait_for("a rule evaluation after the set-up", evaluated)
    return at[0]


def test_panels_show_what_happened(stack: Stack) -> None:
    """The panels' own expressions, evaluated at one instant, against what the test did."""
    dash = db.load_dashboard()
    prom = db.Prometheus(stack.prom.url)
    sel = {"model": [MODEL]}
    at = _settled(stack)
    window = db.Window(stack.t0, at, SCRAPE, SCRAPE)

    def at_end(title: str, ref: str = "A") -> dict[str, float]:
        (panel,) = [p for p in dash.panels if p.title == title]
        (t,) = [t for t in panel.targets if t.ref == ref]
        expr = db.substitute(t.expr, dash, sel, window)
        return {db.legend(t.legend, s.labels): float(s.values[-1]) for s in prom.query(expr, at)}

    assert at_end("Rollbacks by reason") == {f"{MODEL} manual": 1.0}
    # v4, registered by the retrain, is not loaded (--start none).
    assert at_end("Versions live") == {f"{MODEL} v{v}": 1.0 for v in (1, 2, 3)}
    newest, oldest = at_end("Deployment revision"), at_end("Deployment revision", "B")
    assert (newest, oldest) == (
        {f"{MODEL} newest": stack.revision},
        {f"{MODEL} oldest replica": stack.revision},
    )
    assert at_end("Prediction-log rows lost in the range") == {"dropped": 0.0, "failed": 0.0}
    coverage = at_end("Label coverage")
    for v, n in stack.labelled.items():
        assert coverage[f"{MODEL} {v} (v{v[1:]})"] == pytest.approx(n / stack.served[v])
    for title in ("Recall", "False-positive rate", "Precision"):
        got = at_end(title)
        for v in ("v1", "v2"):
            value = got[f"{MODEL} {v} (v{v[1:]})"]
            assert 0.0 <= value <= 1.0, (title, v, value)
    # Labels came within seconds of their predictions.
    delay = at_end("Label delay: mean, p50 / p90")
    assert 0 <= delay[f"{MODEL} v1 (v1) mean"] < 600, delay
    # The drifted amounts: the fleet's PSI of amount is above the 0.25 line, and the
    # alert on it is pending (its `for` is 10 minutes).
    psi = at_end("PSI per input (fleet, last hour)")
    assert all(psi[f"{MODEL} v{v} amount"] > 0.25 for v in (1, 2)), psi
    alerts = prom.query(
        db.substitute(_target(dash, "Active drift alerts").expr, dash, sel, window), at
    )
    assert {(s.labels["feature"], s.labels["alertstate"]) for s in alerts} >= {
        ("amount", "pending")
    }
    runs = at_end("Retraining runs")
    assert set(runs) == {
        f"{MODEL} {t} {r}"
        for t in ("schedule", "drift", "recall")
        for r in ("registered", "rejected", "error", "timeout")
    }
    since = at_end("Time since the last successful retraining")
    assert 0 <= since[MODEL] < 600, since


def _target(dash: db.Dashboard, title: str, ref: str = "A") -> db.Target:
    (panel,) = [p for p in dash.panels if p.title == title]
    (t,) = [t for t in panel.targets if t.ref == ref]
    return t


def test_template_variables_offer_the_served_values(stack: Stack) -> None:
    dash = db.load_dashboard()
    prom = db.Prometheus(stack.prom.url)
    window = stack.window()
    model = dash.variable("model")
    variant = dash.variable("variant")
    assert model is not None and variant is not None
    assert db.variable_values(prom, dash, model, {}, window) == [MODEL]
    offered = db.variable_values(prom, dash, variant, {"model": [MODEL]}, window)
    # The split's variants (requests), and every outcome group: v3 at weight 0, the shadow.
    assert {"v1", "v2", "v3", "shadow"} <= set(offered), offered
    assert db.variable_values(prom, dash, variant, {"model": ["nope"]}, window) == []
    assert prom.scrape_interval() == SCRAPE


def test_dashboard_png_from_prometheus(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "dashboard.png"
    r = run_cli(
        "dashboard", "--prometheus", stack.prom.url, "--model", MODEL,
        "--range", "10m", "--png", str(png), timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    series_panels = [p for p in db.load_dashboard().panels if p.kind == "timeseries"]
    assert summary["out"] == str(png) and summary["panels"] == len(series_panels)
    assert summary["no_data"] == [], summary
    assert "Traceback" not in r.stderr and "warning" not in r.stderr
    with Image.open(png) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert width >= 1200 and height >= 1200, img.size
        rgb = np.asarray(img.convert("RGB"))
    # Drawn lines, not a blank page: many colours, and a good share of non-white pixels.
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert colours > 100, colours
    assert (rgb.min(axis=2) < 200).mean() > 0.02


def test_dashboard_cli_names_what_it_cannot_draw(stack: Stack, tmp_path: Path) -> None:
    # An expression Prometheus refuses: the panel and the expression are named.
    doc = json.loads(db.DEFAULT_DASHBOARD.read_text())
    broken = next(p for p in doc["panels"] if p.get("title") == "Requests / s")
    broken["targets"][0]["expr"] = "sum by (model (riskserve_requests_total)"
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(doc))
    png = tmp_path / "d.png"
    args = ("dashboard", "--prometheus", stack.prom.url, "--png", str(png))
    r = run_cli(*args, "--dashboard", str(bad), timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("riskserve dashboard: Prometheus refused the expression of ")
    assert "panel 'Requests / s' (A)" in r.stderr and "sum by (model (" in r.stderr
    assert "Traceback" not in r.stderr and not png.exists()
    # A model Prometheus has never seen: a warning, empty panels, still a picture.
    r = run_cli(*args, "--model", "nope", "--range", "5m", timeout=240)
    assert r.returncode == 0, r.stderr
    assert "warning: no model 'nope' in Prometheus" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["no_data"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
