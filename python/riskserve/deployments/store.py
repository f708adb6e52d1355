"""deployment.json on disk: reading and writing a model's history, the file lock
that serialises changes across processes, and noticing writes by other processes.

Several processes (the workers of `serve --workers N`, or replicas sharing the
models folder) share models/<name>/deployment.json. A change takes an exclusive
flock on models/.deployment.lock; every write is an atomic rename (a new inode),
so a (inode, mtime, size) key identifies one write and polling it is cheap."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from riskserve.deployments.history import Revision
from riskserve.files import write_atomic

STATE_FILE = "deployment.json"
LOCK_FILE = ".deployment.lock"
STATE_FORMAT = "riskserve.deployment/v1"
#: Revisions kept in deployment.json (and in memory) per model.
HISTORY_LIMIT = 1000
#: After a failed attempt to follow another process's write, wait this long.
FOLLOW_RETRY_SECONDS = 5.0

#: Identifies one write of a state file.
StatKey = tuple[int, int, int]


class FileLock:
    """An exclusive flock on one file, held by one process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def acquire(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def release(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        fd = self.acquire()
        try:
            yield
        finally:
            self.release(fd)


def stat_key(path: Path) -> StatKey | None:
    """Identifies one write of `path`; None when there is no state file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # not a state file (nothing to follow; writing it will fail)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def parse_history(text: str) -> list[Revision]:
    data = json.loads(text)
    history = [Revision.from_json(r) for r in data["history"]]
    if not history:
        raise ValueError("empty history")
    return history


class StateStore:
    """The deployment.json files under one models folder, as this process last saw them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = FileLock(root / LOCK_FILE)
        #: deployment.json as this process last wrote or read it, per model.
        self._seen: dict[str, StatKey | None] = {}
        self._retry_at: dict[str, float] = {}
        #: Serialised revisions per model, so a write does not re-encode the whole history.
        self._json: dict[str, dict[int, str]] = {}

    def path(self, name: str) -> Path:
        return self.root / name / STATE_FILE

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def read(self, name: str) -> tuple[list[Revision], StatKey | None]:
        """The history on disk and the key of the write it came from (raises
        OSError/ValueError/KeyError/TypeError when unreadable)."""
        path = self.path(name)
        key = stat_key(path)
        return parse_history(path.read_text()), key

    def seen(self, name: str, key: StatKey | None) -> None:
        """This process now serves (or has judged) the write `key` of `name`."""
        self._seen[name] = key
        self._retry_at.pop(name, None)

    def write(self, name: str, history: list[Revision]) -> None:
        """Writes the newest HISTORY_LIMIT revisions atomically (trimming `history`
        in place to match), each revision serialised once and cached."""
        if len(history) > HISTORY_LIMIT:
            del history[: len(history) - HISTORY_LIMIT]
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = self._json.setdefault(name, {})
        parts = []
        for r in history:
            text = cache.get(r.revision)
            if text is None:
                text = cache[r.revision] = json.dumps(r.to_json(), sort_keys=True)
            parts.append(text)
        for stale in set(cache) - {r.revision for r in history}:
            del cache[stale]
        head = json.dumps({"format": STATE_FORMAT, "model": name, "current": history[-1].revision})
        write_atomic(path, head[:-1] + ', "history": [\n' + ",\n".join(parts) + "\n]}\n")
        self._seen[name] = stat_key(path)  # ours (written under the file lock)

    def forget_cache(self, name: str) -> None:
        """Drops cached serialisations (after a failed write: the history was rolled back)."""
        self._json.pop(name, None)

    def changed(self, names: Iterable[str], strict: str | None = None) -> list[str]:
        """Models whose deployment.json was written since this process last saw it,
        skipping those in back-off after a failed follow (except `strict`)."""
        out = []
        clock = time.monotonic()
        for name in names:
            key = stat_key(self.path(name))
            if key is None or key == self._seen.get(name):
                continue
            if name != strict and clock < self._retry_at.get(name, 0.0):
                continue
            out.append(name)
        return out

    def not_followed(self, name: str) -> None:
        self._retry_at[name] = time.monotonic() + FOLLOW_RETRY_SECONDS
