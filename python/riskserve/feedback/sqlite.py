"""The feedback store in one SQLite file (the default: models/.feedback/feedback.sqlite).

Connections (WAL mode): this process's writes go through one writer connection,
its threads queueing on a lock (cheaper and fairer than SQLite's busy handler,
which sleeps in steps of up to 100 ms, and the writer's page cache stays warm);
reads use one connection per thread (threading.local) and never wait for a write.
Writes are `BEGIN IMMEDIATE` transactions; other processes on the same file (server
workers) wait through busy_timeout. `synchronous=FULL`: the WAL is fsynced
at every commit, so a label is acknowledged only once it survives a power loss
(bench/feedback_store.py measures what NORMAL would save).

Every statement takes one or two sqlite3_step calls whatever the batch size (see
the note above the statements): rows go in by multi-row INSERT ... VALUES and
UPDATE ... FROM (VALUES ...); a lookup passes the batch's keys as one JSON array
(`IN (SELECT value FROM json_each(?))`, probing the index per key) and gets its
matches back as one JSON array (REALs through quote(), which round-trips exactly)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import operator
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from riskserve.feedback.records import Joined, Label, LabelAck, PredictionRow
from riskserve.feedback.store import (
    CURRENT,
    EXPIRED_REASON,
    LOGGED_CHUNK_ROWS,
    SCHEMA_VERSION,
    LabelRecord,
    LabelRules,
    LoggedRows,
    Purged,
    StoreCounts,
    StoredLabel,
    StoreError,
    prediction_values,
    storable_label,
    storable_rows,
    unique,
)

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # seq: the rowid, in insertion (= time) order. `id` is not unique: a client may
    # retry a request; the earliest non-shadow row of an id is the one labels join.
    """CREATE TABLE predictions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        ts REAL NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        variant TEXT NOT NULL,
        revision INTEGER NOT NULL,
        key_hash TEXT,
        score REAL NOT NULL,
        threshold REAL NOT NULL,
        flagged INTEGER NOT NULL,
        shadow INTEGER NOT NULL,
        inputs TEXT NOT NULL
    )""",
    "CREATE INDEX predictions_id ON predictions (id)",
    "CREATE INDEX predictions_model_ts ON predictions (model, ts)",
    # seq: the order labels were received in (history order). label_key: a 64-bit
    # hash of label_id, indexed instead of label_id itself (see _label_key).
    """CREATE TABLE labels (
        seq INTEGER PRIMARY KEY,
        label_id TEXT NOT NULL,
        label_key INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        outcome INTEGER NOT NULL,
        label_time REAL NOT NULL,
        source TEXT NOT NULL,
        amount REAL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        received_at REAL NOT NULL
    )""",
    "CREATE INDEX labels_key ON labels (label_key)",
    "CREATE INDEX labels_request ON labels (request_id)",
    # At most one current label per request; also what joined() joins on.
    "CREATE UNIQUE INDEX labels_current ON labels (request_id) WHERE status = 'current'",
    # Small: only labels waiting for their prediction (every prediction batch probes it).
    "CREATE INDEX labels_pending ON labels (request_id) WHERE status = 'pending'",
)

_LABEL_COLUMNS = (
    "label_id, request_id, outcome, label_time, source, amount, status, reason, received_at"
)
_PREDICTION_COLUMNS = (
    "id, ts, model, version, variant, revision, key_hash, score, threshold, flagged, shadow, inputs"
)
#: UPDATE ... FROM (3.33) and the JSON functions built in (3.38; most builds had
#: them before, checked at open).
_MIN_SQLITE = (3, 35, 0)
#: Rows per multi-row INSERT / UPDATE statement (fewer if the build allows fewer variables).
_ROWS_PER_STATEMENT = 500


def _exact(column: str) -> str:
    """A REAL column as text that converts back to the same float (quote() checks the
    round trip; JSON numbers keep only 15 digits); NULL stays NULL."""
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE quote({column}) END"


# Every statement below takes one or two sqlite3_step calls, whatever the batch size.
# Python's sqlite3 releases the GIL around each step and must take it back after, and
# in a process with a busy thread (the server's event loop) every take-back can wait
# the full switch interval (5 ms): one step per row (executemany, or fetching N
# result rows) made a 500-row write take seconds. So writes are multi-row statements
# and lookups return one row: the matches as one JSON array (bench/feedback_store.py).
_LABEL_JSON = (
    f"json_array(seq, label_id, request_id, outcome, {_exact('label_time')}, source, "
    f"{_exact('amount')}, status, reason, {_exact('received_at')})"
)
_IN_JSON = "IN (SELECT value FROM json_each(?))"
_BY_LABEL_ID = (
    f"SELECT json_group_array({_LABEL_JSON}) FROM labels "
    f"WHERE label_key {_IN_JSON} AND label_id {_IN_JSON}"
)
_CURRENT_OF = (
    f"SELECT json_group_array({_LABEL_JSON}) FROM labels "
    f"WHERE status = 'current' AND request_id {_IN_JSON}"
)
_PENDING_OF = (
    f"SELECT json_group_array({_LABEL_JSON}) FROM labels "
    f"WHERE status = 'pending' AND request_id {_IN_JSON}"
)
_HISTORY = f"SELECT json_group_array({_LABEL_JSON}) FROM labels WHERE request_id = ?"
# SQLite returns the other columns of the row holding MIN(seq): the earliest row.
_EARLIEST_OF = f"""
    SELECT json_group_array(json_array(id, {_exact("ts")})) FROM (
        SELECT id, ts, MIN(seq) FROM predictions WHERE shadow = 0 AND id {_IN_JSON} GROUP BY id)
