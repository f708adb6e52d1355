"""Settings: one typed object, read from RISKSERVE_* environment variables, with
CLI flags overriding. Built once in the composition root and passed down."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "RISKSERVE_"


@dataclasses.dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    host: str = "0.0.0.0"
    port: int = 8001
    #: Server processes sharing the port (SO_REUSEPORT); 1 = a single process.
    workers: int = 1
    #: How often each process looks for deployment changes made by another
    #: process (a sibling worker, or a replica sharing the models folder); 0 = never.
    state_poll_seconds: float = 0.2
    #: Threads that run transforms and models (the GIL is released there).
    compute_threads: int = 2
    #: ONNX Runtime intra-op threads per session.
    onnx_threads: int = 1
    #: Admission bound: requests in flight beyond this get RESOURCE_EXHAUSTED.
    max_inflight: int = 1024
    #: Read ModelInfer request bytes in Rust (off: the generated protobuf code).
    rust_request_parser: bool = True
    #: Dynamic batching: at most this many rows per model call; a batch is
    #: whatever queued while the previous one ran.
    max_batch_size: int = 64
    #: Under load, wait up to this long (seconds) for a batch to fill; an idle
    #: server never waits.
    max_batch_delay: float = 0.0
    #: Batches of at most this many rows are scored on the event loop thread
    #: instead of the compute pool: the hand-off to a thread costs more than
    #: scoring a few rows (bench/README.md: +10-20 % req/s on one core), and a
    #: batch this small blocks the loop for ~0.1-0.2 ms at most. 0 sends every
    #: batch to the pool.
    inline_rows: int = 8
    #: Compile LightGBM versions to native code in the background (lleaves) and
    #: switch to it once its scores match the C API's (≤ 1e-6): 2.8x faster per
    #: row at batch 1, 4x at 64. Compiling takes ~30 s of one (niced) core per
    #: 300-tree model, once per model and CPU type (cached in compile_cache_dir).
    lightgbm_compile: bool = False
    compile_cache_dir: Path = Path("~/.cache/riskserve/compiled")
    #: Largest batch (rows) one request may carry.
    max_request_rows: int = 10_000
    #: Calls gRPC core may hold that this process has not picked up yet. Under
    #: overload they queue there in arrival order; when the queue is longer than
    #: the clients' deadlines, every call is past its deadline when it is picked
    #: up and goodput collapses (50 ms deadlines at 2x capacity: 24 good req/s
    #: with gRPC's defaults of 1,000 soft / 3,000 hard, 906 with 64, 1,125 with
    #: 32; bench/README.md). Beyond half of this core refuses new calls at random,
    #: beyond it all of them (CANCELLED). Set it to about deadline x req/s per
    #: worker when clients send deadlines; a limit below the largest burst a
    #: healthy client sends refuses calls the server could have served, so the
    #: default, 0, keeps gRPC's own limits.
    max_pending_calls: int = 0
    #: Largest gRPC message accepted, bytes.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Seconds to let in-flight requests finish on SIGTERM.
    grace_seconds: float = 10.0
    log_level: str = "info"
    #: Shadow scorings allowed to queue before new ones are dropped (and counted).
    shadow_max_pending: int = 64
    #: Admin credential: the token itself, or a file holding it.
    admin_token: str = ""
    admin_token_file: str = ""
    #: Canary guard: a canary breaching any bound (over at least
    #: canary_min_requests) is rolled back automatically.
    canary_guard: bool = True
    canary_min_requests: int = 200
    canary_max_error_ratio: float = 0.02
    canary_max_p95_seconds: float = 0.05
    canary_max_score_psi: float = 0.25
    canary_check_seconds: float = 1.0
    #: Prometheus /metrics over HTTP; port 0 picks a free port, -1 disables.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8002
    #: Count inputs and scores for drift (off only to measure its cost).
    drift_enabled: bool = True
    #: Export per-bin drift counters and reference ratios (cardinality switch).
    drift_bins: bool = True
    drift_threshold: float = 0.25
    #: Sliding drift window: `drift_slots` sub-windows of `drift_slot_seconds`.
    drift_slots: int = 60
    drift_slot_seconds: int = 60
    #: How often drift alerts are evaluated (and logged on change).
    drift_check_seconds: float = 10.0

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then RISKSERVE_<FIELD> from `env`, then non-None `overrides`."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def drift_slots_or_off(self) -> int:
        """drift_slots, or 0 (no drift monitor) when drift is disabled."""
        return self.drift_slots if self.drift_enabled else 0

    def validate(self) -> None:
        for name in (
            "workers",
            "compute_threads",
            "onnx_threads",
            "max_inflight",
            "max_request_rows",
            "max_batch_size",
            "drift_slots",
            "drift_slot_seconds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("setting port must be in 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("setting metrics_port must be in -1..65535 (-1 disables)")
        if self.inline_rows < 0:
            raise ValueError("setting inline_rows must be >= 0 (0 disables)")
        if self.state_poll_seconds < 0:
            raise ValueError("setting state_poll_seconds must be >= 0 (0 disables)")
        if self.drift_threshold <= 0:
            raise ValueError("setting drift_threshold must be > 0")


def _parse(name: str, typ: Any, raw: str) -> Any:
    kind = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError as e:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {e}") from None
