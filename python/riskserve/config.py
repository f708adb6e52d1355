"""Settings: typed groups, one per concern, read from RISKSERVE_* environment
variables with CLI flags overriding. Built once in the composition root
(riskserve.server), which hands each part only its group.

Every field records its environment variable, its meaning and its allowed
range in the field's metadata; validation, `riskserve serve`'s flags and
docs/settings.md (scripts/gen_settings_doc.py) are all derived from that."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "RISKSERVE_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

T = TypeVar("T")


def _setting(
    default: T,
    env: str,
    meaning: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
) -> T:
    """A settings field: its default, RISKSERVE_`env`, a one-line meaning, the
    allowed values, and the `serve` flag when it is not --<env-in-kebab-case>."""
    metadata = {
        "env": ENV_PREFIX + env,
        "meaning": meaning,
        "at_least": at_least,
        "above": above,
        "at_most": at_most,
        "choices": choices,
        "flag": flag,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class _Group:
    """Validates a group when it is built: an invalid group never exists."""

    def __post_init__(self) -> None:
        for s in _OF_CLASS[type(self)]:
            _check(s, getattr(self, s.name))


@dataclasses.dataclass(frozen=True)
class ServerSettings(_Group):
    """The process: gRPC listener, drain, logs, the /metrics listener."""

    models_dir: Path = _setting(  # noqa: RUF009 (a Path is immutable)
        Path("models"), "MODELS_DIR", "Models folder (the registry) to serve.", flag="--models"
    )
    host: str = _setting("0.0.0.0", "HOST", "Address the gRPC server binds.")
    port: int = _setting(8001, "PORT", "gRPC port; 0 picks a free port.", at_least=0, at_most=65535)
    workers: int = _setting(
        1,
        "WORKERS",
        "Server processes sharing the port (SO_REUSEPORT); 1 = a single process.",
        at_least=1,
    )
    max_message_bytes: int = _setting(
        64 * 1024 * 1024, "MAX_MESSAGE_BYTES", "Largest gRPC message accepted, bytes.", at_least=1
    )
    #: Under overload calls queue in gRPC core in arrival order; once that queue
    #: is longer than the clients' deadlines, every call is past its deadline when
    #: it is picked up and goodput collapses (bench/README.md, overload). A bound
    #: makes core refuse the excess at once instead.
    max_pending_calls: int = _setting(
        0,
        "MAX_PENDING_CALLS",
        "Calls gRPC core may hold that this process has not picked up yet: beyond half of "
        "it core refuses new calls at random, beyond it all of them (CANCELLED). Set it to "
        "about deadline x req/s per worker when clients send deadlines; a limit below the "
        "largest burst a healthy client sends refuses calls the server could have served, "
        "so 0 keeps gRPC's own limits.",
        at_least=0,
    )
    #: 0 by default: a bare process has no load balancer to wait for (calls in flight
    #: are finished whatever this is), and tests and `make serve` stop at once.
    drain_seconds: float = _setting(
        0.0,
        "DRAIN_SECONDS",
        "On SIGTERM or SIGINT, seconds to keep serving normally with health NOT_SERVING "
        "(and ServerReady false) so load balancers stop sending, before new calls are "
        "refused and in-flight ones get RISKSERVE_GRACE_SECONDS to finish. Set it to how "
        "long your balancer takes to notice; a second signal cuts it short, a rolling "
        "restart (SIGHUP with --workers) does not wait for it.",
        at_least=0,
    )
    grace_seconds: float = _setting(
        10.0, "GRACE_SECONDS", "Seconds to let in-flight requests finish on SIGTERM.", at_least=0
    )
    log_level: str = _setting("info", "LOG_LEVEL", "Level of the JSON logs.", choices=LOG_LEVELS)
    rust_request_parser: bool = _setting(
        True,
        "RUST_REQUEST_PARSER",
        "Read ModelInfer request bytes in Rust (off: the generated protobuf code).",
    )
    metrics_host: str = _setting(
        "0.0.0.0", "METRICS_HOST", "Address the Prometheus /metrics HTTP server binds."
    )
    metrics_port: int = _setting(
        8002,
        "METRICS_PORT",
        "Prometheus /metrics port; 0 picks a free port, -1 disables it. With `--port 0` it "
        "is 0 too unless `--metrics-port` is given.",
        at_least=-1,
        at_most=65535,
    )


@dataclasses.dataclass(frozen=True)
class ScoringSettings(_Group):
    """The data plane: threads, admission and request bounds, shadow scoring."""

    compute_threads: int = _setting(
        2,
        "COMPUTE_THREADS",
        "Threads that run transforms and models (the GIL is released there).",
        at_least=1,
    )
    onnx_threads: int = _setting(
        1, "ONNX_THREADS", "ONNX Runtime intra-op threads per session.", at_least=1
    )
    max_inflight: int = _setting(
        1024,
        "MAX_INFLIGHT",
        "Admission bound: requests in flight beyond this get RESOURCE_EXHAUSTED.",
        at_least=1,
    )
    max_request_rows: int = _setting(
        10_000, "MAX_REQUEST_ROWS", "Largest batch (rows) one request may carry.", at_least=1
    )
    shadow_max_pending: int = _setting(
        64,
        "SHADOW_MAX_PENDING",
        "Shadow scorings allowed to queue before new ones are dropped (and counted).",
        at_least=0,
    )
    shed_target_seconds: float = _setting(
        0.005,
        "SHED_TARGET_SECONDS",
        "Queueing delay shedding aims for: when the smallest wait in a version's batch "
        "queue stays above this for RISKSERVE_SHED_INTERVAL_SECONDS, new requests get "
        "RESOURCE_EXHAUSTED at once until the queue drains below it, seconds; 0 = never shed.",
        at_least=0,
    )
    shed_interval_seconds: float = _setting(
        0.1,
        "SHED_INTERVAL_SECONDS",
        "How long the queueing delay must stay above RISKSERVE_SHED_TARGET_SECONDS before "
        "shedding starts (a shorter burst is queued, not refused), seconds.",
        above=0,
    )
    native_path: bool = _setting(
        True,
        "NATIVE_PATH",
        "Score plain ModelInfer and ModelStreamInfer requests of LightGBM versions in one "
        "native call (parse, validate, features, drift, model, reply); off: every request "
        "takes the Python decoder and the batch queue.",
    )
    native_max_rows: int = _setting(
        64,
        "NATIVE_MAX_ROWS",
        "Largest request (rows) the native path scores, inline on the event loop; bigger "
        "ones go to the version's batch queue and the compute threads.",
        at_least=1,
    )


@dataclasses.dataclass(frozen=True)
class LimitsSettings(_Group):
    """Bounds on what one request may carry; beyond one, INVALID_ARGUMENT names it."""

    max_name_bytes: int = _setting(
        256,
        "MAX_NAME_BYTES",
        "Longest name, UTF-8 bytes: model names and versions, input, output and parameter "
        "names, datatypes; in admin calls model names, the salt and the x-actor metadata.",
        at_least=1,
    )
    max_routing_key_bytes: int = _setting(
        256,
        "MAX_ROUTING_KEY_BYTES",
        "Longest request parameter `routing_key` and request `id` (the routing key when no "
        "routing_key is sent), UTF-8 bytes.",
        at_least=1,
    )
    max_parameters: int = _setting(
        64,
        "MAX_PARAMETERS",
        "Most parameters one request may carry, and each of its inputs and outputs.",
        at_least=0,
    )
    max_parameter_bytes: int = _setting(
        1024,
        "MAX_PARAMETER_BYTES",
        "Longest string parameter value other than routing_key, UTF-8 bytes.",
        at_least=0,
    )
    max_inputs: int = _setting(
        1024,
        "MAX_INPUTS",
        "Most inputs one request may carry (and requested outputs, and raw_input_contents "
        "entries).",
        at_least=1,
    )
    max_reason_bytes: int = _setting(
        1024,
        "MAX_REASON_BYTES",
        "Longest admin `reason` (written into deployment.json and the log), UTF-8 bytes.",
        at_least=0,
    )


@dataclasses.dataclass(frozen=True)
class BatchingSettings(_Group):
    """Dynamic batching, per loaded version."""

    max_batch_size: int = _setting(
        64,
        "MAX_BATCH_SIZE",
        "At most this many rows per model call; a batch is whatever queued while the "
        "previous one ran.",
        at_least=1,
    )
    max_batch_delay: float = _setting(
        0.0,
        "MAX_BATCH_DELAY",
        "Under load, wait up to this long (seconds) for a batch to fill; an idle server "
        "never waits.",
        at_least=0,
    )
    inline_rows: int = _setting(
        8,
        "INLINE_ROWS",
        "Batches of at most this many rows are scored on the event loop thread: handing "
        "them to the compute pool costs more than scoring them, and so few rows block the "
        "loop only briefly. 0 sends every batch to the pool.",
        at_least=0,
    )


@dataclasses.dataclass(frozen=True)
class DriftSettings(_Group):
    """Drift counting, its Prometheus read-out and its alerts."""

    enabled: bool = _setting(
        True, "DRIFT_ENABLED", "Count inputs and scores for drift (off only to measure its cost)."
    )
    bins: bool = _setting(
        True,
        "DRIFT_BINS",
        "Export per-bin drift counters and reference ratios (a cardinality switch).",
    )
    threshold: float = _setting(
        0.25, "DRIFT_THRESHOLD", "Sliding-window PSI above which a drift alert is raised.", above=0
    )
    slots: int = _setting(
        60,
        "DRIFT_SLOTS",
        "Sliding drift window: this many sub-windows of RISKSERVE_DRIFT_SLOT_SECONDS.",
        at_least=1,
    )
    slot_seconds: int = _setting(
        60, "DRIFT_SLOT_SECONDS", "Length of one sliding-window sub-window, seconds.", at_least=1
    )
    check_seconds: float = _setting(
        10.0,
        "DRIFT_CHECK_SECONDS",
        "How often drift alerts are evaluated (and logged on change), seconds.",
        above=0,
    )

    @property
    def slots_or_off(self) -> int:
        """`slots`, or 0 (no drift monitor) when drift is disabled."""
        return self.slots if self.enabled else 0


@dataclasses.dataclass(frozen=True)
class CanarySettings(_Group):
    """The canary guard's bounds: a canary breaching any is rolled back."""

    enabled: bool = _setting(
        True,
        "CANARY_GUARD",
        "Roll a canary back automatically when it breaches any RISKSERVE_CANARY_* bound "
        "over at least RISKSERVE_CANARY_MIN_REQUESTS requests.",
    )
    min_requests: int = _setting(
        200,
        "CANARY_MIN_REQUESTS",
        "Requests a canary (and its control, for the score PSI) must have served before "
        "its bounds are judged.",
        at_least=1,
    )
    max_error_ratio: float = _setting(
        0.02,
        "CANARY_MAX_ERROR_RATIO",
        "Largest share of a canary's requests that may fail with a server fault.",
        at_least=0,
        at_most=1,
    )
    max_p95_ratio: float = _setting(
        2.0,
        "CANARY_MAX_P95_RATIO",
        "Largest ratio of a canary's p95 latency to its control's, on requests of the same "
        "row-count class (1, 2-8, 9-64, 65-512, more rows), each side with at least "
        "RISKSERVE_CANARY_MIN_REQUESTS of them.",
        above=0,
    )
    p95_slack_seconds: float = _setting(
        0.005,
        "CANARY_P95_SLACK_SECONDS",
        "A canary slower than RISKSERVE_CANARY_MAX_P95_RATIO allows by less than this "
        "(seconds) is not a breach: sub-millisecond noise on small requests.",
        at_least=0,
    )
    max_score_psi: float = _setting(
        0.25,
        "CANARY_MAX_SCORE_PSI",
        "Largest PSI of a canary's scores against its control's.",
        above=0,
    )
    check_seconds: float = _setting(
        1.0, "CANARY_CHECK_SECONDS", "How often the guard checks canaries, seconds.", above=0
    )


