"""Opening the feedback store a DSN names (kept apart from store.py, which the
backends import)."""

from __future__ import annotations

from pathlib import Path

from riskserve.feedback.sqlite import SqliteStore
from riskserve.feedback.store import FeedbackStore, StoreError


def open_store(dsn: str, models_dir: Path) -> FeedbackStore:
    """The store a DSN names: "" → SQLite in `models_dir/.feedback/feedback.sqlite`,
    `sqlite:///PATH` → SQLite at PATH, `postgresql://…` → PostgreSQL. Raises
    StoreError naming the problem (a corrupt file, a schema of another version, a
    server that refuses the connection)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        from riskserve.feedback.postgres import PostgresStore  # psycopg only when asked

        return PostgresStore(dsn)
    if not dsn:
        return SqliteStore(models_dir / ".feedback" / "feedback.sqlite")
    if dsn.startswith("sqlite:///"):
        return SqliteStore(Path(dsn[len("sqlite:///") - 1 :]))
    raise StoreError(
        f"RISKSERVE_FEEDBACK_DSN must be empty, sqlite:///PATH or postgresql://..., got "
        f"{dsn.split('://', 1)[0]!r}://..."
    )