"""
_JOINED = f"""
    SELECT json_group_array(json_array(
        {_exact("p.ts")}, p.version, p.variant, p.shadow, coalesce(p.key_hash, ''),
        {_exact("p.score")}, {_exact("p.threshold")}, p.flagged, coalesce(l.outcome, -1),
        {_exact("l.label_time")}, {_exact("l.amount")}, p.seq))
    FROM predictions p
    LEFT JOIN labels l ON l.request_id = p.id AND l.status = 'current'
    WHERE p.model = ? AND p.ts >= ? AND p.ts < ?
"""
# One statement for the whole stream, fetched chunk by chunk (logged_rows: a reader of
# its own, not the server's event loop, so one step per row costs nothing extra). The
# (model, ts) index holds the rowid, so the order needs no sort; the current label is
# one probe of labels_current per row.
_LOGGED = """
    SELECT p.id, p.ts, p.version, coalesce(l.outcome, -1), l.amount, l.label_time,
           CASE WHEN l.outcome IS NOT NULL OR ? THEN p.inputs ELSE '' END
    FROM predictions p
    LEFT JOIN labels l ON l.request_id = p.id AND l.status = 'current'
    WHERE p.model = ? AND p.ts >= ? AND p.ts < ? AND p.shadow = 0
    ORDER BY p.ts, p.seq
"""
_COUNTS = """
    SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM labels),
           (SELECT count(*) FROM labels WHERE status = 'pending')
"""
_EXPIRE = (
    "UPDATE labels SET status = 'rejected', reason = ? WHERE status = 'pending' AND received_at < ?"
)
# Labels of the predictions about to go (unless another non-shadow row of the id stays).
_DELETE_JOINED_LABELS = """
    DELETE FROM labels
    WHERE status != 'pending'
      AND request_id IN (SELECT id FROM predictions WHERE ts < ? AND shadow = 0)
      AND NOT EXISTS (
          SELECT 1 FROM predictions p WHERE p.id = labels.request_id AND p.shadow = 0 AND p.ts >= ?)
"""
# Rejected labels older than the retention that never had a prediction (expired ones).
_DELETE_ORPHANS = """
    DELETE FROM labels
    WHERE status = 'rejected' AND received_at < ?
      AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.id = labels.request_id AND p.shadow = 0)
