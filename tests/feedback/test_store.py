"""The feedback store's one test-suite: every test taking `store` or `spot` runs on
SQLite and on PostgreSQL (tests/feedback/store_fixtures.py), each on a fresh empty store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import random
import sqlite3
import threading
import time
from collections import Counter
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pg import PgCluster, StoreSpot, free_port
from store_fixtures import pg_cluster, spot, store  # noqa: F401 (fixtures)

from riskserve.feedback.backends import open_store
from riskserve.feedback.postgres import PostgresStore
from riskserve.feedback.records import Label, LabelAck, LabelResult, Outcome, PredictionRow
from riskserve.feedback.sqlite import SqliteStore
from riskserve.feedback.store import (
    EXPIRED_REASON,
    SCHEMA_VERSION,
    UNSTORABLE_REASON,
    FeedbackStore,
    LoggedRows,
    StoreCounts,
    StoreError,
    iso_utc,
)

#: 2026-11-30T11:00:00Z
T0 = dt.datetime(2026, 11, 30, 11, 0, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0
NOW = T0 + 30 * 24 * HOUR  # when labels are received

ACCEPTED = LabelAck(LabelResult.ACCEPTED)
DUPLICATE = LabelAck(LabelResult.DUPLICATE)
REVISED = LabelAck(LabelResult.REVISED)
PENDING = LabelAck(LabelResult.PENDING)


def pred(
    id: str,
    ts: float = T0,
    *,
    model: str = "fraud",
    version: int = 1,
    shadow: bool = False,
    key_hash: str | None = "k1",
    score: float = 0.25,
    flagged: bool = False,
) -> PredictionRow:
    return PredictionRow(
        id=id,
        ts=ts,
        model=model,
        version=version,
        variant="shadow" if shadow else f"v{version}",
        revision=3,
        key_hash=key_hash,
        score=score,
        threshold=0.5,
        flagged=flagged,
        shadow=shadow,
        inputs=json.dumps({"amount": 12.5, "currency": "EUR", "note": "tab\there\n", "x": None}),
    )


def lab(
    label_id: str,
    request_id: str,
    outcome: Outcome = Outcome.FRAUD,
    label_time: float = T0 + HOUR,
    *,
    source: str = "chargeback",
    amount: float | None = None,
) -> Label:
    return Label(label_id, request_id, outcome, label_time, source, amount)


def rejected_before(label_time: float, ts: float) -> LabelAck:
    return LabelAck(
        LabelResult.REJECTED,
        f"label_time {iso_utc(label_time)} is before the prediction's time {iso_utc(ts)}",
    )


def statuses(store: FeedbackStore, request_id: str) -> list[tuple[str, str]]:
    return [(r.label_id, r.status) for r in store.history(request_id)]


def outcome_of(store: FeedbackStore, request_id_ts: float, model: str = "fraud") -> int:
    """The joined outcome of the (only) row at `request_id_ts`."""
    j = store.joined(model, request_id_ts, request_id_ts + 1e-3)
    assert len(j) == 1
    return int(j.outcome[0])


# --------------------------------------------------------------------------------------
# Predictions and joined()
# --------------------------------------------------------------------------------------


def test_empty_store(store: FeedbackStore) -> None:
    assert store.counts() == StoreCounts(0, 0, 0)
    assert store.write_predictions([]) == 0
    assert store.write_labels([], NOW) == []
    j = store.joined("fraud", 0.0, 1e12)
    assert len(j) == 0
    assert j.outcome.dtype == np.int8 and j.delay.dtype == np.float64
    assert store.history("nope") == []


def test_joined_columns_shadow_rows_and_time_bounds(store: FeedbackStore) -> None:
    rows = [
        pred("b", T0 + 20, version=2, key_hash=None, score=0.9, flagged=True),
        pred("a", T0 + 10),
        pred("a", T0 + 11, version=2, shadow=True, key_hash="k1", score=0.75),
        pred("c", T0 + 30),  # == until: outside
        pred("z", T0 + 5 - 1e-3),  # before since: outside
        pred("other-model", T0 + 12, model="fraud_onnx"),
    ]
    assert store.write_predictions(rows) == 6
    assert store.counts() == StoreCounts(6, 0, 0)
    acks = store.write_labels(
        [
            lab("L-a", "a", Outcome.FRAUD, T0 + 100, amount=250.0),
            lab("L-b", "b", Outcome.LEGIT, T0 + 50),
        ],
        NOW,
    )
    assert acks == [ACCEPTED, ACCEPTED]

    j = store.joined("fraud", T0 + 5, T0 + 30)
    assert j.ts.tolist() == [T0 + 10, T0 + 11, T0 + 20]
    assert j.version.tolist() == [1, 2, 2]
    assert j.variant.tolist() == ["v1", "shadow", "v2"]
    assert j.shadow.tolist() == [False, True, False]
    assert j.key_hash.tolist() == ["k1", "k1", ""]
    assert j.score.tolist() == [0.25, 0.75, 0.9]
    assert j.threshold.tolist() == [0.5, 0.5, 0.5]
    assert j.flagged.tolist() == [False, False, True]
    # the shadow row joins its twin's label
    assert j.outcome.tolist() == [1, 1, 0]
    assert j.delay.tolist() == [90.0, 89.0, 30.0]
    assert j.amount[:2].tolist() == [250.0, 250.0]
    assert math.isnan(j.amount[2])  # no amount sent

    # since is inclusive, until exclusive
    assert store.joined("fraud", T0 + 10, T0 + 20).ts.tolist() == [T0 + 10, T0 + 11]
    assert store.joined("fraud", T0 + 30, T0 + 31).ts.tolist() == [T0 + 30]
    unlabelled = store.joined("fraud", T0 + 30, T0 + 31)
    assert unlabelled.outcome.tolist() == [-1]
    assert math.isnan(unlabelled.delay[0]) and math.isnan(unlabelled.amount[0])
    assert store.joined("fraud_onnx", 0, 1e12).ts.tolist() == [T0 + 12]
    assert len(store.joined("unknown", 0, 1e12)) == 0


def test_retried_request_joins_its_earliest_prediction(store: FeedbackStore) -> None:
    """A client retry stores the id twice; the earliest non-shadow row is the one a
    label is checked against (both rows show the label)."""
    store.write_predictions([pred("r", T0)])
    store.write_predictions([pred("r", T0 + 100)])
    assert store.write_labels([lab("L1", "r", label_time=T0 + 50)], NOW) == [ACCEPTED]
    assert store.write_labels([lab("L0", "r", label_time=T0 - 1)], NOW) == [
        rejected_before(T0 - 1, T0)
    ]
    j = store.joined("fraud", 0, 1e12)
    assert j.outcome.tolist() == [1, 1]
    assert j.delay.tolist() == [50.0, -50.0]


def test_values_round_trip_exactly(store: FeedbackStore) -> None:
    """Times, scores and amounts come back bit for bit (17 significant digits), so
    a resent label is recognised as the same one."""
    ts = T0 + 0.123456789012
    score = 0.1 + 0.2  # 0.30000000000000004
    store.write_predictions([dataclasses.replace(pred("r1", ts), score=score, threshold=1 / 3)])
    label = lab("L1", "r1", label_time=ts + 1 / 7, amount=12345.678901234567)
    assert store.write_labels([label], NOW + 1 / 9) == [ACCEPTED]
    j = store.joined("fraud", ts, ts + 1e-6)
    assert (j.ts[0], j.score[0], j.threshold[0]) == (ts, score, 1 / 3)
    assert j.delay[0] == label.label_time - ts
    assert j.amount[0] == label.amount
    (rec,) = store.history("r1")
    assert (rec.label_time, rec.amount, rec.received_at) == (
        label.label_time,
        label.amount,
        NOW + 1 / 9,
    )
    assert store.write_labels([label], NOW) == [DUPLICATE]


def _all_logged(store: FeedbackStore, *args: float, **kw: Any) -> tuple[list[int], LoggedRows]:
    """Chunk sizes of a logged_rows() stream, and its rows in one LoggedRows."""
    chunks = list(store.logged_rows("fraud", *args, **kw))
    rows = [
        (c.id[i], c.ts[i], c.version[i], c.outcome[i], c.amount[i], c.label_time[i], c.inputs[i])
        for c in chunks
        for i in range(len(c))
    ]
    return [len(c) for c in chunks], LoggedRows.of(rows)


def test_logged_rows_stream_the_window_with_current_labels_in_chunks(
    store: FeedbackStore,
) -> None:
    store.write_predictions(
        [
            pred("c", T0 + 30, version=2),
            pred("a", T0 + 10),
            pred("a", T0 + 11, version=2, shadow=True),  # shadow: never streamed
            pred("b", T0 + 20),
            pred("d", T0 + 40),
            pred("e", T0 + 50),
            pred("late", T0 + 60),  # == until: outside
            pred("early", T0 + 5 - 1e-3),  # before since: outside
            pred("o", T0 + 12, model="fraud_onnx"),
        ]
    )
    acks = store.write_labels(
        [
            lab("L-a", "a", Outcome.FRAUD, T0 + 100, amount=250.5),
            lab("L-b", "b", Outcome.LEGIT, T0 + 200),
            lab("L-c1", "c", Outcome.LEGIT, T0 + 300),
            lab("L-c2", "c", Outcome.FRAUD, T0 + 400),  # revises c: the current label
            lab("L-e", "e", Outcome.LEGIT, T0 + 500, amount=float("nan")),
        ],
        NOW,
    )
    assert acks == [ACCEPTED, ACCEPTED, ACCEPTED, REVISED, ACCEPTED]

    sizes, got = _all_logged(store, T0 + 5, T0 + 60, chunk_rows=2)
    assert sizes == [2, 2, 1]
    assert got.id == ["a", "b", "c", "d", "e"]
    assert got.ts.tolist() == [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50]
    assert got.version.tolist() == [1, 1, 2, 1, 1]
    assert got.outcome.tolist() == [1, 0, 1, -1, 0]
    assert got.amount[0] == 250.5 and np.isnan(got.amount[1:]).all()
    assert got.label_time[[0, 1, 2, 4]].tolist() == [T0 + 100, T0 + 200, T0 + 400, T0 + 500]
    assert np.isnan(got.label_time[3])
    # Inputs of labelled rows as logged; none for the unlabelled one unless asked.
    assert [json.loads(t)["currency"] if t else None for t in got.inputs] == [
        "EUR", "EUR", "EUR", None, "EUR",
    ]  # fmt: skip
    assert json.loads(got.inputs[0]) == json.loads(pred("a").inputs)
    _, with_inputs = _all_logged(store, T0 + 5, T0 + 60, unlabelled_inputs=True)
    assert json.loads(with_inputs.inputs[3]) == json.loads(pred("d").inputs)
    assert with_inputs.id == got.id and with_inputs.outcome.tolist() == got.outcome.tolist()

    sizes, none = _all_logged(store, T0 + 1000, T0 + 2000)
    assert sizes == [] and len(none) == 0
    assert len(LoggedRows.of([])) == 0 and LoggedRows.of([]).outcome.dtype == np.int8
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        next(store.logged_rows("fraud", 0, 1e12, chunk_rows=0))


def test_logged_rows_give_a_retried_id_twice(store: FeedbackStore) -> None:
    store.write_predictions([pred("r", T0), pred("r", T0 + 100)])
    store.write_labels([lab("L1", "r", label_time=T0 + 200)], NOW)
    _, got = _all_logged(store, 0, 1e12)
    assert got.id == ["r", "r"] and got.outcome.tolist() == [1, 1]


def test_logged_rows_read_one_snapshot(store: FeedbackStore) -> None:
    """Rows and labels committed while a stream is being read are not in it: every
    chunk comes from the snapshot the stream started on."""
    store.write_predictions([pred(f"r{i}", T0 + i) for i in range(6)])
    store.write_labels([lab(f"L{i}", f"r{i}", label_time=T0 + 100) for i in range(6)], NOW)
    stream = store.logged_rows("fraud", 0, 1e12, chunk_rows=2)
    first = next(stream)
    assert first.id == ["r0", "r1"]
    store.write_predictions([pred("r9", T0 + 3.5)])
    store.write_labels([lab("L5b", "r5", Outcome.LEGIT, T0 + 200)], NOW)  # revises r5
    rest = list(stream)
    assert [i for c in rest for i in c.id] == ["r2", "r3", "r4", "r5"]
    assert rest[-1].outcome.tolist() == [1, 1]
    # A new stream sees both.
    _, now = _all_logged(store, 0, 1e12)
    assert now.id == ["r0", "r1", "r2", "r3", "r9", "r4", "r5"]
    assert now.outcome.tolist() == [1, 1, 1, 1, -1, 1, 0]


def test_logged_rows_closed_early_release_the_store(store: FeedbackStore) -> None:
    """A stream abandoned half way ends its read transaction: writes and new streams
    go on."""
    store.write_predictions([pred(f"r{i}", T0 + i) for i in range(4)])
    stream = store.logged_rows("fraud", 0, 1e12, chunk_rows=1)
    assert next(stream).id == ["r0"]
    stream.close()
    store.write_predictions([pred("r9", T0 + 9)])
    _, got = _all_logged(store, 0, 1e12)
    assert got.id == ["r0", "r1", "r2", "r3", "r9"]


def test_writes_and_reads_stay_fast_beside_a_busy_thread(store: FeedbackStore) -> None:
    """The server's event loop keeps a thread busy in Python. A store call that gives
    the GIL up once per row (one sqlite3 step per row) waits out the 5 ms switch
    interval each time: 500 rows took ~5 s, 1,000 labels ~15 s. Whole batches per
    statement: well under a second."""
    rows = [pred(f"r{i}", T0 + i) for i in range(500)]
    labels = [lab(f"L{i}", f"r{i % 500}", label_time=T0 + 1000 + i) for i in range(1000)]
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        t0 = time.perf_counter()
        store.write_predictions(rows)
        store.write_labels(labels, NOW)
        assert len(store.joined("fraud", 0, 1e12)) == 500
        seconds = time.perf_counter() - t0
    finally:
        stop.set()
        spinner.join()
    assert seconds < 5.0, f"{seconds:.1f} s beside a busy thread"


# --------------------------------------------------------------------------------------
# The label rules
# --------------------------------------------------------------------------------------


def test_label_accepted(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1")])
    assert store.write_labels([lab("L1", "r1", amount=99.5)], NOW) == [ACCEPTED]
    (rec,) = store.history("r1")
    assert dataclasses.astuple(rec) == (
        "L1", "r1", 1, T0 + HOUR, "chargeback", 99.5, "current", "", NOW,
    )  # fmt: skip
    assert store.counts() == StoreCounts(1, 1, 0)


def test_label_at_the_prediction_time_is_accepted(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1", T0)])
    assert store.write_labels([lab("L1", "r1", label_time=T0)], NOW) == [ACCEPTED]


def test_label_before_its_prediction_is_rejected(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1", T0)])
    early = T0 - HOUR  # 2026-11-30T10:00:00Z
    ack = store.write_labels([lab("L1", "r1", label_time=early)], NOW)
    assert ack == [
        LabelAck(
            LabelResult.REJECTED,
            "label_time 2026-11-30T10:00:00Z is before the prediction's time 2026-11-30T11:00:00Z",
        )
    ]
    assert statuses(store, "r1") == [("L1", "rejected")]
    assert outcome_of(store, T0) == -1
    # resending it is answered the same way, and changes nothing
    assert store.write_labels([lab("L1", "r1", label_time=early)], NOW + 1) == ack
    assert store.counts() == StoreCounts(1, 1, 0)


def test_fractional_times_in_the_reason(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1", T0 + 0.5)])
    (ack,) = store.write_labels([lab("L1", "r1", label_time=T0 + 0.25)], NOW)
    assert ack.reason == (
        "label_time 2026-11-30T11:00:00.250Z is before the prediction's time "
        "2026-11-30T11:00:00.500Z"
    )


def test_duplicate_changes_nothing(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1")])
    label = lab("L1", "r1", amount=10.0)
    assert store.write_labels([label], NOW) == [ACCEPTED]
    before = store.history("r1")
    assert store.write_labels([label], NOW + 5) == [DUPLICATE]
    assert store.history("r1") == before  # received_at not changed either
    assert store.counts() == StoreCounts(1, 1, 0)


def test_label_id_reused_for_different_content_is_rejected(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1"), pred("r2")])
    original = lab("L1", "r1", Outcome.FRAUD, T0 + HOUR, source="chargeback", amount=10.0)
    assert store.write_labels([original], NOW) == [ACCEPTED]
    variants = [
        dataclasses.replace(original, request_id="r2"),
        dataclasses.replace(original, outcome=Outcome.LEGIT),
        dataclasses.replace(original, source="analyst"),
        dataclasses.replace(original, amount=11.0),
        dataclasses.replace(original, amount=None),
    ]
    reason = "label_id 'L1' was already used for a different label"
    assert store.write_labels(variants, NOW) == [LabelAck(LabelResult.REJECTED, reason)] * 5
    # Another label time is the same label sent again (a label sent without a time is
    # stamped on arrival): a duplicate, and the first time stays.
    resent = dataclasses.replace(original, label_time=T0 + 2 * HOUR)
    assert store.write_labels([resent], NOW) == [DUPLICATE]
    assert [h.label_time for h in store.history("r1")] == [T0 + HOUR]
    assert statuses(store, "r1") == [("L1", "current")]
    assert store.history("r2") == []
    assert store.counts() == StoreCounts(2, 1, 0)


def test_same_outcome_again_is_kept_as_agreed(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1")])
    assert store.write_labels([lab("L1", "r1", amount=5.0)], NOW) == [ACCEPTED]
    assert store.write_labels(
        [lab("L2", "r1", label_time=T0 + 2 * HOUR, source="analyst", amount=7.0)], NOW
    ) == [ACCEPTED]
    assert statuses(store, "r1") == [("L1", "current"), ("L2", "agreed")]
    j = store.joined("fraud", 0, 1e12)
    assert (j.outcome[0], j.delay[0], j.amount[0]) == (1, HOUR, 5.0)  # still L1's


def test_revision_keeps_the_history(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1")])
    assert store.write_labels([lab("L1", "r1", Outcome.FRAUD)], NOW) == [ACCEPTED]
    assert store.write_labels(
        [lab("L2", "r1", Outcome.LEGIT, T0 + 2 * HOUR, amount=3.0)], NOW + 1
    ) == [REVISED]
    assert outcome_of(store, T0) == 0
    assert store.write_labels([lab("L3", "r1", Outcome.FRAUD, T0 + 3 * HOUR)], NOW + 2) == [REVISED]
    history = store.history("r1")
    assert [(r.label_id, r.outcome, r.status, r.received_at) for r in history] == [
        ("L1", 1, "superseded", NOW),
        ("L2", 0, "superseded", NOW + 1),
        ("L3", 1, "current", NOW + 2),
    ]
    j = store.joined("fraud", 0, 1e12)
    assert (j.outcome[0], j.delay[0]) == (1, 3 * HOUR)
    assert math.isnan(j.amount[0])
    assert store.counts() == StoreCounts(1, 3, 0)


def test_later_labels_of_a_batch_see_earlier_ones(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1"), pred("r2")])
    batch = [
        lab("A", "r1", Outcome.FRAUD),
        lab("B", "r1", Outcome.LEGIT),
        lab("A", "r1", Outcome.FRAUD),  # the same label again
        lab("A", "r2", Outcome.FRAUD),  # its id reused
        lab("C", "r1", Outcome.LEGIT),
        lab("D", "r1", Outcome.FRAUD),
        lab("E", "r2", Outcome.LEGIT, T0 - 1),
        lab("E", "r2", Outcome.LEGIT, T0 - 1),  # resent within the batch: same rejection
        lab("F", "nowhere"),
        lab("F", "nowhere"),
    ]
    assert store.write_labels(batch, NOW) == [
        ACCEPTED,
        REVISED,
        DUPLICATE,
        LabelAck(LabelResult.REJECTED, "label_id 'A' was already used for a different label"),
        ACCEPTED,
        REVISED,
        rejected_before(T0 - 1, T0),
        rejected_before(T0 - 1, T0),
        PENDING,
        DUPLICATE,
    ]
    assert statuses(store, "r1") == [
        ("A", "superseded"), ("B", "superseded"), ("C", "agreed"), ("D", "current"),
    ]  # fmt: skip
    assert statuses(store, "r2") == [("E", "rejected")]
    assert store.counts() == StoreCounts(2, 6, 1)


def test_nan_amount_is_stored_as_none(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1")])
    assert store.write_labels([lab("L1", "r1", amount=float("nan"))], NOW) == [ACCEPTED]
    assert store.history("r1")[0].amount is None
    # resending it is a duplicate (NaN is "no amount", on both backends)
    assert store.write_labels([lab("L1", "r1", amount=float("nan"))], NOW) == [DUPLICATE]
    assert store.write_labels([lab("L1", "r1")], NOW) == [DUPLICATE]


def test_text_the_store_cannot_keep_is_refused_alone(store: FeedbackStore) -> None:
    """A NUL character or an unpaired surrogate in a client's id: that label is
    rejected and that prediction row skipped; the rest of each batch is stored."""
    assert store.write_predictions([pred("ok-1"), pred("bad\x00id"), pred("ok-2")]) == 2
    assert store.write_predictions([pred("bad\ud800")]) == 0
    unstorable = LabelAck(LabelResult.REJECTED, UNSTORABLE_REASON)
    acks = store.write_labels(
        [
            lab("L\x00", "ok-1"),
            lab("L1", "ok-1"),
            lab("L2", "ok-\udfff"),
            lab("L3", "ok-2", source="chargeback\x00"),
            lab("L4", "ok-2"),
        ],
        NOW,
    )
    assert acks == [unstorable, ACCEPTED, unstorable, unstorable, ACCEPTED]
    assert store.write_labels([lab("L5", "x\x00")], NOW) == [unstorable]
    assert store.counts() == StoreCounts(2, 2, 0)
    # other text travels intact
    odd = 'ré/😀 "q" \\ \t\n'
    assert store.write_predictions([pred(odd)]) == 1
    assert store.write_labels([lab(odd, odd)], NOW) == [ACCEPTED]
    assert store.write_labels([lab(odd, odd)], NOW) == [DUPLICATE]
    assert statuses(store, odd) == [(odd, "current")]


# --------------------------------------------------------------------------------------
# Pending labels
# --------------------------------------------------------------------------------------


def test_pending_label_joins_when_its_prediction_arrives(store: FeedbackStore) -> None:
    assert store.write_labels([lab("L1", "r1", amount=42.0)], NOW) == [PENDING]
    assert store.counts() == StoreCounts(0, 1, 1)
    assert statuses(store, "r1") == [("L1", "pending")]
    # a shadow scoring alone does not resolve it
    store.write_predictions([pred("r1", T0, shadow=True)])
    assert store.counts() == StoreCounts(1, 1, 1)
    assert outcome_of(store, T0) == -1
    store.write_predictions([pred("other", T0 - 5), pred("r1", T0 + 1)])
    assert store.counts() == StoreCounts(3, 1, 0)
    assert statuses(store, "r1") == [("L1", "current")]
    j = store.joined("fraud", 0, 1e12)
    assert j.outcome.tolist() == [-1, 1, 1]  # other, r1's shadow row, r1
    assert j.amount[1:].tolist() == [42.0, 42.0]
    assert j.delay[2] == HOUR - 1
    # resending the label now is a duplicate
    assert store.write_labels([lab("L1", "r1", amount=42.0)], NOW) == [DUPLICATE]


def test_pending_label_dated_before_its_prediction_is_rejected_when_it_lands(
    store: FeedbackStore,
) -> None:
    assert store.write_labels([lab("L1", "r1", label_time=T0 - HOUR)], NOW) == [PENDING]
    store.write_predictions([pred("r1", T0)])
    (rec,) = store.history("r1")
    expected = rejected_before(T0 - HOUR, T0)
    assert (rec.status, rec.reason) == ("rejected", expected.reason)
    assert outcome_of(store, T0) == -1
    assert store.counts() == StoreCounts(1, 1, 0)
    assert store.write_labels([lab("L1", "r1", label_time=T0 - HOUR)], NOW) == [expected]


def test_pending_labels_resolve_in_the_order_received(store: FeedbackStore) -> None:
    store.write_labels([lab("P1", "r1", Outcome.FRAUD), lab("P2", "r1", Outcome.FRAUD)], NOW)
    store.write_labels([lab("P3", "r1", Outcome.LEGIT, T0 - 1)], NOW + 1)  # too early
    store.write_labels([lab("P4", "r1", Outcome.LEGIT), lab("Q1", "r2")], NOW + 2)
    assert store.counts() == StoreCounts(0, 5, 5)
    store.write_predictions([pred("r1", T0), pred("r2", T0 + 1, shadow=True)])
    assert statuses(store, "r1") == [
        ("P1", "superseded"), ("P2", "agreed"), ("P3", "rejected"), ("P4", "current"),
    ]  # fmt: skip
    assert statuses(store, "r2") == [("Q1", "pending")]
    assert store.counts() == StoreCounts(2, 5, 1)
    # a label after that follows the rules against the current one (P4, legit)
    assert store.write_labels([lab("P5", "r1", Outcome.FRAUD)], NOW) == [REVISED]


def test_resending_a_batch_changes_nothing(store: FeedbackStore) -> None:
    store.write_predictions([pred("r1"), pred("r2"), pred("r3")])
    batch = [
        lab("A", "r1", Outcome.FRAUD, amount=1.0),
        lab("B", "r1", Outcome.LEGIT),
        lab("C", "r2", Outcome.LEGIT, T0 - 10),
        lab("D", "r3", Outcome.FRAUD),
        lab("E", "r3", Outcome.FRAUD),
        lab("F", "later"),
    ]
    first = store.write_labels(batch, NOW)
    assert [a.result for a in first] == [
        LabelResult.ACCEPTED, LabelResult.REVISED, LabelResult.REJECTED,
        LabelResult.ACCEPTED, LabelResult.ACCEPTED, LabelResult.PENDING,
    ]  # fmt: skip
    counts = store.counts()
    ids = ["r1", "r2", "r3", "later"]
    history = {r: store.history(r) for r in ids}
    joined = store.joined("fraud", 0, 1e12)
    for _ in range(2):
        again = store.write_labels(batch, NOW + 60)
        assert again == [DUPLICATE, DUPLICATE, first[2], DUPLICATE, DUPLICATE, DUPLICATE]
        assert store.counts() == counts
        assert {r: store.history(r) for r in ids} == history
        j = store.joined("fraud", 0, 1e12)
        assert j.outcome.tolist() == joined.outcome.tolist()
        np.testing.assert_array_equal(j.delay, joined.delay)  # NaN where unlabelled


# --------------------------------------------------------------------------------------
# Purge
# --------------------------------------------------------------------------------------


def test_purge(store: FeedbackStore) -> None:
    cut = T0 + 100
    store.write_predictions(
        [
            pred("old", T0),
            pred("old", T0 + 1, shadow=True),
            pred("new", T0 + 200),
            pred("retried", T0 + 50),
            pred("retried", T0 + 150),
        ]
    )
    store.write_labels(
        [
            lab("o1", "old", Outcome.FRAUD, T0 + 10),
            lab("o2", "old", Outcome.LEGIT, T0 + 20),
            lab("o3", "old", Outcome.FRAUD, T0 - 5),  # rejected, of the old prediction
            lab("n1", "new", Outcome.FRAUD, T0 + 300),
            lab("t1", "retried", Outcome.FRAUD, T0 + 300),
        ],
        NOW,
    )
    store.write_labels([lab("p-old", "never")], NOW - 10 * HOUR)
    store.write_labels([lab("p-new", "not-yet")], NOW)
    assert store.counts() == StoreCounts(5, 7, 2)

    purged = store.purge(before=cut, pending_before=NOW - HOUR)
    assert (purged.predictions, purged.labels, purged.expired) == (3, 3, 1)
    assert store.counts() == StoreCounts(2, 4, 1)
    assert store.history("old") == []
    assert statuses(store, "new") == [("n1", "current")]
    # another row of the id is still there: its label stays
    assert statuses(store, "retried") == [("t1", "current")]
    (expired,) = store.history("never")
    assert (expired.status, expired.reason) == ("rejected", EXPIRED_REASON)
    assert statuses(store, "not-yet") == [("p-new", "pending")]
    j = store.joined("fraud", 0, 1e12)
    assert j.ts.tolist() == [T0 + 150, T0 + 200]
    assert j.outcome.tolist() == [1, 1]
    # resending the expired label: the same rejection; its prediction landing now does
    # not revive it
    assert store.write_labels([lab("p-old", "never")], NOW) == [
        LabelAck(LabelResult.REJECTED, EXPIRED_REASON)
    ]
    store.write_predictions([pred("never", T0 + 500)])
    assert statuses(store, "never") == [("p-old", "rejected")]
    # nothing left to purge
    assert dataclasses.astuple(store.purge(cut, NOW - HOUR)) == (0, 0, 0)


def test_purge_drops_expired_labels_once_older_than_the_retention(store: FeedbackStore) -> None:
    store.write_labels([lab("x", "gone")], T0)
    assert store.purge(before=T0 - 1, pending_before=T0 + 1).expired == 1
    assert store.counts() == StoreCounts(0, 1, 0)  # kept: newer than the retention
    purged = store.purge(before=T0 + 1, pending_before=T0 + 1)
    assert (purged.predictions, purged.labels, purged.expired) == (0, 1, 0)
    assert store.counts() == StoreCounts(0, 0, 0)


# --------------------------------------------------------------------------------------
# Opening, reopening, refusing
# --------------------------------------------------------------------------------------


def test_reopened_store_keeps_everything(spot: StoreSpot) -> None:
    first = spot.open()
    assert first.backend == spot.backend
    first.write_predictions([pred("r1")])
    first.write_labels([lab("L1", "r1"), lab("L2", "r2")], NOW)
    first.close()
    again = spot.open()
    assert again.counts() == StoreCounts(1, 2, 1)
    assert statuses(again, "r1") == [("L1", "current")]


def test_another_schema_version_is_refused(spot: StoreSpot) -> None:
    spot.open().close()
    spot.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError) as e:
        spot.open()
    assert spot.where in e.value.message
    assert "schema version 99" in e.value.message
    assert f"schema version {SCHEMA_VERSION} only" in e.value.message


def test_tables_of_something_else_are_refused(spot: StoreSpot) -> None:
    spot.execute("CREATE TABLE predictions (x integer)")
    with pytest.raises(StoreError, match=r"not a .*feedback store") as e:
        spot.open()
    assert spot.where in e.value.message


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    path.write_bytes(random.Random(0).randbytes(8192))
    with pytest.raises(StoreError) as e:
        SqliteStore(path)
    assert str(path) in e.value.message
    assert "is not a SQLite database" in e.value.message


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a folder") as e:
        SqliteStore(tmp_path)
    assert str(tmp_path) in e.value.message


def test_sqlite_folder_created_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "feedback.sqlite"
    store = SqliteStore(path)
    try:
        store.write_predictions([pred("r1")])
        # The prediction log's commits are not fsynced (NORMAL, 1); a label's are (FULL, 2).
        assert store._writer.execute("PRAGMA synchronous").fetchone() == (1,)
        store.write_labels([lab("L1", "r1")], NOW)
        for conn in (store._writer, store._thread_conn()):  # the writer, a reader
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]


def test_open_store_dsns(tmp_path: Path) -> None:
    default = open_store("", tmp_path / "models")
    explicit = open_store(f"sqlite:///{tmp_path}/x/fb.sqlite", tmp_path / "models")
    try:
        assert default.backend == explicit.backend == "sqlite"
        assert (tmp_path / "models" / ".feedback" / "feedback.sqlite").is_file()
        assert (tmp_path / "x" / "fb.sqlite").is_file()
    finally:
        default.close()
        explicit.close()
    with pytest.raises(StoreError, match="must be empty"):
        open_store("mysql://x", tmp_path)


def test_postgres_refusing_connections_names_host_and_port() -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://riskserve:s3cret-pw@127.0.0.1:{port}/feedback?connect_timeout=5"
    with pytest.raises(StoreError) as e:
        open_store(dsn, Path("unused"))
    assert f"127.0.0.1:{port}" in e.value.message
    assert "feedback" in e.value.message
    assert "s3cret-pw" not in e.value.message
    assert e.value.__cause__ is None  # the DSN is not carried along in a chained error


def test_postgres_wrong_password_is_not_echoed(pg_cluster: PgCluster) -> None:
    pg_cluster_user = "riskserve_pw"
    StoreSpot("postgresql", pg_cluster.dsn(), "").execute(
        f"CREATE ROLE {pg_cluster_user} LOGIN PASSWORD 'right-one'"
    )
    dsn = f"postgresql://{pg_cluster_user}:wrong-one@127.0.0.1:{pg_cluster.port}/nosuchdb"
    with pytest.raises(StoreError) as e:
        PostgresStore(dsn)
    assert f"127.0.0.1:{pg_cluster.port}" in e.value.message
    assert "wrong-one" not in e.value.message


# --------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------


def test_concurrent_label_writers_store_each_label_id_once(spot: StoreSpot) -> None:
    """4 threads send overlapping labels at once (two on one shared store object, two
    on objects of their own, as other workers or replicas would), while another
    thread logs the predictions they refer to."""
    shared = spot.open()
    stores = [shared, shared, spot.open(), spot.open()]
    n_requests = 120
    rng = random.Random(7)
    labels = [
        lab(
            f"L{i}",
            f"r{i % n_requests}",
            Outcome(rng.randrange(2)),
            T0 + i,
            amount=float(i),
        )
        for i in range(3 * n_requests)
    ]
    predictions = [pred(f"r{i}", T0) for i in range(n_requests)]
    start = threading.Barrier(len(stores) + 1)
    errors: list[BaseException] = []
    acks: list[list[LabelAck]] = []

    def send(store: FeedbackStore, seed: int) -> None:
        mine = labels[:]
        random.Random(seed).shuffle(mine)
        try:
            start.wait()
            for i in range(0, len(mine), 30):
                acks.append(store.write_labels(mine[i : i + 30], NOW))
        except BaseException as e:
            errors.append(e)

    def log() -> None:
        try:
            start.wait()
            for i in range(0, n_requests, 10):
                shared.write_predictions(predictions[i : i + 10])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=send, args=(s, k)) for k, s in enumerate(stores)]
    threads.append(threading.Thread(target=log))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    counts = shared.counts()
    assert counts == StoreCounts(n_requests, len(labels), 0)
    results = Counter(a.result for batch in acks for a in batch)
    assert results[LabelResult.REJECTED] == 0
    # each label stored once: the other 3 sends of it were duplicates
    assert results[LabelResult.DUPLICATE] == 3 * len(labels)
    for r in range(n_requests):
        history = shared.history(f"r{r}")
        assert len(history) == 3
        assert [h.status for h in history].count("current") == 1
        assert {h.status for h in history} <= {"current", "agreed", "superseded"}
    assert (shared.joined("fraud", 0, 1e12).outcome >= 0).all()


def _log_in_child(path: str, worker: int, batches: int, size: int, start: BarrierType) -> None:
    """Logs `batches` batches of predictions; after each, sends labels for every
    5th of worker 0's rows of that batch (both workers send the same labels, so
    worker 1's may come before their predictions)."""
    store = SqliteStore(Path(path))
    try:
        start.wait(30)
        for b in range(batches):
            rows = [pred(f"w{worker}-{b}-{i}", T0 + b) for i in range(size)]
            assert store.write_predictions(rows) == size
            labels = [lab(f"L{b}-{i}", f"w0-{b}-{i}") for i in range(0, size, 5)]
            acks = store.write_labels(labels, NOW)
            assert {a.result for a in acks} <= {
                LabelResult.ACCEPTED, LabelResult.PENDING, LabelResult.DUPLICATE,
            }  # fmt: skip
    finally:
        store.close()


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    SqliteStore(path).close()  # created up front, as the server's first open does
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    batches, size = 40, 250
    procs = [
        ctx.Process(target=_log_in_child, args=(str(path), w, batches, size, start))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = SqliteStore(path)
    try:
        n_labels = batches * size // 5
        assert store.counts() == StoreCounts(2 * batches * size, n_labels, 0)
        j = store.joined("fraud", 0, 1e12)
        assert len(set(j.ts.tolist())) == batches
        assert int((j.outcome == 1).sum()) == n_labels
        assert statuses(store, "w0-7-5") == [("L7-5", "current")]
    finally:
        store.close()
