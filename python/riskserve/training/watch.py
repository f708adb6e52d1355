"""`riskserve retrain-watch`: decides when a model is retrained, and runs
`riskserve retrain` as a child process when it is.

A command of its own, not a mode of serve's supervisor: a retrain takes both
cores for minutes, and a process that serves must never lose its cores (or its
memory) to it. In Kubernetes the watcher is its own single-replica Deployment
(one watcher per model: two would retrain twice) and the daily schedule can as
well be a CronJob running `riskserve retrain --trigger schedule`.

Triggers (`decide`, pure: no I/O, the clock is passed in):

* schedule: daily at RISKSERVE_RETRAIN_WATCH_DAILY_AT (UTC);
* drift: the sliding-window PSI of the score, or of one of the model's N most
  important raw inputs, has stayed above the threshold without a break for the
  hold time. The version judged is the newest one whose watched fields have a
  PSI (enough rows): once a retrained version serves, its predecessor's drift is
  no longer a reason. A failed read of /metrics breaks the hold (a restarted
  server starts its windows empty);
* recall: the control variant's realised recall is below a bound, with enough
  fraud labels.

Whatever the trigger, a run starts only when none is running, the previous run
ended at least the minimum interval ago, and the model has the minimum number of
mature labelled predictions. A due schedule blocked by the interval or the label
count is skipped (the next one is tomorrow's); one blocked by a running retrain
waits for it. Drift and recall wait until the gates allow them.

Inputs come from the server's /metrics (riskserve.monitoring.report reads the
drift series; the outcome series are riskserve.feedback.exporter's). The
retrain runs as a child process (`python -m riskserve.cli retrain ... --json`):
its memory (a day's snapshot, LightGBM's) is returned to the system when it
exits, a crash of LightGBM or of the child kills only the child, and it runs at
nice 10 beside anything serving on the same node. Its last stdout line is its
JSON result. Every run is appended to models/<name>/.retrain/runs.jsonl, logged
as one JSON event and counted on the watcher's own /metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import http.client
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from riskserve.config import SecuritySettings, WatchSettings
from riskserve.errors import RiskserveError
from riskserve.monitoring.metrics import serve_metrics
from riskserve.monitoring.report import fetch_metrics, parse_drift
from riskserve.registry import ModelRepository
from riskserve.registry.repository import check_model_name
from riskserve.runtime.child import ChildResult

log = logging.getLogger(__name__)

DAY = 86400.0
#: The drift monitor's name for the score.
SCORE = "__score__"
#: Characters of a failed child's stderr kept in its run record and log event.
STDERR_TAIL = 4000


class Trigger(enum.StrEnum):
    SCHEDULE = "schedule"
    DRIFT = "drift"
    RECALL = "recall"


#: The watcher's triggers, in the order they win when several hold at once:
#: falling recall is the most direct evidence of harm, the schedule the least.
TRIGGERS: tuple[Trigger, ...] = (Trigger.RECALL, Trigger.DRIFT, Trigger.SCHEDULE)
#: How a run ended: a version registered; the gate refused the challenger; the
#: child failed (crashed, printed no JSON result, was stopped); it ran too long.
RESULTS: tuple[str, ...] = ("registered", "rejected", "error", "timeout")


# --------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------

#: A watched field of one version: (version, field).
Field = tuple[int, str]


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one read of the server's /metrics says about the model."""

    #: Mature labelled predictions of the model (every variant but the shadow).
    labelled: int = 0
    #: Watched fields whose sliding PSI is above the threshold now.
    drifting: frozenset[Field] = frozenset()
    #: The control variant ("v1"), None when nothing is served or predicted.
    control: str | None = None
    #: The control's realised recall; None while the server does not report one.
    recall: float | None = None
    #: The control's mature fraud labels.
    fraud_labels: int = 0


