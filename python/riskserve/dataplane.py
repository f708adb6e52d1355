"""Transport-neutral use cases: infer, metadata, readiness. Knows nothing of
gRPC or protobuf; the transport decodes into these types and maps errors."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from riskserve._native import InputError, Scorer, packed_count, peek_request
from riskserve.config import BatchingSettings, LimitsSettings, ScoringSettings
from riskserve.errors import DeadlineExceeded, InvalidInput, NotFound, Overloaded, RiskserveError
from riskserve.feedback.log import Scored
from riskserve.ids import uuid7
from riskserve.monitoring import Metrics, ModelView, VersionView
from riskserve.monitoring.statistics import ServedStatistics, VersionRecorder, VersionStatistics
from riskserve.protocol import FLAGGED_NAME, OUTPUT_NAME
from riskserve.routing import RoutingTable
from riskserve.routing.table import Routed
from riskserve.runtime.batcher import Batcher
from riskserve.runtime.loaded import LoadedModel

SERVER_NAME = "riskserve"
#: The model label of requests naming no served model (never the client's string:
#: labels must stay bounded).
UNKNOWN_MODEL = "__unknown__"
#: The model label of requests refused before they could be read: bytes that do not
#: decode, or a request beyond one of RISKSERVE_MAX_* (riskserve.config.LimitsSettings).
UNDECODED = "__undecoded__"
#: Characters of a client's string an error message quotes (`shown`).
SHOWN_CHARS = 64
#: Status codes the canary guard counts as a version's failures: the server's (or
#: model's) fault. Not DEADLINE_EXCEEDED (a client can set tiny deadlines; the guard's
#: latency bound covers slowness) nor RESOURCE_EXHAUSTED (shed or over the admission
#: bound: the server's load, not the version).
SERVER_FAULTS = frozenset({"INTERNAL", "UNAVAILABLE"})

log = logging.getLogger(__name__)


class Shedder:
    """CoDel-style load shedding for one version's batch queue: pure, the clock is
    passed in. Enters shedding when every queueing delay seen for `interval`
    seconds was at or above `target` (the minimum over the interval stays above
    it); leaves at the first delay below target (the batcher reports 0.0 once its
    queue has drained). A burst shorter than `interval` is queued, not refused.
    target 0 turns shedding off. The delay is the batch queue's only: calls waiting
    in gRPC core before any of our code runs are bounded by
    RISKSERVE_MAX_PENDING_CALLS instead."""

    __slots__ = ("_above_since", "interval", "shedding", "target")

    def __init__(self, target: float, interval: float) -> None:
        self.target = target
        self.interval = interval
        self.shedding = False
        #: When the delay last went above target (None: it is below).
        self._above_since: float | None = None

    def observe(self, now: float, delay: float) -> None:
        if self.target <= 0 or delay < self.target:
            self._above_since = None
            self.shedding = False
        elif self._above_since is None:
            self._above_since = now
        elif now - self._above_since >= self.interval:
            self.shedding = True

    def refusal(self) -> str:
        return (
            f"overloaded: queueing delay above {self.target * 1e3:g} ms for "
            f"{self.interval * 1e3:g} ms; retry with backoff"
        )


class _VersionQueue(NamedTuple):
    batcher: Batcher
    shedder: Shedder
    statistics: VersionRecorder
    #: The version's one-call native scorer (None: every request takes the
    #: Python path: an ONNX or compiled model, or RISKSERVE_NATIVE_PATH off).
    scorer: Scorer | None
    #: str(version), built once.
    version: str


class PredictionSink(Protocol):
    """riskserve.feedback.log.PredictionLog as the data plane sees it: `submit`
    never blocks (it drops and counts when full)."""

    def submit(self, item: Scored) -> bool: ...


class CanaryGuardLike(Protocol):
    """riskserve.deployments.canary.CanaryGuard as the data plane sees it (a
    Protocol: the data plane does not import the deployments layer)."""

    def record(
        self,
        model: str,
        version: int,
        period: int,
        seconds: float,
        ok: bool,
        scores: npt.NDArray[np.float32] | None,
    ) -> None: ...


#: What a decoded tensor may hold: a numeric array, a V2 packed BYTES buffer,
#: or a list of byte strings (typed contents).
TensorData = npt.NDArray[Any] | bytes | list[bytes]


class InferInput(NamedTuple):
    """One decoded input tensor (a NamedTuple: ~35 are built per request)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData


