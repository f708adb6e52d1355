"""A real Prometheus scraping two real riskserve replicas, with deploy/prometheus/rules.yml.

One small model is trained into a temporary models folder and served by two
`riskserve serve` processes. Replica A gets 3,000 rows like the training data,
replica B 2,000 rows of another seed with `amount` x 10 (drifted), plus two
requests that fail with INVALID_ARGUMENT. Prometheus scrapes both every second and
evaluates the rules every second. Then:

* the request counters Prometheus sees add up to the requests sent;
* each replica's own `riskserve_drift_psi` in Prometheus is the value on its /metrics;
* the fleet-wide PSI rule `riskserve:drift_psi:fleet` equals, for every field, the PSI
  computed here with numpy from the SUM of both replicas' per-bin counters (read from
  their /metrics), and also the PSI of all the rows sent, binned here from the raw
  values against the reference in the model's features.json (the bin rule of
  rust/core/src/drift.rs), the score binned from the probabilities returned;
* the rate rules, the error ratio and the drift alert (pending) work on real series.

Prometheus is started before any traffic, so it sees every counter from 0.
Needs `prometheus` (and promtool for test_rules.py): `make tools` installs both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerHandle, train_model
from prometheus_client.parser import text_string_to_metric_families
from promserver import Prom, http_get, start_prometheus

from riskserve.client import Client, build_request, probabilities
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(60)

MODEL = "fraud"
VERSION = "1"
TRAIN_ROWS, TRAIN_SEED, TRAIN_ROUNDS = 4000, 0, 20
A_ROWS, A_SEED = 3000, 1
B_ROWS, B_SEED, B_AMOUNT_FACTOR = 2000, 2, 10.0
BATCH = 100
SHARE_FLOOR = 1e-4  # rust/core/src/drift.rs SHARE_FLOOR
SCORE = "__score__"

PSI_TOL = 1e-6

Columns = dict[str, Any]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scrape:
    """One replica's drift metrics from its /metrics, bins in exposition order."""

    #: feature -> [(bin label, cumulative count)]
    bins: dict[str, list[tuple[str, float]]]
    #: feature -> [(bin label, reference share)]
    reference: dict[str, list[tuple[str, float]]]
    #: (feature, window) -> PSI
    psi: dict[tuple[str, str], float]


