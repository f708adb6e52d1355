"""The feedback store on PostgreSQL (RISKSERVE_FEEDBACK_DSN=postgresql://...), shared
by every replica.

Connections: a small pool of our own (autocommit connections; each write is one
explicit transaction at READ COMMITTED). Predictions go in by binary COPY; a batch's
lookups are `= ANY(array)` statements sent together in one pipeline; new labels go
in with one `INSERT ... SELECT FROM unnest(...)`.

Replicas writing at once:

* label_id is UNIQUE and labels are inserted `ON CONFLICT (label_id) DO NOTHING`:
  a label_id another replica stored meanwhile makes the transaction start again,
  and then it sees that label (DUPLICATE or REJECTED), so a label_id is stored once;
* the current labels a batch reads are locked (`FOR UPDATE`, in label_id order)
  and a partial unique index allows one current label per request: two replicas
  making different labels current at once conflict, and the later one starts again;
* a transaction starting again after a conflict runs alone among label writers:
  every label batch holds the "labels" advisory lock shared, a retry holds it
  exclusively, so it cannot conflict again (without it, batches resending
  overlapping label ids could lose the race attempt after attempt);
* a label stored as pending (no prediction yet) must not slip past a prediction
  batch committing at the same moment (each would miss the other): prediction
  batches hold the "pending" advisory lock shared, and a label batch that would
  store a pending label takes it exclusively and decides again, seeing every
  committed prediction. Label batches without pending labels (the usual case:
  labels come long after predictions) never take it.

Advisory locks are taken "labels" before "pending", so they cannot deadlock; row
lock deadlocks (rare) are broken by PostgreSQL and the transaction runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from riskserve.feedback.records import Joined, Label, LabelAck, LabelResult, PredictionRow
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

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

_SCHEMA = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    # seq: insertion (= time) order. `id` is not unique: a client may retry a request;
    # the earliest non-shadow row of an id is the one labels join.
    """CREATE TABLE predictions (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text COLLATE "C" NOT NULL,
        ts double precision NOT NULL,
        model text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        variant text NOT NULL,
        revision bigint NOT NULL,
        key_hash text,
        score double precision NOT NULL,
        threshold double precision NOT NULL,
        flagged boolean NOT NULL,
        shadow boolean NOT NULL,
        inputs text NOT NULL
    )""",
    "CREATE INDEX predictions_id ON predictions (id)",
    "CREATE INDEX predictions_model_ts ON predictions (model, ts)",
    # seq: the order labels were received in (history order).
    """CREATE TABLE labels (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        label_id text COLLATE "C" NOT NULL UNIQUE,
        request_id text COLLATE "C" NOT NULL,
        outcome smallint NOT NULL,
        label_time double precision NOT NULL,
        source text NOT NULL,
        amount double precision,
        status text NOT NULL,
        reason text NOT NULL,
        received_at double precision NOT NULL
    )""",
    "CREATE INDEX labels_request ON labels (request_id)",
    # At most one current label per request; also what joined() joins on.
    "CREATE UNIQUE INDEX labels_current ON labels (request_id) WHERE status = 'current'",
    # Small: only labels waiting for their prediction (every prediction batch probes it).
    "CREATE INDEX labels_pending ON labels (request_id) WHERE status = 'pending'",
)

_LABEL_COLUMNS = (
    "label_id, request_id, outcome, label_time, source, amount, status, reason, received_at"
)
_COPY_PREDICTIONS = (
    "COPY predictions (id, ts, model, version, variant, revision, key_hash, score, threshold, "
    "flagged, shadow, inputs) FROM STDIN (FORMAT BINARY)"
)
_PREDICTION_TYPES = (
    "text", "float8", "text", "int8", "text", "int8", "text", "float8", "float8", "bool", "bool",
    "text",
)  # fmt: skip
_INSERT_LABELS = f"""
    INSERT INTO labels ({_LABEL_COLUMNS})
    SELECT * FROM unnest(%b::text[], %b::text[], %b::smallint[], %b::float8[], %b::text[],
                         %b::float8[], %b::text[], %b::text[], %b::float8[])
    ON CONFLICT (label_id) DO NOTHING
    RETURNING label_id
