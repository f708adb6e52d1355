"""Transport-neutral use cases: infer, metadata, readiness. Knows nothing of
gRPC or protobuf; the transport decodes into these types and maps errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from riskserve._native import InputError, packed_count
from riskserve.config import Settings
from riskserve.errors import DeadlineExceeded, InvalidInput, NotFound, Overloaded, RiskserveError
from riskserve.monitoring import Metrics
from riskserve.routing import RoutingTable
from riskserve.runtime.loaded import OUTPUT_NAME, LoadedModel

SERVER_NAME = "riskserve"

#: What a decoded tensor may hold: a numeric array, a V2 packed BYTES buffer,
#: or a list of byte strings (typed contents).
TensorData = npt.NDArray[Any] | bytes | list[bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class InferInput:
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


@dataclasses.dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    probability: npt.NDArray[np.float32]
    parameters: Mapping[str, str]


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

    def __init__(self, settings: Settings, table: RoutingTable, metrics: Metrics) -> None:
        self._settings = settings
        self._table = table
        self._metrics = metrics
        metrics.set_models(table)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.compute_threads, thread_name_prefix="riskserve-compute"
        )
        self._inflight = 0
        self.ready = True

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap_table(self, table: RoutingTable) -> None:
        """Replaces the routing table atomically; requests in flight keep theirs."""
        self._table = table
        self._metrics.set_models(table)

    def close(self) -> None:
        self.ready = False
        self._pool.shutdown(wait=True, cancel_futures=False)

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
            outputs=(TensorMetadata(OUTPUT_NAME, "FP32", (-1,)),),
        )

    # -- inference ----------------------------------------------------------------

    async def infer(self, req: InferRequest) -> InferResult:
        start = time.perf_counter()
        model: LoadedModel | None = None
        try:
            model = self._table.resolve(req.model_name, req.model_version)
            result, rows = await self._infer(model, req)
        except RiskserveError as e:
            # Unknown model names are not echoed into labels (unbounded cardinality).
            name = "__unknown__" if isinstance(e, NotFound) and model is None else req.model_name
            version = str(model.version) if model is not None else ""
            self._metrics.observe_error(name, version, e.code.name)
            raise
        except Exception:
            version = str(model.version) if model is not None else ""
            self._metrics.observe_error(req.model_name, version, "INTERNAL")
            raise
        self._metrics.observe_ok(
            result.model_name, result.model_version, time.perf_counter() - start, rows
        )
        return result

    async def _infer(self, model: LoadedModel, req: InferRequest) -> tuple[InferResult, int]:
        if req.time_remaining is not None and req.time_remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before it was scored")
        columns, rows = self._columns(model, req)
        if self._inflight >= self._settings.max_inflight:
            raise Overloaded(
                f"server is at its admission bound of {self._settings.max_inflight} requests"
            )
        self._inflight += 1
        try:
            loop = asyncio.get_running_loop()
            probs = await loop.run_in_executor(self._pool, _score, model, columns)
        finally:
            self._inflight -= 1
        if probs.shape != (rows,):
            raise RuntimeError(f"model returned shape {probs.shape} for {rows} rows")
        result = InferResult(
            model_name=model.name,
            model_version=str(model.version),
            id=req.id,
            probability=probs,
            parameters={},
        )
        return result, rows

    def _columns(self, model: LoadedModel, req: InferRequest) -> tuple[dict[str, Any], int]:
        """Validates inputs against the model's spec; returns columns and the batch size."""
        for out in req.requested_outputs:
            if out != OUTPUT_NAME:
                raise InvalidInput(f"unknown output {out!r}; this model outputs {OUTPUT_NAME!r}")
        index = model.input_index
        columns: dict[str, Any] = {}
        batch: int | None = None
        for inp in req.inputs:
            info = index.get(inp.name)
            if info is None:
                raise InvalidInput(
                    f"unexpected input {inp.name!r}: model {model.name!r} has no such input"
                )
            if inp.name in columns:
                raise InvalidInput(f"input {inp.name!r} appears more than once")
            if inp.datatype != info.datatype:
                raise InvalidInput(
                    f"input {inp.name!r} must have datatype {info.datatype}, got {inp.datatype}"
                )
            shape = inp.shape
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidInput(
                    f"input {inp.name!r} must have shape [batch] or [batch, 1], got {list(shape)}"
                )
            rows = shape[0]
            if rows < 1:
                raise InvalidInput(f"input {inp.name!r} has batch size {rows}; it must be >= 1")
            if rows > self._settings.max_request_rows:
                raise InvalidInput(
                    f"input {inp.name!r} has {rows} rows; the limit is "
                    f"{self._settings.max_request_rows}"
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
        assert batch is not None  # the model has ≥ 1 input and all are present
        return columns, batch


def _element_count(inp: InferInput) -> int:
    data = inp.data
    if isinstance(data, bytes):
        try:
            return packed_count(data)
        except InputError as e:
            raise InvalidInput(f"input {inp.name!r}: {e}") from None
    return len(data)


def _score(model: LoadedModel, columns: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    try:
        return model.score(columns)
    except InputError as e:
        raise InvalidInput(str(e)) from None