@dataclasses.dataclass(frozen=True)
class WatchState:
    """What the watcher remembers between two reads."""

    #: When the next daily run is due (epoch seconds); None without a schedule.
    schedule_due: float | None = None
    #: Since when each drifting field has been drifting without a break.
    drift_since: Mapping[Field, float] = dataclasses.field(default_factory=dict)
    #: The trigger of the run in progress.
    running: Trigger | None = None
    #: When the previous run ended (epoch seconds), whatever its result.
    last_end: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do after one read, and what the watcher's gauges show."""

    #: The run to start now, if any.
    run: Trigger | None
    #: Why it runs, or why nothing runs although a condition holds ("" when none holds).
    reason: str
    #: Whether each trigger's condition holds (a due schedule, a drift held long
    #: enough, a recall below the bound), whether or not a run may start.
    held: Mapping[Trigger, bool]
    #: How long the longest drift has held, seconds (0 when nothing drifts).
    drift_held_seconds: float = 0.0
    #: A due schedule dropped because a gate blocked it.
    skipped: Trigger | None = None


def next_daily(after: float, minute: int) -> float:
    """The first time strictly after `after` (epoch seconds) that is `minute`
    minutes past midnight UTC."""
    day = math.floor(after / DAY) * DAY
    due = day + minute * 60.0
    return due if due > after else due + DAY


def initial_state(settings: WatchSettings, now: float, last_end: float | None) -> WatchState:
    """The state at start; `last_end` is the previous run's end from the run log, so
    a restarted watcher keeps the minimum interval."""
    minute = settings.daily_at_minute
    due = None if minute is None else next_daily(now, minute)
    return WatchState(schedule_due=due, last_end=last_end)


def decide(
    settings: WatchSettings, state: WatchState, obs: Observation | None, now: float
) -> tuple[WatchState, Decision]:
    """The next state and what to do, given one read of /metrics (None: the read
    failed) at time `now`."""
    due = state.schedule_due is not None and now >= state.schedule_due
    held = dict.fromkeys(TRIGGERS, False)
    held[Trigger.SCHEDULE] = due
    if obs is None:
        state = dataclasses.replace(state, drift_since={})
        why = "the server's /metrics cannot be read" if due else ""
        return state, Decision(None, why, held)

    since = {f: state.drift_since.get(f, now) for f in obs.drifting} if settings.drift else {}
    longest_field = min(since, key=lambda f: (since[f], f), default=None)
    drift_held = 0.0 if longest_field is None else now - since[longest_field]
    held[Trigger.DRIFT] = longest_field is not None and drift_held >= settings.drift_hold_seconds
    recall_ok = obs.recall is not None and obs.fraud_labels >= settings.recall_min_fraud_labels
    held[Trigger.RECALL] = (
        settings.recall_below > 0 and recall_ok and (obs.recall or 0.0) < settings.recall_below
    )
    state = dataclasses.replace(state, drift_since=since)
    wanted = [t for t in TRIGGERS if held[t]]
    if not wanted:
        return state, Decision(None, "", held, drift_held)

    trigger = wanted[0]
    if state.running is not None:
        block = f"a {state.running} run is in progress"
        return state, Decision(None, block, held, drift_held)  # a due schedule waits for it
    if state.last_end is not None and now - state.last_end < settings.min_interval_seconds:
        block = (
            f"the previous run ended {now - state.last_end:.0f} s ago, less than the minimum "
            f"interval of {settings.min_interval_seconds:g} s"
        )
    elif obs.labelled < settings.min_labels:
        block = (
            f"{obs.labelled} mature labelled predictions, fewer than the minimum "
            f"{settings.min_labels}"
        )
    else:
        if trigger is Trigger.RECALL:
            why = (
                f"recall {obs.recall:.4f} of {obs.control} is below {settings.recall_below:g} "
                f"({obs.fraud_labels} fraud labels)"
            )
        elif trigger is Trigger.DRIFT:
            assert longest_field is not None
            version, name = longest_field
            why = (
                f"the PSI of {name} (v{version}) has been above the threshold for "
                f"{drift_held:.0f} s (hold {settings.drift_hold_seconds:g} s)"
            )
        else:
            why = f"the daily run at {settings.daily_at} UTC is due"
        return state, Decision(trigger, why, held, drift_held)
    skipped = None
    minute = settings.daily_at_minute
    if due and minute is not None:
        state = dataclasses.replace(state, schedule_due=next_daily(now, minute))
        skipped = Trigger.SCHEDULE
    return state, Decision(None, f"{trigger} held, but {block}", held, drift_held, skipped)


