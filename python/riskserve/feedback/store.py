"""The feedback store: one interface, two real backends (SQLite, PostgreSQL).

The prediction log writer commits PredictionRows; the Feedback service commits
Labels (acknowledged only after the commit); outcomes read Joined rows. Both
backends implement the same semantics and pass the same tests
(tests/feedback/test_store.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from riskserve.errors import Unavailable
from riskserve.feedback.records import Joined, Label, LabelAck, LabelResult, PredictionRow

#: Schema version of both backends (a store of another version is refused).
SCHEMA_VERSION = 1


class StoreError(Unavailable):
    """The store cannot be opened or used; the message says why (and where)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreCounts:
    predictions: int
    labels: int
    pending: int


@dataclasses.dataclass(frozen=True, slots=True)
class LabelRecord:
    """One label in a prediction's history, oldest first."""

    label_id: str
    request_id: str
    outcome: int
    label_time: float
    source: str
    amount: float | None
    #: "current", "superseded" (a later label revised it), "agreed" (same outcome
    #: as the current one, kept in history), "pending", "rejected".
    status: str
    reason: str
    received_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Purged:
    predictions: int
    labels: int
    #: Pending labels whose prediction never arrived in time (now rejected).
    expired: int


#: Rows per chunk of FeedbackStore.logged_rows by default.
LOGGED_CHUNK_ROWS = 50_000


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedRows:
    """One chunk of `FeedbackStore.logged_rows`: non-shadow prediction rows with the
    current label of each (if any), columns of equal length."""

    id: list[str]
    #: Prediction time, Unix seconds.
    ts: npt.NDArray[np.float64]
    version: npt.NDArray[np.int64]
    #: 1 fraud, 0 legit, -1 no current label.
    outcome: npt.NDArray[np.int8]
    #: The label's amount (NaN where none was sent, or unlabelled).
    amount: npt.NDArray[np.float64]
    #: The label's time (NaN where unlabelled).
    label_time: npt.NDArray[np.float64]
    #: The raw inputs as logged (a JSON object text); "" for an unlabelled row unless
    #: its inputs were asked for.
    inputs: list[str]

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def of(
        cls, rows: Sequence[tuple[str, float, int, int, float | None, float | None, str]]
    ) -> LoggedRows:
        """From tuples in field order (what a store's query returns)."""
        cols = list(zip(*rows, strict=True)) if rows else [()] * 7
        return cls(
            id=list(cols[0]),
            ts=np.asarray(cols[1], dtype=np.float64),
            version=np.asarray(cols[2], dtype=np.int64),
            outcome=np.asarray(cols[3], dtype=np.int8),
            amount=np.asarray(cols[4], dtype=np.float64),  # None -> NaN
            label_time=np.asarray(cols[5], dtype=np.float64),
            inputs=list(cols[6]),
        )


class FeedbackStore(Protocol):
    """Thread-safe: the log writer thread, the label intake and outcome reads
    call it concurrently. Every write method commits before it returns."""

    #: "sqlite" or "postgresql".
    backend: str

    def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        """Rows written: all but any whose id or inputs cannot be stored (a NUL
        character or an unpaired surrogate, see `storable`)."""
        ...

    def write_labels(self, labels: Sequence[Label], received_at: float) -> list[LabelAck]: ...

    def joined(self, model: str, since: float, until: float) -> Joined: ...

    def logged_rows(
        self,
        model: str,
        since: float,
        until: float,
        *,
        chunk_rows: int = LOGGED_CHUNK_ROWS,
        unlabelled_inputs: bool = False,
    ) -> Iterator[LoggedRows]:
        """Every non-shadow prediction row of `model` with `since <= ts < until`, with
        its current label, ordered by time (then insertion), streamed in chunks of at
        most `chunk_rows` rows, all read from one consistent snapshot of the store
        (what retraining reads: riskserve.training.snapshot). Unlabelled rows come
        too (for label coverage), their inputs only with `unlabelled_inputs`. An id
        logged twice (a client's retry) comes twice, both rows with its label. The
        snapshot is held until the iterator is exhausted or closed."""
        ...

    def history(self, request_id: str) -> list[LabelRecord]: ...

    def counts(self) -> StoreCounts: ...

    def purge(self, before: float, pending_before: float) -> Purged: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------
