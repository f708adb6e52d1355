"""Settings (riskserve.config): the environment variables riskserve has always
read, typed parsing, overrides, validation of every setting with errors that
name the variable, one `serve` flag per setting, and docs/settings.md generated
from the code."""

from __future__ import annotations

import argparse
import dataclasses
import math
import runpy
from pathlib import Path
from typing import Any

import pytest

from riskserve.cli import build_parser, serve_settings, settings_from_args
from riskserve.config import (
    COMMAND_GROUPS,
    SETTINGS,
    BatchingSettings,
    CanarySettings,
    DriftSettings,
    ScoringSettings,
    ServerSettings,
    SettingInfo,
    Settings,
    command_flag,
    markdown,
    setting,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "settings.md"

#: Every variable riskserve reads and where it lands. Deploy manifests, scripts and
#: operators use these names: they must never change.
ENV_NAMES = {
    "RISKSERVE_MODELS_DIR": "server.models_dir",
    "RISKSERVE_HOST": "server.host",
    "RISKSERVE_PORT": "server.port",
    "RISKSERVE_WORKERS": "server.workers",
    "RISKSERVE_MAX_MESSAGE_BYTES": "server.max_message_bytes",
    "RISKSERVE_MAX_PENDING_CALLS": "server.max_pending_calls",
    "RISKSERVE_GRACE_SECONDS": "server.grace_seconds",
    "RISKSERVE_DRAIN_SECONDS": "server.drain_seconds",
    "RISKSERVE_LOG_LEVEL": "server.log_level",
    "RISKSERVE_RUST_REQUEST_PARSER": "server.rust_request_parser",
    "RISKSERVE_METRICS_HOST": "server.metrics_host",
    "RISKSERVE_METRICS_PORT": "server.metrics_port",
    "RISKSERVE_COMPUTE_THREADS": "scoring.compute_threads",
    "RISKSERVE_ONNX_THREADS": "scoring.onnx_threads",
    "RISKSERVE_MAX_INFLIGHT": "scoring.max_inflight",
    "RISKSERVE_MAX_REQUEST_ROWS": "scoring.max_request_rows",
    "RISKSERVE_SHADOW_MAX_PENDING": "scoring.shadow_max_pending",
    "RISKSERVE_NATIVE_PATH": "scoring.native_path",
    "RISKSERVE_NATIVE_MAX_ROWS": "scoring.native_max_rows",
    "RISKSERVE_SHED_TARGET_SECONDS": "scoring.shed_target_seconds",
    "RISKSERVE_SHED_INTERVAL_SECONDS": "scoring.shed_interval_seconds",
    "RISKSERVE_MAX_NAME_BYTES": "limits.max_name_bytes",
    "RISKSERVE_MAX_ROUTING_KEY_BYTES": "limits.max_routing_key_bytes",
    "RISKSERVE_MAX_PARAMETERS": "limits.max_parameters",
    "RISKSERVE_MAX_PARAMETER_BYTES": "limits.max_parameter_bytes",
    "RISKSERVE_MAX_INPUTS": "limits.max_inputs",
    "RISKSERVE_MAX_REASON_BYTES": "limits.max_reason_bytes",
    "RISKSERVE_MAX_BATCH_SIZE": "batching.max_batch_size",
    "RISKSERVE_MAX_BATCH_DELAY": "batching.max_batch_delay",
    "RISKSERVE_INLINE_ROWS": "batching.inline_rows",
    "RISKSERVE_DRIFT_ENABLED": "drift.enabled",
    "RISKSERVE_DRIFT_BINS": "drift.bins",
    "RISKSERVE_DRIFT_THRESHOLD": "drift.threshold",
    "RISKSERVE_DRIFT_SLOTS": "drift.slots",
    "RISKSERVE_DRIFT_SLOT_SECONDS": "drift.slot_seconds",
    "RISKSERVE_DRIFT_CHECK_SECONDS": "drift.check_seconds",
    "RISKSERVE_CANARY_GUARD": "canary.enabled",
    "RISKSERVE_CANARY_MIN_REQUESTS": "canary.min_requests",
    "RISKSERVE_CANARY_MAX_ERROR_RATIO": "canary.max_error_ratio",
    "RISKSERVE_CANARY_MAX_P95_RATIO": "canary.max_p95_ratio",
    "RISKSERVE_CANARY_P95_SLACK_SECONDS": "canary.p95_slack_seconds",
    "RISKSERVE_CANARY_MAX_SCORE_PSI": "canary.max_score_psi",
    "RISKSERVE_CANARY_CHECK_SECONDS": "canary.check_seconds",
    "RISKSERVE_ADMIN_TOKEN": "admin.token",
    "RISKSERVE_ADMIN_TOKEN_FILE": "admin.token_file",
    "RISKSERVE_STATE_POLL_SECONDS": "admin.state_poll_seconds",
    "RISKSERVE_LIGHTGBM_COMPILE": "compile.lightgbm",
    "RISKSERVE_TLS_CERT_FILE": "security.tls_cert_file",
    "RISKSERVE_TLS_KEY_FILE": "security.tls_key_file",
    "RISKSERVE_TLS_CLIENT_CA_FILE": "security.tls_client_ca_file",
    "RISKSERVE_METRICS_TLS": "security.metrics_tls",
    "RISKSERVE_REFLECTION": "security.reflection",
    "RISKSERVE_PRINCIPALS_FILE": "security.principals_file",
    "RISKSERVE_TRUSTED_KEYS_FILE": "security.trusted_keys_file",
    "RISKSERVE_COMPILE_CACHE_DIR": "compile.cache_dir",
    "RISKSERVE_PREDICTION_LOG": "feedback.log",
    "RISKSERVE_FEEDBACK_DSN": "feedback.dsn",
    "RISKSERVE_PREDICTION_LOG_QUEUE_ROWS": "feedback.queue_rows",
    "RISKSERVE_PREDICTION_LOG_BATCH_ROWS": "feedback.batch_rows",
    "RISKSERVE_PREDICTION_LOG_FLUSH_SECONDS": "feedback.flush_seconds",
    "RISKSERVE_FEEDBACK_RETENTION_DAYS": "feedback.retention_days",
    "RISKSERVE_FEEDBACK_PENDING_DAYS": "feedback.pending_days",
    "RISKSERVE_ROUTING_KEY_HASH_FILE": "feedback.hash_key_file",
    "RISKSERVE_FEEDBACK_TOKEN": "feedback.token",
    "RISKSERVE_FEEDBACK_TOKEN_FILE": "feedback.token_file",
    "RISKSERVE_OUTCOME_MATURITY_SECONDS": "feedback.maturity_seconds",
    "RISKSERVE_OUTCOME_WINDOW_SECONDS": "feedback.window_seconds",
    "RISKSERVE_OUTCOME_MIN_LABELS": "feedback.min_labels",
    "RISKSERVE_OUTCOME_REFRESH_SECONDS": "feedback.outcomes_seconds",
    "RISKSERVE_RETRAIN_MAX_AUC_DROP": "retrain.max_auc_drop",
    "RISKSERVE_RETRAIN_MAX_RECALL_DROP": "retrain.max_recall_drop",
    "RISKSERVE_RETRAIN_MAX_PRECISION_DROP": "retrain.max_precision_drop",
    "RISKSERVE_RETRAIN_MAX_AMOUNT_RECALL_DROP": "retrain.max_amount_recall_drop",
    "RISKSERVE_RETRAIN_HOLDOUT_SHARE": "retrain.holdout_share",
    "RISKSERVE_RETRAIN_MIN_HOLDOUT_FRAUD": "retrain.min_holdout_fraud",
    "RISKSERVE_RETRAIN_ROUNDS": "retrain.rounds",
    "RISKSERVE_RETRAIN_UNLABELLED": "retrain.unlabelled",
    "RISKSERVE_RETRAIN_SNAPSHOT_DIR": "retrain.snapshot_dir",
    "RISKSERVE_MLFLOW_TRACKING_URI": "retrain.mlflow_tracking_uri",
    "RISKSERVE_MLFLOW_EXPERIMENT": "retrain.mlflow_experiment",
    "RISKSERVE_RETRAIN_WATCH_MODEL": "watch.model",
    "RISKSERVE_RETRAIN_WATCH_METRICS_URL": "watch.metrics_url",
    "RISKSERVE_RETRAIN_WATCH_POLL_SECONDS": "watch.poll_seconds",
    "RISKSERVE_RETRAIN_WATCH_MAX_BACKOFF_SECONDS": "watch.max_backoff_seconds",
    "RISKSERVE_RETRAIN_WATCH_DAILY_AT": "watch.daily_at",
    "RISKSERVE_RETRAIN_WATCH_DRIFT": "watch.drift",
    "RISKSERVE_RETRAIN_WATCH_DRIFT_HOLD_SECONDS": "watch.drift_hold_seconds",
    "RISKSERVE_RETRAIN_WATCH_DRIFT_TOP_FEATURES": "watch.drift_top_features",
    "RISKSERVE_RETRAIN_WATCH_DRIFT_THRESHOLD": "watch.drift_threshold",
    "RISKSERVE_RETRAIN_WATCH_RECALL_BELOW": "watch.recall_below",
    "RISKSERVE_RETRAIN_WATCH_RECALL_MIN_FRAUD_LABELS": "watch.recall_min_fraud_labels",
    "RISKSERVE_RETRAIN_WATCH_MIN_LABELS": "watch.min_labels",
    "RISKSERVE_RETRAIN_WATCH_MIN_INTERVAL_SECONDS": "watch.min_interval_seconds",
    "RISKSERVE_RETRAIN_WATCH_TIMEOUT_SECONDS": "watch.timeout_seconds",
    "RISKSERVE_RETRAIN_WATCH_STOP_SECONDS": "watch.stop_seconds",
    "RISKSERVE_RETRAIN_WATCH_NICE": "watch.nice",
    "RISKSERVE_RETRAIN_WATCH_START": "watch.start",
    "RISKSERVE_RETRAIN_WATCH_PERCENT": "watch.percent",
    "RISKSERVE_RETRAIN_WATCH_SERVER": "watch.server",
    "RISKSERVE_RETRAIN_WATCH_RETRAIN_ARGS": "watch.retrain_args",
    "RISKSERVE_RETRAIN_WATCH_METRICS_HOST": "watch.metrics_host",
    "RISKSERVE_RETRAIN_WATCH_METRICS_PORT": "watch.metrics_port",
}

#: The flags `serve` had before every setting got one; scripts and manifests use them.
OLD_FLAGS = {
    "--models": "models_dir",
    "--host": "host",
    "--port": "port",
    "--workers": "workers",
    "--compute-threads": "compute_threads",
    "--onnx-threads": "onnx_threads",
    "--log-level": "log_level",
    "--metrics-port": "metrics_port",
}


def ids(s: SettingInfo) -> str:
    return s.env


def read(settings: Settings, s: SettingInfo) -> Any:
    return getattr(getattr(settings, s.group), s.name)


#: Text settings with a format of their own: a valid value that is not the default.
OTHER_TEXT = {"retrain_watch_daily_at": "02:30"}


def other_value(s: SettingInfo) -> Any:
    """A valid value that is not the default."""
    if s.key in OTHER_TEXT:
        return OTHER_TEXT[s.key]
    if s.kind is bool:
        return not s.default
    if s.choices is not None:
        return next(c for c in s.choices if c != s.default)
    if s.kind is Path:
        return Path("/srv/riskserve") / s.name
    if s.kind is str:
        return f"other-{s.name}"
    up = s.default + (1 if s.kind is int else 0.5)
    if s.at_most is not None and up > s.at_most:
        return (s.default + s.at_least) / 2 if s.kind is float else s.default - 1
    return up


def env_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def bad_values(s: SettingInfo) -> list[Any]:
    """Values of the right type that the setting must refuse."""
    step = 1 if s.kind is int else 0.5
    out: list[Any] = []
    if s.at_least is not None:
        out.append(s.at_least - step)
    if s.above is not None:
        out += [s.above, s.above - step]
    if s.at_most is not None:
        out.append(s.at_most + step)
    if s.choices is not None:
        out.append("loud")
    if s.kind is float:
        out.append(math.nan)
    return out


CONSTRAINED = [s for s in SETTINGS if bad_values(s)]


# -- names and shape ---------------------------------------------------------------


def test_every_variable_riskserve_ever_read_keeps_its_name() -> None:
    assert {s.env: f"{s.group}.{s.name}" for s in SETTINGS} == ENV_NAMES


def test_settings_hold_one_frozen_group_per_concern() -> None:
    s = Settings()
    groups = {f.name: type(getattr(s, f.name)).__name__ for f in dataclasses.fields(s)}
    assert groups == {
        "server": "ServerSettings",
        "scoring": "ScoringSettings",
        "limits": "LimitsSettings",
        "batching": "BatchingSettings",
        "drift": "DriftSettings",
        "canary": "CanarySettings",
        "admin": "AdminSettings",
        "compile": "CompileSettings",
        "security": "SecuritySettings",
        "feedback": "FeedbackSettings",
        "retrain": "RetrainSettings",
        "watch": "WatchSettings",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.canary = CanarySettings()  # type: ignore[misc]


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s == Settings()
    assert (s.server.port, s.server.metrics_port, s.server.models_dir) == (
        8001,
        8002,
        Path("models"),
    )
    assert s.canary.enabled and s.canary.min_requests == 200
    assert s.drift.enabled and s.drift.slots == 60
    assert s.compile.cache_dir == Path("~/.cache/riskserve/compiled")
    assert not s.compile.lightgbm and s.admin.token == ""


def test_every_setting_has_a_meaning() -> None:
    for s in SETTINGS:
        assert s.meaning.strip() and "\n" not in s.meaning, s.env


# -- environment -----------------------------------------------------------------------


#: Settings that are only valid with others set (their group checks them together).
COMPANIONS = {
    "tls_cert_file": {"tls_key_file": "k.pem"},
    "tls_key_file": {"tls_cert_file": "c.pem"},
    "tls_client_ca_file": {"tls_cert_file": "c.pem", "tls_key_file": "k.pem"},
    "metrics_tls": {"tls_cert_file": "c.pem", "tls_key_file": "k.pem"},
}


@pytest.mark.parametrize("s", SETTINGS, ids=ids)
def test_every_setting_is_read_from_its_variable(s: SettingInfo) -> None:
    value = other_value(s)
    companions = COMPANIONS.get(s.key, {})
    env = {f"RISKSERVE_{k.upper()}": v for k, v in companions.items()}
    loaded = Settings.load(env={**env, s.env: env_text(value)})
    assert read(loaded, s) == value
    assert type(read(loaded, s)) is type(value)
    # Nothing else moved.
    assert loaded.replace(**{s.key: s.default}, **dict.fromkeys(companions, "")) == Settings()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("1", True), ("true", True), ("YES", True), (" on ", True)],
        *[("0", False), ("false", False), ("No", False), ("off", False)],
    ],
)
def test_booleans_take_the_usual_words(text: str, value: bool) -> None:
    assert Settings.load(env={"RISKSERVE_CANARY_GUARD": text}).canary.enabled is value


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind in (int, float, bool)], ids=ids)
def test_an_unparsable_value_names_its_variable(s: SettingInfo) -> None:
    with pytest.raises(ValueError, match=f"^{s.env}='twelve': "):
        Settings.load(env={s.env: "twelve"})


