"""Per-version inference statistics, as Triton reports them (the Open Inference
Protocol's statistics extension: ModelStatistics, transport/inference.py).

One `VersionRecorder` per loaded version (the data plane keeps it beside the
version's batcher, so it goes when the version is unloaded), fed with times its
callers already took (`time.perf_counter()` values and differences of them):

* `executed`, once per model execution by the batcher: the rows and requests it
  scored, their summed time in the queue and before it, the model call's time;
* `succeeded`, once per reply by the transport, after the reply is built;
* `failed`, once per failed request that reached a version.

Each is a few float and integer additions to attributes, on the event loop's
thread (every caller runs there), without a lock and without a loop over rows.
`snapshot()` reads them into a frozen `VersionStatistics` in Triton's units
(nanoseconds, milliseconds since the epoch), which adds up across worker
processes (`+`) and travels in the worker snapshots as JSON (`to_json`,
`from_json`).

Every request that got scores is split into four consecutive parts, which add
up to its success duration:

* compute_input: received (before its bytes were decoded) → queued for its
  version: decoding, routing, validation;
* queue: queued → its batch began;
* compute_infer: its batch's model call (the feature pipeline and the model,
  one call); every request in a batch is charged the batch's time, as Triton does;
* compute_output: the batch's end → the reply built. Not timed on its own: it is
  the success time minus the three others, summed over requests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

NS = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Duration:
    """Triton's StatisticDuration: how many times, and their total nanoseconds."""

    count: int = 0
    ns: int = 0

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchStatistics:
    """Executions of one batch size (rows) and their model-call time."""

    batch_size: int
    compute_infer: Duration


