"""`riskserve retrain-watch` (riskserve.training.watch): the pure decision (each
trigger, the drift hold, the minimum interval and label count, one run at a time,
the schedule across midnight), reading /metrics text, the top inputs of a really
trained model, the watcher's own metrics, the run log, and real child processes
standing in for `riskserve retrain` (a registered run, a refused gate, a crash, no
JSON, a timeout, a stop), against a real HTTP /metrics endpoint or none at all."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FRAUD_SPEC, run_cli, train_model
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from riskserve.cli import build_parser, watch_settings_from_args
from riskserve.config import Settings, WatchSettings
from riskserve.runtime.child import ChildResult
from riskserve.training.watch import (
    RESULTS,
    SCORE,
    TRIGGERS,
    Observation,
    RunLog,
    Trigger,
    Watcher,
    WatchMetrics,
    decide,
    initial_state,
    next_daily,
    observe,
    result_of,
    retrain_command,
    run_finished,
    run_started,
    top_inputs,
    wanted_lines,
    watched_fields,
)

pytestmark = pytest.mark.timeout(120)

MODEL = "fraud"
#: 2024-03-10 00:00:00 UTC.
MIDNIGHT = dt.datetime(2024, 3, 10, tzinfo=dt.UTC).timestamp()
T0 = MIDNIGHT + 12 * 3600.0
#: Long enough for a real child to start and end (a guard against a hang, not a timing).
CHILD_DEADLINE = 60.0


def policy(**kw: Any) -> WatchSettings:
    """Settings for the pure tests: every gate open unless a test closes it."""
    base: dict[str, Any] = {
        "drift_hold_seconds": 600.0,
        "min_interval_seconds": 3600.0,
        "min_labels": 100,
        "recall_below": 0.0,
    }
    return WatchSettings(**{**base, **kw})


def drifting(*fields: str, version: int = 1, labelled: int = 1000) -> Observation:
    return Observation(labelled=labelled, drifting=frozenset((version, f) for f in fields))


QUIET = Observation(labelled=1000)


# -- the decision: drift ----------------------------------------------------------------


def test_nothing_holds_nothing_runs() -> None:
    s = policy()
    state, d = decide(s, initial_state(s, T0, None), QUIET, T0)
    assert d.run is None and d.reason == "" and not any(d.held.values())
    assert state.drift_since == {}


def test_drift_triggers_once_it_has_held_for_the_hold_time() -> None:
    s = policy(drift_hold_seconds=600)
    state = initial_state(s, T0, None)
    state, d = decide(s, state, drifting(SCORE), T0)
    assert d.run is None and not d.held[Trigger.DRIFT] and d.drift_held_seconds == 0
    state, d = decide(s, state, drifting(SCORE, "amount"), T0 + 300)
    assert d.run is None and d.drift_held_seconds == 300
    state, d = decide(s, state, drifting(SCORE), T0 + 599.9)
    assert d.run is None
    state, d = decide(s, state, drifting(SCORE), T0 + 600)
    assert d.run is Trigger.DRIFT and d.held[Trigger.DRIFT]
    assert "__score__ (v1)" in d.reason and "600 s" in d.reason


def test_a_break_in_the_drift_restarts_the_hold() -> None:
    s = policy(drift_hold_seconds=600)
    state = initial_state(s, T0, None)
    state, _ = decide(s, state, drifting("amount"), T0)
    state, _ = decide(s, state, QUIET, T0 + 300)  # fell back below the threshold once
    state, d = decide(s, state, drifting("amount"), T0 + 310)
    state, d = decide(s, state, drifting("amount"), T0 + 700)
    assert d.run is None and d.drift_held_seconds == pytest.approx(390)
    state, d = decide(s, state, drifting("amount"), T0 + 910)
    assert d.run is Trigger.DRIFT


def test_fields_taking_turns_do_not_add_up_to_a_hold() -> None:
    s = policy(drift_hold_seconds=600)
    state = initial_state(s, T0, None)
    for i in range(12):  # amount, then the score, then amount ... every 100 s
        field = "amount" if i % 2 == 0 else SCORE
        state, d = decide(s, state, drifting(field), T0 + 100 * i)
        assert d.run is None, i


def test_a_failed_read_breaks_the_hold_and_a_new_version_starts_its_own() -> None:
    s = policy(drift_hold_seconds=600)
    state = initial_state(s, T0, None)
    state, _ = decide(s, state, drifting(SCORE), T0)
    state, d = decide(s, state, None, T0 + 400)
    assert d.run is None and state.drift_since == {}
    state, _ = decide(s, state, drifting(SCORE), T0 + 500)
    state, d = decide(s, state, drifting(SCORE, version=2), T0 + 1200)
    assert d.run is None and d.drift_held_seconds == 0  # v2's score is another field


def test_drift_off_never_triggers() -> None:
    s = policy(drift=False, drift_hold_seconds=0)
    _, d = decide(s, initial_state(s, T0, None), drifting(SCORE), T0)
    assert d.run is None and not d.held[Trigger.DRIFT]


# -- the decision: recall -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("recall", "fraud", "bound", "runs"),
    [
        (0.40, 60, 0.5, True),
        (0.50, 60, 0.5, False),  # not below
        (0.40, 49, 0.5, False),  # too few fraud labels to believe it
        (None, 500, 0.5, False),  # the server reports no recall
        (0.40, 60, 0.0, False),  # the trigger is off
    ],
)
def test_recall_below_the_bound_with_enough_fraud_labels(
    recall: float | None, fraud: int, bound: float, runs: bool
) -> None:
    s = policy(recall_below=bound, recall_min_fraud_labels=50)
    obs = Observation(labelled=5000, control="v1", recall=recall, fraud_labels=fraud)
    _, d = decide(s, initial_state(s, T0, None), obs, T0)
    assert (d.run is Trigger.RECALL) is runs
    if runs:
        assert d.reason == "recall 0.4000 of v1 is below 0.5 (60 fraud labels)"


def test_recall_wins_over_drift_and_schedule_and_takes_the_schedule_s_place() -> None:
    s = policy(recall_below=0.5, recall_min_fraud_labels=1, drift_hold_seconds=0, daily_at="12:00")
    state = initial_state(s, T0 - 60, None)
    obs = Observation(
        labelled=5000, drifting=frozenset({(1, SCORE)}), control="v1", recall=0.1, fraud_labels=9
    )
    state, d = decide(s, state, obs, T0)
    assert d.run is Trigger.RECALL
    assert d.held == {Trigger.RECALL: True, Trigger.DRIFT: True, Trigger.SCHEDULE: True}
    state = run_started(s, state, Trigger.RECALL, T0)
    assert state.schedule_due == T0 + 86400  # today's schedule is done


# -- the decision: gates ------------------------------------------------------------------


def test_one_run_at_a_time() -> None:
    s = policy(drift_hold_seconds=0)
    state = run_started(s, initial_state(s, T0, None), Trigger.DRIFT, T0)
    state, d = decide(s, state, drifting(SCORE), T0 + 5)
    assert d.run is None and d.held[Trigger.DRIFT]
    assert d.reason == "a drift run is in progress"


def test_the_minimum_interval_counts_from_the_previous_run_s_end() -> None:
    s = policy(drift_hold_seconds=0, min_interval_seconds=3600)
    state = run_started(s, initial_state(s, T0, None), Trigger.DRIFT, T0)
    state = run_finished(state, T0 + 500)
    state, d = decide(s, state, drifting(SCORE), T0 + 4099)
    assert d.run is None and d.held[Trigger.DRIFT]
    assert "ended 3599 s ago, less than the minimum interval of 3600 s" in d.reason
    state, d = decide(s, state, drifting(SCORE), T0 + 4100)
    assert d.run is Trigger.DRIFT


def test_a_restarted_watcher_keeps_the_interval_from_its_run_log() -> None:
    s = policy(drift_hold_seconds=0, min_interval_seconds=3600)
    state = initial_state(s, T0, last_end=T0 - 60)
    _, d = decide(s, state, drifting(SCORE), T0)
    assert d.run is None and "minimum interval" in d.reason


def test_the_drift_hold_starts_again_after_a_run() -> None:
    s = policy(drift_hold_seconds=600, min_interval_seconds=0)
    state = initial_state(s, T0, None)
    state, _ = decide(s, state, drifting(SCORE), T0)
    state, d = decide(s, state, drifting(SCORE), T0 + 600)
    assert d.run is Trigger.DRIFT
    state = run_finished(run_started(s, state, Trigger.DRIFT, T0 + 600), T0 + 900)
    state, d = decide(s, state, drifting(SCORE), T0 + 1000)
    assert d.run is None and d.drift_held_seconds == 100
    state, d = decide(s, state, drifting(SCORE), T0 + 1500)
    assert d.run is Trigger.DRIFT


def test_too_few_labels_block_every_trigger() -> None:
    s = policy(drift_hold_seconds=0, min_labels=100)
    state = initial_state(s, T0, None)
    state, d = decide(s, state, drifting(SCORE, labelled=99), T0)
    assert d.run is None
    assert d.reason == "drift held, but 99 mature labelled predictions, fewer than the minimum 100"
    state, d = decide(s, state, drifting(SCORE, labelled=100), T0 + 5)
    assert d.run is Trigger.DRIFT


# -- the decision: the schedule ----------------------------------------------------------


def test_next_daily_across_midnight() -> None:
    assert next_daily(MIDNIGHT - 600, 10) == MIDNIGHT + 600  # 23:50 → 00:10 the next day
    assert next_daily(MIDNIGHT - 600, 23 * 60 + 55) == MIDNIGHT - 300  # 23:50 → 23:55 today
    assert next_daily(MIDNIGHT + 600, 10) == MIDNIGHT + 600 + 86400  # exactly due: tomorrow
    assert next_daily(MIDNIGHT, 0) == MIDNIGHT + 86400


def test_the_schedule_runs_daily_across_midnight() -> None:
    s = policy(daily_at="00:10", min_interval_seconds=0)
    start = MIDNIGHT - 600  # 23:50 the day before
    state = initial_state(s, start, None)
    assert state.schedule_due == MIDNIGHT + 600
    state, d = decide(s, state, QUIET, MIDNIGHT + 300)
    assert d.run is None and not d.held[Trigger.SCHEDULE]
    state, d = decide(s, state, QUIET, MIDNIGHT + 605)
    assert d.run is Trigger.SCHEDULE and d.reason == "the daily run at 00:10 UTC is due"
    state = run_started(s, state, Trigger.SCHEDULE, MIDNIGHT + 605)
    assert state.schedule_due == MIDNIGHT + 86400 + 600
    state = run_finished(state, MIDNIGHT + 1800)
    state, d = decide(s, state, QUIET, MIDNIGHT + 86400 - 60)  # 23:59
    assert d.run is None
    state, d = decide(s, state, QUIET, MIDNIGHT + 86400 + 600)
    assert d.run is Trigger.SCHEDULE


def test_a_due_schedule_waits_for_a_running_retrain() -> None:
    s = policy(daily_at="12:00", min_interval_seconds=0)
    state = initial_state(s, T0 - 60, None)
    state = run_started(s, state, Trigger.DRIFT, T0 - 30)
    state, d = decide(s, state, QUIET, T0 + 10)
    assert d.run is None and d.held[Trigger.SCHEDULE] and d.skipped is None
    state = run_finished(state, T0 + 100)
    state, d = decide(s, state, QUIET, T0 + 105)
    assert d.run is Trigger.SCHEDULE


@pytest.mark.parametrize("gate", ["interval", "labels"])
def test_a_due_schedule_blocked_by_a_gate_is_skipped_until_tomorrow(gate: str) -> None:
    s = policy(daily_at="12:00", min_interval_seconds=3600, min_labels=100)
    last_end = T0 - 60 if gate == "interval" else None
    state = initial_state(s, T0 - 120, last_end)
    obs = Observation(labelled=10 if gate == "labels" else 1000)
    state, d = decide(s, state, obs, T0 + 1)
    assert d.run is None and d.skipped is Trigger.SCHEDULE
    assert d.reason.startswith("schedule held, but ")
    assert state.schedule_due == T0 + 86400
    state, d = decide(s, state, QUIET, T0 + 7200)  # the gates are open again: not today
    assert d.run is None and not d.held[Trigger.SCHEDULE]


def test_a_due_schedule_survives_an_unreadable_metrics_endpoint() -> None:
    s = policy(daily_at="12:00", min_interval_seconds=0)
    state = initial_state(s, T0 - 60, None)
    state, d = decide(s, state, None, T0 + 1)
    assert d.run is None and d.reason == "the server's /metrics cannot be read"
    state, d = decide(s, state, QUIET, T0 + 40)
    assert d.run is Trigger.SCHEDULE


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["24:00", "2:00", "02:60", "0200", "noon", " 02:00"])
def test_a_bad_daily_time_is_refused_naming_its_variable(text: str) -> None:
    with pytest.raises(ValueError, match=r"^RISKSERVE_RETRAIN_WATCH_DAILY_AT must be HH:MM in UTC"):
        Settings.load(env={"RISKSERVE_RETRAIN_WATCH_DAILY_AT": text})


def test_daily_at_minute() -> None:
    assert WatchSettings(daily_at="02:30").daily_at_minute == 150
    assert WatchSettings(daily_at="23:59").daily_at_minute == 1439
    assert WatchSettings().daily_at_minute is None


def test_bad_retrain_args_are_refused_naming_their_variable() -> None:
    with pytest.raises(ValueError, match=r"^RISKSERVE_RETRAIN_WATCH_RETRAIN_ARGS must be shell"):
        WatchSettings(retrain_args='--window "30d')


def test_retrain_watch_flags_override_the_environment() -> None:
    argv = ["retrain-watch", "--daily-at", "03:15", "--no-drift", "--models", "/m"]
    argv += ["--metrics-port", "0", "--percent", "5"]
    a = build_parser().parse_args(argv)
    env = {"RISKSERVE_RETRAIN_WATCH_DAILY_AT": "01:00", "RISKSERVE_RETRAIN_WATCH_MIN_LABELS": "7"}
    s = watch_settings_from_args(a, env=env)
    assert s.watch.daily_at == "03:15" and not s.watch.drift
    assert s.watch.min_labels == 7 and s.watch.metrics_port == 0 and s.watch.percent == 5.0
    assert s.server.models_dir == Path("/m")
    assert s.server.metrics_port == 8002  # serve's own port is not the watcher's


def test_the_retrain_command() -> None:
    s = WatchSettings(model="m1", server="srv:9001", retrain_args="--maturity 0d --window '30d'")
    cmd = retrain_command(s, Path("/models"), Trigger.DRIFT)
    assert cmd[:4] == [sys.executable, "-m", "riskserve.cli", "retrain"]
    assert cmd[4:] == [
        "--model", "m1", "--models", "/models", "--trigger", "drift", "--json",
        "--canary", "10", "--server", "srv:9001", "--maturity", "0d", "--window", "30d",
    ]  # fmt: skip
    shadow = retrain_command(
        WatchSettings(start="shadow", percent=2.5), Path("m"), Trigger.SCHEDULE
    )
    assert shadow[-4:] == ["--shadow", "2.5", "--server", "localhost:8001"]
    assert "--server" not in retrain_command(WatchSettings(start="none"), Path("m"), Trigger.RECALL)


# -- reading /metrics -----------------------------------------------------------------------


def exposition(
    psi: dict[tuple[int, str], float | None] | None = None,
    outcomes: list[tuple[str, int, float, int, int, int]] | None = None,
    control: str | None = None,
    model: str = MODEL,
    threshold: float = 0.25,
) -> str:
    """Prometheus text as a server exports it: sliding PSI and alerts per (version,
    field), outcomes per (variant, version): recall, fraud, labelled, predictions."""
    out = ["# TYPE riskserve_drift_psi gauge", "# TYPE riskserve_drift_alert gauge"]
    for (version, feature), value in (psi or {}).items():
        labels = f'model="{model}",version="{version}",feature="{feature}"'
        if value is not None:
            out.append(f'riskserve_drift_psi{{{labels},window="sliding"}} {value}')
            out.append(f'riskserve_drift_psi{{{labels},window="cumulative"}} 0.0')
        high = value is not None and value > threshold
        out.append(f"riskserve_drift_alert{{{labels}}} {1.0 if high else 0.0}")
    names = ("recall", "fraud_labels", "labelled", "predictions")
    for i, name in enumerate(names):
        out.append(f"# TYPE riskserve_outcome_{name} gauge")
        for variant, version, *values in outcomes or []:
            labels = f'model="{model}",version="{version}",variant="{variant}"'
            out.append(f"riskserve_outcome_{name}{{{labels}}} {values[i]}")
    out.append("# TYPE riskserve_ab_decision gauge")
    if control is not None:
        labels = f'model="{model}",control="{control}",challenger="v2",decision="better"'
        out.append(f"riskserve_ab_decision{{{labels}}} 1.0")
    return "\n".join(out) + "\n"


def every_field(_version: int) -> frozenset[str] | None:
    return None


def test_observe_takes_the_server_s_alert_or_a_threshold_of_its_own() -> None:
    text = exposition({(1, SCORE): 0.4, (1, "amount"): 0.2, (1, "channel"): 0.01})
    assert observe(text, MODEL, every_field, 0.0).drifting == {(1, SCORE)}
    assert observe(text, MODEL, every_field, 0.1).drifting == {(1, SCORE), (1, "amount")}
    only_amount = observe(text, MODEL, lambda v: frozenset({"amount"}), 0.1)
    assert only_amount.drifting == {(1, "amount")}
    assert observe(text, "other", every_field, 0.0) == Observation()


def test_observe_reads_only_its_families_of_a_full_page() -> None:
    text = exposition({(1, SCORE): 0.4}, [("v1", 1, 0.62, 80, 4000, 9000)])
    noise = (
        "# HELP riskserve_drift_bin_observations_total Rows per reference bin.\n"
        "# TYPE riskserve_drift_bin_observations_total counter\n"
        'riskserve_drift_bin_observations_total{model="fraud",version="1",feature="a",bin="0"} 5\n'
        "# TYPE riskserve_request_duration_seconds histogram\n"
        'riskserve_request_duration_seconds_bucket{model="fraud",le="0.005"} 3.0\n'
        'riskserve_request_duration_seconds_count{model="fraud"} 3.0\n'
        "# HELP riskserve_drift_psi_extra Not ours.\n"
        'riskserve_drift_psi_extra{model="fraud"} 9.0\n'
    )
    full = noise + text + noise
    assert wanted_lines(full).splitlines() == text.splitlines()
    assert observe(full, MODEL, every_field, 0.0) == observe(text, MODEL, every_field, 0.0)
    assert observe(full, MODEL, every_field, 0.0).drifting == {(1, SCORE)}


def test_observe_judges_the_newest_version_with_a_psi() -> None:
    psi: dict[tuple[int, str], float | None] = {(1, SCORE): 0.9, (2, SCORE): None}
    assert observe(exposition(psi), MODEL, every_field, 0.0).drifting == {(1, SCORE)}
    psi[(2, SCORE)] = 0.05  # v2 has traffic enough now, and does not drift
    assert observe(exposition(psi), MODEL, every_field, 0.0).drifting == frozenset()


def test_observe_reads_the_control_s_recall_and_the_label_count() -> None:
    outcomes = [
        ("v1", 1, 0.62, 80, 4000, 9000),
        ("v2", 2, 0.90, 10, 500, 1000),
        ("shadow", 3, 0.95, 90, 4500, 9000),  # the same requests again: not counted
        ("explicit", 1, 0.5, 1, 20, 40),
    ]
    obs = observe(exposition(outcomes=outcomes), MODEL, every_field, 0.0)
    assert obs == Observation(labelled=4520, control="v1", recall=0.62, fraud_labels=80)
    named = observe(exposition(outcomes=outcomes, control="v2"), MODEL, every_field, 0.0)
    assert (named.control, named.recall, named.fraud_labels) == ("v2", 0.9, 10)


def test_observe_without_a_reported_recall() -> None:
    outcomes = [("v1", 1, math.nan, 3, 50, 100), ("v2", 2, math.nan, 0, 0, 0)]
    obs = observe(exposition(outcomes=outcomes), MODEL, every_field, 0.0)
    assert obs == Observation(labelled=50, control="v1", recall=None, fraud_labels=3)
    nothing = observe(exposition(outcomes=[("v1", 1, math.nan, 0, 0, 0)]), MODEL, every_field, 0)
    assert nothing.control is None and nothing.recall is None


# -- the top inputs -------------------------------------------------------------------------


def test_top_inputs_follow_the_spec_s_column_names() -> None:
    spec = {
        "transforms": [
            {"type": "numeric", "input": "amount"},
            {"type": "numeric", "input": "amount", "name": "amount_decile"},
            {"type": "ratio", "numerator": "amount", "denominator": "avg", "name": "amount_to_avg"},
            {"type": "cyclical", "input": "hour"},
            {"type": "one_hot", "input": "channel"},
        ]
    }
    names = [
        "amount", "amount__missing", "amount_decile", "amount_to_avg",
        "hour__sin", "hour__cos", "channel=pos", "channel=__unseen__", "unknown",
    ]  # fmt: skip
    gains = [1.0, 0.5, 0.5, 3.0, 2.0, 2.5, 1.0, 0.0, 99.0]
    # amount 1 + 0.5 + 0.5 + 3, avg 3, hour 4.5, channel 1; "unknown" belongs to none.
    assert top_inputs(spec, names, gains, 10) == ["amount", "hour", "avg", "channel"]
    assert top_inputs(spec, names, gains, 2) == ["amount", "hour"]
    assert top_inputs(spec, names, [0.0] * len(names), 3) == []


def test_the_top_inputs_of_a_trained_model(tmp_path: Path) -> None:
    from riskserve.training.datagen import run_datagen

    data = tmp_path / "d.parquet"
    run_datagen(3000, 5, data)
    res = train_model(data, tmp_path / "models", rounds=15, seed=1)
    spec = json.loads(FRAUD_SPEC.read_text())
    raw = {i["name"] for i in spec["inputs"]}
    got = watched_fields(tmp_path / "models", MODEL, res.ref.version, 4)
    assert SCORE in got and len(got) == 5 and got - {SCORE} <= raw
    assert watched_fields(tmp_path / "models", MODEL, res.ref.version, 0) == {SCORE}


# -- the watcher's metrics and the run log -----------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_run_series_exists_from_the_start() -> None:
    m = WatchMetrics(MODEL)
    got = samples(generate_latest(m.registry).decode())
    for t in TRIGGERS:
        for r in RESULTS:
            key = (
                "riskserve_retrain_runs_total",
                (("model", MODEL), ("result", r), ("trigger", str(t))),
            )
            assert got[key] == 0.0, key
        assert got[("riskserve_retrain_condition", (("model", MODEL), ("trigger", str(t))))] == 0
    assert got[("riskserve_retrain_last_success_timestamp_seconds", (("model", MODEL),))] == 0.0
    assert got[("riskserve_retrain_source_up", (("model", MODEL),))] == 0.0
    assert len([k for k in got if k[0] == "riskserve_retrain_runs_total"]) == 12


def test_the_run_log_skips_a_torn_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "fraud" / ".retrain" / "runs.jsonl")
    assert log.records() == []
    log.append({"trigger": "drift", "end": "2024-03-10T12:00:00.000+00:00", "result": "error"})
    with log.path.open("a") as f:
        f.write('{"trigger": "drift", "end": "2024-03')  # a crash mid-write
    assert [r["trigger"] for r in log.records()] == ["drift"]


def test_result_of_each_ending() -> None:
    def child(rc: int | None, out: str, err: str = "") -> ChildResult:
        return ChildResult(rc, out.encode(), err, 1.0, 60.0)

    ok = '{"registered": true, "version": 2}'
    assert result_of(child(0, "progress\n" + ok + "\n"))[0] == "registered"
    gate = '{"registered": false, "version": null, "reason": "auc dropped by 0.04"}'
    assert result_of(child(1, gate)) == ("rejected", json.loads(gate), "auc dropped by 0.04")
    failed = '{"registered": false, "error": "no labels in the window"}'
    res, _, why = result_of(child(2, failed))
    assert res == "error" and why == "retrain exited with status 2: no labels in the window"
    res, doc, why = result_of(child(-6, "", "loading\nfatal: bad file\n"))
    assert (res, doc) == ("error", None)
    assert why == "retrain was killed by SIGABRT and printed no JSON result: fatal: bad file"
    assert result_of(child(0, "not json"))[0] == "error"
    # A version registered, then its canary could not be started: it is in the registry.
    started = '{"registered": true, "version": 2, "deployment": {"error": "UNAVAILABLE"}}'
    res, _, why = result_of(child(1, started))
    assert res == "registered"
    assert why == "registered version 2, but it was not started: UNAVAILABLE"
    refused = '{"registered": false, "gate": {"passed": false, "failures": ["auc 0.8 vs 0.9"]}}'
    assert result_of(child(3, refused))[2] == "the gate refused the challenger: auc 0.8 vs 0.9"
    assert result_of(child(None, ""))[0] == "timeout"
    assert result_of(child(-15, ""), stopped=True)[0] == "error"
    assert result_of(child(-15, ok), stopped=True)[0] == "registered"  # done just before


# -- the watcher with real children and a real /metrics endpoint -----------------------------------


class MetricsEndpoint:
    """A real HTTP /metrics endpoint serving `text` (a test sets it)."""

    def __init__(self) -> None:
        self.text = ""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint() -> Iterator[MetricsEndpoint]:
    e = MetricsEndpoint()
    e.text = exposition({(1, SCORE): 0.9}, [("v1", 1, 0.8, 40, 500, 1000)])
    yield e
    e.close()


def script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def watcher(tmp_path: Path, url: str, code: str, clock: Any = time.time, **kw: Any) -> Watcher:
    settings = WatchSettings(
        metrics_url=url,
        poll_seconds=0.05,
        drift_hold_seconds=0,
        drift_top_features=0,
        min_labels=0,
        min_interval_seconds=3600,
        **kw,
    )
    return Watcher(settings, tmp_path, clock=clock, command=lambda t: script(code))


def until_finished(w: Watcher) -> None:
    deadline = time.monotonic() + CHILD_DEADLINE
    w.step()
    assert w.current is not None, "the watcher started no run"
    while w.current is not None:
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.05)
        w.step()


def scrape(w: Watcher) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(w.metrics.registry).decode())


def runs(w: Watcher, trigger: str, result: str) -> float:
    key = (("model", MODEL), ("result", result), ("trigger", trigger))
    return scrape(w)[("riskserve_retrain_runs_total", key)]


REGISTERS = """
import json, os, sys
print("training ...", file=sys.stderr)
print("some progress on stdout")
print(json.dumps({"registered": True, "version": 2, "parent": 1, "snapshot": "s.parquet",
    "snapshot_sha256": "ab" * 32, "model_sha256": "cd" * 32,
    "gate": {"auc": [0.91, 0.93]}, "nice": os.nice(0), "argv": sys.argv[1:]}))