def test_unrelated_variables_are_ignored() -> None:
    env = {"RISKSERVE_NO_SUCH_THING": "1", "PORT": "1", "riskserve_port": "1"}
    assert Settings.load(env=env) == Settings()


# -- overrides -------------------------------------------------------------------------


def test_overrides_win_over_the_environment_and_none_is_no_override() -> None:
    env = {"RISKSERVE_PORT": "9001", "RISKSERVE_CANARY_MIN_REQUESTS": "7"}
    s = Settings.load({"port": 9100, "canary_min_requests": None}, env=env)
    assert s.server.port == 9100
    assert s.canary.min_requests == 7


def test_overrides_are_keyed_by_the_variable_name_without_prefix() -> None:
    for s in SETTINGS:
        assert s.key == s.env.removeprefix("RISKSERVE_").lower()
        assert setting(s.key) is s
    s = Settings.of(port=0, canary_min_requests=5, drift_enabled=False, lightgbm_compile=True)
    assert s.server.port == 0 and s.canary.min_requests == 5
    assert not s.drift.enabled and s.compile.lightgbm
    assert s.value("canary_min_requests") == 5


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting 'min_requests'"):
        Settings.of(min_requests=5)
    with pytest.raises(ValueError, match="unknown setting 'prot'"):
        Settings.load({"prot": 1}, env={})