@dataclasses.dataclass(frozen=True)
class AdminSettings(_Group):
    """The admin API's credential and how deployment changes propagate."""

    token: str = _setting(
        "",
        "ADMIN_TOKEN",
        "Admin API bearer token; with no token (and no token file) the admin API refuses "
        "every call. Prefer the file: a flag or variable is visible to other processes.",
    )
    token_file: str = _setting(
        "",
        "ADMIN_TOKEN_FILE",
        "File holding the admin token (it wins over RISKSERVE_ADMIN_TOKEN).",
    )
    state_poll_seconds: float = _setting(
        0.2,
        "STATE_POLL_SECONDS",
        "How often each process looks for deployment changes made by another process (a "
        "sibling worker, or a replica sharing the models folder), seconds; 0 = never.",
        at_least=0,
    )


@dataclasses.dataclass(frozen=True)
class CompileSettings(_Group):
    """LightGBM compiled to native code (riskserve.runtime.compiled)."""

    lightgbm: bool = _setting(
        False,
        "LIGHTGBM_COMPILE",
        "Compile LightGBM versions to native code in the background (lleaves, in a niced "
        "process) and switch each to it once its scores match the C API's (<= 1e-6).",
    )
    cache_dir: Path = _setting(  # noqa: RUF009 (a Path is immutable)
        Path("~/.cache/riskserve/compiled"),
        "COMPILE_CACHE_DIR",
        "Where compiled models are kept, once per model and CPU type (~ is expanded).",
    )


