"""A throwaway PostgreSQL cluster for tests and bench/feedback_store.py, and
StoreSpot: where one test's feedback store lives.

    with PgCluster.start() as pg:
        store = PostgresStore(pg.dsn())

initdb into a temporary folder, `pg_ctl start` on a free port (TCP on 127.0.0.1 and
a unix socket in the folder), superuser `postgres` with trust authentication;
`pg_ctl stop -m immediate` and the folder removed at the end. PostgreSQL refuses to
run as root, so as root the cluster runs as the `postgres` user (the folder is
chowned to it). The binaries come from PATH or /usr/lib/postgresql/*/bin; without
them, PgNotFound says how to install them (`make tools`)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg

from riskserve.feedback.postgres import PostgresStore
from riskserve.feedback.sqlite import SqliteStore
from riskserve.feedback.store import FeedbackStore

#: The OS user that runs the cluster when we are root.
PG_OS_USER = "postgres"
START_TIMEOUT = 60


class PgNotFound(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then the newest
    /usr/lib/postgresql/<version>/bin."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    raise PgNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin: the PostgreSQL feedback store tests need them. "
        "`make tools` installs Debian's postgresql package."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class PgCluster:
    root: Path
    bindir: Path
    port: int
    as_user: str | None
    _running: bool = True

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False, options: str = "") -> str:
        """A libpq URI for superuser `postgres`; `options` e.g. "-c search_path=s1"."""
        host = "127.0.0.1" if tcp else quote(str(self.socket_dir), safe="")
        query = f"?host={host}&port={self.port}"
        if options:
            query += "&options=" + quote(options, safe="")
        return f"postgresql://postgres@/{dbname}{query}"

    @staticmethod
    def _command(args: list[str], as_user: str | None) -> list[str]:
        return ["runuser", "-u", as_user, "--", *args] if as_user else args

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        cmd = self._command(list(args), self.as_user)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\nserver log:\n{tail}"
            )

    @classmethod
    def start(cls, *, fsync: bool = True) -> PgCluster:
        """initdb and start a new cluster (fsync off only makes tests faster)."""
        bindir = find_bindir()
        as_user = PG_OS_USER if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="riskserve-pg-"))
        try:
            (root / "sock").mkdir()
            if as_user:
                pw = pwd.getpwnam(as_user)
                for p in (root, root / "sock"):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
            pg = cls(root=root, bindir=bindir, port=free_port(), as_user=as_user)
            pg._run(
                str(bindir / "initdb"), "-D", str(pg.data), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
            opts = (
                f"-p {pg.port} -k {pg.socket_dir} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if fsync else 'off'} -c max_connections=200"
            )
            pg._run(
                str(bindir / "pg_ctl"), "-D", str(pg.data), "-l", str(root / "server.log"),
                "-o", opts, "-w", "-t", str(START_TIMEOUT), "start",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        _started.append(pg)
        return pg

    def stop(self) -> None:
        if self._running:
            self._running = False
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError, OSError):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "stop", timeout=30)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def cluster(*, fsync: bool = True) -> Iterator[PgCluster]:
    pg = PgCluster.start(fsync=fsync)
    try:
        yield pg
    finally:
        pg.stop()


#: Every cluster started, so none outlives an interrupted run.
_started: list[PgCluster] = []


@atexit.register
def _stop_leftovers() -> None:
    for pg in _started:
        pg.stop()


# --------------------------------------------------------------------------------------
# Where a test's feedback store lives (tests/feedback/conftest.py: the `spot` fixture)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StoreSpot:
    """One empty feedback store location: a SQLite file, or a PostgreSQL schema of
    its own. `open()` opens a store object on it (as another thread's, worker's or
    replica's would be); every one is closed at the end of the test."""

    backend: str
    #: The SQLite file's path, or the PostgreSQL DSN.
    target: str
    #: What a StoreError about this store names (the path, or the server's port).
    where: str
    opened: list[FeedbackStore] = dataclasses.field(default_factory=list)

    def open(self) -> FeedbackStore:
        store: FeedbackStore
        if self.backend == "sqlite":
            store = SqliteStore(Path(self.target))
        else:
            store = PostgresStore(self.target)
        self.opened.append(store)
        return store

    def execute(self, statement: str) -> None:
        """One statement on the store's database, outside any store object."""
        if self.backend == "sqlite":
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.target, isolation_level=None)
            try:
                conn.execute(statement)
            finally:
                conn.close()
        else:
            with psycopg.connect(self.target, autocommit=True) as pconn:
                pconn.execute(statement.encode())

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()