@dataclasses.dataclass(frozen=True, slots=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: Sequence[InferInput]
    requested_outputs: Sequence[str] = ()
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Seconds left before the client's deadline, None if it set none.
    time_remaining: float | None = None
    #: The first input whose values include +inf or -inf, as the reader found it
    #: (the Rust one while parsing). riskserve refuses ±inf: a payment amount of
    #: +inf is a client's bug, and treating it as missing would score it silently.
    infinite_input: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    probability: npt.NDArray[np.float32]
    parameters: Mapping[str, str]
    #: The decision at the version's operating threshold, when the client asked
    #: for output FLAGGED_NAME.
    flagged: npt.NDArray[np.bool_] | None = None
    #: The outputs in the order the client asked for them (none: probability).
    outputs: tuple[str, ...] = (OUTPUT_NAME,)
    #: The serving version's statistics: the transport records the success once
    #: the reply is built (VersionRecorder.succeeded).
    statistics: VersionRecorder | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


class DataPlane:
    """Scores requests against the current routing table."""

    def __init__(
        self,
        scoring: ScoringSettings,
        batching: BatchingSettings,
        table: RoutingTable,
        metrics: Metrics,
        limits: LimitsSettings | None = None,
    ) -> None:
        self._scoring = scoring
        self._limits = limits or LimitsSettings()
        lim = self._limits
        self._native = scoring.native_path
        self._peek_limits = (lim.max_name_bytes, lim.max_routing_key_bytes, lim.max_parameters)
        self._batching = batching
        self._table = table
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(
            max_workers=scoring.compute_threads, thread_name_prefix="riskserve-compute"
        )
        self._inflight = 0
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskserve-shadow")
        self._shadow_pending = 0
        #: One batcher per loaded version; it goes when the version is released.
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, _VersionQueue] = (
            weakref.WeakKeyDictionary()
        )
        self.guard: CanaryGuardLike | None = None
        self.prediction_log: PredictionSink | None = None
        self.ready = True

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap_table(self, table: RoutingTable) -> None:
        """Replaces the routing table atomically; requests in flight keep theirs."""
        self._table = table

    def views(self) -> list[ModelView]:
        """What this process serves, as the metrics read it at scrape time (and
        the worker snapshots, with each version's statistics)."""
        return table_view(self._table, self._recorder)

    def _recorder(self, model: LoadedModel) -> VersionRecorder | None:
        q = self._batchers.get(model)
        return None if q is None else q.statistics

    def close(self) -> None:
        self.ready = False
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)

    # -- readiness and metadata -------------------------------------------------

    def model_ready(self, name: str, version: str = "") -> bool:
        self._table.resolve(name, version)  # NotFound for unknown models/versions
        return self.ready

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        dep = self._table.deployment(name)
        model = self._table.resolve(name, version)
        return ModelMetadata(
            name=name,
            versions=tuple(str(v) for v in sorted(dep.versions)),
            platform=model.platform,
            inputs=tuple(TensorMetadata(i.name, i.datatype, (-1,)) for i in model.inputs),
            outputs=(
                TensorMetadata(OUTPUT_NAME, "FP32", (-1,)),
                TensorMetadata(FLAGGED_NAME, "BOOL", (-1,)),
            ),
        )

    def statistics(self, name: str = "", version: str = "") -> list[ServedStatistics]:
        """The statistics of the versions served now (Triton's ModelStatistics):
        every version of every model (`name` empty), every version of `name`
        (`version` empty), or that one version. NotFound for a model or version
        not served; InvalidInput for a version that is not a version number."""
        table = self._table
        if not name:
            if version:
                raise InvalidInput("field 'version' needs field 'name' (the model)")
            deps = [table.deployments[n] for n in sorted(table.deployments)]
        else:
            deps = [table.deployment(name)]
        out = []
        for dep in deps:
            if version:
                v = _version_number(version)
                if v not in dep.versions:
                    raise NotFound(f"model {dep.name!r} version {v} is not loaded")
                versions = [v]
            else:
                versions = sorted(dep.versions)
            for v in versions:
                model = dep.versions[v]
                rec = self._recorder(model)
                stats = VersionStatistics() if rec is None else rec.snapshot()
                out.append(ServedStatistics(dep.name, v, model.manifest.model_sha256, stats))
        return out

    # -- inference ----------------------------------------------------------------

    async def infer(self, req: InferRequest, received: float | None = None) -> InferResult:
        """Scores `req`. `received`: its time.perf_counter() when it arrived, before
        it was decoded (default now), the start of its statistics' durations."""
        start = time.perf_counter()
        if received is None:
            received = start
        routed: Routed | None = None
        try:
            key = _routing_key(req)  # validated once: routing and the log use it
            routed = self._table.route(req.model_name, req.model_version, key)
            result, rows, columns = await self._infer(routed, req, received)
        except RiskserveError as e:
            self._record_error(req, routed, e.code.name, received)
            raise
        except Exception:
            self._record_error(req, routed, "INTERNAL", received)
            raise
        seconds = time.perf_counter() - start
        model = routed.model
        self._metrics.observe_ok(model.name, result.model_version, routed.variant, seconds, rows)
        if self.guard is not None and routed.split:
            self.guard.record(
                model.name, model.version, routed.traffic_since, seconds, True, result.probability
            )
        sink = self.prediction_log
        if sink is not None:
            sink.submit(
                Scored(
                    result.id,
                    time.time(),
                    model.name,
                    model.version,
                    routed.variant,
                    routed.revision,
                    key,
                    result.probability,
                    routed.threshold,
                    False,
                    columns,
                )
            )
        if routed.shadow is not None:
            self._start_shadow(routed, columns, result.probability, result.id, key)
        return result

    def model_label(self, name: str | None) -> str:
        """The metrics' model label for a request naming `name` (None: it named
        nothing readable): a served model's name, else a fixed placeholder."""
        if name is None:
            return UNDECODED
        return name if name in self._table.deployments else UNKNOWN_MODEL

    def observe_refused(self, model_name: str | None, code: str) -> None:
        """Counts a request refused before `infer` could run (its bytes did not
        decode, or it broke a limit), under `model_label(model_name)`."""
        self._metrics.observe_error(self.model_label(model_name), "", "", code)

    def _queue(self, model: LoadedModel) -> _VersionQueue:
        q = self._batchers.get(model)
        if q is None:
            scoring = self._scoring
            shedder = Shedder(scoring.shed_target_seconds, scoring.shed_interval_seconds)
            stats = VersionRecorder()
            batcher = Batcher(
                model,
                self._pool,
                _score,
                self._batching,
                self._metrics.observe_batch,
                on_dequeue=shedder.observe,
                on_executed=stats.executed,
            )
            q = self._batchers[model] = _VersionQueue(
                batcher, shedder, stats, self._scorer(model), str(model.version)
            )
        return q

    def _scorer(self, model: LoadedModel) -> Scorer | None:
        """The version's native scorer, when the native path is on and its runtime
        has the Rust evaluator (runtime.runtimes.LightGBMRuntime.gbdt)."""
        gbdt = getattr(model.runtime, "gbdt", None)
        if not self._native or gbdt is None:
            return None
        try:
            return Scorer(
                model.pipeline,
                gbdt,
                model.drift,
                scorer_limits(self._limits),
                self._scoring.max_request_rows,
            )
        except ValueError as e:
            log.warning(
                "the native path does not take this version; it takes the Python path",
                extra={"model": model.name, "version": model.version, "error": str(e)},
            )
            return None

    # -- the native path ------------------------------------------------------------

    def infer_bytes(
        self, data: bytes, time_remaining: float | None, received: float, stream: bool = False
    ) -> bytes | None:
        """The native path (docs/architecture.md, "The hot path"): one plain request's
        reply bytes (a ModelStreamInferResponse with `stream`), scored in one native
        call on this thread, or None when the Python path must take the request:
        anything the native scorer does not accept as valid (the Python path then
        gives the error), a version without a scorer or with a shadow that has
        none, a request over RISKSERVE_NATIVE_MAX_ROWS, a passed deadline, a
        shedding queue or the admission bound. None costs no count: the Python
        path counts the request."""
        if not self._native:
            return None
        head = peek_request(data, *self._peek_limits)
        if head is None:
            return None
        name, version, rid, key = head
        table = self._table
        if name not in table.deployments or (time_remaining is not None and time_remaining <= 0):
            return None
        key = key or rid or None  # the routing key: the parameter, else the id
        try:
            routed = table.route(name, version, key)
        except RiskserveError:
            return None
        model = routed.model
        q = self._queue(model)
        scorer = q.scorer
        if scorer is None or q.shedder.shedding or self._inflight >= self._scoring.max_inflight:
            return None
        shadow = routed.shadow
        if shadow is not None and (
            self._queue(shadow).scorer is None or shadow.inputs != model.inputs
        ):
            return None  # its scorer reads the request bytes: it must take the same inputs
        rid = rid or uuid7()
        start = time.perf_counter()
        out = scorer.infer(
            data,
            name,
            q.version,
            rid,
            routed.variant,
            str(routed.revision),
            routed.threshold,
            self._scoring.native_max_rows,
            stream,
        )
        if out is None:
            return None
        reply, scores, input_ns, infer_ns = out
        seconds = time.perf_counter() - start
        rows = len(scores)
        self._metrics.observe_native(name, q.version, routed.variant, seconds, rows)
        self._metrics.observe_batch(name, q.version, rows, (0.0,))
        stats = q.statistics
        stats.executed(rows, 1, 0.0, input_ns * 1e-9, infer_ns * 1e-9)
        stats.succeeded(rows, received)
        if self.guard is not None and routed.split:
            self.guard.record(name, model.version, routed.traffic_since, seconds, True, scores)
        sink = self.prediction_log
        if sink is not None:
            sink.submit(
                Scored(
                    rid,
                    time.time(),
                    name,
                    model.version,
                    routed.variant,
                    routed.revision,
                    key,
                    scores,
                    routed.threshold,
                    False,
                    data,
                )
            )
        if shadow is not None:
            self._start_shadow(routed, data, scores, rid, key)
        return reply

    def _record_error(
        self, req: InferRequest, routed: Routed | None, code: str, received: float | None = None
    ) -> None:
        """Counts a failed request: its metrics, its version's statistics (from
        `received`, its perf_counter() on arrival) and, for a server fault in a
        split, the canary guard."""
        if routed is None:
            # Unknown model names are not echoed into labels (unbounded cardinality).
            self._metrics.observe_error(self.model_label(req.model_name), "", "", code)
            return
        m = routed.model
        self._metrics.observe_error(m.name, str(m.version), routed.variant, code)
        if received is not None:
            self._queue(m).statistics.failed(received)
        if self.guard is not None and routed.split and code in SERVER_FAULTS:
            self.guard.record(m.name, m.version, routed.traffic_since, 0.0, False, None)

    async def _infer(
        self, routed: Routed, req: InferRequest, received: float
    ) -> tuple[InferResult, int, dict[str, Any]]:
        if req.time_remaining is not None and req.time_remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before it was scored")
        model = routed.model
        queue = self._queue(model)
        if queue.shedder.shedding:
            # Refused before validation or scoring: a refusal must cost next to nothing.
            raise Overloaded(queue.shedder.refusal())
        columns, rows = self._columns(model, req)
        if self._inflight >= self._scoring.max_inflight:
            raise Overloaded(
                f"server is at its admission bound of {self._scoring.max_inflight} requests"
            )
        self._inflight += 1
        try:
            probs = await queue.batcher.submit(columns, rows, req.time_remaining, received)
        finally:
            self._inflight -= 1
        outputs = tuple(req.requested_outputs) or (OUTPUT_NAME,)
        result = InferResult(
            model_name=model.name,
            model_version=str(model.version),
            # The client's id, or a time-ordered one: every reply carries one, and
            # the prediction log keys its rows by it.
            id=req.id or uuid7(),
            probability=probs,
            parameters={
                "variant": routed.variant,
                "deployment_revision": str(routed.revision),
            },
            flagged=probs >= routed.threshold if FLAGGED_NAME in outputs else None,
            outputs=outputs,
            statistics=queue.statistics,
        )
        return result, rows, columns

    # -- shadow -------------------------------------------------------------------

    def _start_shadow(
        self,
        routed: Routed,
        columns: dict[str, Any] | bytes,
        primary: npt.NDArray[np.float32],
        request_id: str,
        key: str | None,
    ) -> None:
        """Scores the shadow after the reply: its own bounded executor, its own
        metrics, its own prediction-log rows (marked shadow); its results and
        errors never reach the client. `columns`: the primary's decoded inputs, or
        (the native path) the request bytes, which the shadow's scorer reads."""
        shadow = routed.shadow
        assert shadow is not None
        if self._shadow_pending >= self._scoring.shadow_max_pending:
            self._metrics.observe_shadow(shadow.name, str(shadow.version), "dropped", None)
            return
        self._shadow_pending += 1
        loop = asyncio.get_running_loop()
        if isinstance(columns, bytes):
            scorer = self._queue(shadow).scorer
            assert scorer is not None  # infer_bytes checked
            fut = loop.run_in_executor(self._shadow_pool, _score_bytes, scorer, columns)
        else:
            fut = loop.run_in_executor(self._shadow_pool, _score, shadow, columns)

        def done(f: asyncio.Future[npt.NDArray[np.float32]]) -> None:
            self._shadow_pending -= 1
            version = str(shadow.version)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.warning(
                    "shadow scoring failed",
                    extra={"model": shadow.name, "version": version, "error": repr(exc)},
                )
                self._metrics.observe_shadow(shadow.name, version, "error", None)
                return
            scores = f.result()
            diff = np.abs(scores - primary)
            self._metrics.observe_shadow(shadow.name, version, "ok", float(diff.max()))
            sink = self.prediction_log
            if sink is not None:
                sink.submit(
                    Scored(
                        request_id,
                        time.time(),
                        shadow.name,
                        shadow.version,
                        "shadow",
                        routed.revision,
                        key,
                        scores,
                        routed.shadow_threshold,
                        True,
                        columns,
                    )
                )

        fut.add_done_callback(done)

    def _columns(self, model: LoadedModel, req: InferRequest) -> tuple[dict[str, Any], int]:
        """Validates inputs against the model's spec; returns columns and the batch size."""
        for out in req.requested_outputs:
            if out not in (OUTPUT_NAME, FLAGGED_NAME):
                raise InvalidInput(
                    f"unknown output {shown(out)}; this model outputs {OUTPUT_NAME!r} "
                    f"and {FLAGGED_NAME!r}"
                )
        if len(set(req.requested_outputs)) != len(req.requested_outputs):
            raise InvalidInput("an output is requested more than once")
        index = model.input_index
        columns: dict[str, Any] = {}
        batch: int | None = None
        for inp in req.inputs:
            info = index.get(inp.name)
            if info is None:
                raise InvalidInput(
                    f"unexpected input {shown(inp.name)}: model {model.name!r} has no such input"
                )
            if inp.name in columns:
                raise InvalidInput(f"input {shown(inp.name)} appears more than once")
            if inp.datatype != info.datatype:
                raise InvalidInput(
                    f"input {inp.name!r} must have datatype {info.datatype}, "
                    f"got {shown(inp.datatype, quote=False)}"
                )
            shape = inp.shape
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidInput(
                    f"input {inp.name!r} must have shape [batch] or [batch, 1], got {list(shape)}"
                )
            rows = shape[0]
            if rows < 1:
                raise InvalidInput(f"input {inp.name!r} has batch size {rows}; it must be >= 1")
            if rows > self._scoring.max_request_rows:
                raise InvalidInput(
                    f"input {inp.name!r} has {rows} rows; the limit is "
                    f"{self._scoring.max_request_rows}"
                )
            if batch is None:
                batch = rows
            elif rows != batch:
                raise InvalidInput(
                    f"input {inp.name!r} has batch size {rows}, other inputs have {batch}"
                )
            count = _element_count(inp)
            if count != rows:
                raise InvalidInput(
                    f"input {inp.name!r} holds {count} elements but its shape {list(shape)} "
                    f"says {rows}"
                )
            columns[inp.name] = inp.data
        missing = [i.name for i in model.inputs if i.name not in columns]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InvalidInput(f"missing input {missing[0]!r}{more}")
        if req.infinite_input is not None:
            raise InvalidInput(
                f"input {shown(req.infinite_input)} holds +inf or -inf; riskserve takes "
                "finite numbers, and NaN for a missing value"
            )
        assert batch is not None  # the model has ≥ 1 input and all are present
        return columns, batch