def scrape(metrics_port: int) -> Scrape:
    text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    out = Scrape(bins={}, reference={}, psi={})
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lb = s.labels
            if lb.get("model") != MODEL or lb.get("version") != VERSION:
                continue
            if s.name == "riskserve_drift_bin_observations_total":
                out.bins.setdefault(lb["feature"], []).append((lb["bin"], s.value))
            elif s.name == "riskserve_drift_reference_ratio":
                out.reference.setdefault(lb["feature"], []).append((lb["bin"], s.value))
            elif s.name == "riskserve_drift_psi":
                out.psi[(lb["feature"], lb["window"])] = s.value
    return out


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    """PSI with the server's floor: sum (a - e) ln(a / e), a and e floored at 1e-4."""
    a = np.maximum(counts / counts.sum(), SHARE_FLOOR)
    e = np.maximum(reference, SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_raw(field: dict[str, Any], values: Any) -> np.ndarray:
    """Per-bin counts of raw values under the reference bin rule of drift.rs:
    numeric: bin = searchsorted(edges, x, side="right"), then "missing" for NaN/inf;
    categorical: one bin per reference value, then __unseen__, then __missing__
    (None or empty string)."""
    n_bins = len(field["shares"])
    if field["kind"] == "numeric":
        edges = np.asarray(field["edges"], dtype=np.float64)
        x = np.asarray(values, dtype=np.float64)
        present = np.isfinite(x)
        idx = np.where(
            present, np.searchsorted(edges, np.where(present, x, 0.0), side="right"), len(edges) + 1
        )
    else:
        index = {v: i for i, v in enumerate(field["values"])}
        k = len(field["values"])
        idx = np.array([k + 1 if v is None or v == "" else index.get(v, k) for v in values])
    assert n_bins == (len(field["edges"]) if field["kind"] == "numeric" else k) + 2
    return np.bincount(idx, minlength=n_bins).astype(np.float64)


def batches(columns: Columns, rows: int) -> Iterator[Columns]:
    for lo in range(0, rows, BATCH):
        yield {k: v[lo : lo + BATCH] for k, v in columns.items()}


# --------------------------------------------------------------------------------------
# The fleet: two replicas, Prometheus, traffic
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fleet:
    prom: Prom
    #: Timestamp of a drift rule evaluation that saw both replicas' final counts.
    #: Queries are pinned there: a scrape that fails later (a loaded machine,
    #: timeout 1s) makes that replica's series stale, and rules evaluated then
    #: see one replica only, as they should.
    t_eval: float
    #: instance label ("127.0.0.1:<metrics port>") per replica, A then B
    instances: tuple[str, str]
    metrics_ports: tuple[int, int]
    #: the model's features.json
    spec: dict[str, Any]
    #: raw columns sent to A and to B, in full
    sent: tuple[Columns, Columns]
    #: probabilities returned by A and by B (FP32), in row order
    scores: tuple[np.ndarray, np.ndarray]
    #: requests sent per (instance, code)
    requests: dict[tuple[str, str], int]
    rows: int

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Instant query at t_eval (half a millisecond after: the API's time is
        float seconds, the samples' milliseconds)."""
        return self.prom.query(promql, at=self.t_eval + 0.0005)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerHandle]
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("prom-scrape")
    t0 = time.monotonic()

    data = work / "train.parquet"
    run_datagen(TRAIN_ROWS, TRAIN_SEED, data)
    models = work / "models"
    res = train_model(data, models, TRAIN_ROUNDS, TRAIN_SEED, model=MODEL)
    assert str(res.ref.version) == VERSION
    spec = json.loads((res.ref.path / "features.json").read_text())
    assert spec["reference"] is not None, "training wrote no drift reference"

    servers: list[ServerHandle] = []
    prom: Prom | None = None
    clients: list[Client] = []
    try:
        for _ in range(2):
            servers.append(launch_server(models))
        metrics_ports = [h.metrics_port for h in servers]
        assert all(metrics_ports), [h.log_text() for h in servers]
        instances = tuple(f"127.0.0.1:{p}" for p in metrics_ports)

        # Prometheus, scraping both replicas every second, rules every second.
        prom = start_prometheus(work, {"riskserve": instances})
        # Both scraped once before any traffic: every bin counter is seen at 0.
        prom.wait_up("riskserve", instances)

        # Traffic. A: like the training data. B: another seed, amounts x 10.
        for h in servers:
            clients.append(Client(h.target, timeout=10.0))
        datatypes = clients[0].datatypes(MODEL)
        names = list(datatypes)
        assert names == [i["name"] for i in spec["inputs"]]
        sent_a = columns_of(generate(A_ROWS, A_SEED), names)
        sent_b = columns_of(generate(B_ROWS, B_SEED), names)
        sent_b["amount"] = sent_b["amount"] * B_AMOUNT_FACTOR
        requests: dict[tuple[str, str], int] = {}
        scores: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

        def score(i: int, cols: Columns) -> None:
            resp = clients[i].stub.ModelInfer(build_request(MODEL, cols, datatypes), timeout=10)
            assert resp.model_version == VERSION
            scores[i].append(probabilities(resp).astype(np.float64))
            key = (instances[i], "OK")
            requests[key] = requests.get(key, 0) + 1

        def bad_request(i: int, cols: Columns) -> None:
            """amount as FP32 where the model wants FP64: INVALID_ARGUMENT."""
            req = build_request(MODEL, cols, {**datatypes, "amount": "FP32"})
            with pytest.raises(grpc.RpcError) as err:
                clients[i].stub.ModelInfer(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            key = (instances[i], "INVALID_ARGUMENT")
            requests[key] = requests.get(key, 0) + 1

        a_batches = list(batches(sent_a, A_ROWS))
        b_batches = list(batches(sent_b, B_ROWS))
        # One request each (and one failure), scraped, then the rest: rate() needs
        # the request series (created on first use) seen before they grow.
        score(0, a_batches[0])
        score(1, b_batches[0])
        bad_request(1, b_batches[0])

        def seen_first() -> bool:
            got = {(m["instance"], m["code"]): v for m, v in prom.query("riskserve_requests_total")}
            return got == {k: float(v) for k, v in requests.items()}

        prom.wait_for("the first requests scraped", seen_first)
        for cols in a_batches[1:]:
            score(0, cols)
        for cols in b_batches[1:]:
            score(1, cols)
        bad_request(1, b_batches[-1])
        rows = A_ROWS + B_ROWS

        # Settled: a drift rule evaluation that saw every final count of both
        # replicas (the counts stop moving once the traffic is done).
        t_eval: list[float] = []

        def settled() -> bool:
            now = time.time()
            obs_sel = f'riskserve:drift_observations:fleet{{feature="{SCORE}"}}'
            ts = prom.query(f"timestamp({obs_sel})", at=now)
            if not ts:
                return False
            at = ts[0][1] + 0.0005
            total = prom.query("sum(riskserve_requests_total)", at=at)
            obs = prom.query(obs_sel, at=at)
            alert = prom.query('ALERTS{alertname="RiskserveDriftHigh",feature="amount"}', at=at)
            if (
                total == [({}, float(sum(requests.values())))]
                and obs
                and obs[0][1] == rows
                and alert
            ):
                t_eval.append(ts[0][1])
                return True
            return False

        prom.wait_for("the final counts scraped and the rules evaluated", settled)
        print(f"fleet ready in {time.monotonic() - t0:.1f}s")

        yield Fleet(
            prom=prom,
            t_eval=t_eval[-1],
            instances=(instances[0], instances[1]),
            metrics_ports=(metrics_ports[0], metrics_ports[1]),
            spec=spec,
            sent=(sent_a, sent_b),
            scores=(np.concatenate(scores[0]), np.concatenate(scores[1])),
            requests=requests,
            rows=rows,
        )
    finally:
        for c in clients:
            c.close()
        if prom is not None:
            prom.stop()
        failures = []
        for h in servers:  # stop every replica, then report
            try:
                h.stop_and_check()
            except (AssertionError, pytest.fail.Exception) as e:
                failures.append(e)
        if failures:
            raise failures[0]


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_request_counters_add_up_to_the_requests_sent(fleet: Fleet) -> None:
    q = fleet.query
    assert {m["instance"]: v for m, v in q('up{job="riskserve"}')} == dict.fromkeys(
        fleet.instances, 1.0
    )
    (total,) = q("sum(riskserve_requests_total)")
    assert total[1] == sum(fleet.requests.values()) == A_ROWS // BATCH + B_ROWS // BATCH + 2
    got = {(m["instance"], m["code"]): v for m, v in q("riskserve_requests_total")}
    assert got == {k: float(v) for k, v in fleet.requests.items()}
    assert {m["version"] for m, _ in q("riskserve_requests_total")} == {VERSION}
    (rows,) = q("sum(riskserve_inference_rows_total)")
    assert rows[1] == fleet.rows
    (count,) = q("sum(riskserve_request_duration_seconds_count)")
    assert count[1] == A_ROWS // BATCH + B_ROWS // BATCH  # OK requests only


def test_replica_psi_in_prometheus_is_the_replica_metrics(fleet: Fleet) -> None:
    got = {
        (m["instance"], m["window"]): v
        for m, v in fleet.query(
            f'riskserve_drift_psi{{model="{MODEL}",version="{VERSION}",feature="amount"}}'
        )
    }
    expected = {}
    for inst, port in zip(fleet.instances, fleet.metrics_ports, strict=True):
        s = scrape(port)
        for window in ("cumulative", "sliding"):
            expected[(inst, window)] = s.psi[("amount", window)]
        # The replica's own PSI is its own per-bin counters against the reference.
        counts = np.array([c for _, c in s.bins["amount"]])
        ref = np.array([r for _, r in s.reference["amount"]])
        assert s.psi[("amount", "cumulative")] == pytest.approx(psi(counts, ref), abs=1e-12)
    assert got == expected
    a, b = (got[(inst, "cumulative")] for inst in fleet.instances)
    assert a < 0.1, f"replica A got training-like amounts, PSI {a}"
    assert b > 0.25, f"replica B got amounts x {B_AMOUNT_FACTOR}, PSI {b}"


def test_fleet_psi_is_the_psi_of_the_summed_counters(fleet: Fleet) -> None:
    scrapes = [scrape(p) for p in fleet.metrics_ports]
    fields = list(scrapes[0].bins)
    assert len(fields) == len(fleet.spec["inputs"]) + 1 and fields[-1] == SCORE
    rule = {
        m["feature"]: v
        for m, v in fleet.query(f'riskserve:drift_psi:fleet{{model="{MODEL}",version="{VERSION}"}}')
    }
    assert set(rule) == set(fields)
    for feature in fields:
        labels = [lb for lb, _ in scrapes[0].bins[feature]]
        assert [lb for lb, _ in scrapes[1].bins[feature]] == labels
        counts = sum(np.array([c for _, c in s.bins[feature]]) for s in scrapes)
        assert counts.sum() == fleet.rows, feature
        ref = np.array([r for _, r in scrapes[0].reference[feature]])
        assert [r for _, r in scrapes[1].reference[feature]] == ref.tolist()
        expected = psi(counts, ref)
        assert abs(rule[feature] - expected) <= PSI_TOL, (feature, rule[feature], expected)


def test_fleet_psi_is_the_psi_of_the_raw_traffic(fleet: Fleet) -> None:
    """Independent of the server's counters: bin every value sent with the reference
    in features.json, for both replicas together."""
    reference = fleet.spec["reference"]
    rule = {
        m["feature"]: v
        for m, v in fleet.query(f'riskserve:drift_psi:fleet{{model="{MODEL}",version="{VERSION}"}}')
    }
    scraped = [scrape(p) for p in fleet.metrics_ports]
    sent_a, sent_b = fleet.sent
    fields = [*reference["fields"], reference["score"]]
    for field in fields:
        name = field["name"]
        if name == SCORE:
            # The server bins the FP32 scores it returns (cast to f64).
            values: list[Any] = [*fleet.scores[0], *fleet.scores[1]]
        else:
            a, b = sent_a[name], sent_b[name]
            values = [*a, *b] if isinstance(a, list) else np.concatenate([a, b])
        counts = bin_raw(field, values)
        assert counts.sum() == fleet.rows, name
        # The same rows per bin as the two replicas counted together ...
        served = sum(np.array([c for _, c in s.bins[name]]) for s in scraped)
        assert counts.tolist() == served.tolist(), name
        # ... and so the same PSI as the fleet rule.
        expected = psi(counts, np.asarray(field["shares"]))
        assert abs(rule[name] - expected) <= PSI_TOL, (name, rule[name], expected)
    # amount: B's x10 amounts move a lot of rows into the top bins.
    assert rule["amount"] > 0.25


def test_rate_rules_and_drift_alert_on_real_series(fleet: Fleet) -> None:
    # The drift alert, evaluated with the fleet PSI above.
    alerts = fleet.query('ALERTS{alertname="RiskserveDriftHigh",feature="amount"}')
    assert [(m["alertstate"], m["model"], m["version"], m["severity"]) for m, _ in alerts] == [
        ("pending", MODEL, VERSION, "warning")
    ]
    # Every counter was seen at 0, so the last hour is all the traffic. But with a
    # few seconds of samples, increase() extrapolates each replica's counters to
    # the evaluation time by its own factor (up to ~1.3 here), which reweights the
    # replicas: fleet_1h is not the cumulative value (rules_test.yml checks it
    # exactly), only drifted too.
    ((_, fleet_1h),) = fleet.query(
        f'riskserve:drift_psi:fleet_1h{{model="{MODEL}",version="{VERSION}",feature="amount"}}'
    )
    assert math.isfinite(fleet_1h) and fleet_1h > 0.25

    # The request rules are another group, evaluated at other times: wait for an
    # evaluation that saw the second failed request.
    sel = f'{{model="{MODEL}",version="{VERSION}"}}'
    seen: dict[str, list[float]] = {}

    def request_rules() -> bool:
        for name in (
            "requests:rate1m",
            "request_errors:ratio_rate5m",
            "request_duration_seconds:p95_5m",
            "request_duration_seconds:p99_5m",
        ):
            seen[name] = [v for _, v in fleet.prom.query(f"riskserve:{name}{sel}")]
        rate, ratio, p95, p99 = seen.values()
        return (
            len(rate) == len(ratio) == len(p95) == len(p99) == 1
            and rate[0] > 0
            and 0 < ratio[0] < 1
            and 0 < p95[0] <= p99[0] <= 2.5
        )

    try:
        fleet.prom.wait_for("the request rules", request_rules, timeout=10)
    except pytest.fail.Exception as e:
        pytest.fail(f"{e}\nlast values: {seen}")
