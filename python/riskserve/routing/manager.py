"""Deployments over time: load, unload, split, shadow, promote, rollback, with
every revision persisted (models/<name>/deployment.json, written atomically) and
restored at start. Admin changes are serialised by one lock; loading, verifying
and warming up run off the event loop; the routing table is swapped atomically.

Several processes (the workers of `serve --workers N`, or replicas sharing the
models folder) share deployment.json: a change takes an exclusive file lock
(models/.deployment.lock), first adopts whatever another process wrote, then
applies itself and writes; every process polls the file and adopts newer
revisions, loading the versions they need before swapping its table."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from riskserve.config import Settings
from riskserve.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    RiskserveError,
    Unavailable,
)
from riskserve.registry import ModelRepository
from riskserve.routing.table import Deployment, RoutingTable, Variant, load_versions
from riskserve.runtime import LoadedModel, load_version

log = logging.getLogger(__name__)

STATE_FILE = "deployment.json"
LOCK_FILE = ".deployment.lock"
#: After a failed attempt to follow another process's revision, wait this long.
FOLLOW_RETRY_SECONDS = 5.0
STATE_FORMAT = "riskserve.deployment/v1"
#: Revisions kept in deployment.json (and in memory) per model.
HISTORY_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class Revision:
    revision: int
    action: str
    variants: tuple[tuple[int, int], ...]  # (version, weight)
    salt: str
    shadow_version: int | None
    shadow_percent: float
    loaded: tuple[int, ...]
    updated_at: str
    actor: str
    reason: str
    #: The next rollback searches revisions numbered below this.
    undo_from: int

    def traffic(self) -> tuple[Any, ...]:
        """What routing sees: variants with weight, salt, shadow (a version at weight 0
        takes no traffic, so loading or unloading one is not a traffic change)."""
        live = tuple((v, w) for v, w in self.variants if w > 0)
        return (live, self.salt, self.shadow_version, self.shadow_percent)

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "action": self.action,
            "variants": [list(v) for v in self.variants],
            "salt": self.salt,
            "shadow_version": self.shadow_version,
            "shadow_percent": self.shadow_percent,
            "loaded": list(self.loaded),
            "updated_at": self.updated_at,
            "actor": self.actor,
            "reason": self.reason,
            "undo_from": self.undo_from,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Revision:
        return cls(
            revision=int(d["revision"]),
            action=str(d["action"]),
            variants=tuple((int(v), int(w)) for v, w in d["variants"]),
            salt=str(d["salt"]),
            shadow_version=None if d.get("shadow_version") is None else int(d["shadow_version"]),
            shadow_percent=float(d.get("shadow_percent", 0.0)),
            loaded=tuple(int(v) for v in d["loaded"]),
            updated_at=str(d["updated_at"]),
            actor=str(d.get("actor", "")),
            reason=str(d.get("reason", "")),
            undo_from=int(d.get("undo_from", d["revision"])),
        )


@dataclasses.dataclass
class ModelState:
    name: str
    history: list[Revision]
    models: dict[int, LoadedModel]
    #: Serialised revisions, so a commit does not re-encode the whole history.
    json_cache: dict[int, str] = dataclasses.field(default_factory=dict)

    @property
    def current(self) -> Revision:
        return self.history[-1]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".deployment-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_history(path: Path) -> list[Revision]:
    data = json.loads(path.read_text())
    return [Revision.from_json(r) for r in data["history"]]


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """Identifies one write of `path` (every write is a rename: a new inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # not a state file (nothing to follow; writing it will fail)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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


def compatible(control: LoadedModel, candidate: LoadedModel) -> str | None:
    """Why `candidate` cannot join `control`'s deployment, or None."""
    a = [(i.name, i.datatype) for i in control.inputs]
    b = [(i.name, i.datatype) for i in candidate.inputs]
    if sorted(a) == sorted(b):
        return None
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    return (
        f"inputs differ from version {control.version}: "
        f"missing {[f'{n}:{t}' for n, t in missing]}, new {[f'{n}:{t}' for n, t in extra]}"
    )


def _compatible_with(
    name: str, models: dict[int, LoadedModel], control: int
) -> dict[int, LoadedModel]:
    """The versions that may join `control`'s deployment; the others are refused
    (logged), as LoadVersion would refuse them."""
    out = {}
    for v, m in models.items():
        why = compatible(models[control], m) if v != control else None
        if why is None:
            out[v] = m
        else:
            log.error(
                "model version refused",
                extra={"model": name, "version": v, "reason": f"{name} version {v}: {why}"},
            )
    return out


class DeploymentManager:
    def __init__(
        self,
        settings: Settings,
        repo: ModelRepository,
        publish: Callable[[RoutingTable], None],
    ) -> None:
        self.settings = settings
        self.repo = repo
        self._publish = publish
        self._states: dict[str, ModelState] = {}
        #: History of models taken out of service (RepositoryModelUnload).
        self._removed: dict[str, list[Revision]] = {}
        self._lock = asyncio.Lock()
        self._file_lock = FileLock(repo.root / LOCK_FILE)
        #: deployment.json as this process last wrote or read it, per model.
        self._disk: dict[str, tuple[int, int, int] | None] = {}
        self._retry_at: dict[str, float] = {}
        self.on_change: list[Callable[[str, Revision], None]] = []

    # -- start -------------------------------------------------------------------

    def restore(self) -> RoutingTable:
        """Restores every model's deployment from deployment.json, or starts one
        with every version that loads and the newest live."""
        with self._file_lock.held():  # sibling workers start one after the other here
            return self._restore_locked()

    def _restore_locked(self) -> RoutingTable:
        for name in self.repo.models():
            path = self.repo.root / name / STATE_FILE
            history: list[Revision] = []
            if path.exists():
                try:
                    history = _read_history(path)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    log.error(
                        "deployment state unreadable; starting fresh",
                        extra={"model": name, "path": str(path), "reason": str(e)},
                    )
                    history = []
            if history and history[-1].action == "remove":
                self._removed[name] = history
                log.info("model stays unloaded", extra={"model": name})
                continue
            wanted = None
            if history:
                cur = history[-1]
                wanted = set(cur.loaded) | {v for v, _ in cur.variants}
                if cur.shadow_version is not None:
                    wanted.add(cur.shadow_version)
            models = self._load_sync(name, wanted)
            if history and all(v in models for v, w in history[-1].variants if w > 0):
                cur = history[-1]
                shadow_ok = cur.shadow_version is None or cur.shadow_version in models
                stale = {v for v, w in cur.variants if w == 0 and v not in models}
                if not shadow_ok or set(cur.loaded) - set(models) or stale:
                    history.append(
                        dataclasses.replace(
                            cur,
                            revision=cur.revision + 1,
                            action="restore",
                            variants=tuple((v, w) for v, w in cur.variants if v not in stale),
                            loaded=tuple(sorted(models)),
                            shadow_version=cur.shadow_version if shadow_ok else None,
                            shadow_percent=cur.shadow_percent if shadow_ok else 0.0,
                            updated_at=_now(),
                            actor="riskserve",
                            reason="some versions failed to load at start",
                            undo_from=cur.revision + 1,
                        )
                    )
                log.info(
                    "deployment restored",
                    extra={"model": name, "revision": history[-1].revision},
                )
            elif models:
                if history:
                    log.error(
                        "deployment state names versions that do not load; serving the newest",
                        extra={"model": name},
                    )
                    models = {**models, **self._load_sync(name, None)}
                live = max(models)
                models = _compatible_with(name, models, live)
                rev = (history[-1].revision + 1) if history else 1
                history.append(
                    Revision(
                        revision=rev,
                        action="start",
                        variants=((live, 100),),
                        salt=name,
                        shadow_version=None,
                        shadow_percent=0.0,
                        loaded=tuple(sorted(models)),
                        updated_at=_now(),
                        actor="riskserve",
                        reason="no deployment state: newest version live",
                        undo_from=rev,
                    )
                )
            if not models:
                continue
            state = ModelState(name, history, models)
            self._states[name] = state
            try:
                self._table()  # this model's deployment must be valid on its own
                self._persist(state)
            except Exception as e:
                del self._states[name]
                log.error(
                    "deployment not restored; the model is not served",
                    extra={"model": name, "reason": repr(e)},
                )
        table = self._table()
        self._publish(table)
        return table

    def _load_sync(self, name: str, only: set[int] | None) -> dict[int, LoadedModel]:
        s = self.settings
        return load_versions(
            self.repo, name, only, s.onnx_threads, s.drift_slots_or_off, s.drift_slot_seconds
        )

    # -- read-outs -----------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        st = self._states.get(name)
        if st is None:
            raise NotFound(f"model {name!r} has no deployment")
        return st

    def names(self) -> list[str]:
        return sorted(self._states)

    def traffic_since(self, name: str) -> int:
        """The revision at which the current traffic split began: later revisions
        that only load, unload or re-save do not start a new canary period."""
        h = self.state(name).history
        cur = h[-1].traffic()
        since = h[-1].revision
        for r in reversed(h[:-1]):
            if r.traffic() != cur:
                break
            since = r.revision
        return since

    def history(self, name: str, limit: int = 0) -> list[Revision]:
        h = self.state(name).history
        return list(reversed(h[-limit:] if limit > 0 else h))

    def list_models(self) -> list[tuple[str, list[dict[str, Any]]]]:
        out = []
        for name in sorted(set(self.repo.models()) | set(self._states)):
            st = self._states.get(name)
            versions = []
            for ref in self.repo.versions(name):
                m = st.models.get(ref.version) if st else None
                if m is not None:
                    versions.append(
                        {
                            "version": ref.version,
                            "state": "LOADED",
                            "sha256": m.manifest.model_sha256,
                            "platform": m.platform,
                            "reason": "",
                        }
                    )
                    continue
                try:
                    manifest = self.repo.verify(ref)
                    versions.append(
                        {
                            "version": ref.version,
                            "state": "AVAILABLE",
                            "sha256": manifest.model_sha256,
                            "platform": manifest.model_format,
                            "reason": "",
                        }
                    )
                except IntegrityError as e:
                    versions.append(
                        {
                            "version": ref.version,
                            "state": "REFUSED",
                            "sha256": "",
                            "platform": "",
                            "reason": e.message,
                        }
                    )
            out.append((name, versions))
        return out

    # -- changes ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _change(self, name: str) -> AsyncIterator[None]:
        """One admin change: this process's lock, then the file lock shared with
        every other process, then what they wrote adopted, then all or nothing."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            fd = await loop.run_in_executor(None, self._file_lock.acquire)
            try:
                await self._follow_locked(strict=name)
                with self._txn(name):
                    yield
            finally:
                self._file_lock.release(fd)

    # -- following other processes ------------------------------------------------------

    async def refresh(self) -> None:
        """Adopts what other processes wrote now (before an admin read: a change
        just made through a sibling worker must show in GetDeployment/History)."""
        async with self._lock:
            await self._follow_locked()

    async def watch(self) -> None:
        """Polls deployment.json for revisions written by another process."""
        while True:
            await asyncio.sleep(self.settings.state_poll_seconds)
            try:
                async with self._lock:
                    await self._follow_locked()
            except Exception:
                log.exception("deployment state not followed")

    async def _follow_locked(self, strict: str | None = None) -> list[str]:
        """Adopts every model's newer revision on disk; returns the models changed.
        Before a change to model `strict`, its state must be followed (or the
        change is refused): a change on top of a stale revision would undo it."""
        loop = asyncio.get_running_loop()
        changed = []
        for name in self.repo.models():
            path = self.repo.root / name / STATE_FILE
            key = _stat_key(path)
            if key is None or key == self._disk.get(name):
                continue
            if name != strict and time.monotonic() < self._retry_at.get(name, 0.0):
                continue
            try:
                history = await loop.run_in_executor(None, _read_history, path)
                if not history:
                    raise ValueError("empty history")
                if history[-1].revision > self._known_revision(name):
                    await self._adopt(name, history)
                    changed.append(name)
                self._disk[name] = key
                self._retry_at.pop(name, None)
            except Exception as e:
                self._retry_at[name] = time.monotonic() + FOLLOW_RETRY_SECONDS
                log.error(
                    "cannot follow the deployment another process wrote; still serving "
                    f"revision {self._known_revision(name)}",
                    extra={"model": name, "reason": getattr(e, "message", repr(e))},
                )
                if name == strict:
                    raise Unavailable(
                        f"{name}: deployment state on disk cannot be followed: "
                        f"{getattr(e, 'message', repr(e))}"
                    ) from e
        return changed

    def _known_revision(self, name: str) -> int:
        st = self._states.get(name)
        if st is not None:
            return st.current.revision
        removed = self._removed.get(name)
        return removed[-1].revision if removed else 0

    async def _adopt(self, name: str, history: list[Revision]) -> None:
        """Serves `history[-1]` as written by another process: loads what it needs,
        then swaps the table; on any failure this process keeps what it had."""
        cur = history[-1]
        with self._txn(name):
            if cur.action == "remove" or not any(w > 0 for _, w in cur.variants):
                self._states.pop(name, None)
                self._removed[name] = history
            else:
                st = self._states.get(name)
                have = dict(st.models) if st is not None else {}
                wanted = set(cur.loaded) | {v for v, _ in cur.variants}
                if cur.shadow_version is not None:
                    wanted.add(cur.shadow_version)
                models = {v: have[v] for v in wanted if v in have}
                for v in sorted(wanted - set(have)):
                    models[v] = await self._load_one(name, v)
                self._states[name] = ModelState(name, history, models)
                self._removed.pop(name, None)
            table = self._table()
        self._publish(table)
        log.info(
            "deployment followed",
            extra={
                "model": name,
                "revision": cur.revision,
                "action": cur.action,
                "variants": [list(v) for v in cur.variants],
            },
        )
        for cb in self.on_change:
            cb(name, cur)

    @contextlib.contextmanager
    def _txn(self, name: str) -> Iterator[None]:
        """All or nothing: a change that fails (a refused load, a disk that will
        not write) leaves memory exactly as it was, matching what is on disk."""
        st = self._states.get(name)
        saved = None if st is None else (dict(st.models), list(st.history), dict(st.json_cache))
        removed = self._removed.get(name)
        removed_copy = None if removed is None else list(removed)
        try:
            yield
        except BaseException:
            if st is None or saved is None:
                self._states.pop(name, None)
            else:
                self._states[name] = st
                st.models.clear()
                st.models.update(saved[0])
                st.history[:] = saved[1]
                st.json_cache.clear()
                st.json_cache.update(saved[2])
            if removed_copy is None:
                self._removed.pop(name, None)
            else:
                self._removed[name] = removed_copy
            raise

    async def load(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self._states.get(name)
            if st is not None and version in st.models:
                return st.current
            model = await self._load_one(name, version)
            if st is None:
                st = ModelState(name, self._removed.pop(name, []), {version: model})
                self._states[name] = st
                return await self._commit(
                    st,
                    "load",
                    ((version, 100),),
                    name,
                    None,
                    0.0,
                    actor,
                    reason or "first version of a new model",
                )
            why = compatible(st.models[self._control(st)], model)
            if why is not None:
                raise Conflict(f"{name} version {version} refused: {why}")
            st.models[version] = model
            cur = st.current
            return await self._commit(
                st,
                "load",
                cur.variants,
                cur.salt,
                cur.shadow_version,
                cur.shadow_percent,
                actor,
                reason,
            )

    async def _load_one(self, name: str, version: int) -> LoadedModel:
        ref = self.repo.version(name, version)  # NotFound when absent
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None,
                lambda: load_version(
                    self.repo, ref, s.onnx_threads, s.drift_slots_or_off, s.drift_slot_seconds
                ),
            )
        except IntegrityError as e:
            log.error(
                "model version refused",
                extra={"model": name, "version": version, "reason": e.message},
            )
            raise Conflict(f"{name} version {version} refused: {e.message}") from None

    async def unload(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self.state(name)
            if version not in st.models:
                raise NotFound(f"model {name!r} version {version} is not loaded")
            cur = st.current
            if any(v == version and w > 0 for v, w in cur.variants):
                raise Conflict(
                    f"{name} version {version} takes traffic; move its traffic away first"
                )
            del st.models[version]
            variants = tuple((v, w) for v, w in cur.variants if v != version)
            return await self._commit_without_shadow_of(
                st, version, "unload", variants, actor, reason
            )

    async def remove(self, name: str, actor: str, reason: str) -> None:
        """Takes a model out of service entirely (it answers NOT_FOUND until a
        version is loaded again); the state survives restarts."""
        async with self._change(name):
            st = self.state(name)
            cur = st.current
            rev = dataclasses.replace(
                cur,
                revision=cur.revision + 1,
                action="remove",
                variants=(),
                shadow_version=None,
                shadow_percent=0.0,
                loaded=(),
                updated_at=_now(),
                actor=actor,
                reason=reason,
                undo_from=cur.revision + 1,
            )
            st.history.append(rev)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._persist, st)
            except OSError as e:
                raise Unavailable(f"cannot write the deployment state of {name!r}: {e}") from e
            del self._states[name]
            self._removed[name] = st.history
            self._publish(self._table())
            log.info("model removed", extra={"model": name, "actor": actor, "reason": reason})

    async def set_traffic(
        self, name: str, variants: Iterable[tuple[int, int]], salt: str, actor: str, reason: str
    ) -> Revision:
        async with self._change(name):
            st = self.state(name)
            vs = self._check_variants(st, list(variants))
            cur = st.current
            return await self._commit(
                st,
                "set_traffic",
                vs,
                salt or cur.salt,
                cur.shadow_version,
                cur.shadow_percent,
                actor,
                reason,
            )

    async def set_shadow(
        self, name: str, version: int, percent: float, actor: str, reason: str
    ) -> Revision:
        async with self._change(name):
            st = self.state(name)
            if not 0.0 <= percent <= 100.0:
                raise InvalidInput(f"shadow sample percent must be in 0..100, got {percent}")
            if version == 0 or percent == 0:
                shadow: int | None = None
                percent = 0.0
            else:
                if version not in st.models:
                    raise Conflict(f"{name} version {version} is not loaded; load it first")
                shadow = version
            cur = st.current
            return await self._commit(
                st, "set_shadow", cur.variants, cur.salt, shadow, percent, actor, reason
            )

    async def promote(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self.state(name)
            if version not in st.models:
                raise Conflict(f"{name} version {version} is not loaded; load it first")
            cur = st.current
            variants = tuple(sorted(({v: 0 for v, _ in cur.variants} | {version: 100}).items()))
            return await self._commit_without_shadow_of(
                st, version, "promote", variants, actor, reason
            )

    async def _commit_without_shadow_of(
        self,
        st: ModelState,
        version: int,
        action: str,
        variants: tuple[tuple[int, int], ...],
        actor: str,
        reason: str,
    ) -> Revision:
        """Commits `variants`, keeping the current shadow unless it is `version`
        (unloaded, or promoted to take the traffic itself)."""
        cur = st.current
        shadow = cur.shadow_version if cur.shadow_version != version else None
        percent = cur.shadow_percent if shadow is not None else 0.0
        return await self._commit(st, action, variants, cur.salt, shadow, percent, actor, reason)

    async def rollback(
        self, name: str, actor: str, reason: str, expected_revision: int | None = None
    ) -> Revision:
        """Undoes the last traffic change. With `expected_revision`, only if the
        deployment is still at that revision (the canary guard's breach was
        measured there; a newer change makes it stale)."""
        async with self._change(name):
            st = self.state(name)
            if expected_revision is not None and st.current.revision != expected_revision:
                raise Conflict(
                    f"{name} moved from revision {expected_revision} to "
                    f"{st.current.revision}; not rolling back"
                )
            return await self._rollback_locked(name, actor, reason, "rollback")

    async def _rollback_locked(self, name: str, actor: str, reason: str, action: str) -> Revision:
        st = self.state(name)
        cur = st.current
        target = None
        for r in reversed(st.history):
            # A revision without traffic marks the model's removal: nothing to restore.
            has_traffic = any(w > 0 for _, w in r.variants)
            if r.revision < cur.undo_from and has_traffic and r.traffic() != cur.traffic():
                target = r
                break
        if target is None:
            raise Conflict(f"{name} has no earlier deployment revision to roll back to")
        needed = {v for v, w in target.variants if w > 0}
        if target.shadow_version is not None:
            needed.add(target.shadow_version)
        control = st.models[self._control(st)]
        for v in sorted(needed - set(st.models)):
            model = await self._load_one(name, v)
            why = compatible(control, model)
            if why is not None:  # e.g. the model was removed and came back with new inputs
                raise Conflict(f"{name} version {v} refused: {why}")
            st.models[v] = model
        # Versions at weight 0 that have been unloaded since stay out.
        variants = tuple((v, w) for v, w in target.variants if w > 0 or v in st.models)
        return await self._commit(
            st,
            action,
            variants,
            target.salt,
            target.shadow_version,
            target.shadow_percent,
            actor,
            reason or f"roll back to revision {target.revision}",
            undo_from=target.revision,
        )

    def _check_variants(
        self, st: ModelState, variants: list[tuple[int, int]]
    ) -> tuple[tuple[int, int], ...]:
        if not variants:
            raise InvalidInput("at least one variant is needed")
        seen: set[int] = set()
        for v, w in variants:
            if v in seen:
                raise InvalidInput(f"version {v} is listed twice")
            seen.add(v)
            if not 0 <= w <= 100:
                raise InvalidInput(f"weight of version {v} must be in 0..100, got {w}")
            if v not in st.models:
                raise Conflict(f"{st.name} version {v} is not loaded; load it first")
        total = sum(w for _, w in variants)
        if total != 100:
            raise InvalidInput(f"weights must sum to 100, got {total}")
        return tuple(sorted(variants))

    @staticmethod
    def _control(st: ModelState) -> int:
        # Largest weight; on a tie the older version (as the canary guard sees it).
        return max(st.current.variants, key=lambda vw: (vw[1], -vw[0]))[0]

    async def _commit(
        self,
        st: ModelState,
        action: str,
        variants: tuple[tuple[int, int], ...],
        salt: str,
        shadow_version: int | None,
        shadow_percent: float,
        actor: str,
        reason: str,
        undo_from: int | None = None,
    ) -> Revision:
        rev_no = st.current.revision + 1 if st.history else 1
        rev = Revision(
            revision=rev_no,
            action=action,
            variants=tuple(sorted(variants)),
            salt=salt,
            shadow_version=shadow_version,
            shadow_percent=shadow_percent,
            loaded=tuple(sorted(st.models)),
            updated_at=_now(),
            actor=actor,
            reason=reason,
            undo_from=rev_no if undo_from is None else undo_from,
        )
        st.history.append(rev)
        try:
            table = self._table()  # validates before anything is published
        except Exception as e:
            raise RiskserveError(f"internal: deployment would be invalid: {e!r}") from e
        # Durable before visible; the write runs off the event loop (still under
        # the admin lock, so writes cannot reorder).
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._persist, st)
        except OSError as e:
            log.error("deployment state not written", extra={"model": st.name, "error": str(e)})
            raise Unavailable(f"cannot write the deployment state of {st.name!r}: {e}") from e
        self._publish(table)
        log.info(
            "deployment changed",
            extra={
                "model": st.name,
                "revision": rev.revision,
                "action": action,
                "variants": [list(v) for v in rev.variants],
                "shadow": rev.shadow_version,
                "actor": actor,
                "reason": reason,
            },
        )
        for cb in self.on_change:
            cb(st.name, rev)
        return rev

    def _persist(self, st: ModelState) -> None:
        """Writes deployment.json atomically: the newest HISTORY_LIMIT revisions,
        each serialised once and cached."""
        if len(st.history) > HISTORY_LIMIT:
            del st.history[: len(st.history) - HISTORY_LIMIT]
        path = self.repo.root / st.name / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = []
        for r in st.history:
            text = st.json_cache.get(r.revision)
            if text is None:
                text = st.json_cache[r.revision] = json.dumps(r.to_json(), sort_keys=True)
            parts.append(text)
        for stale in set(st.json_cache) - {r.revision for r in st.history}:
            del st.json_cache[stale]
        head = json.dumps(
            {"format": STATE_FORMAT, "model": st.name, "current": st.current.revision}
        )
        body = head[:-1] + ', "history": [\n' + ",\n".join(parts) + "\n]}\n"
        _write_atomic(path, body)
        self._disk[st.name] = _stat_key(path)  # ours (written under the file lock)

    def newest_available(self, name: str) -> int:
        refs = self.repo.versions(name)
        if not refs:
            raise NotFound(f"model {name!r} has no versions in the registry")
        return refs[-1].version

    def _table(self) -> RoutingTable:
        deps: dict[str, Deployment] = {}
        for name, st in self._states.items():
            cur = st.current
            weights = [Variant(v, w) for v, w in cur.variants]
            deps[name] = Deployment(
                name=name,
                versions=MappingProxyType(dict(st.models)),
                live=self._control(st),
                variants=tuple(weights),
                salt=cur.salt,
                revision=cur.revision,
                traffic_since=self.traffic_since(name),
                shadow_version=cur.shadow_version,
                shadow_percent=cur.shadow_percent,
            )
        return RoutingTable(MappingProxyType(deps))
