"""The prediction log: every scored row, written in the background.

The data plane hands over one `Scored` per request (its arrays as they are: no
per-row work on the reply path) with `PredictionLog.submit`, which never blocks:
it appends to a bounded in-memory queue, or, when the queue holds
`queue_rows` rows already, drops the request's rows and counts them. A writer
thread wakes every `flush_seconds`, turns what is queued into PredictionRows
(the raw inputs as JSON, the routing key as a keyed hash) and commits them to
the store in batches of `batch_rows`. A batch the store refuses is retried with
back-off (new rows queue meanwhile, and drop when the queue is full); `close`
commits what is queued before the process exits.

Ids: a one-row request's row is logged under the request id, each row of a
larger request under `<request id>/<row index>` (what labels name)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from riskserve._native import request_rows_json, rows_json
from riskserve.feedback.records import PredictionRow
from riskserve.feedback.store import FeedbackStore

log = logging.getLogger(__name__)

#: Bytes of the keyed hash kept (hex: twice as many characters).
HASH_BYTES = 16
#: Longest pause between retries of a batch the store refused, seconds.
MAX_BACKOFF = 2.0


class Scored(NamedTuple):
    """One scored request, as the data plane hands it over (a NamedTuple: one is
    built per request on the hot path)."""

    request_id: str
    ts: float
    model: str
    version: int
    variant: str
    revision: int
    routing_key: str | None
    scores: npt.NDArray[np.float32]
    threshold: float
    shadow: bool
    #: The inputs as received: input name → numpy array, V2 packed BYTES, or a
    #: list of byte strings (the data plane's dict, handed to Rust as it is); or,
    #: from the native path, the request's bytes, read by the writer thread.
    columns: dict[str, Any] | bytes

    @property
    def rows(self) -> int:
        return len(self.scores)


@dataclasses.dataclass(frozen=True, slots=True)
class LogCounters:
    """Where the log reports what became of rows (Prometheus counters)."""

    written: Callable[[int], None]
    dropped: Callable[[int], None]
    failed: Callable[[int], None]


def routing_key_hasher(key: bytes) -> Callable[[str], str]:
    """HMAC-SHA256 of a routing key under `key`, hex, HASH_BYTES long: card ids
    never reach the log, yet rows of one card stay together."""

    def digest(routing_key: str) -> str:
        mac = hmac.new(key, routing_key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return mac.hexdigest()[: 2 * HASH_BYTES]

    return digest


def load_hash_key(path: Path) -> bytes:
    """The hash key in `path` (hex or raw, at least 16 bytes); made (0600) when
    missing, so every worker and replica on this folder shares it."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it first
            return load_hash_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(fresh + b"\n")
            f.flush()
            os.fsync(f.fileno())
        data = fresh
    if len(data) < 16:
        raise ValueError(f"routing key hash file {path} holds {len(data)} bytes; it needs 16+")
    return data


def unpack_bytes(packed: bytes) -> list[bytes]:
    """V2 packed BYTES (4-byte little-endian length, then the bytes, per element)."""
    out: list[bytes] = []
    i, n = 0, len(packed)
    while i < n:
        (size,) = struct.unpack_from("<I", packed, i)
        i += 4
        out.append(packed[i : i + size])
        i += size
    return out


def to_rows(item: Scored, key_hash: Callable[[str], str]) -> list[PredictionRow]:
    """A scored request's log rows."""
    n = item.rows
    # One native call, the GIL released while it formats (riskserve-core record).
    cols = item.columns
    if isinstance(cols, bytes):
        inputs = request_rows_json(cols, n)
    else:
        inputs = rows_json(cols, n) if cols else ["{}"] * n
    hashed = None if item.routing_key is None else key_hash(item.routing_key)
    scores = item.scores.astype(np.float64).tolist()
    # The same comparison as the reply's `flagged` output (float32 against the
    # threshold, NumPy's rules), so the log and the reply never disagree.
    flagged = (item.scores >= item.threshold).tolist()
    variant = "shadow" if item.shadow else item.variant
    rid = item.request_id
    ids = [rid] if n == 1 else [f"{rid}/{i}" for i in range(n)]
    return [
        PredictionRow(
            ids[i],
            item.ts,
            item.model,
            item.version,
            variant,
            item.revision,
            hashed,
            scores[i],
            item.threshold,
            flagged[i],
            item.shadow,
            inputs[i],
        )
        for i in range(n)
    ]


class PredictionLog:
    """The bounded queue and its writer thread (module docstring)."""

    def __init__(
        self,
        store: FeedbackStore,
        key_hash: Callable[[str], str],
        counters: LogCounters,
        *,
        queue_rows: int,
        batch_rows: int,
        flush_seconds: float,
    ) -> None:
        self._store = store
        self._key_hash = key_hash
        self._counters = counters
        self._limit = queue_rows
        self._batch_rows = batch_rows
        self._flush = flush_seconds
        self._lock = threading.Lock()
        self._queue: collections.deque[Scored] = collections.deque()
        self._queued = 0  # rows in _queue
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._thread = threading.Thread(
            target=self._run, name="riskserve-prediction-log", daemon=True
        )
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued

    def submit(self, item: Scored) -> bool:
        """Queues a scored request's rows; False (and counted) when they were dropped."""
        n = item.rows
        with self._lock:
            if self._queued + n > self._limit or self._stop.is_set():
                dropped = True
            else:
                self._queue.append(item)
                self._queued += n
                dropped = False
        if dropped:
            self._counters.dropped(n)
        return not dropped

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, self._flush))
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Commits what is queued (up to `timeout`), then stops the writer; False
        when the writer is still busy (in a store call) after `timeout`."""
        self._stop.set()
        self._thread.join(timeout)
        with self._lock:
            left = self._queued
            self._queue.clear()
            self._queued = 0
        if left:
            log.error("prediction log: rows not committed at exit", extra={"rows": left})
            self._counters.dropped(left)
        return not self._thread.is_alive()

    def _take(self) -> list[Scored]:
        out: list[Scored] = []
        rows = 0
        with self._lock:
            while self._queue and rows < self._batch_rows:
                item = self._queue.popleft()
                out.append(item)
                rows += item.rows
            self._queued -= rows
            self._busy = bool(out)
        return out

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._flush)
            while True:
                items = self._take()
                if not items:
                    break
                self._write(items, stopping)
            with self._idle:
                self._busy = False
                self._idle.notify_all()
            if stopping:
                return

    def _write(self, items: Sequence[Scored], stopping: bool) -> None:
        try:
            rows = [r for item in items for r in to_rows(item, self._key_hash)]
        except Exception:  # a bug: these rows are lost, the log goes on
            log.exception("prediction log: rows could not be encoded")
            self._counters.failed(sum(i.rows for i in items))
            return
        backoff = min(0.05, MAX_BACKOFF)
        while True:
            try:
                self._store.write_predictions(rows)
            except Exception as e:
                log.warning(
                    "prediction log: store refused a batch; retrying",
                    extra={"rows": len(rows), "error": str(e)},
                )
                if stopping or self._stop.wait(backoff):
                    # Stopping: one last try, then the rows are counted as failed.
                    try:
                        self._store.write_predictions(rows)
                    except Exception:
                        self._counters.failed(len(rows))
                        return
                    break
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            break
        self._counters.written(len(rows))
