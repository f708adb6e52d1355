"""Feedback store write throughput, SQLite and PostgreSQL.

    python bench/feedback_store.py [--out bench/results/feedback_store.json]
        [--rows 100000] [--labels 100000] [--rounds 3] [--pg-dsn postgresql://...]

Every figure is committed work: a call returns after its transaction committed
(SQLite: synchronous=FULL, the WAL fsynced; PostgreSQL: fsync and synchronous_commit
on). Without --pg-dsn a throwaway PostgreSQL cluster is started
(tests/feedback/pg.py: initdb + pg_ctl, TCP on 127.0.0.1); each run gets a fresh
SQLite file or PostgreSQL schema.

* predictions: write_predictions in batches of 500 (`--rows` rows, ~0.9 kB of JSON
  inputs each, the fraud spec's 35 fields), ids time-ordered (UUIDv7-like) vs random
  (uuid4), interleaved per round, median of `--rounds`;
* labels: write_labels in batches of 1,000 over `--labels` logged predictions (every
  label accepted), then the same batches again (all duplicates: a client's resend);
  label ids random (uuid4) vs time-ordered;
* SQLite synchronous FULL (what the store uses) vs NORMAL (not durable: measured
  only to show the cost);
* concurrency: 4 threads writing labels at once while one thread reads joined()
  (60 s windows, ~3,000 rows) in a loop; on SQLite for each connection model
  (SqliteStore.CONNECTIONS): one writer connection + a read connection per thread
  (the store's), a connection per thread with writes queued on a lock, the same
  with SQLite's busy handler alone, one shared connection behind one lock.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "feedback"))

import psycopg  # noqa: E402
from pg import PgCluster  # noqa: E402

from riskserve.feedback.postgres import PostgresStore  # noqa: E402
from riskserve.feedback.records import Label, Outcome, PredictionRow  # noqa: E402
from riskserve.feedback.sqlite import SqliteStore  # noqa: E402
from riskserve.feedback.store import FeedbackStore  # noqa: E402

PRED_BATCH = 500
LABEL_BATCH = 1000
THREADS = 4
#: Seconds of predictions each concurrent joined() reads (rows are 20 ms apart).
READ_WINDOW = 60.0
T0 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC).timestamp()


def uuid7(ms: int, rng: random.Random) -> str:
    """A UUIDv7-like id: 48 bits of Unix milliseconds, then random bits."""
    value = (ms & ((1 << 48) - 1)) << 80 | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def make_ids(kind: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    if kind == "uuid7":
        base = int(T0 * 1000)
        return [uuid7(base + i // 50, rng) for i in range(n)]  # 50 rows per millisecond
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def inputs_json(rng: random.Random) -> str:
    """A fraud-spec-shaped raw input row (35 fields)."""
    row: dict[str, Any] = {
        "amount": round(rng.lognormvariate(3.5, 1.2), 2),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "merchant_category": rng.choice(["grocery", "travel", "electronics", "fuel"]),
        "merchant_country": rng.choice(["DE", "FR", "US", "GB"]),
        "card_country": rng.choice(["DE", "FR", "US", "GB"]),
        "channel": rng.choice(["ecommerce", "pos", "atm"]),
        "card_present": rng.random() < 0.5,
        "entry_mode": rng.choice(["chip", "contactless", "manual"]),
        "transaction_hour": rng.randrange(24),
        "day_of_week": rng.randrange(7),
        "account_age_days": rng.randrange(5000),
        "card_age_days": rng.randrange(3000),
        "txn_count_1h": rng.randrange(10),
        "txn_count_24h": rng.randrange(50),
        "amount_sum_24h": round(rng.uniform(0, 5000), 2),
        "avg_amount_30d": round(rng.uniform(0, 500), 2),
        "distance_from_home_km": round(rng.uniform(0, 9000), 3),
        "distance_from_last_txn_km": round(rng.uniform(0, 9000), 3),
        "seconds_since_last_txn": round(rng.uniform(0, 1e6), 1),
        "new_device": rng.random() < 0.1,
        "ip_risk_score": round(rng.random(), 4),
        "email_domain": rng.choice(["gmail.com", "web.de", "example.org"]),
        "email_domain_age_days": None if rng.random() < 0.1 else rng.randrange(9000),
        "failed_logins_24h": rng.randrange(4),
        "is_international": rng.random() < 0.2,
        "cvv_match": rng.random() < 0.95,
        "avs_match": rng.random() < 0.9,
        "three_ds_authenticated": rng.random() < 0.6,
        "customer_age_years": rng.randrange(18, 90),
        "card_type": rng.choice(["credit", "debit", "prepaid"]),
        "card_brand": rng.choice(["visa", "mastercard", "amex"]),
        "device_os": rng.choice(["ios", "android", "windows", "macos"]),
        "merchant_age_days": rng.randrange(8000),
        "is_recurring": rng.random() < 0.1,
        "chargebacks_180d": rng.randrange(3),
    }
    return json.dumps(row)


def make_rows(ids: Sequence[str], seed: int) -> list[PredictionRow]:
    rng = random.Random(seed)
    templates = [inputs_json(rng) for _ in range(997)]
    return [
        PredictionRow(
            id=rid,
            ts=T0 + i * 0.02,
            model="fraud",
            version=2,
            variant="v2",
            revision=7,
            key_hash=f"{rng.getrandbits(64):016x}",
            score=rng.random(),
            threshold=0.5,
            flagged=False,
            shadow=False,
            inputs=templates[i % len(templates)],
        )
        for i, rid in enumerate(ids)
    ]


def make_labels(rows: Sequence[PredictionRow], seed: int) -> list[Label]:
    rng = random.Random(seed)
    return [
        Label(
            label_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            request_id=r.id,
            outcome=Outcome(int(rng.random() < 0.02)),
            label_time=r.ts + rng.uniform(3600, 30 * 86400),
            source=rng.choice(["chargeback", "analyst", "customer"]),
            amount=round(rng.uniform(1, 900), 2),
        )
        for r in rows
    ]


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def timed(calls: Sequence[Callable[[], object]]) -> dict[str, float]:
    """Runs the calls in turn: total seconds and per-call latency percentiles (ms)."""
    lat: list[float] = []
    gc.collect()
    t0 = time.perf_counter()
    for call in calls:
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    return {
        "seconds": total,
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


# --------------------------------------------------------------------------------------
# Where stores live
# --------------------------------------------------------------------------------------


class SqliteNormal(SqliteStore):
    SYNCHRONOUS = "NORMAL"


class SqlitePerThread(SqliteStore):
    CONNECTIONS = "per-thread"


class SqliteBusyOnly(SqliteStore):
    CONNECTIONS = "per-thread-busy"


class SqliteShared(SqliteStore):
    CONNECTIONS = "shared"


SQLITE_KINDS: dict[str, type[SqliteStore]] = {
    "sqlite": SqliteStore,
    "sqlite-normal": SqliteNormal,
    "sqlite-per-thread": SqlitePerThread,
    "sqlite-busy-only": SqliteBusyOnly,
    "sqlite-shared-conn": SqliteShared,
}


class Places:
    """Fresh stores: a new SQLite file in a temporary folder, a new PostgreSQL schema."""

    def __init__(self, pg_dsn: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="riskserve-bench-fb-"))
        self.pg_dsn = pg_dsn
        self.schemas: list[str] = []

    @contextlib.contextmanager
    def store(self, kind: str) -> Iterator[FeedbackStore]:
        store: FeedbackStore
        if kind in SQLITE_KINDS:
            path = self.tmp / f"{uuid.uuid4().hex}.sqlite"
            store = SQLITE_KINDS[kind](path)
        else:
            schema = "bench_" + uuid.uuid4().hex[:12]
            with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}".encode())
            self.schemas.append(schema)
            sep = "&" if "?" in self.pg_dsn else "?"
            store = PostgresStore(f"{self.pg_dsn}{sep}options=-csearch_path%3D{schema}")
        try:
            yield store
        finally:
            store.close()
            if kind in SQLITE_KINDS:
                for p in self.tmp.glob(f"{path.name}*"):
                    p.unlink()

    def cleanup(self) -> None:
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())
        for p in self.tmp.iterdir():
            p.unlink()
        self.tmp.rmdir()


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


def interleaved(variants: Sequence[Any], rounds: int) -> Iterator[tuple[int, Any]]:
    """(round, variant) for every round, the order of the variants reversed every
    other round, so that none always runs first on a noisy machine."""
    for r in range(rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            yield r, v


def summarize(runs: Sequence[Mapping[str, float | None]], rate: str) -> dict[str, Any]:
    keys = [k for k in runs[0] if k != rate]
    out: dict[str, Any] = {rate: statistics.median(r[rate] or 0.0 for r in runs)}
    for k in keys:
        vals = [v for r in runs if (v := r[k]) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["runs"] = runs
    return out


def bench_predictions(
    places: Places,
    variants: Sequence[tuple[str, str]],
    rows_by_ids: dict[str, list[PredictionRow]],
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """write_predictions throughput per (store kind, id kind), a fresh store each run."""
    runs: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    for _, (kind, ids_kind) in interleaved(variants, rounds):
        rows = rows_by_ids[ids_kind]
        with places.store(kind) as store:
            calls = [
                functools.partial(store.write_predictions, b) for b in batches(rows, PRED_BATCH)
            ]
            res = timed(calls)
            assert store.counts().predictions == len(rows)
        res["rows_per_s"] = len(rows) / res["seconds"]
        runs[(kind, ids_kind)].append(res)
        print(f"  {kind} predictions {ids_kind}: {res['rows_per_s']:,.0f} rows/s", flush=True)
    out: dict[str, dict[str, Any]] = {}
    for (kind, ids_kind), rs in runs.items():
        out.setdefault(kind, {})[ids_kind] = summarize(rs, "rows_per_s")
    return out


def bench_labels(
    places: Places,
    variants: Sequence[tuple[str, str]],
    rows: list[PredictionRow],
    label_sets: dict[str, list[Label]],
    rounds: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """write_labels throughput per (store kind, label id kind) over logged
    predictions (all accepted), then the same batches again (all duplicates)."""
    first: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    resend: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    for _, (kind, ids_kind) in interleaved(variants, rounds):
        labels = label_sets[ids_kind]
        with places.store(kind) as store:
            for b in batches(rows, 5000):
                store.write_predictions(b)
            parts = batches(labels, LABEL_BATCH)
            res = timed([functools.partial(store.write_labels, b, T0 + 40 * 86400) for b in parts])
            res["labels_per_s"] = len(labels) / res["seconds"]
            again = timed(
                [functools.partial(store.write_labels, b, T0 + 41 * 86400) for b in parts]
            )
            again["labels_per_s"] = len(labels) / again["seconds"]
            c = store.counts()
            assert (c.labels, c.pending) == (len(labels), 0), c
        first[(kind, ids_kind)].append(res)
        resend[(kind, ids_kind)].append(again)
        print(
            f"  {kind} labels ({ids_kind} label ids): {res['labels_per_s']:,.0f}/s, resent "
            f"{again['labels_per_s']:,.0f}/s",
            flush=True,
        )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for v in variants:
        out.setdefault(v[0], {})[v[1]] = {
            "new": summarize(first[v], "labels_per_s"),
            "resent": summarize(resend[v], "labels_per_s"),
        }
    return out


def concurrent_run(
    places: Places, kind: str, rows: list[PredictionRow], labels: list[Label]
) -> dict[str, float | None]:
    """THREADS threads write disjoint label batches at once; one thread reads joined()
    of a READ_WINDOW-second window (~3,000 rows) in a loop meanwhile."""
    with places.store(kind) as store:
        for b in batches(rows, 5000):
            store.write_predictions(b)
        shares = [labels[i::THREADS] for i in range(THREADS)]
        done = threading.Event()
        reads: list[float] = []
        errors: list[BaseException] = []
        start = threading.Barrier(THREADS + 1)

        def write(share: list[Label]) -> None:
            try:
                start.wait()
                for b in batches(share, LABEL_BATCH):
                    store.write_labels(b, T0 + 40 * 86400)
            except BaseException as e:
                errors.append(e)

        def read() -> None:
            rng = random.Random(1)
            span = rows[-1].ts - rows[0].ts
            while not done.is_set():
                since = rows[0].ts + rng.uniform(0, max(span - READ_WINDOW, 0))
                t = time.perf_counter()
                store.joined("fraud", since, since + READ_WINDOW)
                reads.append(time.perf_counter() - t)

        writers = [threading.Thread(target=write, args=(s,)) for s in shares]
        reader = threading.Thread(target=read)
        for t in writers:
            t.start()
        reader.start()
        start.wait()
        t0 = time.perf_counter()
        for t in writers:
            t.join()
        seconds = time.perf_counter() - t0
        done.set()
        reader.join()
        if errors:
            raise errors[0]
        assert store.counts().labels == len(labels)
    reads.sort()
    return {
        "labels_per_s": len(labels) / seconds,
        "reads_per_s": len(reads) / seconds,
        "read_p50_ms": 1e3 * reads[len(reads) // 2] if reads else None,
        "read_p99_ms": 1e3 * reads[int(len(reads) * 0.99)] if reads else None,
    }


def bench_concurrent(
    places: Places,
    kinds: Sequence[str],
    rows: list[PredictionRow],
    labels: list[Label],
    rounds: int,
) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, float | None]]] = {k: [] for k in kinds}
    for _, kind in interleaved(kinds, rounds):
        res = concurrent_run(places, kind, rows, labels)
        runs[kind].append(res)
        print(
            f"  {kind} {THREADS} writers + reader: {res['labels_per_s']:,.0f} labels/s, "
            f"{res['reads_per_s']:,.1f} reads/s",
            flush=True,
        )
    return {k: summarize(v, "labels_per_s") for k, v in runs.items()}


# --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]  # read-only calls
    try:
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rev += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    import sqlite3

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "psycopg": psycopg.__version__,
        "git_rev": rev,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "feedback_store.json"))
    ap.add_argument("--rows", type=int, default=100_000, help="predictions per run")
    ap.add_argument("--labels", type=int, default=100_000, help="labels per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-dsn", help="an existing PostgreSQL (default: a throwaway cluster)")
    a = ap.parse_args(argv)

    print("generating rows ...", file=sys.stderr, flush=True)
    rows_by_ids = {k: make_rows(make_ids(k, a.rows, 1), 2) for k in ("uuid7", "uuid4")}
    label_rows = make_rows(make_ids("uuid7", a.labels, 3), 4)
    labels = make_labels(label_rows, 5)  # label ids: uuid4
    label_sets = {
        "uuid4": labels,
        "uuid7": [
            dataclasses.replace(lb, label_id=i)
            for lb, i in zip(labels, make_ids("uuid7", len(labels), 6), strict=True)
        ],
    }
    bytes_per_row = statistics.mean(len(r.inputs) for r in rows_by_ids["uuid7"][:1000])

    with contextlib.ExitStack() as stack:
        pg_dsn = a.pg_dsn
        pg_version = None
        if not pg_dsn:
            pg = stack.enter_context(PgCluster.start(fsync=True))
            pg_dsn = pg.dsn(tcp=True)
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg_version = row[0] if row else None
        places = Places(pg_dsn)
        stack.callback(places.cleanup)

        print("predictions ...", file=sys.stderr, flush=True)
        pred_variants = [
            ("sqlite", "uuid7"),
            ("sqlite", "uuid4"),
            ("sqlite-normal", "uuid7"),
            ("postgresql", "uuid7"),
            ("postgresql", "uuid4"),
        ]
        results = {
            "predictions": bench_predictions(places, pred_variants, rows_by_ids, a.rounds),
        }
        print("labels ...", file=sys.stderr, flush=True)
        label_variants = [
            ("sqlite", "uuid4"),
            ("sqlite", "uuid7"),
            ("sqlite-normal", "uuid4"),
            ("postgresql", "uuid4"),
            ("postgresql", "uuid7"),
        ]
        results["labels"] = bench_labels(places, label_variants, label_rows, label_sets, a.rounds)
        print("concurrent ...", file=sys.stderr, flush=True)
        results["concurrent"] = bench_concurrent(
            places,
            ("sqlite", "sqlite-per-thread", "sqlite-busy-only", "sqlite-shared-conn", "postgresql"),
            label_rows,
            labels,
            a.rounds,
        )

    p = results["predictions"]
    lb = results["labels"]
    print(
        f"\nFeedback store, committed throughput (median of {a.rounds} runs; "
        f"{a.rows:,} predictions of ~{bytes_per_row:.0f} B inputs in batches of {PRED_BATCH}, "
        f"{a.labels:,} labels in batches of {LABEL_BATCH})"
    )
    hdr = f"{'store':<20} | {'uuid7 ids/s':>12} {'uuid4 ids/s':>12} {'v7/v4':>6} | {'p99 ms':>7}"
    print("\nwrite_predictions, rows/s (p99: batch latency, uuid7 ids)")
    print(hdr)
    print("-" * len(hdr))
    for kind in ("sqlite", "sqlite-normal", "postgresql"):
        v7 = p[kind]["uuid7"]
        v4 = p[kind].get("uuid4", {}).get("rows_per_s")
        v4s = f"{v4:>12,.0f} {v7['rows_per_s'] / v4:>5.2f}x" if v4 else f"{'—':>12} {'':>6}"
        name = "sqlite (sync NORMAL)" if kind == "sqlite-normal" else kind
        print(f"{name:<20} | {v7['rows_per_s']:>12,.0f} {v4s} | {v7['p99_ms']:>7.1f}")
    hdr = (
        f"{'store':<20} | {'label ids':>9} | {'labels/s':>9} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'resent/s':>9}"
    )
    print("\nwrite_labels, labels/s (p50/p99: batch latency; resent: the same batches again)")
    print(hdr)
    print("-" * len(hdr))
    for kind, ids_kind in label_variants:
        r = lb[kind][ids_kind]
        name = "sqlite (sync NORMAL)" if kind == "sqlite-normal" else kind
        print(
            f"{name:<20} | {ids_kind:>9} | {r['new']['labels_per_s']:>9,.0f} "
            f"{r['new']['p50_ms']:>7.1f} {r['new']['p99_ms']:>7.1f} | "
            f"{r['resent']['labels_per_s']:>9,.0f}"
        )
    print(
        f"\n{THREADS} label-writing threads + 1 joined() reader ({READ_WINDOW:.0f} s windows, "
        f"~{READ_WINDOW / 0.02:,.0f} rows), {a.labels:,} labels in all"
    )
    hdr2 = f"{'connection model':<44} | {'labels/s':>9} {'reads/s':>8} {'read p99 ms':>11}"
    print(hdr2)
    print("-" * len(hdr2))
    names = {
        "sqlite": "sqlite: 1 writer conn + lock, reader/thread",
        "sqlite-per-thread": "sqlite: conn per thread + write lock",
        "sqlite-busy-only": "sqlite: conn per thread, busy_timeout only",
        "sqlite-shared-conn": "sqlite: one shared conn + lock",
        "postgresql": "postgresql: pool of 8",
    }
    for kind, r in results["concurrent"].items():
        p99 = r["read_p99_ms"]
        print(
            f"{names[kind]:<44} | {r['labels_per_s']:>9,.0f} {r['reads_per_s']:>8.1f} "
            f"{'—' if p99 is None else f'{p99:.1f}':>11}"
        )

    doc = {
        "benchmark": "feedback_store",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "postgresql": {
            "server_version": pg_version,
            "where": "given DSN" if a.pg_dsn else "throwaway cluster, TCP 127.0.0.1, fsync on",
        },
        "setup": {
            "rows": a.rows,
            "labels": a.labels,
            "rounds": a.rounds,
            "prediction_batch": PRED_BATCH,
            "label_batch": LABEL_BATCH,
            "inputs_bytes_mean": bytes_per_row,
            "threads": THREADS,
        },
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