def scorer_limits(lim: LimitsSettings) -> tuple[int, int, int, int, int]:
    """The limits a native Scorer takes, in its order."""
    return (
        lim.max_parameters,
        lim.max_inputs,
        lim.max_name_bytes,
        lim.max_routing_key_bytes,
        lim.max_parameter_bytes,
    )


def table_view(
    table: RoutingTable,
    statistics: Callable[[LoadedModel], VersionRecorder | None] | None = None,
) -> list[ModelView]:
    """The metrics' views of one routing table: each model's revision and its
    loaded versions with their drift counters (and `statistics(version)`)."""
    return [
        ModelView(
            name,
            dep.revision,
            tuple(
                VersionView(
                    v,
                    m.manifest.model_sha256,
                    m.drift,
                    None if statistics is None else statistics(m),
                )
                for v, m in sorted(dep.versions.items())
            ),
        )
        for name, dep in table.deployments.items()
    ]


def _version_number(text: str) -> int:
    """A version named in a request field: a positive decimal number."""
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise InvalidInput(
            f"field 'version' must be a version number (1, 2, ...), got {shown(text)}"
        )
    return int(text)


def _routing_key(req: InferRequest) -> str | None:
    key = req.parameters.get("routing_key")
    if key is None:
        return req.id or None
    if not isinstance(key, str) or not key:
        raise InvalidInput("parameter 'routing_key' must be a non-empty string")
    return key


def shown(text: str, quote: bool = True) -> str:
    """A client's string as an error message quotes it: its repr (or the text
    itself without `quote`), cut to SHOWN_CHARS characters, with its full size
    when it was cut (a 10 KB name must not come back whole in the status details)."""
    cut = text[:SHOWN_CHARS]
    out = repr(cut) if quote else cut
    if len(text) <= SHOWN_CHARS:
        return out
    return f"{out}... ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def _element_count(inp: InferInput) -> int:
    data = inp.data
    if isinstance(data, bytes):
        try:
            return packed_count(data)
        except InputError as e:
            raise InvalidInput(f"input {inp.name!r}: {e}") from None
    return len(data)


def _score_bytes(scorer: Scorer, data: bytes) -> npt.NDArray[np.float32]:
    """A shadow's scores of request bytes its primary took on the native path."""
    scores = scorer.score_request(data)
    if scores is None:
        raise InvalidInput("the shadow version does not take this request's inputs")
    return scores


def _score(model: LoadedModel, columns: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    try:
        return model.score(columns)
    except InputError as e:
        raise InvalidInput(str(e)) from None