# The label rules (pure): both backends read what a batch needs, let LabelRules decide,
# and write what it decided, in one transaction.
# --------------------------------------------------------------------------------------

#: Stored label statuses.
CURRENT = "current"
SUPERSEDED = "superseded"
AGREED = "agreed"
PENDING = "pending"
REJECTED = "rejected"
STATUSES = (CURRENT, SUPERSEDED, AGREED, PENDING, REJECTED)

#: Acks without a reason (immutable: shared).
_ACCEPTED = LabelAck(LabelResult.ACCEPTED)
_DUPLICATE = LabelAck(LabelResult.DUPLICATE)
_REVISED = LabelAck(LabelResult.REVISED)
_PENDING = LabelAck(LabelResult.PENDING)

#: The reason of a pending label that purge() expired.
EXPIRED_REASON = "its prediction did not arrive within the pending bound"


def iso_utc(t: float) -> str:
    """`2026-11-30T10:00:00Z` (milliseconds when `t` has a fraction of a second)."""
    spec = "seconds" if float(t).is_integer() else "milliseconds"
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec=spec).replace("+00:00", "Z")


#: Why a label whose text cannot be kept is rejected.
UNSTORABLE_REASON = (
    "label_id, request_id or source has a NUL character or an unpaired surrogate, "
    "which the store cannot keep"
)


def storable(text: str) -> bool:
    """Whether both backends keep `text` as it is: PostgreSQL's text cannot hold NUL
    (and SQLite's JSON functions do not match it), and an unpaired surrogate is not
    UTF-8. Ids are the client's; one bad id must not fail the rest of its batch."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_label(label: Label) -> bool:
    return storable(label.label_id) and storable(label.request_id) and storable(label.source)


def storable_rows(rows: Sequence[PredictionRow]) -> Sequence[PredictionRow]:
    """The rows a store writes: those whose id and inputs it can keep (all, nearly
    always; write_predictions returns how many it wrote)."""
    if all(storable(r.id) and storable(r.inputs) for r in rows):
        return rows
    return [r for r in rows if storable(r.id) and storable(r.inputs)]


def prediction_values(rows: Sequence[PredictionRow]) -> list[tuple[object, ...]]:
    """Rows as both backends insert them, in the predictions table's column order."""
    return [
        (
            r.id,
            float(r.ts),
            r.model,
            int(r.version),
            r.variant,
            int(r.revision),
            r.key_hash,
            float(r.score),
            float(r.threshold),
            bool(r.flagged),
            bool(r.shadow),
            r.inputs,
        )
        for r in rows
    ]


def stored_amount(amount: float | None) -> float | None:
    """The amount as stored: None when none was sent (NaN counts as none; SQLite
    cannot store NaN, so both backends store NULL)."""
    if amount is None or math.isnan(amount):
        return None
    return float(amount)


@dataclasses.dataclass(slots=True)
class StoredLabel:
    """A label row as the rules see it (read from a store, or about to be written).
    Mutable: the rules change `status` and `reason` as later labels arrive."""

    label_id: str
    request_id: str
    outcome: int
    label_time: float
    source: str
    amount: float | None
    status: str
    reason: str
    received_at: float

    def same_content(self, label: Label) -> bool:
        """Whether `label` is this one sent again. The label time is not compared:
        a label sent without one is stamped when it arrives, so its resend has
        another; the first time received stays."""
        return (
            self.request_id == label.request_id
            and self.outcome == int(label.outcome)
            and self.source == label.source
            and self.amount == stored_amount(label.amount)
        )

    def record(self) -> LabelRecord:
        return LabelRecord(
            label_id=self.label_id,
            request_id=self.request_id,
            outcome=self.outcome,
            label_time=self.label_time,
            source=self.source,
            amount=self.amount,
            status=self.status,
            reason=self.reason,
            received_at=self.received_at,
        )


