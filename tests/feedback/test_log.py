"""The prediction log over a real SQLite store: rows and their ids, raw inputs as
JSON, the keyed hash, the bounded queue (drops counted, submit never blocks),
retries when the store refuses, and close() committing what is queued."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from riskserve.client import pack_bytes
from riskserve.feedback.log import (
    LogCounters,
    PredictionLog,
    Scored,
    load_hash_key,
    routing_key_hasher,
    to_rows,
)
from riskserve.feedback.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(60)


class Tally:
    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.lock = threading.Lock()

    def counters(self) -> LogCounters:
        def add(what: str):  # type: ignore[no-untyped-def]
            def inc(n: int) -> None:
                with self.lock:
                    self.c[what] += n

            return inc

        return LogCounters(written=add("written"), dropped=add("dropped"), failed=add("failed"))


def scored(rid: str, rows: int = 1, key: str | None = "card-1", shadow: bool = False) -> Scored:
    return Scored(
        request_id=rid,
        ts=1_700_000_000.0,
        model="fraud",
        version=2,
        variant="v2",
        revision=5,
        routing_key=key,
        scores=np.linspace(0.1, 0.9, rows, dtype=np.float32),
        threshold=0.5,
        shadow=shadow,
        columns={
            "amount": np.array([12.5, np.nan, 3.0][:rows] + [1.0] * max(0, rows - 3)),
            "channel": pack_bytes(["web", "pos", "app"][:rows] + ["web"] * max(0, rows - 3)),
            "new_device": np.array([True, False, True][:rows] + [False] * max(0, rows - 3)),
            "country": [b"DE", b"FR", b"\xff"][:rows] + [b"DE"] * max(0, rows - 3),
        },
    )


def test_rows_ids_inputs_and_decisions() -> None:
    h = routing_key_hasher(b"k" * 32)
    rows = to_rows(scored("req", rows=3), h)
    assert [r.id for r in rows] == ["req/0", "req/1", "req/2"]
    assert [r.flagged for r in rows] == [False, True, True]  # 0.1, 0.5, 0.9 vs 0.5
    assert json.loads(rows[0].inputs) == {
        "amount": 12.5,
        "channel": "web",
        "new_device": True,
        "country": "DE",
    }
    assert json.loads(rows[1].inputs)["amount"] is None  # NaN: missing
    assert json.loads(rows[2].inputs)["country"] == "\ufffd"  # bad UTF-8 kept readable
    one = to_rows(scored("single"), h)
    assert [r.id for r in one] == ["single"]
    shadow = to_rows(scored("single", shadow=True), h)
    assert shadow[0].shadow and shadow[0].variant == "shadow"
    assert to_rows(scored("nokey", key=None), h)[0].key_hash is None


def test_the_routing_key_hash_is_keyed_and_stable(tmp_path: Path) -> None:
    key = load_hash_key(tmp_path / "hash.key")
    assert load_hash_key(tmp_path / "hash.key") == key  # made once, then read
    assert (tmp_path / "hash.key").stat().st_mode & 0o777 == 0o600
    a, b = routing_key_hasher(key), routing_key_hasher(b"another key, 16+ bytes")
    assert a("card-1") == a("card-1") != a("card-2")
    assert a("card-1") != b("card-1")
    assert "card" not in a("card-1") and len(a("card-1")) == 32
    (tmp_path / "short.key").write_text("tiny")
    with pytest.raises(ValueError, match="needs 16"):
        load_hash_key(tmp_path / "short.key")


def test_rows_are_committed_in_the_background(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.sqlite")
    t = Tally()
    plog = PredictionLog(
        store, routing_key_hasher(b"k" * 32), t.counters(),
        queue_rows=10_000, batch_rows=100, flush_seconds=0.01,
    )  # fmt: skip
    for i in range(250):
        assert plog.submit(scored(f"r{i}", rows=2))
    assert plog.flush(10)
    assert store.counts().predictions == 500
    assert t.c == Counter(written=500)
    plog.close()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    """The test holds the database's write lock: the writer cannot commit, the
    queue fills, submit keeps returning at once (False: dropped and counted)."""
    path = tmp_path / "f.sqlite"
    store = SqliteStore(path)
    t = Tally()
    plog = PredictionLog(
        store, routing_key_hasher(b"k" * 32), t.counters(),
        queue_rows=20, batch_rows=5, flush_seconds=0.01,
    )  # fmt: skip
    db = sqlite3.connect(path, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    try:
        time.sleep(0.05)
        started = time.perf_counter()
        results = [plog.submit(scored(f"r{i}")) for i in range(1000)]
        took = time.perf_counter() - started
        assert took < 5.0  # would be the store's busy timeout per call if it blocked
        assert results.count(False) >= 1000 - 20 - 5
        assert t.c["dropped"] == results.count(False)
    finally:
        db.rollback()
        db.close()
    assert plog.flush(30)
    assert store.counts().predictions == results.count(True)
    assert t.c["written"] == results.count(True)
    plog.close()


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.sqlite")
    t = Tally()
    plog = PredictionLog(
        store, routing_key_hasher(b"k" * 32), t.counters(),
        queue_rows=10_000, batch_rows=1000, flush_seconds=60,
    )  # fmt: skip
    for i in range(300):
        plog.submit(scored(f"r{i}"))
    assert store.counts().predictions == 0
    plog.close(timeout=10)
    assert store.counts().predictions == 300
    assert not plog.submit(scored("late"))  # closed: dropped, counted
    assert t.c == Counter(written=300, dropped=1)
