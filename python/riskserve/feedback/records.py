"""What the feedback loop stores: prediction rows, labels and their results, and
the joined rows outcomes are computed from. Plain values only (no I/O): the
stores (riskserve.feedback.store) read and write these."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


class Outcome(enum.IntEnum):
    """Ground truth for one prediction."""

    LEGIT = 0
    FRAUD = 1


class LabelResult(enum.Enum):
    """What became of one label sent in."""

    #: Stored and joined to its prediction.
    ACCEPTED = "accepted"
    #: Its idempotency key was seen before with the same content: nothing changed.
    DUPLICATE = "duplicate"
    #: A new outcome for a prediction that had another one (a reversed chargeback):
    #: the new one is current, the old one stays in the history.
    REVISED = "revised"
    #: Stored; its prediction is not in the log yet (it is joined when it lands).
    PENDING = "pending"
    #: Not stored as a label of its prediction; `reason` says why.
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True, slots=True)
class PredictionRow:
    """One scored row as the prediction log stores it.

    `id` is the request id for a one-row request, `<request id>/<row index>` for
    each row of a larger one. A shadow scoring of the same row has the same id
    and `shadow=True`."""

    id: str
    #: Unix seconds (UTC) when the row was scored.
    ts: float
    model: str
    version: int
    #: The variant that served it ("v2", "explicit"), or "shadow" for a shadow scoring.
    variant: str
    revision: int
    #: Keyed hash (hex) of the routing key; None when the request sent none.
    key_hash: str | None
    score: float
    threshold: float
    flagged: bool
    shadow: bool
    #: The raw inputs of this row as received: a JSON object text (field → value;
    #: NaN and missing values as null, BYTES as strings).
    inputs: str


@dataclasses.dataclass(frozen=True, slots=True)
class Label:
    """One ground-truth label, as sent by a client (already validated)."""

    #: The idempotency key: the same key sent twice is stored once.
    label_id: str
    #: The prediction's id (PredictionRow.id).
    request_id: str
    outcome: Outcome
    #: Unix seconds (UTC) when the outcome became known.
    label_time: float
    #: "chargeback", "analyst", "customer" or another short word.
    source: str
    #: The transaction amount the outcome concerns (for amount-weighted recall).
    amount: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LabelAck:
    """The stored result of one label (in the order the labels were given)."""

    result: LabelResult
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """Prediction rows of one model in a time range, each with its current label
    (if any): column arrays of equal length, ordered by `ts`. Non-shadow and shadow
    rows both appear (`shadow`)."""

    ts: npt.NDArray[np.float64]
    version: npt.NDArray[np.int64]
    variant: npt.NDArray[np.str_]
    shadow: npt.NDArray[np.bool_]
    key_hash: npt.NDArray[np.str_]  # "" where the request had no routing key
    score: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    flagged: npt.NDArray[np.bool_]
    #: 1 fraud, 0 legit, -1 no (valid) label yet.
    outcome: npt.NDArray[np.int8]
    #: Label time minus prediction time, seconds (NaN where unlabelled).
    delay: npt.NDArray[np.float64]
    #: The label's amount (NaN where none was sent or unlabelled).
    amount: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> Joined:
        return cls.of([])

    @classmethod
    def of(
        cls,
        rows: Sequence[tuple[float, int, str, bool, str, float, float, bool, int, float, float]],
    ) -> Joined:
        """From tuples in field order (what a store's query returns)."""
        cols = list(zip(*rows, strict=True)) if rows else [()] * 11
        return cls(
            ts=np.asarray(cols[0], dtype=np.float64),
            version=np.asarray(cols[1], dtype=np.int64),
            variant=np.asarray(cols[2], dtype=np.str_),
            shadow=np.asarray(cols[3], dtype=np.bool_),
            key_hash=np.asarray(cols[4], dtype=np.str_),
            score=np.asarray(cols[5], dtype=np.float64),
            threshold=np.asarray(cols[6], dtype=np.float64),
            flagged=np.asarray(cols[7], dtype=np.bool_),
            outcome=np.asarray(cols[8], dtype=np.int8),
            delay=np.asarray(cols[9], dtype=np.float64),
            amount=np.asarray(cols[10], dtype=np.float64),
        )