class LabelRules:
    """The label rules over one transaction's view of the store.

    Built from what the store holds for a batch: the stored labels with the batch's
    label ids (`by_label_id`), the time of the earliest non-shadow prediction of
    each request id (`prediction_ts`) and each request's current label (`current`).
    `add` decides one incoming label (write_labels), `resolve` one stored pending
    label whose prediction has arrived (write_predictions); each sees the effect of
    the earlier ones. Afterwards `inserts` are the new rows (in the order received,
    with their final status) and `updates()` the stored rows whose status changed,
    in an order that never has two current labels of one request at once."""

    def __init__(
        self,
        by_label_id: dict[str, StoredLabel],
        prediction_ts: dict[str, float],
        current: dict[str, StoredLabel],
    ) -> None:
        self._by_label_id = by_label_id
        self._prediction_ts = prediction_ts
        self._current = current
        self.inserts: list[StoredLabel] = []
        self._new: set[str] = set()
        self._changed: dict[str, StoredLabel] = {}

    def add(self, label: Label, received_at: float) -> LabelAck:
        if not storable_label(label):
            return LabelAck(LabelResult.REJECTED, UNSTORABLE_REASON)
        stored = self._by_label_id.get(label.label_id)
        if stored is not None:
            if not stored.same_content(label):
                return LabelAck(
                    LabelResult.REJECTED,
                    f"label_id {label.label_id!r} was already used for a different label",
                )
            if stored.status == REJECTED:
                return LabelAck(LabelResult.REJECTED, stored.reason)
            return _DUPLICATE
        rec = StoredLabel(
            label_id=label.label_id,
            request_id=label.request_id,
            outcome=int(label.outcome),
            label_time=float(label.label_time),
            source=label.source,
            amount=stored_amount(label.amount),
            status=PENDING,
            reason="",
            received_at=float(received_at),
        )
        self._by_label_id[rec.label_id] = rec
        self._new.add(rec.label_id)
        self.inserts.append(rec)
        return self._place(rec)

    def resolve(self, pending: StoredLabel) -> LabelAck:
        """A stored pending label whose prediction is now in `prediction_ts`."""
        ack = self._place(pending)
        if ack.result is not LabelResult.PENDING:
            self._touch(pending)
        return ack

    def _place(self, rec: StoredLabel) -> LabelAck:
        ts = self._prediction_ts.get(rec.request_id)
        if ts is None:
            rec.status = PENDING
            return _PENDING
        if rec.label_time < ts:
            rec.status = REJECTED
            rec.reason = (
                f"label_time {iso_utc(rec.label_time)} is before the prediction's time "
                f"{iso_utc(ts)}"
            )
            return LabelAck(LabelResult.REJECTED, rec.reason)
        cur = self._current.get(rec.request_id)
        if cur is None:
            rec.status = CURRENT
            self._current[rec.request_id] = rec
            return _ACCEPTED
        if cur.outcome == rec.outcome:
            rec.status = AGREED
            return _ACCEPTED
        cur.status = SUPERSEDED
        self._touch(cur)
        rec.status = CURRENT
        self._current[rec.request_id] = rec
        return _REVISED

    def _touch(self, rec: StoredLabel) -> None:
        if rec.label_id not in self._new:
            self._changed[rec.label_id] = rec

    def updates(self) -> list[StoredLabel]:
        """Stored labels whose status changed: those no longer current first."""
        return sorted(self._changed.values(), key=lambda r: r.status == CURRENT)


def unique(values: Iterable[str]) -> list[str]:
    """Distinct values, first occurrence order."""
    return list(dict.fromkeys(values))


__all__ = [
    "AGREED",
    "CURRENT",
    "EXPIRED_REASON",
    "LOGGED_CHUNK_ROWS",
    "PENDING",
    "REJECTED",
    "SCHEMA_VERSION",
    "STATUSES",
    "SUPERSEDED",
    "UNSTORABLE_REASON",
    "FeedbackStore",
    "LabelRecord",
    "LabelRules",
    "LoggedRows",
    "Purged",
    "StoreCounts",
    "StoreError",
    "StoredLabel",
    "iso_utc",
    "prediction_values",
    "storable",
    "storable_label",
    "storable_rows",
    "stored_amount",
    "unique",
]