"""
_DELETE_PREDICTIONS = "DELETE FROM predictions WHERE ts < ?"


@functools.lru_cache(maxsize=128)
def _insert_sql(table: str, columns: str, rows: int) -> str:
    one = "(" + ", ".join("?" * (columns.count(",") + 1)) + ")"
    return f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([one] * rows)


@functools.lru_cache(maxsize=128)
def _update_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"WITH u (label_key, label_id, status, reason) AS (VALUES {values}) "
        "UPDATE labels SET status = u.status, reason = u.reason "
        "FROM u WHERE labels.label_key = u.label_key AND labels.label_id = u.label_id"
    )


@functools.lru_cache(maxsize=1 << 14)  # a batch's keys: looked up, then inserted
def _label_key(label_id: str) -> int:
    """A signed 64-bit hash of a label id. Labels are looked up by label id, and
    clients' label ids are often random (uuid4): inserting 1,000 of them into an
    index of the text dirties pages all over it, each written to the WAL at commit.
    An index of 8-byte keys has a third of the pages: inserts of random ids measured
    ~1.7x faster. Not unique (a collision only costs a row more to compare): a label
    id is stored once because writes are serialized and the rules see every stored
    label of the batch's ids."""
    digest = hashlib.blake2b(label_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _label_rows(text: str) -> list[StoredLabel]:
    """_LABEL_JSON rows, in the order received."""
    rows = sorted(json.loads(text), key=operator.itemgetter(0))
    return [
        StoredLabel(
            label_id=r[1],
            request_id=r[2],
            outcome=int(r[3]),
            label_time=float(r[4]),
            source=r[5],
            amount=None if r[6] is None else float(r[6]),
            status=r[7],
            reason=r[8],
            received_at=float(r[9]),
        )
        for r in rows
    ]


def _floats(values: Sequence[str | None]) -> npt.NDArray[np.float64]:
    return np.array(values, dtype=np.float64)  # None -> NaN


class SqliteStore:
    """The FeedbackStore on a SQLite file (created with its folder when missing)."""

    backend = "sqlite"

    #: PRAGMA synchronous. FULL: a commit (a label's acknowledgement) is durable.
    SYNCHRONOUS = "FULL"
    #: busy_timeout: how long a write waits for another process's transaction.
    BUSY_TIMEOUT_SECONDS = 30.0
    #: Page cache per connection (KiB).
    CACHE_KIB = 32768
    #: Checkpoint the WAL into the database every this many pages (SQLite's default
    #: is 1,000): a page changed by several commits is copied once per checkpoint.
    #: Label batches dirty index pages all over; 4,000-16,000 measured 15-30 % more
    #: labels/s than 1,000 at 200,000 labels (this machine's noise: about 15 %).
    WAL_AUTOCHECKPOINT_PAGES = 8000
    #: The WAL file is cut back to this size after a checkpoint.
    WAL_SIZE_LIMIT_BYTES = 64 << 20
    #: How this process's threads use connections (bench/feedback_store.py compares):
    #: "writer": every write on one connection, threads queueing on a lock; reads on
    #: one connection per thread, never waiting for a write. The writer's page cache
    #: stays warm (in WAL mode a connection drops its cache whenever another one has
    #: written, so writers taking turns on their own connections all start cold).
    #: "per-thread": one connection per thread for everything, writes queued on the lock.
    #: "per-thread-busy": the same without the lock (SQLite's busy handler arbitrates).
    #: "shared": one connection for everything behind the lock (reads wait for writes).
    CONNECTIONS: Literal["writer", "per-thread", "per-thread-busy", "shared"] = "writer"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"feedback store {self.path}: cannot create its folder: {e}") from e
        if self.path.is_dir():
            raise StoreError(f"feedback store {self.path} is a folder, not a SQLite file")
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"feedback store {self.path}: needs SQLite "
                f"{'.'.join(map(str, _MIN_SQLITE))} or newer (UPDATE ... FROM, JSON "
                f"functions); this Python's sqlite3 uses {sqlite3.sqlite_version}"
            )
        conn = self._connect()
        try:
            self._init_schema(conn)
        except BaseException:
            self.close()
            raise
        #: The connection writes go through ("writer", "shared").
        self._writer = conn
        if self.CONNECTIONS.startswith("per-thread"):
            self._local.conn = conn  # the opening thread's

    # -- connections -------------------------------------------------------------------

    def _error(self, e: sqlite3.Error, doing: str) -> StoreError:
        name = getattr(e, "sqlite_errorname", "")
        if name == "SQLITE_NOTADB":
            return StoreError(f"feedback store {self.path} is not a SQLite database ({e})")
        if name.startswith("SQLITE_CORRUPT"):
            return StoreError(f"feedback store {self.path} is corrupt ({e})")
        return StoreError(f"feedback store {self.path}: {doing} failed: {e}")

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"feedback store {self.path} is closed")
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # used by one thread; closed by close()
                cached_statements=64,
            )
        except sqlite3.Error as e:
            raise self._error(e, "opening") from e
        with self._conns_lock:
            self._conns.append(conn)
        try:
            conn.execute(f"PRAGMA synchronous = {self.SYNCHRONOUS}")
            conn.execute(f"PRAGMA cache_size = -{self.CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {self.WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {self.WAL_SIZE_LIMIT_BYTES}")
            conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as e:
            raise self._error(e, "opening") from e
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            try:
                conn.execute("SELECT json_array(1)").fetchall()
            except sqlite3.OperationalError as e:
                raise StoreError(
                    f"feedback store {self.path}: this SQLite build has no JSON functions ({e})"
                ) from e
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"feedback store {self.path}: cannot use WAL mode (journal_mode {mode})"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {
                    name
                    for (name,) in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    )
                }
                if "meta" in tables:
                    row = conn.execute(
                        "SELECT value FROM meta WHERE key = 'schema_version'"
                    ).fetchone()
                    if row is None or str(row[0]) != str(SCHEMA_VERSION):
                        found = "no schema version" if row is None else f"schema version {row[0]}"
                        raise StoreError(
                            f"feedback store {self.path} has {found}; this riskserve reads "
                            f"schema version {SCHEMA_VERSION} only"
                        )
                elif tables:
                    raise StoreError(
                        f"feedback store {self.path} is a SQLite database but not a feedback "
                        f"store (tables {', '.join(sorted(tables))}, no meta table)"
                    )
                else:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._error(e, "opening") from e

    def _thread_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A connection for one read statement (its own snapshot: no BEGIN needed)."""
        shared = self.CONNECTIONS == "shared"
        try:
            with self._write_lock if shared else contextlib.nullcontext():
                yield self._writer if shared else self._thread_conn()
        except sqlite3.Error as e:
            raise self._error(e, doing) from e

    @contextlib.contextmanager
    def _writing(self, doing: str, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed when the block ends: durably (the WAL
        fsynced, PRAGMA synchronous FULL) unless `durable` is False, which the
        prediction log asks for (NORMAL: safe against a crash of the process, not
        of the machine; nothing waits on those rows, and a fsync per batch costs
        the serving core time: bench/README.md). The next durable commit fsyncs
        the WAL and so everything before it."""
        mode = self.CONNECTIONS
        lock = contextlib.nullcontext() if mode == "per-thread-busy" else self._write_lock
        try:
            with lock:
                conn = self._writer if mode in ("writer", "shared") else self._thread_conn()
                conn.execute(f"PRAGMA synchronous = {self.SYNCHRONOUS if durable else 'NORMAL'}")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e, doing) from e

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- statements ------------------------------------------------------------------

    def _rows_per_statement(self, conn: sqlite3.Connection, width: int) -> int:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return max(1, min(_ROWS_PER_STATEMENT, limit // width))

    def _insert(
        self, conn: sqlite3.Connection, table: str, columns: str, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        step = self._rows_per_statement(conn, columns.count(",") + 1)
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            conn.execute(_insert_sql(table, columns, len(chunk)), [v for r in chunk for v in r])

    def _update(self, conn: sqlite3.Connection, labels: Sequence[StoredLabel]) -> None:
        step = self._rows_per_statement(conn, 4)
        for i in range(0, len(labels), step):
            chunk = labels[i : i + step]
            values = [
                v for r in chunk for v in (_label_key(r.label_id), r.label_id, r.status, r.reason)
            ]
            conn.execute(_update_sql(len(chunk)), values)

    @staticmethod
    def _one(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> str:
        (text,) = conn.execute(sql, params).fetchall()[0]
        return str(text)

    def _labels(self, conn: sqlite3.Connection, sql: str, keys: list[str]) -> list[StoredLabel]:
        return _label_rows(self._one(conn, sql, (json.dumps(keys),)))

    def _earliest(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, float]:
        pairs = json.loads(self._one(conn, _EARLIEST_OF, (json.dumps(ids),)))
        return {i: float(ts) for i, ts in pairs}

    def _apply(self, conn: sqlite3.Connection, rules: LabelRules) -> None:
        updates = rules.updates()  # those leaving "current" first
        if updates:
            self._update(conn, [r for r in updates if r.status != CURRENT])
            self._update(conn, [r for r in updates if r.status == CURRENT])
        if rules.inserts:
            rows = [
                (
                    r.label_id,
                    r.request_id,
                    r.outcome,
                    r.label_time,
                    r.source,
                    r.amount,
                    r.status,
                    r.reason,
                    r.received_at,
                    _label_key(r.label_id),
                )
                for r in rules.inserts
            ]
            self._insert(conn, "labels", _LABEL_COLUMNS + ", label_key", rows)

    # -- the interface -----------------------------------------------------------------

    def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        rows = storable_rows(rows)
        if not rows:
            return 0
        values = prediction_values(rows)
        ids = unique(r.id for r in rows if not r.shadow)
        with self._writing("writing predictions", durable=False) as conn:
            self._insert(conn, "predictions", _PREDICTION_COLUMNS, values)
            if ids:
                pending = self._labels(conn, _PENDING_OF, ids)
                if pending:
                    rids = unique(p.request_id for p in pending)
                    current = {c.request_id: c for c in self._labels(conn, _CURRENT_OF, rids)}
                    rules = LabelRules({}, self._earliest(conn, rids), current)
                    for p in pending:
                        rules.resolve(p)
                    self._apply(conn, rules)
        return len(rows)

    def write_labels(self, labels: Sequence[Label], received_at: float) -> list[LabelAck]:
        if not labels:
            return []
        keep = [lb for lb in labels if storable_label(lb)]  # the rest: rejected by the rules
        if not keep:
            rules = LabelRules({}, {}, {})
            return [rules.add(lb, received_at) for lb in labels]
        label_ids = unique(lb.label_id for lb in keep)
        rids = unique(lb.request_id for lb in keep)
        with self._writing("writing labels") as conn:
            keys = json.dumps([_label_key(i) for i in label_ids])
            by_id = _label_rows(self._one(conn, _BY_LABEL_ID, (keys, json.dumps(label_ids))))
            stored = {s.label_id: s for s in by_id}
            current = {c.request_id: c for c in self._labels(conn, _CURRENT_OF, rids)}
            rules = LabelRules(stored, self._earliest(conn, rids), current)
            acks = [rules.add(lb, received_at) for lb in labels]
            self._apply(conn, rules)
        return acks

    def joined(self, model: str, since: float, until: float) -> Joined:
        with self._reading("reading joined rows") as conn:
            text = self._one(conn, _JOINED, (model, since, until))
        rows = json.loads(text)
        if not rows:
            return Joined.empty()
        c = list(zip(*rows, strict=True))
        ts = _floats(c[0])
        order = np.lexsort((np.asarray(c[11], dtype=np.int64), ts))
        label_time = _floats(c[9])
        return Joined(
            ts=ts[order],
            version=np.asarray(c[1], dtype=np.int64)[order],
            variant=np.asarray(c[2], dtype=np.str_)[order],
            shadow=np.asarray(c[3], dtype=np.bool_)[order],
            key_hash=np.asarray(c[4], dtype=np.str_)[order],
            score=_floats(c[5])[order],
            threshold=_floats(c[6])[order],
            flagged=np.asarray(c[7], dtype=np.bool_)[order],
            outcome=np.asarray(c[8], dtype=np.int8)[order],
            delay=(label_time - ts)[order],
            amount=_floats(c[10])[order],
        )

    def logged_rows(
        self,
        model: str,
        since: float,
        until: float,
        *,
        chunk_rows: int = LOGGED_CHUNK_ROWS,
        unlabelled_inputs: bool = False,
    ) -> Iterator[LoggedRows]:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        with self._reading("reading the prediction log") as conn:
            # One read transaction: every chunk comes from the same WAL snapshot.
            conn.execute("BEGIN")
            try:
                cur = conn.execute(_LOGGED, (bool(unlabelled_inputs), model, since, until))
                while rows := cur.fetchmany(chunk_rows):
                    yield LoggedRows.of(rows)
            finally:
                conn.execute("COMMIT")

    def history(self, request_id: str) -> list[LabelRecord]:
        with self._reading("reading label history") as conn:
            text = self._one(conn, _HISTORY, (request_id,))
        return [r.record() for r in _label_rows(text)]

    def counts(self) -> StoreCounts:
        with self._reading("counting") as conn:
            ((predictions, labels, pending),) = conn.execute(_COUNTS).fetchall()
        return StoreCounts(predictions=predictions, labels=labels, pending=pending)

    def purge(self, before: float, pending_before: float) -> Purged:
        with self._writing("purging") as conn:
            expired = conn.execute(_EXPIRE, (EXPIRED_REASON, pending_before)).rowcount
            labels = conn.execute(_DELETE_JOINED_LABELS, (before, before)).rowcount
            labels += conn.execute(_DELETE_ORPHANS, (before,)).rowcount
            predictions = conn.execute(_DELETE_PREDICTIONS, (before,)).rowcount
        return Purged(predictions=predictions, labels=labels, expired=expired)


__all__ = ["SqliteStore"]