@dataclasses.dataclass(frozen=True)
class FeedbackSettings(_Group):
    """The prediction log, the label store and outcomes (riskserve.feedback)."""

    log: bool = _setting(
        True,
        "PREDICTION_LOG",
        "Write every scored row to the prediction log (off: no log, labels join nothing).",
    )
    dsn: str = _setting(
        "",
        "FEEDBACK_DSN",
        "Where the prediction log and labels live: empty = SQLite in "
        "<models>/.feedback/feedback.sqlite; sqlite:///PATH; or postgresql://... for "
        "several replicas. Prefer a password in PGPASSFILE over one in the DSN.",
    )
    queue_rows: int = _setting(
        100_000,
        "PREDICTION_LOG_QUEUE_ROWS",
        "Rows the prediction log may hold in memory before it drops (and counts) new ones "
        "rather than slow a reply.",
        at_least=1,
    )
    batch_rows: int = _setting(
        2000, "PREDICTION_LOG_BATCH_ROWS", "Rows the log writer commits at once.", at_least=1
    )
    flush_seconds: float = _setting(
        0.2,
        "PREDICTION_LOG_FLUSH_SECONDS",
        "How long a row may wait in memory before the writer commits it, seconds.",
        above=0,
    )
    retention_days: float = _setting(
        90.0,
        "FEEDBACK_RETENTION_DAYS",
        "Predictions (and their labels) older than this are purged in the background.",
        above=0,
    )
    pending_days: float = _setting(
        7.0,
        "FEEDBACK_PENDING_DAYS",
        "A label whose prediction is not in the log yet waits this long for it to land, "
        "then it is rejected.",
        above=0,
    )
    hash_key_file: str = _setting(
        "",
        "ROUTING_KEY_HASH_FILE",
        "Secret key of the keyed hash (HMAC-SHA256) the log stores instead of the routing "
        "key; empty = <models>/.feedback/hash.key, made on first start. Replicas sharing "
        "one store must share the key.",
    )
    token: str = _setting(
        "",
        "FEEDBACK_TOKEN",
        "Bearer token of the principal `feedback`, which may send labels (distinct from the "
        "admin token). Prefer the file.",
    )
    token_file: str = _setting(
        "",
        "FEEDBACK_TOKEN_FILE",
        "File holding the feedback token (it wins over RISKSERVE_FEEDBACK_TOKEN).",
    )
    maturity_seconds: float = _setting(
        14 * 86400.0,
        "OUTCOME_MATURITY_SECONDS",
        "Predictions younger than this are not judged yet: their labels may still come.",
        at_least=0,
    )
    window_seconds: float = _setting(
        30 * 86400.0,
        "OUTCOME_WINDOW_SECONDS",
        "How far back (before the maturity) outcomes look, seconds.",
        above=0,
    )
    min_labels: int = _setting(
        30,
        "OUTCOME_MIN_LABELS",
        "Fraud (for recall) or legitimate (for false-positive rate) labels a variant needs "
        "before a rate is reported or compared.",
        at_least=1,
    )
    outcomes_seconds: float = _setting(
        60.0,
        "OUTCOME_REFRESH_SECONDS",
        "How often outcomes per variant are recomputed for /metrics, seconds.",
        above=0,
    )


