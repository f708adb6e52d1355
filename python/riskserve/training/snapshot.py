"""Retraining snapshots: the prediction log joined with its labels, as one Parquet file
whose sha256 is the data version.

A snapshot holds the non-shadow predictions of one model made inside a window that
ends at the maturity (`since <= prediction time < until = now - maturity`: cohorts old
enough for their labels to have come), each with its current label, optionally after
the rows of a base dataset (a file `riskserve datagen` writes, or any CSV/Parquet with
the spec's inputs and the target). Its columns, in this order:

    the spec's inputs        typed as the spec says (float64 with NaN for missing,
                             int64, bool, string)
    <target>                 int64 0/1 (the champion's target name, `is_fraud`)
    request_id               string   (null for base rows)
    prediction_time          float64  Unix seconds (null for base rows)
    served_version           int64    the version that served it (null for base rows)
    label_time               float64  (null for base rows, and unlabelled rows)
    label_amount             float64  the label's amount (null when none was sent)

Rows: the base rows in their file's order, then the log rows by (prediction_time,
request_id). A request id logged twice (a client's retry) is kept once: its earliest
row, the one its label was checked against. So the same rows give the same file and
the same sha256, whichever store they came from and in whatever order they were
inserted; the writer's options are fixed (SNAPSHOT_WRITER) and nothing time-dependent
goes into the file (the footer's `created_by` names the pyarrow version, so the digest
is stable for one pyarrow build). How the rows were collected (window, maturity,
counts, label coverage) is not in the file but beside it, in `<sha256>.json`, and in
the manifest of every version trained from it.

Unlabelled predictions (no label once mature): RISKSERVE_RETRAIN_UNLABELLED=drop (the
default) leaves them out, as outcomes do: an unlabelled payment is not known to be
legitimate (a chargeback can take longer than the maturity), and the feedback API
takes explicit `legit` labels. `legit` keeps them as legitimate, for label sources
that only ever report fraud. Label coverage (labelled / predictions) is recorded
either way.

Where snapshots live: `<models>/<model>/.snapshots/<sha256>.parquet` by default
(RISKSERVE_RETRAIN_SNAPSHOT_DIR moves them, e.g. to shared storage). Beside the model
they train: found by whoever has the registry, backed up and purged with it, and
content-addressed, so a manifest's `snapshot.sha256` names its file, and a run on
unchanged data writes nothing new. The dot keeps them out of the registry's version
listing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from riskserve.errors import InvalidInput
from riskserve.feedback.store import LOGGED_CHUNK_ROWS, FeedbackStore, LoggedRows
from riskserve.files import write_atomic
from riskserve.training.datagen import fingerprint, read_table

Progress = Callable[[str], None]

SNAPSHOT_FORMAT = "riskserve.snapshot/v1"
REQUEST_ID = "request_id"
PREDICTION_TIME = "prediction_time"
SERVED_VERSION = "served_version"
LABEL_TIME = "label_time"
LABEL_AMOUNT = "label_amount"
#: The columns after the inputs and the target.
META_COLUMNS: dict[str, pa.DataType] = {
    REQUEST_ID: pa.string(),
    PREDICTION_TIME: pa.float64(),
    SERVED_VERSION: pa.int64(),
    LABEL_TIME: pa.float64(),
    LABEL_AMOUNT: pa.float64(),
}
#: Spec dtype → Arrow type of its column.
ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
#: Parquet writer options (fixed: the same table gives the same bytes).
SNAPSHOT_WRITER: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "store_schema": True,
    "write_page_index": False,
}
SNAPSHOT_ROW_GROUP_ROWS = 131_072
UNLABELLED_CHOICES = ("drop", "legit")


@dataclasses.dataclass(frozen=True)
class SnapshotSchema:
    """The columns a snapshot for one feature spec holds."""

    #: (name, spec dtype) of each raw input, in spec order.
    inputs: tuple[tuple[str, str], ...]
    target: str

    @classmethod
    def of_spec(cls, spec: dict[str, Any], target: str) -> SnapshotSchema:
        inputs = tuple((str(i["name"]), str(i["dtype"])) for i in spec["inputs"])
        names = {n for n, _ in inputs}
        clash = sorted(names & ({target} | set(META_COLUMNS)))
        if clash:
            raise InvalidInput(
                f"the spec's input {clash[0]!r} has the name of a snapshot column "
                f"({', '.join([target, *META_COLUMNS])}): rename it"
            )
        return cls(inputs, target)

    @property
    def input_names(self) -> list[str]:
        return [n for n, _ in self.inputs]

    def inputs_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, ARROW_TYPES[d]) for n, d in self.inputs])

    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(n, ARROW_TYPES[d]) for n, d in self.inputs]
            + [pa.field(self.target, pa.int64())]
            + [pa.field(n, t) for n, t in META_COLUMNS.items()]
        )

    def check(self, schema: pa.Schema, where: str) -> None:
        """InvalidInput naming the first column `schema` lacks or has another type of."""
        want = self.schema()
        for f in want:
            i = schema.get_field_index(f.name)
            if i < 0:
                kind = "input" if f.name in self.input_names else "column"
                raise InvalidInput(
                    f"{where} does not match the champion's spec: it has no {kind} {f.name!r} "
                    f"({f.type}); it has {', '.join(schema.names[:12])}"
                    + (", ..." if len(schema.names) > 12 else "")
                )
            got = schema.field(i).type
            if got != f.type:
                dtype = dict(self.inputs).get(f.name)
                wants = f"the spec's {dtype} ({f.type})" if dtype else str(f.type)
                raise InvalidInput(
                    f"{where} does not match the champion's spec: column {f.name!r} is {got}, "
                    f"not {wants}"
                )


@dataclasses.dataclass(frozen=True)
class Window:
    """Prediction times a snapshot takes: `since <= t < until`."""

    since: float
    until: float
    window_seconds: float
    maturity_seconds: float

    @classmethod
    def ending(cls, now: float, window_seconds: float, maturity_seconds: float) -> Window:
        if window_seconds <= 0:
            raise ValueError(f"--window must be positive, got {window_seconds:g} s")
        if maturity_seconds < 0:
            raise ValueError(f"--maturity must be >= 0, got {maturity_seconds:g} s")
        until = now - maturity_seconds
        return cls(until - window_seconds, until, window_seconds, maturity_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": iso_time(self.since),
            "until": iso_time(self.until),
            "since_unix": self.since,
            "until_unix": self.until,
            "window_seconds": self.window_seconds,
            "maturity_seconds": self.maturity_seconds,
        }


def iso_time(t: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the second."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Collected:
    """The log's rows of a window, ready to become a snapshot, and their counts."""

    table: pa.Table
    #: Distinct non-shadow predictions in the window, and those with a current label.
    predictions: int
    labelled: int
    #: Unlabelled predictions kept as legitimate (RISKSERVE_RETRAIN_UNLABELLED=legit).
    unlabelled_as_legit: int
    #: Rows dropped because their request id was logged before (retries).
    retried: int

    @property
    def label_coverage(self) -> float | None:
        return self.labelled / self.predictions if self.predictions else None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A snapshot file, its digest, its rows and how they were collected."""

    path: Path
    sha256: str
    table: pa.Table
    #: The provenance (the sidecar `<sha256>.json`): window, counts, coverage, base.
    provenance: dict[str, Any]

    def stats(self, target: str) -> dict[str, Any]:
        """Row, label and fraud counts of the table itself."""
        y = self.table.column(target).to_numpy(zero_copy_only=False)
        log = self.table.column(PREDICTION_TIME).is_valid().to_numpy(zero_copy_only=False)
        return {
            "rows": self.table.num_rows,
            "log_rows": int(log.sum()),
            "base_rows": int((~log).sum()),
            "fraud": int((y == 1).sum()),
            "legit": int((y == 0).sum()),
        }


# --------------------------------------------------------------------------------------
# The log's rows
# --------------------------------------------------------------------------------------


def _parse_inputs(texts: Sequence[str], schema: SnapshotSchema) -> pa.Table:
    """Logged input JSON objects → typed columns (Arrow's JSON reader, in C++)."""
    if not texts:
        return schema.inputs_schema().empty_table()
    body = "\n".join(texts).encode()
    try:
        table = pajson.read_json(
            io.BytesIO(body),
            read_options=pajson.ReadOptions(use_threads=True, block_size=16 << 20),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema.inputs_schema(), unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid as e:
        raise InvalidInput(
            f"the prediction log's inputs do not fit the champion's spec ({e}); the rows were "
            "served by a version with another spec: narrow --window to the champion's rows"
        ) from None
    return table.select(schema.input_names)


def _fill_missing(table: pa.Table, schema: SnapshotSchema, versions: pa.Array) -> pa.Table:
    """Float nulls (NaN logged as null) → NaN; a null in any other input is an input the
    row was not served with: InvalidInput naming it and the versions that served it."""
    for i, (name, dtype) in enumerate(schema.inputs):
        col = table.column(i)
        if col.null_count == 0:
            continue
        if dtype == "float":
            table = table.set_column(i, name, pc.fill_null(col, float("nan")))
            continue
        served = sorted(set(pc.filter(versions, col.is_null()).to_pylist()))
        raise InvalidInput(
            f"{col.null_count} labelled predictions in the log have no input {name!r} "
            f"({dtype}), which the champion's spec reads (served by version(s) "
            f"{', '.join(map(str, served))}): narrow --window to rows the champion's spec "
            "can read"
        )
    return table


def _chunk_table(
    chunk: LoggedRows, schema: SnapshotSchema, keep: np.ndarray[Any, np.dtype[np.bool_]]
) -> pa.Table:
    idx = np.flatnonzero(keep)
    versions = pa.array(chunk.version[idx])
    inputs = _fill_missing(_parse_inputs([chunk.inputs[i] for i in idx], schema), schema, versions)
    outcome = chunk.outcome[idx].astype(np.int64)
    labelled = outcome >= 0
    label_time = chunk.label_time[idx]
    amount = chunk.amount[idx]
    columns = [*inputs.columns]
    columns += [
        pa.array(np.where(labelled, outcome, 0)),
        pa.array([chunk.id[i] for i in idx], pa.string()),
        pa.array(chunk.ts[idx]),
        versions,
        pa.array(label_time, mask=np.isnan(label_time)),
        pa.array(amount, mask=np.isnan(amount)),
    ]
    return pa.Table.from_arrays(columns, schema=schema.schema())


def collect(
    store: FeedbackStore,
    model: str,
    schema: SnapshotSchema,
    window: Window,
    *,
    unlabelled: str = "drop",
    chunk_rows: int = LOGGED_CHUNK_ROWS,
    progress: Progress = lambda _m: None,
    advance: Callable[[int], None] = lambda _n: None,
) -> Collected:
    """The window's non-shadow predictions of `model` with their current labels, read
    from the store in chunks (one snapshot of it), in canonical order."""
    if unlabelled not in UNLABELLED_CHOICES:
        raise ValueError(f"unlabelled must be one of {', '.join(UNLABELLED_CHOICES)}")
    legit = unlabelled == "legit"
    tables: list[pa.Table] = []
    ids: list[pa.Array] = []
    outcomes: list[np.ndarray[Any, np.dtype[np.int8]]] = []
    rows = 0
    stream: Iterator[LoggedRows] = store.logged_rows(
        model, window.since, window.until, chunk_rows=chunk_rows, unlabelled_inputs=legit
    )
    for chunk in stream:
        rows += len(chunk)
        ids.append(pa.array(chunk.id, pa.string()))
        outcomes.append(chunk.outcome)
        keep = np.ones(len(chunk), dtype=bool) if legit else chunk.outcome >= 0
        tables.append(_chunk_table(chunk, schema, keep))
        advance(len(chunk))
    progress(f"read {rows} prediction rows of {model} from the {store.backend} store")
    table = pa.concat_tables(tables) if tables else schema.schema().empty_table()
    # Counts over distinct request ids (a retried request is one prediction).
    all_ids = pa.chunked_array(ids, pa.string())
    outcome = np.concatenate(outcomes) if outcomes else np.zeros(0, np.int8)
    predictions = _distinct(all_ids)
    labelled = _distinct(pc.filter(all_ids, pa.array(outcome >= 0))) if rows else 0
    table, retried = _first_of_each_id(table)
    table = table.sort_by([(PREDICTION_TIME, "ascending"), (REQUEST_ID, "ascending")])
    kept_unlabelled = int(table.column(LABEL_TIME).null_count) if legit else 0
    return Collected(
        table=table,
        predictions=predictions,
        labelled=labelled,
        unlabelled_as_legit=kept_unlabelled,
        retried=retried,
    )


def _distinct(values: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.count_distinct(values).as_py()) if len(values) else 0


def _first_of_each_id(table: pa.Table) -> tuple[pa.Table, int]:
    """The table without later rows of a request id (the store's order is time, then
    insertion, so the first row of an id is its earliest)."""
    if table.num_rows == 0 or _distinct(table.column(REQUEST_ID)) == table.num_rows:
        return table, 0
    numbered = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = numbered.group_by(REQUEST_ID, use_threads=False).aggregate([("_row", "min")])
    keep = np.sort(first.column("_row_min").to_numpy())
    return table.take(pa.array(keep)), table.num_rows - len(keep)


# --------------------------------------------------------------------------------------
# The base dataset
# --------------------------------------------------------------------------------------


def read_base(path: Path, schema: SnapshotSchema) -> pa.Table:
    """A base dataset (CSV or Parquet as `riskserve datagen` writes) as snapshot rows:
    the spec's inputs cast to their types, the target checked 0/1, no log columns."""
    try:
        table = read_table(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise InvalidInput(f"--base {path}: cannot read it: {e}") from None
    missing = [n for n in [*schema.input_names, schema.target] if n not in table.column_names]
    if missing:
        raise InvalidInput(
            f"--base {path} does not match the champion's spec: it has no column "
            f"{', '.join(repr(m) for m in missing[:5])}"
        )
    columns = []
    for name, dtype in schema.inputs:
        col = table.column(name)
        want = ARROW_TYPES[dtype]
        if col.type != want:
            try:
                col = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InvalidInput(
                    f"--base {path}: column {name!r} is {col.type}, the spec wants {dtype} ({e})"
                ) from None
        if dtype == "float":
            col = pc.fill_null(col, float("nan"))
        elif col.null_count:
            raise InvalidInput(f"--base {path}: column {name!r} has {col.null_count} nulls")
        columns.append(col)
    y = table.column(schema.target)
    values = y.to_numpy(zero_copy_only=False)
    if y.null_count or not np.isin(values.astype(np.float64), (0.0, 1.0)).all():
        raise InvalidInput(f"--base {path}: target column {schema.target!r} must hold only 0 and 1")
    n = table.num_rows
    columns.append(pa.array(values.astype(np.int64)))
    columns += [pa.nulls(n, t) for t in META_COLUMNS.values()]
    return pa.Table.from_arrays(columns, schema=schema.schema())


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def to_parquet(table: pa.Table) -> bytes:
    """The snapshot's bytes: one contiguous table (so chunking cannot move a page
    boundary), the fixed writer options."""
    table = table.combine_chunks().replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **SNAPSHOT_WRITER) as writer:
        writer.write_table(table, row_group_size=SNAPSHOT_ROW_GROUP_ROWS)
    return bytes(sink.getvalue().to_pybytes())


def write(table: pa.Table, folder: Path, provenance: dict[str, Any]) -> tuple[Path, str]:
    """Writes `<folder>/<sha256>.parquet` (atomically; unchanged if it exists) and its
    provenance beside it; returns the path and the sha256."""
    body = to_parquet(table)
    sha = hashlib.sha256(body).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha}.parquet"
    if not (path.is_file() and fingerprint(path) == sha):
        write_atomic(path, body)
    side = {"format": SNAPSHOT_FORMAT, "sha256": sha, **provenance}
    write_atomic(path.with_suffix(".json"), json.dumps(side, indent=2, sort_keys=True) + "\n")
    return path, sha


def read(path: Path, schema: SnapshotSchema) -> Snapshot:
    """An existing snapshot (`--from-snapshot`), checked against the spec; its
    provenance from the sidecar `<name>.json` when there is one."""
    try:
        sha = fingerprint(path)
        table = pq.read_table(path)
    except FileNotFoundError:
        raise InvalidInput(f"--from-snapshot {path}: no such file") from None
    except (OSError, pa.ArrowException) as e:
        raise InvalidInput(f"--from-snapshot {path}: not a readable Parquet file ({e})") from None
    schema.check(table.schema, f"snapshot {path}")
    table = table.select(schema.schema().names)
    y = table.column(schema.target)
    if y.null_count or pc.all(pc.is_in(y, pa.array([0, 1]))).as_py() is False:
        raise InvalidInput(
            f"snapshot {path}: target column {schema.target!r} must hold only 0 and 1"
        )
    provenance: dict[str, Any] = {}
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            loaded = json.loads(side.read_text())
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict) and loaded.get("sha256") == sha:
            provenance = {k: v for k, v in loaded.items() if k not in ("format", "sha256")}
    return Snapshot(path=path, sha256=sha, table=table, provenance=provenance)


__all__ = [
    "ARROW_TYPES",
    "LABEL_AMOUNT",
    "LABEL_TIME",
    "META_COLUMNS",
    "PREDICTION_TIME",
    "REQUEST_ID",
    "SERVED_VERSION",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_WRITER",
    "UNLABELLED_CHOICES",
    "Collected",
    "Snapshot",
    "SnapshotSchema",
    "Window",
    "collect",
    "iso_time",
    "read",
    "read_base",
    "to_parquet",
    "write",
]
