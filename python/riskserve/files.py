"""Durable file writes, shared by the registry, deployment.json and worker snapshots.

A reader sees the old file or the new one, never a torn one: the content goes to a
temporary file in the same folder, is fsynced, renamed over the target, and the
folder is fsynced so the rename itself survives a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, content: bytes) -> None:
    """Writes `path` (not atomically) and fsyncs it."""
    with path.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replaces `path` with `content` atomically and durably."""
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