#: Settings attribute → group class, in the order the docs list them.
@dataclasses.dataclass(frozen=True)
class SecuritySettings(_Group):
    """TLS on the ports, who may call what, and which model versions are trusted."""

    tls_cert_file: str = _setting(
        "",
        "TLS_CERT_FILE",
        "PEM certificate (chain) for the gRPC port; with RISKSERVE_TLS_KEY_FILE it serves "
        "TLS only. Re-read when it changes: new connections get the new certificate.",
    )
    tls_key_file: str = _setting("", "TLS_KEY_FILE", "PEM private key of the certificate.")
    tls_client_ca_file: str = _setting(
        "",
        "TLS_CLIENT_CA_FILE",
        "PEM CA bundle: clients must present a certificate it signed (mTLS); the "
        "certificate's name identifies the caller (RISKSERVE_PRINCIPALS_FILE).",
    )
    metrics_tls: bool = _setting(
        False,
        "METRICS_TLS",
        "Serve /metrics over TLS with the same certificate (and client CA, if set).",
    )
    reflection: bool = _setting(
        True,
        "REFLECTION",
        "Serve gRPC server reflection (grpcurl without .proto files); it lists every "
        "service and method, so turn it off where callers need not discover them.",
    )
    principals_file: str = _setting(
        "",
        "PRINCIPALS_FILE",
        "JSON file of principals (token sha256 or certificate name, and roles: admin, "
        "reader, feedback); re-read when it changes (riskserve.transport.principals).",
    )
    trusted_keys_file: str = _setting(
        "",
        "TRUSTED_KEYS_FILE",
        "PEM ed25519 public keys: when set, a model version is refused unless its "
        "manifest.sig was made by one of them (riskserve sign).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "RISKSERVE_TLS_CERT_FILE and RISKSERVE_TLS_KEY_FILE must be set together"
            )
        if (self.tls_client_ca_file or self.metrics_tls) and not self.tls_cert_file:
            raise ValueError(
                "RISKSERVE_TLS_CLIENT_CA_FILE and RISKSERVE_METRICS_TLS need "
                "RISKSERVE_TLS_CERT_FILE and RISKSERVE_TLS_KEY_FILE"
            )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)