"""
_UPDATE_LABELS = """
    UPDATE labels SET status = u.status, reason = u.reason
    FROM unnest(%b::text[], %b::text[], %b::text[]) AS u (label_id, status, reason)
    WHERE labels.label_id = u.label_id
"""
# A write transaction's lookups are a batch of keys: probing the indexes is
# O(batch * log n) whatever the statistics say, while the planner (random reads
# costed at 4x sequential ones, statistics lagging a table that grows all day)
# prefers to scan tables of up to some 10^5 rows for a 1,000-key batch: 10-40 ms
# instead of 2-3 ms (bench/feedback_store.py). So write transactions turn seq scans off.
_INDEX_LOOKUPS = "SELECT set_config('enable_seqscan', 'off', true)"
_BY_LABEL_ID = f"SELECT {_LABEL_COLUMNS} FROM labels WHERE label_id = ANY(%b::text[])"
_CURRENT_OF = (
    f"SELECT {_LABEL_COLUMNS} FROM labels WHERE status = 'current' "
    "AND request_id = ANY(%b::text[]) ORDER BY label_id FOR UPDATE"
)
_PENDING_OF = (
    f"SELECT {_LABEL_COLUMNS} FROM labels WHERE status = 'pending' "
    "AND request_id = ANY(%b::text[]) ORDER BY seq FOR UPDATE"
)
_EARLIEST_OF = (
    "SELECT DISTINCT ON (id) id, ts FROM predictions "
    "WHERE NOT shadow AND id = ANY(%b::text[]) ORDER BY id, seq"
)
# LATERAL ... LIMIT 1 (there is at most one current label): one probe of
# labels_current per row whatever the statistics say. A plain LEFT JOIN, planned on
# the statistics of a table that grew since its last ANALYZE, became a nested loop
# comparing every row with every current label (2.7 s for 20,000 rows).
_JOINED = """
    SELECT p.ts, p.version, p.variant, p.shadow, coalesce(p.key_hash, ''), p.score,
           p.threshold, p.flagged, coalesce(l.outcome, -1), l.label_time - p.ts, l.amount
    FROM predictions p
    LEFT JOIN LATERAL (
        SELECT c.outcome, c.label_time, c.amount FROM labels c
        WHERE c.request_id = p.id AND c.status = 'current' LIMIT 1
    ) l ON true
    WHERE p.model = %s AND p.ts >= %s AND p.ts < %s
    ORDER BY p.ts, p.seq
"""
# The stream of logged_rows: one server-side cursor in a REPEATABLE READ transaction
# (every chunk from one snapshot), the current label probed per row as in _JOINED.
_LOGGED = """
    SELECT p.id, p.ts, p.version, coalesce(l.outcome, -1), l.amount, l.label_time,
           CASE WHEN l.outcome IS NOT NULL OR %s THEN p.inputs ELSE '' END
    FROM predictions p
    LEFT JOIN LATERAL (
        SELECT c.outcome, c.label_time, c.amount FROM labels c
        WHERE c.request_id = p.id AND c.status = 'current' LIMIT 1
    ) l ON true
    WHERE p.model = %s AND p.ts >= %s AND p.ts < %s AND NOT p.shadow
    ORDER BY p.ts, p.seq
"""
_HISTORY = f"SELECT {_LABEL_COLUMNS} FROM labels WHERE request_id = %s ORDER BY seq"
_COUNTS = """
    SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM labels),
           (SELECT count(*) FROM labels WHERE status = 'pending')
"""
_EXPIRE = (
    "UPDATE labels SET status = 'rejected', reason = %s "
    "WHERE status = 'pending' AND received_at < %s"
)
# Labels of the predictions about to go (unless another non-shadow row of the id stays).
_DELETE_JOINED_LABELS = """
    DELETE FROM labels
    WHERE status != 'pending'
      AND request_id IN (SELECT id FROM predictions WHERE ts < %s AND NOT shadow)
      AND NOT EXISTS (
          SELECT 1 FROM predictions p WHERE p.id = labels.request_id AND NOT p.shadow
          AND p.ts >= %s)