@dataclasses.dataclass(frozen=True, slots=True)
class VersionStatistics:
    """One version's figures since it was loaded, in Triton's units."""

    #: Milliseconds since the epoch of the last successful request (0: none yet).
    last_inference_ms: int = 0
    #: Rows of successful requests (a 7-row request counts 7).
    inference_count: int = 0
    #: Successful model executions (a batch of several requests counts once).
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    #: By batch size, smallest first.
    batches: tuple[BatchStatistics, ...] = ()

    def __add__(self, other: VersionStatistics) -> VersionStatistics:
        """The figures of two processes serving the same version, summed."""
        sizes: dict[int, Duration] = {}
        for b in (*self.batches, *other.batches):
            sizes[b.batch_size] = sizes.get(b.batch_size, Duration()) + b.compute_infer
        return VersionStatistics(
            last_inference_ms=max(self.last_inference_ms, other.last_inference_ms),
            inference_count=self.inference_count + other.inference_count,
            execution_count=self.execution_count + other.execution_count,
            success=self.success + other.success,
            fail=self.fail + other.fail,
            queue=self.queue + other.queue,
            compute_input=self.compute_input + other.compute_input,
            compute_infer=self.compute_infer + other.compute_infer,
            compute_output=self.compute_output + other.compute_output,
            batches=tuple(BatchStatistics(s, d) for s, d in sorted(sizes.items())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "last_inference_ms": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            **{k: [d.count, d.ns] for k, d in self._durations().items()},
            "batches": [
                [b.batch_size, b.compute_infer.count, b.compute_infer.ns] for b in self.batches
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VersionStatistics:
        """The inverse of to_json; ValueError (or KeyError, TypeError) when `doc`
        is not one."""

        def duration(key: str) -> Duration:
            count, ns = doc[key]
            return Duration(_count(count), _count(ns))

        return cls(
            last_inference_ms=_count(doc["last_inference_ms"]),
            inference_count=_count(doc["inference_count"]),
            execution_count=_count(doc["execution_count"]),
            success=duration("success"),
            fail=duration("fail"),
            queue=duration("queue"),
            compute_input=duration("compute_input"),
            compute_infer=duration("compute_infer"),
            compute_output=duration("compute_output"),
            batches=tuple(
                BatchStatistics(_count(s), Duration(_count(c), _count(ns)))
                for s, c, ns in sorted(doc["batches"])
            ),
        )

    def _durations(self) -> dict[str, Duration]:
        return {
            "success": self.success,
            "fail": self.fail,
            "queue": self.queue,
            "compute_input": self.compute_input,
            "compute_infer": self.compute_infer,
            "compute_output": self.compute_output,
        }


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


class VersionRecorder:
    """The live figures of one loaded version in one process (module docstring)."""

    __slots__ = (
        "_batches",
        "_last",
        "execution_count",
        "fail_count",
        "fail_seconds",
        "infer_seconds",
        "inference_count",
        "input_seconds",
        "queue_seconds",
        "scored",
        "success_count",
        "success_seconds",
    )

    def __init__(self) -> None:
        self.inference_count = 0
        self.execution_count = 0
        self.success_count = 0
        self.success_seconds = 0.0
        self.fail_count = 0
        self.fail_seconds = 0.0
        #: Requests that got scores: the count of queue, compute_input and
        #: compute_infer.
        self.scored = 0
        self.queue_seconds = 0.0
        self.input_seconds = 0.0
        #: Summed per request: each request is charged its batch's model call.
        self.infer_seconds = 0.0
        #: perf_counter() of the last success (0.0: none yet).
        self._last = 0.0
        #: batch size (rows) → [executions, seconds of model call]
        self._batches: dict[int, list[float]] = {}

    def executed(
        self, rows: int, requests: int, queue_seconds: float, input_seconds: float, seconds: float
    ) -> None:
        """One model execution of `rows` rows that scored `requests` requests, which
        waited `queue_seconds` in the queue and `input_seconds` before it, in all;
        the model call took `seconds`."""
        self.execution_count += 1
        self.scored += requests
        self.queue_seconds += queue_seconds
        self.input_seconds += input_seconds
        self.infer_seconds += seconds * requests
        b = self._batches.get(rows)
        if b is None:
            self._batches[rows] = [1, seconds]
        else:
            b[0] += 1
            b[1] += seconds

    def succeeded(self, rows: int, received: float) -> None:
        """A reply of `rows` scores is built; the request was received at
        perf_counter() `received`."""
        end = time.perf_counter()
        self.success_count += 1
        self.success_seconds += end - received
        self.inference_count += rows
        self._last = end

    def failed(self, received: float) -> None:
        """A request received at perf_counter() `received` failed (any status)."""
        self.fail_count += 1
        self.fail_seconds += time.perf_counter() - received

    def snapshot(self) -> VersionStatistics:
        """The figures now. Safe from another thread: it reads attributes (and a
        copy of the batch sizes) and writes nothing."""
        perf, wall = time.perf_counter(), time.time()
        last = self._last
        last_ms = 0 if last == 0.0 else int((wall - (perf - last)) * 1000)
        success_ns = _ns(self.success_seconds)
        queue_ns, input_ns = _ns(self.queue_seconds), _ns(self.input_seconds)
        infer_ns = _ns(self.infer_seconds)
        scored = self.scored
        batches = sorted(self._batches.items())  # a copy first: the loop may add sizes
        return VersionStatistics(
            last_inference_ms=last_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            success=Duration(self.success_count, success_ns),
            fail=Duration(self.fail_count, _ns(self.fail_seconds)),
            queue=Duration(scored, queue_ns),
            compute_input=Duration(scored, input_ns),
            compute_infer=Duration(scored, infer_ns),
            # A request scored but never answered (its caller went away) leaves
            # its queue and compute time without a success: never below 0.
            compute_output=Duration(
                self.success_count, max(0, success_ns - queue_ns - input_ns - infer_ns)
            ),
            batches=tuple(
                BatchStatistics(size, Duration(int(n), _ns(s))) for size, (n, s) in batches
            ),
        )


def _ns(seconds: float) -> int:
    return max(0, round(seconds * NS))


@dataclasses.dataclass(frozen=True, slots=True)
class ServedStatistics:
    """A version this process serves, with its figures."""

    name: str
    version: int
    sha256: str
    statistics: VersionStatistics

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.name, self.version, self.sha256)


PeerStatistics = Mapping[tuple[str, int, str], VersionStatistics]


def with_peers(served: Iterable[ServedStatistics], peers: PeerStatistics) -> list[ServedStatistics]:
    """`served` with the figures other processes report for the same versions
    (same model, version and model file) added; versions only peers serve are
    left out: the answering process's routing table says what is served."""
    out = []
    for s in served:
        other = peers.get(s.key)
        out.append(s if other is None else dataclasses.replace(s, statistics=s.statistics + other))
    return out


__all__ = [
    "BatchStatistics",
    "Duration",
    "PeerStatistics",
    "ServedStatistics",
    "VersionRecorder",
    "VersionStatistics",
    "with_peers",
]