@dataclasses.dataclass(frozen=True)
class RetrainSettings(_Group):
    """`riskserve retrain` (and tracking of `train`): the gate, the holdout, snapshots, MLflow."""

    max_auc_drop: float = _setting(
        0.005,
        "RETRAIN_MAX_AUC_DROP",
        "The gate: the challenger's AUC on the holdout may be at most this below the "
        "champion's, or nothing is registered.",
        at_least=0,
        at_most=1,
    )
    max_recall_drop: float = _setting(
        0.02,
        "RETRAIN_MAX_RECALL_DROP",
        "The gate: the challenger's holdout recall at the champion's false-positive rate may "
        "be at most this below the champion's.",
        at_least=0,
        at_most=1,
    )
    max_precision_drop: float = _setting(
        0.05,
        "RETRAIN_MAX_PRECISION_DROP",
        "The gate: the challenger's holdout precision at its operating threshold may be at "
        "most this below the champion's at its own.",
        at_least=0,
        at_most=1,
    )
    max_amount_recall_drop: float = _setting(
        0.05,
        "RETRAIN_MAX_AMOUNT_RECALL_DROP",
        "The gate: the challenger's amount-weighted recall at its threshold (fraud labels "
        "with an amount) may be at most this below the champion's.",
        at_least=0,
        at_most=1,
    )
    holdout_share: float = _setting(
        0.2,
        "RETRAIN_HOLDOUT_SHARE",
        "The holdout both models are judged on: this share of the snapshot's labelled "
        "predictions, the most recent ones (a time split; ties at the cut go with it).",
        at_least=0.01,
        at_most=0.9,
    )
    min_holdout_fraud: int = _setting(
        30,
        "RETRAIN_MIN_HOLDOUT_FRAUD",
        "Fraud labels the holdout needs: with fewer, the run stops before training (the "
        "gate's figures would be noise).",
        at_least=1,
    )
    rounds: int = _setting(
        0, "RETRAIN_ROUNDS", "Boosting rounds of the challenger; 0 = the champion's.", at_least=0
    )
    unlabelled: str = _setting(
        "drop",
        "RETRAIN_UNLABELLED",
        "Predictions still without a label after the maturity: drop (left out of the "
        "snapshot) or legit (kept as legitimate: no chargeback came); label coverage is "
        "recorded either way.",
        choices=("drop", "legit"),
    )
    snapshot_dir: str = _setting(
        "",
        "RETRAIN_SNAPSHOT_DIR",
        "Folder of the Parquet snapshots, named <sha256>.parquet; empty = "
        "<models>/<model>/.snapshots. Shared storage works.",
    )
    mlflow_tracking_uri: str = _setting(
        "",
        "MLFLOW_TRACKING_URI",
        "MLflow tracking server (http://...) or file store (file:///...) every train and "
        "retrain run is logged to; empty = none. riskserve's registry stays the source of truth.",
        flag="--mlflow-uri",
    )
    mlflow_experiment: str = _setting(
        "riskserve",
        "MLFLOW_EXPERIMENT",
        "MLflow experiment of those runs (created when missing).",
    )