def run_started(
    settings: WatchSettings, state: WatchState, trigger: Trigger, now: float
) -> WatchState:
    """A run started: one at a time, and it takes the place of a due schedule."""
    due = state.schedule_due
    minute = settings.daily_at_minute
    if due is not None and now >= due and minute is not None:
        due = next_daily(now, minute)
    return dataclasses.replace(state, running=trigger, schedule_due=due)


def run_finished(state: WatchState, now: float) -> WatchState:
    """A run ended: the interval starts now, and a drift must hold again for the
    hold time (the new version deserves its own)."""
    since = {f: max(t, now) for f, t in state.drift_since.items()}
    return dataclasses.replace(state, running=None, last_end=now, drift_since=since)


# --------------------------------------------------------------------------------------
# Reading /metrics (pure on its text)
# --------------------------------------------------------------------------------------

#: A version's watched fields (the score and its top inputs); None: every field.
Watched = Callable[[int], frozenset[str] | None]

_ROUTED = re.compile(r"^v([0-9]+)$")
#: The metric families the watcher reads. The rest of a server's page (per-bin drift
#: counts, latency histograms: most of its size) is dropped line by line before the
#: page is parsed, which makes a read several times cheaper.
FAMILIES = frozenset(
    {
        "riskserve_drift_psi",
        "riskserve_drift_alert",
        "riskserve_outcome_recall",
        "riskserve_outcome_fraud_labels",
        "riskserve_outcome_labelled",
        "riskserve_outcome_predictions",
        "riskserve_ab_decision",
    }
)


def wanted_lines(text: str) -> str:
    """The lines of a Prometheus text page (samples, HELP and TYPE) of FAMILIES."""
    keep = []
    for line in text.splitlines():
        name = line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line
        if name.split("{", 1)[0].split(" ", 1)[0] in FAMILIES:
            keep.append(line)
    return "\n".join(keep) + "\n"


def observe(text: str, model: str, watched: Watched, threshold: float) -> Observation:
    """The model's Observation from a /metrics text. `threshold` 0 takes the
    server's own alert (riskserve_drift_alert); above 0, a field drifts when its
    sliding PSI is above it. ValueError when the page is not a riskserve server's."""
    text = wanted_lines(text)
    if "# TYPE riskserve_drift_psi " not in text:  # every riskserve server exports it
        raise ValueError("the page has no riskserve_drift_psi family")
    drift_rows = [f for f in parse_drift(text, "sliding") if f.model == model]
    alerts: dict[Field, float] = {}
    counts: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    control: str | None = None
    wanted = {
        "riskserve_outcome_recall": "recall",
        "riskserve_outcome_fraud_labels": "fraud",
        "riskserve_outcome_labelled": "labelled",
        "riskserve_outcome_predictions": "predictions",
    }
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "riskserve_drift_alert":
                alerts[(int(s.labels["version"]), s.labels["feature"])] = s.value
            elif s.name in wanted:
                group = (s.labels["variant"], int(s.labels["version"]))
                counts[wanted[s.name]][group] = s.value
            elif s.name == "riskserve_ab_decision" and s.labels.get("control"):
                control = s.labels["control"]

    drifting: frozenset[Field] = frozenset()
    for version in sorted({int(f.version) for f in drift_rows}, reverse=True):
        fields = watched(version)
        rows = [
            f
            for f in drift_rows
            if int(f.version) == version and (fields is None or f.feature in fields)
        ]
        if not any(f.psi is not None for f in rows):
            continue  # too few rows for a PSI: judge an older version
        if threshold > 0:
            drifting = frozenset(
                (version, f.feature) for f in rows if f.psi is not None and f.psi > threshold
            )
        else:
            drifting = frozenset(
                (version, f.feature) for f in rows if alerts.get((version, f.feature)) == 1.0
            )
        break

    labelled = int(sum(v for (variant, _), v in counts["labelled"].items() if variant != "shadow"))
    routed = {
        k: v
        for k, v in counts["predictions"].items()
        if (m := _ROUTED.match(k[0])) and int(m[1]) == k[1]
    }
    key: tuple[str, int] | None = None
    if control is not None:
        key = next((k for k in routed if k[0] == control), None)
    if key is None and routed and max(routed.values()) > 0:
        key = min(routed, key=lambda k: (-routed[k], k[1]))
    if key is None:
        return Observation(labelled=labelled, drifting=drifting)
    recall = counts["recall"].get(key)
    return Observation(
        labelled=labelled,
        drifting=drifting,
        control=key[0],
        recall=None if recall is None or math.isnan(recall) else recall,
        fraud_labels=int(counts["fraud"].get(key, 0.0)),
    )


