"""Dynamic batching per loaded version (docs/architecture.md): requests join the version's
queue; a batch is whatever arrived while the previous batch ran, capped at
`max_batch_size` rows (BatchingSettings), so an idle server scores a lone
request at once and a busy one amortises the per-call cost of the pipeline and
the model.

One batch per version is in flight at a time; the numeric work runs in the
compute pool with the GIL released. If a merged batch fails on bad input, its
requests are scored one by one so the error reaches only the request that
caused it; any other failure fails the whole batch (never retried, so drift
never counts a row twice).

A request is never scored after its deadline: one that expired while queued is
failed with DEADLINE_EXCEEDED when it is dequeued. Every dequeue reports the
queueing delay it saw to `on_dequeue` (the data plane's load shedder), and every
successful model execution its figures to `on_executed` (the version's
statistics, riskserve.monitoring.statistics). Times are time.perf_counter()."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import struct
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import numpy.typing as npt

from riskserve.config import BatchingSettings
from riskserve.errors import DeadlineExceeded, InvalidInput
from riskserve.runtime.loaded import LoadedModel

Scores = npt.NDArray[np.float32]
ScoreFn = Callable[[LoadedModel, Mapping[str, Any]], Scores]
#: Called once per batch: (model name, version, rows in the batch, seconds each
#: request queued).
BatchObserver = Callable[[str, str, int, Sequence[float]], None]
#: Called with (time.perf_counter(), queueing delay): once per dequeue, the smallest
#: wait among the requests taken (expired and abandoned ones included), and 0.0
#: when the queue has drained (nothing waits, no batch runs).
DequeueObserver = Callable[[float, float], None]
#: Called once per successful model execution: (rows, requests given scores, their
#: seconds in the queue summed, their seconds from `received` to the queue summed,
#: seconds the model call took). VersionRecorder.executed.
ExecutionObserver = Callable[[int, int, float, float, float], None]


@dataclasses.dataclass
class _Pending:
    columns: Mapping[str, Any]
    rows: int
    future: asyncio.Future[Scores]
    enqueued: float
    deadline: float | None
    #: When the request was received (before decoding), for its statistics.
    received: float


def unpack_bytes(buf: bytes) -> list[bytes]:
    """A V2 packed BYTES buffer as a list (already validated by the data plane)."""
    out, pos = [], 0
    while pos < len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(buf[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def merge_columns(parts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Concatenates the columns of several requests, input by input."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for name in parts[0]:
        values = [p[name] for p in parts]
        first = values[0]
        if isinstance(first, np.ndarray):
            merged[name] = np.concatenate([np.ravel(v) for v in values])
        elif all(isinstance(v, bytes) for v in values):
            merged[name] = b"".join(values)  # packed buffers concatenate as they are
        else:
            flat: list[Any] = []
            for v in values:
                flat.extend(unpack_bytes(v) if isinstance(v, bytes) else v)
            merged[name] = flat
    return merged


class Batcher:
    def __init__(
        self,
        model: LoadedModel,
        pool: Executor,
        score: ScoreFn,
        settings: BatchingSettings,
        observe: BatchObserver | None = None,
        on_dequeue: DequeueObserver | None = None,
        on_executed: ExecutionObserver | None = None,
    ) -> None:
        # Weak: the dataplane keys batchers weakly by model, and a strong reference
        # here would keep every unloaded version alive. In-flight requests hold
        # the model themselves.
        self._model = weakref.ref(model)
        self._labels = (model.name, str(model.version))
        self._pool = pool
        self._score = score
        self.max_batch_size = settings.max_batch_size
        self.max_delay = settings.max_batch_delay
        self._observe = observe
        self._on_dequeue = on_dequeue
        self._on_executed = on_executed
        #: Batches of at most this many rows run on the event loop itself,
        #: skipping the hand-off to the pool (0: every batch goes to the pool).
        self.inline_rows = settings.inline_rows
        self._queue: collections.deque[_Pending] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        #: Rows of every batch run (bounded), for tests and diagnostics.
        self.batch_rows: collections.deque[int] = collections.deque(maxlen=10_000)

    async def submit(
        self,
        columns: Mapping[str, Any],
        rows: int,
        time_remaining: float | None = None,
        received: float | None = None,
    ) -> Scores:
        """The request's scores. `received`: its perf_counter() when it arrived
        (default now), for the time before the queue in its statistics."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        deadline = None if time_remaining is None else now + time_remaining
        fut: asyncio.Future[Scores] = loop.create_future()
        pending = _Pending(columns, rows, fut, now, deadline, now if received is None else received)
        self._queue.append(pending)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await fut

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        now = time.perf_counter()
        least: float | None = None
        while self._queue:
            p = self._queue[0]
            if batch and rows + p.rows > self.max_batch_size:
                break
            self._queue.popleft()
            wait = now - p.enqueued
            if least is None or wait < least:
                least = wait
            if p.future.done():  # the caller went away
                continue
            if p.deadline is not None and p.deadline <= now:
                p.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                continue
            batch.append(p)
            rows += p.rows
        if self._on_dequeue is not None and least is not None:
            self._on_dequeue(now, least)
        return batch

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (not the batch being scored)."""
        return len(self._queue)

    @property
    def model(self) -> LoadedModel:
        m = self._model()
        if m is None:
            raise RuntimeError("the model of this batcher was released")
        return m

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False
        while self._queue:
            if busy and self.max_delay > 0 and self._queued_rows() < self.max_batch_size:
                # Under load only: give the batch a moment to fill. An idle
                # batcher (busy=False) never waits.
                await asyncio.sleep(self.max_delay)
            batch = self._take()
            if not batch:
                continue
            busy = True
            began = time.perf_counter()
            rows = sum(p.rows for p in batch)
            self.batch_rows.append(rows)
            if self._observe is not None:
                self._observe(*self._labels, rows, [began - p.enqueued for p in batch])
            try:
                merged = merge_columns([p.columns for p in batch])
                if rows <= self.inline_rows:
                    probs = self._score(self.model, merged)
                else:
                    probs = await loop.run_in_executor(self._pool, self._score, self.model, merged)
                if probs.shape != (rows,):
                    raise RuntimeError(f"model returned shape {probs.shape} for {rows} rows")
                ended = time.perf_counter()
            except InvalidInput as e:
                # Bad input fails in the transform, before anything is counted:
                # rescoring one by one keeps the error to the request that caused it.
                if len(batch) == 1:
                    _fail(batch[0], e)
                else:
                    await self._one_by_one(batch)
                continue
            except Exception as e:
                for p in batch:
                    _fail(p, e)
                continue
            start, scored, queued, before = 0, 0, 0.0, 0.0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(probs[start : start + p.rows])
                    scored += 1
                    queued += began - p.enqueued
                    before += p.enqueued - p.received
                start += p.rows
            if self._on_executed is not None:
                self._on_executed(rows, scored, queued, before, ended - began)
        if self._on_dequeue is not None:
            self._on_dequeue(time.perf_counter(), 0.0)  # drained: no standing queue

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        """Scores each request of a failed merged batch on its own; each success is
        an execution of its own (its queue time ends when its own call begins)."""
        loop = asyncio.get_running_loop()
        for p in batch:
            began = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._pool, self._score, self.model, p.columns)
            except Exception as e:
                _fail(p, e)
                continue
            ended = time.perf_counter()
            if not p.future.done():
                p.future.set_result(probs)
                if self._on_executed is not None:
                    self._on_executed(
                        p.rows, 1, began - p.enqueued, p.enqueued - p.received, ended - began
                    )


def _fail(p: _Pending, e: Exception) -> None:
    if not p.future.done():
        p.future.set_exception(e)
