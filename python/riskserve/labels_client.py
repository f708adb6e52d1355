"""The client side of the Feedback service: label files read and checked, sent as
a stream of committed batches, and outcomes fetched (used by the CLI and tests).
Imports nothing of the server.

A label file (CSV or Parquet) has the columns `request_id`, `outcome` (`fraud` /
`legit`, or 1 / 0), and optionally `label_time` (ISO 8601, or Unix seconds),
`source`, `amount` and `label_id`. A row the client can tell is bad (an unknown
outcome, an unreadable time) is not sent: it is counted as rejected, with its
line and reason."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as pb
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2_grpc as pb_grpc

RESULTS = ("accepted", "duplicate", "revised", "pending", "rejected")
_RESULT_NAME = {
    pb.ACCEPTED: "accepted",
    pb.DUPLICATE: "duplicate",
    pb.REVISED: "revised",
    pb.PENDING: "pending",
    pb.REJECTED: "rejected",
}
_FRAUD = {"fraud", "1", "1.0", "true", "chargeback"}
_LEGIT = {"legit", "legitimate", "0", "0.0", "false", "genuine"}
#: Labels per stream message.
BATCH = 1000


def feedback_token(explicit: str = "") -> str:
    """The feedback token: `explicit`, else RISKSERVE_FEEDBACK_TOKEN_FILE's
    content, else RISKSERVE_FEEDBACK_TOKEN (what the server reads, too)."""
    if explicit:
        return explicit
    path = os.environ.get("RISKSERVE_FEEDBACK_TOKEN_FILE", "")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get("RISKSERVE_FEEDBACK_TOKEN", "")


@dataclasses.dataclass(frozen=True)
class FileRejection:
    line: int
    reason: str


def _time_ms(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return round(stamp.timestamp() * 1000)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"label_time {value!r} is not a time")
        return round(float(value) * 1000)
    text = str(value).strip()
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return round(stamp.timestamp() * 1000)


def label_of(row: dict[str, Any]) -> pb.Label:
    """One file row as a Label message (ValueError naming the problem)."""
    rid = row.get("request_id")
    if rid is None or str(rid).strip() == "":
        raise ValueError("request_id is empty")
    raw = str(row.get("outcome", "")).strip().lower()
    if raw in _FRAUD:
        outcome = pb.OUTCOME_FRAUD
    elif raw in _LEGIT:
        outcome = pb.OUTCOME_LEGITIMATE
    else:
        raise ValueError(f"outcome {raw[:32]!r} is not fraud/legit or 1/0")
    try:
        ms = _time_ms(row.get("label_time"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"label_time {str(row.get('label_time'))[:40]!r}: {e}") from None
    label = pb.Label(
        request_id=str(rid).strip(),
        outcome=outcome,
        label_time_ms=ms,
        source=str(row.get("source") or "").strip(),
        label_id=str(row.get("label_id") or "").strip(),
    )
    amount = row.get("amount")
    if amount is not None and amount != "":
        value = float(amount)
        if not math.isnan(value):
            label.amount = value
    return label


def read_label_file(path: Path) -> tuple[list[pb.Label], list[FileRejection]]:
    """The labels of a CSV or Parquet file, and the rows refused with their line
    (1 = the first data row)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix.lower() in (".parquet", ".pq"):
        table = pq.read_table(path)
    else:
        strings = dict.fromkeys(("request_id", "outcome", "source", "label_id"), pa.string())
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=strings))
    missing = [c for c in ("request_id", "outcome") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: the label file has no column {missing[0]!r}")
    labels, rejected = [], []
    for i, row in enumerate(table.to_pylist(), start=1):
        try:
            labels.append(label_of(row))
        except ValueError as e:
            rejected.append(FileRejection(i, str(e)))
    return labels, rejected


def counts_of(responses: Sequence[pb.SendLabelsResponse]) -> dict[str, int]:
    out = dict.fromkeys(RESULTS, 0)
    for r in responses:
        for ack in r.results:
            out[_RESULT_NAME[ack.result]] += 1
    return out


class FeedbackClient:
    def __init__(self, target: str, token: str = "", timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.FeedbackStub(self.channel)
        self.metadata = [("authorization", f"Bearer {feedback_token(token)}")]
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def send(self, labels: Sequence[pb.Label]) -> pb.SendLabelsResponse:
        reply: pb.SendLabelsResponse = self.stub.SendLabels(
            pb.SendLabelsRequest(labels=labels), metadata=self.metadata, timeout=self.timeout
        )
        return reply

    def stream(
        self,
        labels: Sequence[pb.Label],
        batch: int = BATCH,
        on_ack: Callable[[int], None] | None = None,
    ) -> list[pb.SendLabelsResponse]:
        """Sends `labels` as a stream of batches; returns one reply per batch, each
        received once that batch was committed. `on_ack(n)` after each (n labels)."""

        def messages() -> Iterator[pb.SendLabelsRequest]:
            for i in range(0, len(labels), batch):
                yield pb.SendLabelsRequest(labels=labels[i : i + batch])

        out = []
        for reply in self.stub.StreamLabels(
            messages(), metadata=self.metadata, timeout=self.timeout
        ):
            out.append(reply)
            if on_ack is not None:
                on_ack(len(reply.results))
        return out

    def performance(
        self, model: str, maturity_seconds: float | None = None, window_seconds: float = 0.0
    ) -> pb.GetPerformanceResponse:
        req = pb.GetPerformanceRequest(model=model, window_seconds=window_seconds)
        if maturity_seconds is not None:
            req.maturity_seconds = maturity_seconds
            req.has_maturity = True
        reply: pb.GetPerformanceResponse = self.stub.GetPerformance(
            req, metadata=self.metadata, timeout=self.timeout
        )
        return reply


def parse_duration(text: str) -> float:
    """ "14d", "36h", "90m", "30s" or plain seconds → seconds."""
    t = text.strip().lower()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    if t and t[-1] in units:
        value = float(t[:-1])
        seconds = value * units[t[-1]]
    else:
        seconds = float(t)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {text!r} must be >= 0")
    return seconds