def top_inputs(
    spec: Mapping[str, Any], feature_names: Sequence[str], gains: Sequence[float], n: int
) -> list[str]:
    """The `n` raw inputs of a fitted feature spec with the most gain: each model
    feature's gain goes to every raw input of the transform that wrote it
    (docs/feature-spec.md names a transform's columns `name`, `name__<part>` and
    `name=<value>`); ties by name."""
    outputs: list[tuple[str, list[str]]] = []
    for t in spec.get("transforms", []):
        raw = [t[k] for k in ("input", "numerator", "denominator") if isinstance(t.get(k), str)]
        name = t.get("name") or (raw[0] if raw else None)
        if isinstance(name, str):
            outputs.append((name, raw))
    gain: dict[str, float] = defaultdict(float)
    for feature, g in zip(feature_names, gains, strict=True):
        owners = [
            o for o in outputs if feature == o[0] or feature.startswith((o[0] + "__", o[0] + "="))
        ]
        if owners:
            for raw_input in max(owners, key=lambda o: len(o[0]))[1]:
                gain[raw_input] += float(g)
    ranked = sorted((r for r, g in gain.items() if g > 0), key=lambda r: (-gain[r], r))
    return ranked[:n]


def watched_fields(models_dir: Path, model: str, version: int, n: int) -> frozenset[str]:
    """The score and the `n` raw inputs of a registered version with the most gain
    (its files verified against its manifest)."""
    if n == 0:
        return frozenset({SCORE})
    import lightgbm

    repo = ModelRepository(models_dir)
    manifest, files = repo.read_verified(repo.version(model, version))
    spec = json.loads(files["features.json"])
    booster = lightgbm.Booster(model_str=files["model.txt"].decode())
    gains = [float(g) for g in booster.feature_importance(importance_type="gain")]
    names = manifest.raw.get("feature_names") or booster.feature_name()
    return frozenset({SCORE, *top_inputs(spec, names, gains, n)})


# --------------------------------------------------------------------------------------
# The retrain child
# --------------------------------------------------------------------------------------


def retrain_command(settings: WatchSettings, models_dir: Path, trigger: Trigger) -> list[str]:
    """`riskserve retrain` for this model and trigger, with --json (this interpreter)."""
    cmd = [
        sys.executable, "-m", "riskserve.cli", "retrain",
        "--model", settings.model, "--models", str(models_dir),
        "--trigger", str(trigger), "--json",
    ]  # fmt: skip
    start = settings.start.lower()
    if start != "none":
        cmd += [f"--{start}", f"{settings.percent:g}", "--server", settings.server]
    return cmd + shlex.split(settings.retrain_args)


