"""Fixtures of the feedback store tests, imported by test_store.py (a conftest.py
here would shadow tests/conftest.py, which tests import as `conftest`). Every test
taking `store` (or `spot`) runs on both backends, each time on a fresh empty store:
a new SQLite file, or a new schema in one PostgreSQL cluster started for the session
(tests/feedback/pg.py).

Tiers: tests/conftest.py puts a test that needs the PostgreSQL cluster (the
"postgresql" case of `spot`/`store`, or `pg_cluster` itself) in the e2e tier and
marks it `tools` (initdb and pg_ctl come from `make tools`), so `make test-fast` never
starts PostgreSQL. SQLite cases stay unit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import PgCluster, PgNotFound, StoreSpot

from riskserve.feedback.store import FeedbackStore

BACKENDS = ("sqlite", "postgresql")
PG_FIXTURE = "pg_cluster"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (fsync off: tests only)."""
    try:
        pg = PgCluster.start(fsync=False)
    except PgNotFound as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=BACKENDS)
def spot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpot]:
    """A fresh empty store location on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "feedback" / "feedback.sqlite"
        s = StoreSpot("sqlite", str(path), where=str(path))
    else:
        pg: PgCluster = request.getfixturevalue(PG_FIXTURE)
        schema = "t_" + uuid.uuid4().hex[:16]
        with_schema = StoreSpot("postgresql", pg.dsn(), where=f":{pg.port}")
        with_schema.execute(f"CREATE SCHEMA {schema}")
        s = StoreSpot("postgresql", pg.dsn(options=f"-c search_path={schema}"), where=f":{pg.port}")
    try:
        yield s
    finally:
        s.close_all()


@pytest.fixture
def store(spot: StoreSpot) -> FeedbackStore:
    """A fresh empty store (closed at the end of the test)."""
    return spot.open()