def test_replace_changes_only_what_it_names() -> None:
    base = Settings.of(workers=3)
    s = base.replace(port=7000, metrics_port=-1)
    assert (s.server.port, s.server.metrics_port, s.server.workers) == (7000, -1, 3)
    assert s.canary is base.canary and s.scoring is base.scoring
    assert base.server.port == 8001


def test_groups_can_be_built_and_passed_directly() -> None:
    s = Settings(server=ServerSettings(port=0), canary=CanarySettings(min_requests=5))
    assert s.server.port == 0 and s.canary.min_requests == 5
    assert s.scoring == ScoringSettings() and s.batching == BatchingSettings()


def test_slots_or_off() -> None:
    assert DriftSettings(slots=12).slots_or_off == 12
    assert DriftSettings(slots=12, enabled=False).slots_or_off == 0


# -- validation ------------------------------------------------------------------------


def test_every_numeric_setting_has_a_range() -> None:
    unbounded = [
        s.env for s in SETTINGS if s.kind in (int, float) and s.at_least is None and s.above is None
    ]
    assert unbounded == []


@pytest.mark.parametrize("s", CONSTRAINED, ids=ids)
def test_every_bad_value_is_refused_naming_its_variable(s: SettingInfo) -> None:
    for bad in bad_values(s):
        with pytest.raises(ValueError, match=f"^{s.env} must be .*, got "):
            Settings.of(**{s.key: bad})
        # The same from the environment, and from a group built directly.
        with pytest.raises(ValueError, match=f"^{s.env} must be "):
            Settings.load(env={s.env: env_text(bad)})
        group = type(getattr(Settings(), s.group))
        with pytest.raises(ValueError, match=f"^{s.env} must be "):
            group(**{s.name: bad})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "canary_max_error_ratio",
            2.0,
            "RISKSERVE_CANARY_MAX_ERROR_RATIO must be in 0..1, got 2.0",
        ),
        ("canary_max_error_ratio", -0.1, "RISKSERVE_CANARY_MAX_ERROR_RATIO must be in 0..1"),
        ("canary_max_p95_ratio", 0.0, "RISKSERVE_CANARY_MAX_P95_RATIO must be > 0, got 0.0"),
        ("canary_p95_slack_seconds", -1.0, "RISKSERVE_CANARY_P95_SLACK_SECONDS must be >= 0"),
        ("grace_seconds", -1.0, "RISKSERVE_GRACE_SECONDS must be >= 0, got -1.0"),
        ("max_batch_delay", -0.001, "RISKSERVE_MAX_BATCH_DELAY must be >= 0"),
        ("metrics_port", -2, "RISKSERVE_METRICS_PORT must be in -1..65535, got -2"),
        ("metrics_port", 65536, "RISKSERVE_METRICS_PORT must be in -1..65535, got 65536"),
        ("port", -1, "RISKSERVE_PORT must be in 0..65535, got -1"),
        ("workers", 0, "RISKSERVE_WORKERS must be >= 1, got 0"),
        ("drift_threshold", 0.0, "RISKSERVE_DRIFT_THRESHOLD must be > 0"),
        ("state_poll_seconds", -0.2, "RISKSERVE_STATE_POLL_SECONDS must be >= 0"),
        ("inline_rows", -1, "RISKSERVE_INLINE_ROWS must be >= 0, got -1"),
        ("log_level", "loud", "RISKSERVE_LOG_LEVEL must be one of debug, info, warning"),
        ("port", "8001", "RISKSERVE_PORT must be of type int, got '8001'"),
        ("port", True, "RISKSERVE_PORT must be of type int, got True"),
        ("models_dir", "models", "RISKSERVE_MODELS_DIR must be of type Path"),
        ("canary_guard", 1, "RISKSERVE_CANARY_GUARD must be of type bool, got 1"),
    ],
)
def test_validation_messages(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        Settings.of(**{key: value})
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize(
    "values",
    [
        {"metrics_port": -1},
        {"metrics_port": 0, "port": 0},
        {"port": 65535, "metrics_port": 65535},
        {"canary_max_error_ratio": 0.0},
        {"canary_max_error_ratio": 1.0},
        {"grace_seconds": 0.0, "max_batch_delay": 0.0, "state_poll_seconds": 0.0},
        {"inline_rows": 0, "max_pending_calls": 0, "shadow_max_pending": 0},
        {"log_level": "DEBUG"},
        {"max_batch_delay": 0},  # an int where a float goes
    ],
)
def test_edge_values_are_accepted(values: dict[str, Any]) -> None:
    s = Settings.of(**values)
    for key, value in values.items():
        assert s.value(key) == value


# -- CLI -------------------------------------------------------------------------------


def serve_args(*argv: str) -> Any:
    return build_parser().parse_args(["serve", *argv])


def test_every_serving_setting_has_a_serve_flag() -> None:
    argv: list[str] = []
    expected = {}
    for s in serve_settings():
        value = other_value(s)
        expected[s.key] = value
        if s.kind is bool:
            argv.append(s.flag if value else f"--no-{s.flag.removeprefix('--')}")
        else:
            argv += [s.flag, str(value)]
    got = settings_from_args(serve_args(*argv), env={})
    for s in serve_settings():
        assert read(got, s) == expected[s.key], s.flag


def test_retrain_and_watch_settings_are_flags_of_their_commands_not_of_serve() -> None:
    offline = [s for s in SETTINGS if s.group in COMMAND_GROUPS]
    assert {s.group for s in offline} == set(COMMAND_GROUPS)
    serve = vars(serve_args())
    commands = next(
        a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    for s in offline:
        assert s.flag.removeprefix("--").replace("-", "_") not in serve, s.flag
        command, flag = command_flag(s)
        options = {o for a in commands[command]._actions for o in a.option_strings}
        assert flag in options, (command, flag)


def test_the_old_flags_keep_their_names() -> None:
    a = serve_args(
        "--models", "/m", "--host", "127.0.0.1", "--port", "9000", "--workers", "2",
        "--compute-threads", "3", "--onnx-threads", "4", "--log-level", "debug",
        "--metrics-port", "9100",
    )  # fmt: skip
    assert a.models == "/m"
    s = settings_from_args(a, env={})
    got = {flag: s.value(key) for flag, key in OLD_FLAGS.items()}
    assert got == {
        "--models": Path("/m"),
        "--host": "127.0.0.1",
        "--port": 9000,
        "--workers": 2,
        "--compute-threads": 3,
        "--onnx-threads": 4,
        "--log-level": "debug",
        "--metrics-port": 9100,
    }
    for flag, key in OLD_FLAGS.items():
        assert setting(key).flag == flag


def test_flags_override_the_environment_and_absent_flags_do_not() -> None:
    env = {"RISKSERVE_PORT": "9001", "RISKSERVE_CANARY_GUARD": "false", "RISKSERVE_WORKERS": "2"}
    s = settings_from_args(serve_args("--port", "9002", "--canary-guard"), env=env)
    assert s.server.port == 9002 and s.canary.enabled
    assert s.server.workers == 2
    assert settings_from_args(serve_args(), env=env) == Settings.load(env=env)


def test_port_zero_frees_the_metrics_port_too_unless_it_is_given() -> None:
    assert settings_from_args(serve_args("--port", "0"), env={}).server.metrics_port == 0
    given = serve_args("--port", "0", "--metrics-port", "-1")
    assert settings_from_args(given, env={}).server.metrics_port == -1
    assert settings_from_args(serve_args(), env={}).server.metrics_port == 8002


def test_a_bad_flag_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^RISKSERVE_CANARY_MAX_ERROR_RATIO must be in 0\.\.1"):
        settings_from_args(serve_args("--canary-max-error-ratio", "2"), env={})


# -- docs ------------------------------------------------------------------------------


def test_docs_settings_md_is_what_the_code_generates() -> None:
    assert DOC.read_text() == markdown(), (
        "docs/settings.md is stale: run `python scripts/gen_settings_doc.py`"
    )
    script = runpy.run_path(str(ROOT / "scripts" / "gen_settings_doc.py"), run_name="gen")
    assert script["DOC"] == DOC
    assert script["main"](["--check"]) == 0


def test_docs_list_every_variable_flag_and_default() -> None:
    text = markdown()
    for s in SETTINGS:
        (row,) = [line for line in text.splitlines() if f"| `{s.env}` |" in line]
        command, flag = command_flag(s)
        assert f"`{flag}`" in row
        assert (f"| {command} `{flag}`" in row) == (command != "serve")
        assert s.meaning in row
        default = env_text(s.default) if s.default != "" else '""'
        assert f"`{default}`" in row


@pytest.mark.parametrize(
    "values,message",
    [
        ({"tls_cert_file": "c.pem"}, "RISKSERVE_TLS_CERT_FILE and RISKSERVE_TLS_KEY_FILE"),
        ({"tls_key_file": "k.pem"}, "must be set together"),
        ({"tls_client_ca_file": "ca.pem"}, "need RISKSERVE_TLS_CERT_FILE"),
        ({"metrics_tls": True}, "need RISKSERVE_TLS_CERT_FILE"),
    ],
)
def test_tls_settings_come_in_pairs(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.of(**values)
    ok = Settings.of(**{"tls_cert_file": "c.pem", "tls_key_file": "k.pem", **values})
    assert ok.security.tls