def last_json(stdout: bytes) -> dict[str, Any] | None:
    """The JSON object on the last non-empty line of a child's stdout, if any."""
    lines = [ln for ln in stdout.decode(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def stderr_tail(text: str, limit: int = STDERR_TAIL) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def result_of(child: ChildResult, stopped: bool = False) -> tuple[str, dict[str, Any] | None, str]:
    """(result, the child's JSON result or None, why) for how a retrain ended. A run
    whose JSON says it registered a version counts as registered whatever came after
    (its canary not started, a stop): the registry has the version."""
    doc = last_json(child.stdout)
    if doc is not None and doc.get("registered") is True:
        why = f"registered version {doc.get('version')}"
        deployment = doc.get("deployment")
        if isinstance(deployment, dict) and deployment.get("error"):
            why += f", but it was not started: {deployment['error']}"
        elif child.returncode != 0:
            why += f", but retrain {child.how()}"
        return "registered", doc, why
    if stopped:
        return "error", doc, f"stopped: the watcher is stopping (retrain {child.how()})"
    if child.timed_out:
        return "timeout", doc, f"retrain {child.how()}"
    if doc is None:
        line = child.stderr_line()
        return "error", None, f"retrain {child.how()} and printed no JSON result: {line}"
    if not doc.get("error"):
        gate = doc.get("gate")
        failures = gate.get("failures") if isinstance(gate, dict) else None
        if failures:
            return "rejected", doc, "the gate refused the challenger: " + "; ".join(failures)
        return "rejected", doc, str(doc.get("reason") or "the gate refused the challenger")
    return "error", doc, f"retrain {child.how()}: {doc['error']}"


class RetrainChild:
    """One `riskserve retrain` process: its own session (so a SIGTERM reaches the
    processes it starts, and a Ctrl-C at a terminal reaches only the watcher),
    niced, its stdout and stderr in temporary files (a pipe nobody reads would
    block it)."""

    def __init__(self, cmd: Sequence[str], timeout: float, nice: int) -> None:
        self.cmd = list(cmd)
        self.timeout = timeout
        # Open as long as the child runs (closed by _result), not one block.
        self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
                start_new_session=True,
            )
        except BaseException:
            self._close()
            raise
        self.pid = self.proc.pid
        try:  # the absolute niceness, never below the watcher's own (that needs privilege)
            own = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, self.pid, max(nice, own))
        except OSError as e:
            log.warning("retrain not niced", extra={"pid": self.pid, "error": str(e)})

    def poll(self, stop_seconds: float) -> ChildResult | None:
        """Its result once it has ended (killed at the timeout), else None."""
        if self.proc.poll() is not None:
            return self._result(self.proc.returncode)
        if time.monotonic() - self._started < self.timeout:
            return None
        self._terminate(stop_seconds)
        return self._result(None)

    def stop(self, stop_seconds: float) -> ChildResult:
        """SIGTERM, `stop_seconds` to exit, then SIGKILL; its result."""
        if self.proc.poll() is None:
            self._terminate(stop_seconds)
        return self._result(self.proc.returncode)

    def _terminate(self, stop_seconds: float) -> None:
        for sig, wait in ((signal.SIGTERM, stop_seconds), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _result(self, returncode: int | None) -> ChildResult:
        self._out.seek(0)
        self._err.seek(0)
        out, err = self._out.read(), self._err.read().decode(errors="replace")
        self._close()
        seconds = time.monotonic() - self._started
        return ChildResult(returncode, out, err, seconds, self.timeout)

    def _close(self) -> None:
        self._out.close()
        self._err.close()


# --------------------------------------------------------------------------------------
# The run log and the watcher's metrics
# --------------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


class RunLog:
    """models/<name>/.retrain/runs.jsonl: one JSON object per run, appended and
    fsynced when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every record; a line that is not one (a torn write at a crash) is skipped."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                rec = json.loads(line)
                _epoch(rec["end"])
            except (ValueError, KeyError, TypeError):
                log.warning("run log line skipped", extra={"path": str(self.path), "line": n})
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


class WatchMetrics:
    """The watcher's own /metrics, in a private registry. Every trigger x result
    series of the run counter exists from the start at 0: a series that was never
    written drops out of a PromQL sum or rate."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "riskserve_retrain_runs",
            "Retrain runs by trigger and result (registered, rejected by the gate, error, "
            "timeout).",
            ["model", "trigger", "result"],
            registry=r,
        )
        for t in TRIGGERS:
            for res in RESULTS:
                self.runs.labels(model, str(t), res)
        one = ["model"]
        self.last_success = Gauge(
            "riskserve_retrain_last_success_timestamp_seconds",
            "End of the last run that registered a version (0: none yet).",
            one,
            registry=r,
        )
        self.last_run = Gauge(
            "riskserve_retrain_last_run_timestamp_seconds",
            "End of the last run, whatever its result (0: none yet).",
            one,
            registry=r,
        )
        self.last_duration = Gauge(
            "riskserve_retrain_last_run_duration_seconds",
            "Wall time of the last run.",
            one,
            registry=r,
        )
        self.last_version = Gauge(
            "riskserve_retrain_last_registered_version",
            "Version the last successful run registered (0: none yet).",
            one,
            registry=r,
        )
        self.running = Gauge(
            "riskserve_retrain_running",
            "1 while a run started by this trigger is in progress.",
            ["model", "trigger"],
            registry=r,
        )
        self.condition = Gauge(
            "riskserve_retrain_condition",
            "1 while a trigger's condition holds (a due schedule, a drift held for the hold "
            "time, recall below the bound), whether or not a run may start.",
            ["model", "trigger"],
            registry=r,
        )
        for t in TRIGGERS:
            self.running.labels(model, str(t))
            self.condition.labels(model, str(t))
        self.drift_held = Gauge(
            "riskserve_retrain_drift_held_seconds",
            "How long the longest drift of a watched field has held without a break.",
            one,
            registry=r,
        )
        self.next_schedule = Gauge(
            "riskserve_retrain_next_schedule_timestamp_seconds",
            "When the next daily run is due (0: no schedule).",
            one,
            registry=r,
        )
        self.labelled = Gauge(
            "riskserve_retrain_labelled_predictions",
            "Mature labelled predictions of the model at the last read (the minimum-label "
            "gate's input).",
            one,
            registry=r,
        )
        self.source_up = Gauge(
            "riskserve_retrain_source_up",
            "1 while the server's /metrics could be read at the last attempt.",
            one,
            registry=r,
        )
        self.reads = Counter(
            "riskserve_retrain_metrics_reads",
            "Reads of the server's /metrics by result (ok, error).",
            ["model", "result"],
            registry=r,
        )
        for res in ("ok", "error"):
            self.reads.labels(model, res)
        for g in (
            self.last_success,
            self.last_run,
            self.last_duration,
            self.last_version,
            self.drift_held,
            self.next_schedule,
            self.labelled,
            self.source_up,
        ):
            g.labels(model)

    def recorded(self, record: Mapping[str, Any], count: bool = True) -> None:
        """A finished run (`count` False: one read back from the run log at start)."""
        m = self.model
        end = _epoch(record["end"])
        if count:
            self.runs.labels(m, record["trigger"], record["result"]).inc()
        self.last_run.labels(m).set(end)
        self.last_duration.labels(m).set(float(record.get("duration_seconds") or 0.0))
        if record["result"] == "registered":
            self.last_success.labels(m).set(end)
            if isinstance(record.get("version"), int):
                self.last_version.labels(m).set(record["version"])

    def decided(self, state: WatchState, d: Decision) -> None:
        m = self.model
        for t in TRIGGERS:
            self.condition.labels(m, str(t)).set(1.0 if d.held[t] else 0.0)
            self.running.labels(m, str(t)).set(1.0 if state.running is t else 0.0)
        self.drift_held.labels(m).set(d.drift_held_seconds)
        self.next_schedule.labels(m).set(state.schedule_due or 0.0)


