"""The Feedback use cases, transport-neutral: labels in (validated, committed,
one result each) and outcomes out (per variant, with the A/B verdict).

A label batch is validated whole before anything is written: the first bad
label refuses the batch with InvalidInput naming its index and field
(`labels[3].outcome: ...`), so a client fixes its file and resends. What only
the store can judge (a label dated before its prediction, a label_id reused for
another label) is a per-label REJECTED with its reason."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from riskserve.config import FeedbackSettings
from riskserve.errors import InvalidInput, NotFound
from riskserve.feedback.outcomes import OutcomeSettings, Performance, outcomes
from riskserve.feedback.records import Label, LabelAck, LabelResult, Outcome
from riskserve.feedback.store import FeedbackStore, Purged, StoreError

T = TypeVar("T")

#: Labels one message may carry.
MAX_LABELS_PER_MESSAGE = 10_000
#: Longest request id or label id accepted, characters.
MAX_ID_CHARS = 256
#: A label time further in the future than this is a client's clock or unit bug.
FUTURE_SLACK_SECONDS = 300.0
_SOURCE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclasses.dataclass(frozen=True, slots=True)
class LabelIn:
    """One label as the transport read it (not validated yet)."""

    request_id: str
    #: "fraud" or "legit" (the transport maps its enum; anything else is refused).
    outcome: str
    #: Unix milliseconds; 0 = when it is received.
    label_time_ms: int
    source: str
    label_id: str
    amount: float | None


def outcome_settings(fb: FeedbackSettings) -> OutcomeSettings:
    """The outcome computation's part of the feedback settings."""
    return OutcomeSettings(
        maturity_seconds=fb.maturity_seconds,
        window_seconds=fb.window_seconds,
        min_labels=fb.min_labels,
    )


def derived_label_id(request_id: str, outcome: Outcome, source: str) -> str:
    """The idempotency key of a label sent without one: the same request,
    outcome and source are the same label however often they are sent."""
    text = f"{request_id}\x1f{int(outcome)}\x1f{source}"
    return "auto:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def validate(i: int, raw: LabelIn, now: float) -> Label:
    """The label, or InvalidInput naming `labels[i].<field>`."""

    def bad(field: str, why: str) -> InvalidInput:
        return InvalidInput(f"labels[{i}].{field}: {why}")

    rid = raw.request_id
    if not rid:
        raise bad("request_id", "is required (the id of the reply that carried the score)")
    if len(rid) > MAX_ID_CHARS:
        raise bad("request_id", f"is {len(rid)} characters; the limit is {MAX_ID_CHARS}")
    if raw.outcome == "fraud":
        outcome = Outcome.FRAUD
    elif raw.outcome == "legit":
        outcome = Outcome.LEGIT
    else:
        raise bad("outcome", f"must be fraud or legitimate, got {raw.outcome[:32]!r}")
    if raw.label_time_ms < 0:
        raise bad("label_time_ms", f"must be Unix milliseconds >= 0, got {raw.label_time_ms}")
    label_time = raw.label_time_ms / 1000.0 if raw.label_time_ms else now
    if label_time > now + FUTURE_SLACK_SECONDS:
        raise bad(
            "label_time_ms",
            f"is {label_time - now:.0f} s in the future (Unix milliseconds, UTC, expected)",
        )
    source = raw.source or "unspecified"
    if not _SOURCE_RE.match(source):
        raise bad(
            "source",
            f"must be a short lower-case word such as chargeback, analyst or customer, "
            f"got {source[:40]!r}",
        )
    if raw.amount is not None and (not math.isfinite(raw.amount) or raw.amount < 0):
        raise bad("amount", f"must be a finite number >= 0, got {raw.amount!r}")
    label_id = raw.label_id or derived_label_id(rid, outcome, source)
    if len(label_id) > MAX_ID_CHARS:
        raise bad("label_id", f"is {len(label_id)} characters; the limit is {MAX_ID_CHARS}")
    return Label(label_id, rid, outcome, label_time, source, raw.amount)


class FeedbackService:
    """Labels into the store, outcomes out of it. Store calls run in a small
    thread pool of their own (never on the event loop)."""

    def __init__(
        self,
        store: FeedbackStore,
        settings: OutcomeSettings,
        *,
        control_of: Callable[[str], int | None],
        count_results: Callable[[Sequence[LabelAck]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self._control_of = control_of
        self._count = count_results
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="riskserve-feedback")

    def close(self) -> None:
        """Waits for every store call of this service to end (before the store closes)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in this service's pool: every store call goes through it, so
        close() knows when none is left."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def send(self, raw: Sequence[LabelIn]) -> list[LabelAck]:
        """Validates every label, commits them, returns one result per label."""
        if len(raw) > MAX_LABELS_PER_MESSAGE:
            raise InvalidInput(
                f"field 'labels' holds {len(raw)} labels; the limit is "
                f"{MAX_LABELS_PER_MESSAGE} per message (stream larger files)"
            )
        now = self._clock()
        labels = [validate(i, r, now) for i, r in enumerate(raw)]
        if not labels:
            return []
        acks = await self.run(self.store.write_labels, labels, now)
        self._count(acks)
        return acks

    async def performance(
        self, model: str, maturity_seconds: float | None, window_seconds: float | None
    ) -> Performance:
        s = self.settings
        if maturity_seconds is not None:
            if not math.isfinite(maturity_seconds) or maturity_seconds < 0:
                raise InvalidInput(f"maturity_seconds must be >= 0, got {maturity_seconds!r}")
            s = dataclasses.replace(s, maturity_seconds=maturity_seconds)
        if window_seconds is not None:
            if not math.isfinite(window_seconds) or window_seconds <= 0:
                raise InvalidInput(f"window_seconds must be > 0, got {window_seconds!r}")
            s = dataclasses.replace(s, window_seconds=window_seconds)
        return await self.run(self.compute, model, s)

    def compute(self, model: str, s: OutcomeSettings | None = None) -> Performance:
        """Outcomes of `model` now (blocking: the store query and the statistics)."""
        s = s or self.settings
        now = self._clock()
        rows = self.store.joined(model, now - s.window_seconds - s.maturity_seconds, now + 1.0)
        control = self._control_of(model)
        if control is None and len(rows) == 0:
            raise NotFound(f"unknown model {model[:64]!r}: not served and nothing logged")
        return outcomes(rows, now, s, control)

    def purge(self, retention_seconds: float, pending_seconds: float) -> Purged:
        now = self._clock()
        return self.store.purge(now - retention_seconds, now - pending_seconds)


def count_by_result(acks: Sequence[LabelAck]) -> dict[str, int]:
    """{"accepted": n, "duplicate": n, "revised": n, "pending": n, "rejected": n}."""
    out = {r.value: 0 for r in LabelResult}
    for a in acks:
        out[a.result.value] += 1
    return out


class UnavailableStore:
    """Stands in for a store that could not be opened: every call raises
    StoreError with the reason (the Feedback API answers UNAVAILABLE with it, the
    prediction log counts its rows as failed). Scoring is unaffected."""

    backend = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise StoreError(f"feedback store unavailable: {self.reason}")

    write_predictions = write_labels = joined = logged_rows = history = counts = purge = _refuse

    def close(self) -> None:
        pass