_DAILY_AT = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclasses.dataclass(frozen=True)
class WatchSettings(_Group):
    """`riskserve retrain-watch`: when to retrain a model, and how the run is started."""

    model: str = _setting("fraud", "RETRAIN_WATCH_MODEL", "Model whose retraining is watched.")
    metrics_url: str = _setting(
        "http://localhost:8002/metrics",
        "RETRAIN_WATCH_METRICS_URL",
        "The serving fleet's Prometheus /metrics (with --workers, the supervisor's merged "
        "one): drift and outcomes are read from it.",
    )
    poll_seconds: float = _setting(
        5.0, "RETRAIN_WATCH_POLL_SECONDS", "How often /metrics is read, seconds.", above=0
    )
    max_backoff_seconds: float = _setting(
        60.0,
        "RETRAIN_WATCH_MAX_BACKOFF_SECONDS",
        "Longest wait between reads while /metrics cannot be reached (the wait doubles "
        "from RISKSERVE_RETRAIN_WATCH_POLL_SECONDS), seconds.",
        above=0,
    )
    daily_at: str = _setting(
        "",
        "RETRAIN_WATCH_DAILY_AT",
        "Retrain every day at this time, HH:MM in UTC; empty = no schedule.",
    )
    drift: bool = _setting(
        True,
        "RETRAIN_WATCH_DRIFT",
        "Retrain when the score's or a top feature's sliding-window PSI has stayed above "
        "the threshold for RISKSERVE_RETRAIN_WATCH_DRIFT_HOLD_SECONDS.",
    )
    drift_hold_seconds: float = _setting(
        1800.0,
        "RETRAIN_WATCH_DRIFT_HOLD_SECONDS",
        "How long a drift alert must hold without a break before it triggers, seconds.",
        at_least=0,
    )
    drift_top_features: int = _setting(
        5,
        "RETRAIN_WATCH_DRIFT_TOP_FEATURES",
        "Raw inputs watched besides the score: the model's N most important by gain "
        "(0 = the score alone).",
        at_least=0,
    )
    drift_threshold: float = _setting(
        0.0,
        "RETRAIN_WATCH_DRIFT_THRESHOLD",
        "PSI above which a watched field counts as drifting; 0 = the server's own alert "
        "(riskserve_drift_alert, RISKSERVE_DRIFT_THRESHOLD).",
        at_least=0,
    )
    recall_below: float = _setting(
        0.0,
        "RETRAIN_WATCH_RECALL_BELOW",
        "Retrain when the control variant's realised recall (riskserve_outcome_recall) is "
        "below this; 0 = never.",
        at_least=0,
        at_most=1,
    )
    recall_min_fraud_labels: int = _setting(
        50,
        "RETRAIN_WATCH_RECALL_MIN_FRAUD_LABELS",
        "Fraud labels the control needs before its recall is believed.",
        at_least=1,
    )
    min_labels: int = _setting(
        1000,
        "RETRAIN_WATCH_MIN_LABELS",
        "No run starts (whatever the trigger) while the model has fewer mature labelled "
        "predictions than this (riskserve_outcome_labelled).",
        at_least=0,
    )
    min_interval_seconds: float = _setting(
        21600.0,
        "RETRAIN_WATCH_MIN_INTERVAL_SECONDS",
        "No run starts within this long of the previous run's end (whatever its result), in "
        "seconds.",
        at_least=0,
    )
    timeout_seconds: float = _setting(
        3600.0,
        "RETRAIN_WATCH_TIMEOUT_SECONDS",
        "A retrain still running after this long is killed (result timeout), seconds.",
        above=0,
    )
    stop_seconds: float = _setting(
        30.0,
        "RETRAIN_WATCH_STOP_SECONDS",
        "On SIGTERM, how long a running retrain gets to stop after its own SIGTERM before "
        "it is killed, seconds.",
        at_least=0,
    )
    nice: int = _setting(
        10,
        "RETRAIN_WATCH_NICE",
        "Niceness the retrain runs at (it yields the cores to anything serving).",
        at_least=0,
        at_most=19,
    )
    start: str = _setting(
        "canary",
        "RETRAIN_WATCH_START",
        "What a registered version starts as, through the admin API of "
        "RISKSERVE_RETRAIN_WATCH_SERVER: canary, shadow, or none (registered only).",
        choices=("canary", "shadow", "none"),
    )
    percent: float = _setting(
        10.0,
        "RETRAIN_WATCH_PERCENT",
        "The new version's canary traffic or shadow sample, percent.",
        above=0,
        at_most=100,
    )
    server: str = _setting(
        "localhost:8001",
        "RETRAIN_WATCH_SERVER",
        "gRPC address of a server of the fleet, for the canary or shadow.",
    )
    retrain_args: str = _setting(
        "",
        "RETRAIN_WATCH_RETRAIN_ARGS",
        "More arguments for `riskserve retrain`, as shell words (--window 30d).",
    )
    metrics_host: str = _setting(
        "0.0.0.0", "RETRAIN_WATCH_METRICS_HOST", "Address the watcher's own /metrics binds."
    )
    metrics_port: int = _setting(
        8003,
        "RETRAIN_WATCH_METRICS_PORT",
        "The watcher's own Prometheus /metrics port; 0 picks a free port, -1 disables it.",
        at_least=-1,
        at_most=65535,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.daily_at and not _DAILY_AT.match(self.daily_at):
            raise ValueError(
                "RISKSERVE_RETRAIN_WATCH_DAILY_AT must be HH:MM in UTC (00:00..23:59) or "
                f"empty, got {self.daily_at!r}"
            )
        try:
            shlex.split(self.retrain_args)
        except ValueError as e:
            raise ValueError(
                f"RISKSERVE_RETRAIN_WATCH_RETRAIN_ARGS must be shell words: {e}, "
                f"got {self.retrain_args!r}"
            ) from None

    @property
    def daily_at_minute(self) -> int | None:
        """Minutes after midnight UTC of the daily run; None without a schedule."""
        m = _DAILY_AT.match(self.daily_at)
        return None if m is None else int(m.group(1)) * 60 + int(m.group(2))


GROUPS: dict[str, type[_Group]] = {
    "server": ServerSettings,
    "scoring": ScoringSettings,
    "limits": LimitsSettings,
    "batching": BatchingSettings,
    "drift": DriftSettings,
    "canary": CanarySettings,
    "admin": AdminSettings,
    "compile": CompileSettings,
    "security": SecuritySettings,
    "feedback": FeedbackSettings,
    "retrain": RetrainSettings,
    "watch": WatchSettings,
}


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """One setting as the environment, the CLI and the docs see it."""

    group: str
    name: str
    kind: type
    default: Any
    env: str
    meaning: str
    flag: str
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        """The flat override key: the variable without the prefix, lower case
        (`canary_min_requests`, `port`)."""
        return self.env.removeprefix(ENV_PREFIX).lower()

    @property
    def default_text(self) -> str:
        """The default as one would write it in the environment."""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return '""' if self.default == "" else str(self.default)

    @property
    def allowed(self) -> str:
        """The allowed values in words ("" when any value of the type is)."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.at_least is not None and self.at_most is not None:
            return f"{_num(self.at_least)}..{_num(self.at_most)}"
        if self.at_least is not None:
            return f">= {_num(self.at_least)}"
        if self.above is not None:
            return f"> {_num(self.above)}"
        return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _info(cls: type, f: dataclasses.Field[Any]) -> SettingInfo:
    md = f.metadata
    key = md["env"].removeprefix(ENV_PREFIX).lower()
    group = next((g for g, c in GROUPS.items() if c is cls), cls.__name__)
    return SettingInfo(
        group=group,
        name=f.name,
        kind=typing.get_type_hints(cls)[f.name],
        default=f.default,
        env=md["env"],
        meaning=md["meaning"],
        flag=md["flag"] or "--" + key.replace("_", "-"),
        at_least=md["at_least"],
        above=md["above"],
        at_most=md["at_most"],
        choices=md["choices"],
    )


#: Every setting, group by group.
SETTINGS: tuple[SettingInfo, ...] = tuple(
    _info(cls, f) for cls in GROUPS.values() for f in dataclasses.fields(cls)
)
_BY_KEY: dict[str, SettingInfo] = {s.key: s for s in SETTINGS}
_OF_CLASS: dict[type, tuple[SettingInfo, ...]] = {
    cls: tuple(s for s in SETTINGS if s.group == g) for g, cls in GROUPS.items()
}
assert len(_BY_KEY) == len(SETTINGS), "two settings share an environment variable"


def _check(s: SettingInfo, value: Any) -> None:
    """Raises ValueError naming the environment variable if `value` is not allowed."""
    ok_type = isinstance(value, s.kind) and not (s.kind is int and isinstance(value, bool))
    if s.kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok_type = True
    if not ok_type:
        raise ValueError(f"{s.env} must be of type {s.kind.__name__}, got {value!r}")
    if s.kind is float and math.isnan(value):
        raise ValueError(f"{s.env} must be a number, got {value!r}")
    if s.choices is not None and value.lower() not in s.choices:
        raise ValueError(f"{s.env} must be {s.allowed}, got {value!r}")
    low_ok = s.at_least is None or value >= s.at_least
    high_ok = s.at_most is None or value <= s.at_most
    above_ok = s.above is None or value > s.above
    if not (low_ok and high_ok and above_ok):
        where = f"in {s.allowed}" if s.at_most is not None else s.allowed
        raise ValueError(f"{s.env} must be {where}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, one frozen group per concern. Build it with `load` (the
    server) or `of` (tests); hand each part only its group."""

    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    scoring: ScoringSettings = dataclasses.field(default_factory=ScoringSettings)
    limits: LimitsSettings = dataclasses.field(default_factory=LimitsSettings)
    batching: BatchingSettings = dataclasses.field(default_factory=BatchingSettings)
    drift: DriftSettings = dataclasses.field(default_factory=DriftSettings)
    canary: CanarySettings = dataclasses.field(default_factory=CanarySettings)
    admin: AdminSettings = dataclasses.field(default_factory=AdminSettings)
    compile: CompileSettings = dataclasses.field(default_factory=CompileSettings)
    security: SecuritySettings = dataclasses.field(default_factory=SecuritySettings)
    feedback: FeedbackSettings = dataclasses.field(default_factory=FeedbackSettings)
    retrain: RetrainSettings = dataclasses.field(default_factory=RetrainSettings)
    watch: WatchSettings = dataclasses.field(default_factory=WatchSettings)

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then RISKSERVE_* from `env` (default os.environ), then the
        non-None `overrides`, keyed by flat key (`port`, `canary_min_requests`:
        the variable's name without the prefix, in lower case)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = env.get(s.env)
            if raw is not None:
                values[s.key] = _parse(s, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls().replace(**values)

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Defaults with some settings changed, by flat key (no environment):
        `Settings.of(port=0, canary_min_requests=5)`."""
        return cls().replace(**values)

    def replace(self, **values: Any) -> Settings:
        """A copy with some settings changed, by flat key; validated."""
        unknown = sorted(set(values) - _BY_KEY.keys())
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            s = _BY_KEY[key]
            changes.setdefault(s.group, {})[s.name] = value
        groups = {g: dataclasses.replace(getattr(self, g), **c) for g, c in changes.items()}
        return dataclasses.replace(self, **groups)

    def value(self, key: str) -> Any:
        """One setting by flat key (`settings.value("drift_slots")`)."""
        s = _BY_KEY[key]
        return getattr(getattr(self, s.group), s.name)


def setting(key: str) -> SettingInfo:
    """The description of one setting by flat key; KeyError if there is none."""
    return _BY_KEY[key]


#: Groups whose flags belong to a command other than `serve`: the command, and the
#: prefix a setting's flag drops there (`RISKSERVE_RETRAIN_MAX_AUC_DROP` is
#: `riskserve retrain --max-auc-drop`).
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "retrain": ("retrain", "--retrain-"),
    "watch": ("retrain-watch", "--retrain-watch-"),
}


def command_flag(s: SettingInfo) -> tuple[str, str]:
    """(command, flag) of a setting: `serve` and its flag, or its group's command."""
    command, prefix = COMMAND_GROUPS.get(s.group, ("serve", ""))
    return command, s.flag.replace(prefix, "--", 1) if prefix else s.flag


def _parse(s: SettingInfo, raw: str) -> Any:
    try:
        if s.kind is bool:
            word = raw.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        return s.kind(raw.strip()) if s.kind in (int, float) else s.kind(raw)
    except ValueError as e:
        raise ValueError(f"{s.env}={raw!r}: {e}") from None


_KIND_TEXT = {bool: "true, false", str: "text", Path: "path", int: "integer", float: "number"}


def markdown() -> str:
    """docs/settings.md: every setting, group by group (scripts/gen_settings_doc.py)."""
    out = [
        "# Settings",
        "",
        "<!-- Generated by scripts/gen_settings_doc.py from python/riskserve/config.py;",
        "     do not edit. tests/test_settings.py fails when this file is stale. -->",
        "",
        "Every setting is read from an environment variable and can be overridden by a",
        "flag of `riskserve serve` (the retrain and watch groups: of `riskserve retrain` and",
        "`riskserve retrain-watch`): defaults, then the environment, then the flags. Booleans",
        "take `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`) in the environment and",
        "`--flag` / `--no-flag` on the command line. Every value is checked at start: a",
        "value out of range stops the server with a message naming its variable.",
        "",
        "In code the settings are `riskserve.config.Settings`, one frozen group per concern",
        "(`settings.canary.min_requests`); each part of the server gets only its group.",
    ]
    for group, cls in GROUPS.items():
        out += ["", f"## `settings.{group}`: {cls.__name__}", "", _first_line(cls.__doc__), ""]
        out += [
            "| Setting | Variable | Flag | Default | Allowed | Meaning |",
            "|---|---|---|---|---|---|",
        ]
        for s in SETTINGS:
            if s.group != group:
                continue
            command, name = command_flag(s)
            flag = f"`{name}` / `--no-{name[2:]}`" if s.kind is bool else f"`{name}`"
            if command != "serve":
                flag = f"{command} {flag}"
            allowed = s.allowed or _KIND_TEXT[s.kind]
            out.append(
                f"| `{s.name}` | `{s.env}` | {flag} | `{s.default_text}` | {allowed} "
                f"| {s.meaning} |"
            )
    return "\n".join(out) + "\n"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0]


__all__ = [
    "COMMAND_GROUPS",
    "ENV_PREFIX",
    "GROUPS",
    "LOG_LEVELS",
    "SETTINGS",
    "AdminSettings",
    "BatchingSettings",
    "CanarySettings",
    "CompileSettings",
    "DriftSettings",
    "LimitsSettings",
    "RetrainSettings",
    "ScoringSettings",
    "ServerSettings",
    "SettingInfo",
    "Settings",
    "WatchSettings",
    "command_flag",
    "markdown",
    "setting",
]