"""


def test_a_registered_run_is_logged_counted_and_niced(
    tmp_path: Path, endpoint: MetricsEndpoint
) -> None:
    w = watcher(tmp_path, endpoint.url, REGISTERS)
    until_finished(w)
    (rec,) = w.runs.records()
    assert w.runs.path == tmp_path / MODEL / ".retrain" / "runs.jsonl"
    assert rec["trigger"] == "drift" and rec["result"] == "registered"
    assert rec["reason"].startswith("the PSI of __score__ (v1) has been above the threshold")
    assert (rec["version"], rec["parent"], rec["snapshot"]) == (2, 1, "s.parquet")
    assert (rec["snapshot_sha256"], rec["model_sha256"]) == ("ab" * 32, "cd" * 32)
    assert rec["gate"] == {"auc": [0.91, 0.93]} and rec["exit_code"] == 0
    assert "stderr_tail" not in rec
    start, end = (dt.datetime.fromisoformat(rec[k]) for k in ("start", "end"))
    assert start <= end and rec["duration_seconds"] >= 0
    assert rec["retrain"]["nice"] == max(10, os.getpriority(os.PRIO_PROCESS, 0))
    got = scrape(w)
    assert runs(w, "drift", "registered") == 1
    assert sum(v for k, v in got.items() if k[0] == "riskserve_retrain_runs_total") == 1
    one = (("model", MODEL),)
    assert got[("riskserve_retrain_last_success_timestamp_seconds", one)] == end.timestamp()
    assert got[("riskserve_retrain_last_registered_version", one)] == 2
    assert got[("riskserve_retrain_source_up", one)] == 1
    assert got[("riskserve_retrain_labelled_predictions", one)] == 500

    # Still drifting, but within the minimum interval: nothing more runs.
    w.step()
    assert w.current is None and len(w.runs.records()) == 1
    got = scrape(w)
    assert got[("riskserve_retrain_condition", (("model", MODEL), ("trigger", "drift")))] == 1

    # A restarted watcher reads its run log: the last success, and the interval.
    again = watcher(tmp_path, endpoint.url, REGISTERS)
    assert scrape(again)[("riskserve_retrain_last_success_timestamp_seconds", one)] == (
        end.timestamp()
    )
    again.step()
    assert again.current is None


def test_a_refused_gate_counts_as_rejected(tmp_path: Path, endpoint: MetricsEndpoint) -> None:
    code = "import json; print(json.dumps({'registered': False, 'version': None})); exit(3)"
    w = watcher(tmp_path, endpoint.url, code)
    until_finished(w)
    (rec,) = w.runs.records()
    assert (rec["result"], rec["exit_code"], rec["version"]) == ("rejected", 3, None)
    assert runs(w, "drift", "rejected") == 1 and runs(w, "drift", "registered") == 0
    assert scrape(w)[("riskserve_retrain_last_success_timestamp_seconds", (("model", MODEL),))] == 0


@pytest.mark.parametrize(
    ("code", "how"),
    [
        ("import os, sys; sys.stderr.write('loading\\nfatal: boom\\n'); sys.stderr.flush(); "
         "os.abort()", "was killed by SIGABRT"),
        ("print('done, no JSON here'); import sys; sys.stderr.write('Traceback: boom')",
         "exited with status 0"),
        ("raise SystemExit('boom')", "exited with status 1"),
    ],
)  # fmt: skip
def test_a_child_that_crashes_or_prints_no_json_is_an_error(
    tmp_path: Path, endpoint: MetricsEndpoint, code: str, how: str
) -> None:
    w = watcher(tmp_path, endpoint.url, code)
    until_finished(w)
    (rec,) = w.runs.records()
    assert rec["result"] == "error"
    assert rec["detail"].startswith(f"retrain {how} and printed no JSON result")
    assert "boom" in rec["stderr_tail"] and "boom" in rec["detail"]
    assert runs(w, "drift", "error") == 1


def test_a_child_that_cannot_start_is_an_error(tmp_path: Path, endpoint: MetricsEndpoint) -> None:
    w = watcher(tmp_path, endpoint.url, "")
    w.command = lambda t: [str(tmp_path / "no-such-program")]
    w.step()
    assert w.current is None
    (rec,) = w.runs.records()
    assert rec["result"] == "error" and rec["detail"].startswith("retrain not started: ")
    assert runs(w, "drift", "error") == 1


def test_a_child_past_its_timeout_is_killed(tmp_path: Path, endpoint: MetricsEndpoint) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    w = watcher(tmp_path, endpoint.url, code, timeout_seconds=0.5, stop_seconds=0.2)
    until_finished(w)
    (rec,) = w.runs.records()
    assert rec["result"] == "timeout" and "did not finish within 0.5 s" in rec["detail"]
    assert runs(w, "drift", "timeout") == 1


def test_stopping_the_watcher_stops_its_child(tmp_path: Path, endpoint: MetricsEndpoint) -> None:
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    w = watcher(tmp_path, endpoint.url, code)
    w.step()
    assert w.current is not None
    proc = w.current.child.proc
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    stop.set()
    t.join(CHILD_DEADLINE)
    assert not t.is_alive()
    assert proc.returncode == -signal.SIGTERM
    (rec,) = w.runs.records()
    assert rec["result"] == "error" and rec["detail"].startswith("stopped: the watcher is stopping")


def test_an_unreachable_endpoint_is_retried_with_back_off(tmp_path: Path) -> None:
    e = MetricsEndpoint()
    url = e.url
    e.close()  # nothing listens there now
    w = watcher(tmp_path, url, REGISTERS, max_backoff_seconds=0.3)
    delays = [w.step() for _ in range(5)]
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])
    assert w.current is None and w.runs.records() == []
    got = scrape(w)
    assert (
        got[("riskserve_retrain_metrics_reads_total", (("model", MODEL), ("result", "error")))] == 5
    )
    assert got[("riskserve_retrain_source_up", (("model", MODEL),))] == 0


@pytest.mark.parametrize(
    "page",
    [
        "<html>this is not /metrics</html>\n",
        'riskserve_drift_alert{model="fraud",version="latest",feature="amount"} 1.0\n',
        'riskserve_outcome_labelled{model="fraud",version="1"} 10.0\n',  # no variant
    ],
)
def test_a_page_that_is_not_a_servers_metrics_is_a_failed_read(tmp_path: Path, page: str) -> None:
    e = MetricsEndpoint()
    try:
        e.text = page
        w = watcher(tmp_path, e.url, REGISTERS)
        assert w.step() == 0.05 and w.current is None
        got = scrape(w)
        key = ("riskserve_retrain_metrics_reads_total", (("model", MODEL), ("result", "error")))
        assert got[key] == 1
    finally:
        e.close()


# -- the command ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_command_serves_its_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSERVE_")}
    cmd = [
        sys.executable, "-m", "riskserve.cli", "retrain-watch", "--models", str(tmp_path),
        "--metrics-url", "http://127.0.0.1:9/metrics", "--metrics-host", "127.0.0.1",
        "--metrics-port", "0", "--poll-seconds", "0.1", "--daily-at", "02:00",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        events: list[dict[str, Any]] = []
        for line in proc.stderr:
            events.append(json.loads(line))
            if events[-1]["event"] == "metrics unavailable":
                break
        (watching,) = [e for e in events if e["event"] == "watching"]
        assert watching["daily_at"] == "02:00" and watching["model"] == MODEL
        url = f"http://127.0.0.1:{watching['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            got = samples(r.read().decode())
        key = (("model", MODEL), ("result", "registered"), ("trigger", "schedule"))
        assert got[("riskserve_retrain_runs_total", key)] == 0
        assert got[("riskserve_retrain_next_schedule_timestamp_seconds", (("model", MODEL),))] > 0
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
    assert [json.loads(ln)["event"] for ln in rest.splitlines()][-1:] == ["stopped"]


@pytest.mark.e2e
def test_the_command_refuses_a_bad_model_name(tmp_path: Path) -> None:
    r = run_cli("retrain-watch", "--models", str(tmp_path), "--model", "../etc", timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("riskserve retrain-watch: RISKSERVE_RETRAIN_WATCH_MODEL: model name")
    assert "Traceback" not in r.stderr