"""
# Rejected labels older than the retention that never had a prediction (expired ones).
_DELETE_ORPHANS = """
    DELETE FROM labels
    WHERE status = 'rejected' AND received_at < %s
      AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.id = labels.request_id AND NOT p.shadow)
"""
_DELETE_PREDICTIONS = "DELETE FROM predictions WHERE ts < %s"

#: Errors after which a write transaction is simply run again.
_RETRIED = (pg_errors.UniqueViolation, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


class _Conflict(Exception):
    """Another transaction stored one of this batch's label ids meanwhile."""


class _NeedExclusive(Exception):
    """The batch stores a pending label: decide again under the exclusive lock."""


@dataclasses.dataclass
class _Attempt:
    """How one run of a write transaction locks."""

    #: Hold the "pending" lock exclusively (the batch stores a pending label).
    pending: bool = False
    #: Hold the "labels" lock exclusively (an earlier run conflicted).
    alone: bool = False


def _stored(row: TupleRow) -> StoredLabel:
    return StoredLabel(*row)


class _Pool:
    """At most `size` connections, opened when first needed, reused afterwards. A
    connection that broke is dropped (the next user opens a new one)."""

    def __init__(self, connect: Callable[[], Conn], size: int) -> None:
        self._connect = connect
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._slots:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._connect()
            try:
                yield conn
            finally:
                healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
                with self._lock:
                    keep = healthy and not self._closed
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStore:
    """The FeedbackStore on a PostgreSQL database (tables created on first open, in
    the first schema of the search_path)."""

    backend = "postgresql"

    #: Attempts of one write transaction that keeps conflicting with other writers.
    MAX_ATTEMPTS = 8
    CONNECT_TIMEOUT_SECONDS = 10

    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as e:
            raise StoreError(f"feedback store: the PostgreSQL DSN is malformed ({e})") from None
        self._password = str(params.get("password") or "")
        host = str(params.get("host") or params.get("hostaddr") or "the default socket")
        self.where = (
            f"PostgreSQL at {host}:{params.get('port') or 5432} "
            f"(database {params.get('dbname') or params.get('user') or '(default)'})"
        )
        self._dsn = dsn
        self._extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._extra["connect_timeout"] = self.CONNECT_TIMEOUT_SECONDS
        self._pool = _Pool(self._connect, pool_size)
        try:
            with self._pool.connection() as conn:
                self._labels_key, self._pending_key = self._init_schema(conn)
        except psycopg.Error as e:
            self._pool.close()
            raise self._error(e, "opening") from None
        except BaseException:
            self._pool.close()
            raise

    # -- connections -------------------------------------------------------------------

    def _clean(self, message: str) -> str:
        text = " ".join(message.split())
        return text.replace(self._password, "***") if self._password else text

    def _error(self, e: psycopg.Error, doing: str) -> StoreError:
        return StoreError(f"feedback store {self.where}: {doing} failed: {self._clean(str(e))}")

    def _connect(self) -> Conn:
        try:
            return psycopg.connect(self._dsn, autocommit=True, **self._extra)
        except psycopg.Error as e:
            raise StoreError(
                f"feedback store {self.where}: cannot connect: {self._clean(str(e))}"
            ) from None

    def _init_schema(self, conn: Conn) -> tuple[int, int]:
        """Creates the tables when there are none, checks the version otherwise;
        returns the advisory lock keys "labels" and "pending" of this schema."""
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended("
                "'riskserve.feedback.schema:' || coalesce(current_schema(), ''), 0))"
            )
            row = conn.execute(
                "SELECT to_regclass('meta'), to_regclass('predictions'), to_regclass('labels'), "
                "hashtextextended('riskserve.feedback.labels:' "
                "|| coalesce(current_schema(), ''), 0), "
                "hashtextextended('riskserve.feedback.pending:' "
                "|| coalesce(current_schema(), ''), 0)"
            ).fetchone()
            assert row is not None
            meta, predictions, labels, labels_key, pending_key = row
            if meta is not None:
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                version = found.fetchone()
                if version is None or str(version[0]) != str(SCHEMA_VERSION):
                    what = (
                        "no schema version" if version is None else f"schema version {version[0]}"
                    )
                    raise StoreError(
                        f"feedback store {self.where} has {what}; this riskserve reads "
                        f"schema version {SCHEMA_VERSION} only"
                    )
            elif predictions is not None or labels is not None:
                raise StoreError(
                    f"feedback store {self.where} has a predictions or labels table but no "
                    "meta table: not a riskserve feedback store"
                )
            else:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s)",
                    (str(SCHEMA_VERSION),),
                )
        return int(labels_key), int(pending_key)

    def _write(self, doing: str, work: Callable[[Conn, _Attempt], T]) -> T:
        """`work(conn, attempt)` in one transaction, run again after a conflict."""
        attempt = _Attempt()
        last: Exception | None = None
        for n in range(self.MAX_ATTEMPTS):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    return work(conn, attempt)
            except _NeedExclusive:
                attempt.pending = True
            except (*_RETRIED, _Conflict) as e:
                last = e
                attempt.alone = True
                if isinstance(e, pg_errors.DeadlockDetected):
                    time.sleep(random.uniform(0, 0.001 * 2 ** min(n, 6)))
            except psycopg.Error as e:
                raise self._error(e, doing) from None
        raise StoreError(
            f"feedback store {self.where}: {doing} failed: still conflicting with other "
            f"writers after {self.MAX_ATTEMPTS} attempts ({type(last).__name__}: "
            f"{self._clean(str(last))})"
        )

    def _lock(self, conn: Conn, attempt: _Attempt, *, pending_shared: bool) -> None:
        """The advisory locks of a write, "labels" first: shared, or exclusive when
        the attempt runs alone; then "pending" shared (prediction batches) or
        exclusive (label batches storing a pending label)."""
        labels = "pg_advisory_xact_lock" if attempt.alone else "pg_advisory_xact_lock_shared"
        conn.execute(f"SELECT {labels}(%s)".encode(), (self._labels_key,))
        if pending_shared:
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self._pending_key,))
        elif attempt.pending:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._pending_key,))

    def _read(self, doing: str, sql: str, params: Sequence[Any]) -> list[TupleRow]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as e:
            raise self._error(e, doing) from None

    def close(self) -> None:
        self._pool.close()

    # -- writes ------------------------------------------------------------------------

    @staticmethod
    def _apply(conn: Conn, rules: LabelRules) -> None:
        updates = rules.updates()
        # Those leaving "current" first: never two current labels of one request.
        for group in (
            [r for r in updates if r.status != CURRENT],
            [r for r in updates if r.status == CURRENT],
        ):
            if group:
                conn.execute(
                    _UPDATE_LABELS,
                    (
                        [r.label_id for r in group],
                        [r.status for r in group],
                        [r.reason for r in group],
                    ),
                )
        new = rules.inserts
        if new:
            cur = conn.execute(
                _INSERT_LABELS,
                (
                    [r.label_id for r in new],
                    [r.request_id for r in new],
                    [r.outcome for r in new],
                    [r.label_time for r in new],
                    [r.source for r in new],
                    [r.amount for r in new],
                    [r.status for r in new],
                    [r.reason for r in new],
                    [r.received_at for r in new],
                ),
            )
            if len(cur.fetchall()) != len(new):
                raise _Conflict()

    def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        rows = storable_rows(rows)
        if not rows:
            return 0
        params = prediction_values(rows)
        ids = unique(r.id for r in rows if not r.shadow)

        def work(conn: Conn, attempt: _Attempt) -> int:
            with conn.pipeline():
                self._lock(conn, attempt, pending_shared=True)
                conn.execute(_INDEX_LOOKUPS)
            with conn.cursor() as cur, cur.copy(_COPY_PREDICTIONS) as copy:
                copy.set_types(list(_PREDICTION_TYPES))
                for values in params:
                    copy.write_row(values)
            if ids:
                pending = [_stored(r) for r in conn.execute(_PENDING_OF, (ids,))]
                if pending:
                    rids = unique(lb.request_id for lb in pending)
                    with conn.pipeline():
                        earliest = conn.execute(_EARLIEST_OF, (rids,))
                        current = conn.execute(_CURRENT_OF, (rids,))
                    rules = LabelRules(
                        {},
                        {i: ts for i, ts in earliest.fetchall()},
                        {c.request_id: c for c in map(_stored, current.fetchall())},
                    )
                    for label in pending:
                        rules.resolve(label)
                    self._apply(conn, rules)
            return len(params)

        return self._write("writing predictions", work)

    def write_labels(self, labels: Sequence[Label], received_at: float) -> list[LabelAck]:
        if not labels:
            return []
        keep = [lb for lb in labels if storable_label(lb)]  # the rest: rejected by the rules
        if not keep:
            rules = LabelRules({}, {}, {})
            return [rules.add(lb, received_at) for lb in labels]
        label_ids = unique(lb.label_id for lb in keep)
        rids = unique(lb.request_id for lb in keep)

        def work(conn: Conn, attempt: _Attempt) -> list[LabelAck]:
            with conn.pipeline():
                self._lock(conn, attempt, pending_shared=False)
                conn.execute(_INDEX_LOOKUPS)
                stored = conn.execute(_BY_LABEL_ID, (label_ids,))
                earliest = conn.execute(_EARLIEST_OF, (rids,))
                current = conn.execute(_CURRENT_OF, (rids,))
            rules = LabelRules(
                {s.label_id: s for s in map(_stored, stored.fetchall())},
                {i: ts for i, ts in earliest.fetchall()},
                {c.request_id: c for c in map(_stored, current.fetchall())},
            )
            acks = [rules.add(lb, received_at) for lb in labels]
            if not attempt.pending and any(a.result is LabelResult.PENDING for a in acks):
                raise _NeedExclusive()
            self._apply(conn, rules)
            return acks

        return self._write("writing labels", work)

    def purge(self, before: float, pending_before: float) -> Purged:
        def work(conn: Conn, attempt: _Attempt) -> Purged:
            # Purging is rare and its statements scan: plan them on current statistics.
            conn.execute("ANALYZE predictions, labels")
            expired = conn.execute(_EXPIRE, (EXPIRED_REASON, pending_before)).rowcount
            labels = conn.execute(_DELETE_JOINED_LABELS, (before, before)).rowcount
            labels += conn.execute(_DELETE_ORPHANS, (before,)).rowcount
            predictions = conn.execute(_DELETE_PREDICTIONS, (before,)).rowcount
            return Purged(predictions=predictions, labels=labels, expired=expired)

        return self._write("purging", work)

    # -- reads -------------------------------------------------------------------------

    def joined(self, model: str, since: float, until: float) -> Joined:
        rows = self._read("reading joined rows", _JOINED, (model, since, until))
        return Joined.of(rows)

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
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                with conn.cursor(name="riskserve_logged_rows") as cur:
                    cur.itersize = chunk_rows
                    cur.execute(_LOGGED, (bool(unlabelled_inputs), model, since, until))
                    while rows := cur.fetchmany(chunk_rows):
                        yield LoggedRows.of(rows)
        except psycopg.Error as e:
            raise self._error(e, "reading the prediction log") from None

    def history(self, request_id: str) -> list[LabelRecord]:
        rows = self._read("reading label history", _HISTORY, (request_id,))
        return [_stored(r).record() for r in rows]

    def counts(self) -> StoreCounts:
        ((predictions, labels, pending),) = self._read("counting", _COUNTS, ())
        return StoreCounts(predictions=predictions, labels=labels, pending=pending)


__all__ = ["PostgresStore"]