# --------------------------------------------------------------------------------------
# The watcher
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    trigger: Trigger
    reason: str
    start: float
    child: RetrainChild


class Watcher:
    """Reads /metrics every poll, decides, and runs one retrain at a time.

    `step` is one iteration (it returns how long to wait before the next);
    `run` loops until the stop event is set, then stops a running retrain."""

    def __init__(
        self,
        settings: WatchSettings,
        models_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        command: Callable[[Trigger], list[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self.models_dir = models_dir
        self.clock = clock
        self.command = command or (lambda t: retrain_command(settings, models_dir, t))
        self.runs = RunLog(models_dir / settings.model / ".retrain" / "runs.jsonl")
        self.metrics = WatchMetrics(settings.model)
        records = self.runs.records()
        for rec in records:
            if rec.get("trigger") in {str(t) for t in TRIGGERS} and rec.get("result") in RESULTS:
                self.metrics.recorded(rec, count=False)
        last_end = max((_epoch(r["end"]) for r in records), default=None)
        self.state = initial_state(settings, clock(), last_end)
        self.metrics.next_schedule.labels(self.model).set(self.state.schedule_due or 0.0)
        self.current: _Run | None = None
        self._watched: dict[int, frozenset[str] | None] = {}
        self._failures = 0
        self._said = ""

    # -- one iteration ---------------------------------------------------------------

    def step(self) -> float:
        now = self.clock()
        if self.current is not None:
            result = self.current.child.poll(self.settings.stop_seconds)
            if result is not None:
                self._finish(result, self.clock())
                now = self.clock()
        obs = self._read()
        self.state, d = decide(self.settings, self.state, obs, now)
        if d.skipped is not None:
            log.warning(
                "retrain skipped",
                extra={"model": self.model, "trigger": str(d.skipped), "reason": d.reason},
            )
        if d.run is not None:
            self._start(d.run, d.reason, now)
        elif d.reason != self._said and d.reason:
            log.info("retrain waiting", extra={"model": self.model, "reason": d.reason})
        self._said = d.reason
        self.metrics.decided(self.state, d)
        if obs is None:
            s = self.settings
            return min(s.max_backoff_seconds, s.poll_seconds * 2.0 ** (self._failures - 1))
        return self.settings.poll_seconds

    def _read(self) -> Observation | None:
        s = self.settings
        m = self.metrics
        error = None
        try:
            text = fetch_metrics(s.metrics_url, timeout=max(1.0, min(10.0, 2 * s.poll_seconds)))
        except (OSError, http.client.HTTPException, ValueError) as e:  # unreachable, refused
            error = str(e) or type(e).__name__
        else:
            try:
                obs = observe(text, self.model, self._watched_of, s.drift_threshold)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                error = f"not a riskserve server's /metrics: {type(e).__name__}: {e}"
        if error is not None:
            self._failures += 1
            m.reads.labels(self.model, "error").inc()
            m.source_up.labels(self.model).set(0.0)
            retry = min(s.max_backoff_seconds, s.poll_seconds * 2.0 ** (self._failures - 1))
            log.warning(
                "metrics unavailable",
                extra={
                    "model": self.model,
                    "url": s.metrics_url,
                    "error": error,
                    "failures": self._failures,
                    "retry_in_seconds": retry,
                },
            )
            return None
        if self._failures:
            log.info(
                "metrics available again", extra={"url": s.metrics_url, "failures": self._failures}
            )
        self._failures = 0
        m.reads.labels(self.model, "ok").inc()
        m.source_up.labels(self.model).set(1.0)
        m.labelled.labels(self.model).set(obs.labelled)
        return obs

    def _watched_of(self, version: int) -> frozenset[str] | None:
        if version not in self._watched:
            n = self.settings.drift_top_features
            try:
                fields: frozenset[str] | None = watched_fields(
                    self.models_dir, self.model, version, n
                )
            except Exception as e:  # a version the watcher cannot read: watch every field
                log.warning(
                    "top features unknown: watching every field",
                    extra={"model": self.model, "version": version, "error": str(e)},
                )
                fields = None
            else:
                log.info(
                    "drift watched",
                    extra={"model": self.model, "version": version, "fields": sorted(fields or ())},
                )
            self._watched[version] = fields
        return self._watched[version]

    def _start(self, trigger: Trigger, reason: str, now: float) -> None:
        cmd = self.command(trigger)
        self.state = run_started(self.settings, self.state, trigger, now)
        try:
            child = RetrainChild(cmd, self.settings.timeout_seconds, self.settings.nice)
        except OSError as e:  # counted and logged like any failed run
            failed = ChildResult(127, b"", str(e), 0.0, None)
            end = self.clock()
            self._record(
                trigger, reason, now, end, "error", None, f"retrain not started: {e}", failed
            )
            self.state = run_finished(self.state, end)
            return
        self.current = _Run(trigger, reason, now, child)
        log.info(
            "retrain started",
            extra={
                "model": self.model,
                "trigger": str(trigger),
                "reason": reason,
                "pid": child.pid,
                "command": cmd,
            },
        )

    def _finish(self, result: ChildResult, now: float, stopped: bool = False) -> None:
        run = self.current
        assert run is not None
        self.current = None
        outcome, doc, why = result_of(result, stopped)
        self._record(run.trigger, run.reason, run.start, now, outcome, doc, why, result)
        self.state = run_finished(self.state, now)

    def _record(
        self,
        trigger: Trigger,
        reason: str,
        start: float,
        end: float,
        result: str,
        doc: Mapping[str, Any] | None,
        why: str,
        child: ChildResult,
    ) -> None:
        doc = doc or {}
        record: dict[str, Any] = {
            "model": self.model,
            "trigger": str(trigger),
            "reason": reason,
            "start": _iso(start),
            "end": _iso(end),
            "duration_seconds": round(end - start, 3),
            "result": result,
            "detail": why,
            "exit_code": child.returncode,
            "version": doc.get("version"),
            "parent": doc.get("parent"),
            "snapshot": doc.get("snapshot"),
            "snapshot_sha256": doc.get("snapshot_sha256"),
            "model_sha256": doc.get("model_sha256"),
            "gate": doc.get("gate"),
            "retrain": dict(doc) or None,
        }
        if result in ("error", "timeout"):
            record["stderr_tail"] = stderr_tail(child.stderr)
        try:
            self.runs.append(record)
        except OSError as e:
            log.error("run log not written", extra={"path": str(self.runs.path), "error": str(e)})
        self.metrics.recorded(record)
        extra = {k: v for k, v in record.items() if k != "retrain"}
        if result == "registered":
            log.info("retrain finished", extra=extra)
        else:
            log.warning("retrain finished", extra=extra)

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                stop.wait(self.step())
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stops a running retrain (SIGTERM, then SIGKILL after the stop time) and
        records it."""
        if self.current is not None:
            log.info(
                "stopping the retrain", extra={"model": self.model, "pid": self.current.child.pid}
            )
            result = self.current.child.stop(self.settings.stop_seconds)
            self._finish(result, self.clock(), stopped=True)


def run(watch: WatchSettings, models_dir: Path, security: SecuritySettings) -> int:
    """`riskserve retrain-watch`: serves the watcher's /metrics and watches until
    SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()  # no logging in a signal handler: the handler may interrupt a log call

    try:
        check_model_name(watch.model)
    except RiskserveError as e:
        raise ValueError(f"RISKSERVE_RETRAIN_WATCH_MODEL: {e.message}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    watcher = Watcher(watch, models_dir)
    port = None
    httpd = None
    if watch.metrics_port >= 0:
        httpd = serve_metrics(
            watch.metrics_port, watch.metrics_host, watcher.metrics.registry, security
        )
        port = int(httpd.server_port)
    log.info(
        "watching",
        extra={
            "model": watch.model,
            "metrics_url": watch.metrics_url,
            "metrics_port": port,
            "daily_at": watch.daily_at or None,
            "drift": watch.drift,
            "recall_below": watch.recall_below or None,
            "run_log": str(watcher.runs.path),
        },
    )
    try:
        watcher.run(stop)
    finally:
        if httpd is not None:
            httpd.shutdown()
    log.info("stopped", extra={"model": watch.model, "runs_log": str(watcher.runs.path)})
    return 0


__all__ = [
    "FAMILIES",
    "RESULTS",
    "SCORE",
    "TRIGGERS",
    "Decision",
    "Observation",
    "RetrainChild",
    "RunLog",
    "Trigger",
    "WatchMetrics",
    "WatchState",
    "Watcher",
    "decide",
    "initial_state",
    "next_daily",
    "observe",
    "result_of",
    "retrain_command",
    "run",
    "run_finished",
    "run_started",
    "top_inputs",
    "wanted_lines",
    "watched_fields",
]
