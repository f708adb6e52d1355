"""The admin commands on deployments: load, unload, remove, split, shadow, promote,
rollback, threshold overrides, and the V2 repository extension's load-and-promote.

Every change follows one path: this process's lock, then the file lock shared with
every other process (riskserve.deployments.store), then adopting what they wrote,
then the pure change (riskserve.deployments.history), then deployment.json
written (durable before visible), then the routing table published. A change
that fails anywhere leaves memory exactly as it was, matching the disk. Loading
and verifying a version run off the event loop through the injected loader.

Every process polls deployment.json and adopts newer revisions written by
another one, loading the versions they need before swapping its table."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import MappingProxyType

from riskserve.deployments import history as h
from riskserve.deployments.history import Revision
from riskserve.deployments.store import StateStore
from riskserve.errors import Conflict, IntegrityError, NotFound, RiskserveError, Unavailable
from riskserve.registry import ModelRepository, VersionRef
from riskserve.routing import Deployment, RoutingTable, Variant
from riskserve.runtime import LoadedModel
from riskserve.runtime.loaded import LEGACY_THRESHOLD

log = logging.getLogger(__name__)

#: Verifies, loads and warms up one version (raises IntegrityError when it cannot).
Loader = Callable[[VersionRef], LoadedModel]
#: Why a version not loaded here is known to be bad (None: not known to be), cheaply.
Refusal = Callable[[VersionRef], str | None]


class VersionState(enum.Enum):
    LOADED = "LOADED"
    AVAILABLE = "AVAILABLE"
    REFUSED = "REFUSED"


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version of a model in the registry, as this process sees it."""

    version: int
    state: VersionState
    sha256: str = ""
    platform: str = ""
    reason: str = ""
    #: The version's own operating threshold (its manifest's); None when refused.
    threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelStatus:
    name: str
    versions: tuple[VersionStatus, ...]


@dataclasses.dataclass
class ModelState:
    """One served model: its history (newest last) and its loaded versions."""

    name: str
    history: list[Revision]
    models: dict[int, LoadedModel]

    @property
    def current(self) -> Revision:
        return self.history[-1]


def _signature(model: LoadedModel) -> list[tuple[str, str]]:
    return [(i.name, i.datatype) for i in model.inputs]


def _refused(name: str, version: int, reason: str) -> None:
    log.error("model version refused", extra={"model": name, "version": version, "reason": reason})


class DeploymentService:
    def __init__(
        self,
        repo: ModelRepository,
        loader: Loader,
        publish: Callable[[RoutingTable], None],
        store: StateStore | None = None,
        refusal: Refusal = lambda ref: None,
    ) -> None:
        self.repo = repo
        self._loader = loader
        self._refusal = refusal
        self._publish = publish
        self.store = store or StateStore(repo.root)
        self._states: dict[str, ModelState] = {}
        #: History of models taken out of service (RepositoryModelUnload).
        self._removed: dict[str, list[Revision]] = {}
        self._lock = asyncio.Lock()

    # -- read-outs -----------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        st = self._states.get(name)
        if st is None:
            raise NotFound(f"model {name!r} has no deployment")
        return st

    def names(self) -> list[str]:
        return sorted(self._states)

    def current(self, name: str) -> Revision:
        return self.state(name).current

    def traffic_since(self, name: str) -> int:
        return h.traffic_since(self.state(name).history)

    def history(self, name: str, limit: int = 0) -> list[Revision]:
        hist = self.state(name).history
        return list(reversed(hist[-limit:] if limit > 0 else hist))

    def model(self, name: str, version: int) -> LoadedModel:
        m = self.state(name).models.get(version)
        if m is None:
            raise NotFound(f"model {name!r} version {version} is not loaded")
        return m

    def loaded_status(self, name: str, version: int) -> VersionStatus:
        m = self.model(name, version)
        return VersionStatus(
            version,
            VersionState.LOADED,
            m.manifest.model_sha256,
            m.platform,
            threshold=m.threshold,
        )

    def own_thresholds(self, name: str) -> dict[int, float]:
        """Each loaded version's own operating threshold (its manifest's, before
        any override of the deployment's); empty when the model is not served."""
        st = self._states.get(name)
        return {} if st is None else {v: m.threshold for v, m in st.models.items()}

    def list_models(self) -> list[ModelStatus]:
        """Every model in the registry or served, each version LOADED, AVAILABLE
        (verified, not loaded) or REFUSED with the reason. Hashes files: call it
        off the event loop."""
        out = []
        for name in sorted(set(self.repo.models()) | set(self._states)):
            st = self._states.get(name)
            versions = []
            for ref in self.repo.versions(name):
                if st is not None and ref.version in st.models:
                    versions.append(self.loaded_status(name, ref.version))
                    continue
                try:
                    manifest = self.repo.verify(ref)
                except IntegrityError as e:
                    versions.append(
                        VersionStatus(ref.version, VersionState.REFUSED, reason=e.message)
                    )
                    continue
                # A version a check process refused (its verdict is kept) shows as
                # REFUSED, found without loading it.
                why = self._refusal(ref)
                versions.append(
                    VersionStatus(
                        ref.version,
                        VersionState.AVAILABLE if why is None else VersionState.REFUSED,
                        manifest.model_sha256,
                        manifest.model_format,
                        reason=why or "",
                        threshold=(
                            LEGACY_THRESHOLD if manifest.threshold is None else manifest.threshold
                        ),
                    )
                )
            out.append(ModelStatus(name, tuple(versions)))
        return out

    def newest_available(self, name: str) -> int:
        refs = self.repo.versions(name)
        if not refs:
            raise NotFound(f"model {name!r} has no versions in the registry")
        return refs[-1].version

    # -- start -----------------------------------------------------------------------

    def restore(self) -> RoutingTable:
        """Restores every model's deployment from deployment.json, or starts one
        with every version that loads and the newest live."""
        with self.store.lock.held():  # sibling workers start one after the other here
            for name in self.repo.models():
                self._restore_one(name)
            table = self._table()
        self._publish(table)
        return table

    def _read_at_start(self, name: str) -> list[Revision]:
        if not self.store.exists(name):
            return []
        try:
            return self.store.read(name)[0]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error(
                "deployment state unreadable; starting fresh",
                extra={"model": name, "path": str(self.store.path(name)), "reason": str(e)},
            )
            return []

    def _restore_one(self, name: str) -> None:
        history = self._read_at_start(name)
        prev = history[-1] if history else None
        if prev is not None and prev.action == "remove":
            self._removed[name] = history
            log.info("model stays unloaded", extra={"model": name})
            return
        models = self._load_sync(name, prev.wanted if prev is not None else None)
        nxt: Revision | None = None
        restored = False
        if prev is not None:
            try:
                nxt = h.reconcile(prev, models, h.now())
                restored = True
            except Conflict:
                log.error(
                    "deployment state names versions that do not load; serving the newest",
                    extra={"model": name},
                )
                models = {**models, **self._load_sync(name, None)}
        if not restored:
            if not models:
                return
            models = self._compatible_with(name, models, max(models))
            nxt = h.fresh_start(name, prev, models, h.now())
        if nxt is not None:
            history.append(nxt)
        st = ModelState(name, history, models)
        self._states[name] = st
        try:
            self._table()  # this model's deployment must be valid on its own
        except Exception as e:
            del self._states[name]
            log.error(
                "deployment not restored; the model is not served",
                extra={"model": name, "reason": repr(e)},
            )
            return
        if nxt is not None:  # a new revision: durable before it is served, if the disk allows
            try:
                self.store.write(name, st.history)
            except OSError as e:
                log.error(
                    f"deployment state not written; serving revision {nxt.revision} from "
                    "memory, and admin changes to this model fail until "
                    f"{self.store.path(name)} can be written",
                    extra={"model": name, "reason": str(e)},
                )
        if restored:
            log.info("deployment restored", extra={"model": name, "revision": st.current.revision})

    def _load_sync(self, name: str, only: set[int] | None) -> dict[int, LoadedModel]:
        """Loads the versions of `name` (all, or those in `only`), logging refusals."""
        loaded: dict[int, LoadedModel] = {}
        for ref in self.repo.versions(name):
            if only is not None and ref.version not in only:
                continue
            try:
                m = loaded[ref.version] = self._loader(ref)
            except IntegrityError as e:
                _refused(name, ref.version, e.message)
                continue
            log.info(
                "model version loaded",
                extra={
                    "model": name,
                    "version": ref.version,
                    "platform": m.platform,
                    "sha256": m.manifest.model_sha256,
                    "features": m.pipeline.n_features,
                },
            )
        return loaded

    @staticmethod
    def _compatible_with(
        name: str, models: dict[int, LoadedModel], control: int
    ) -> dict[int, LoadedModel]:
        """The versions that may join `control`'s deployment; the others are
        refused (logged), as a load would refuse them."""
        have = _signature(models[control])
        out = {}
        for v, m in models.items():
            why = None if v == control else h.incompatibility(control, have, _signature(m))
            if why is None:
                out[v] = m
            else:
                _refused(name, v, f"{name} version {v}: {why}")
        return out

    # -- changes ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _change(self, name: str) -> AsyncIterator[None]:
        """One admin change: this process's lock, then the file lock shared with
        every other process, then what they wrote adopted, then all or nothing."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            fd = await loop.run_in_executor(None, self.store.lock.acquire)
            try:
                await self._follow_locked(strict=name)
                with self._txn(name):
                    yield
            finally:
                self.store.lock.release(fd)

    @contextlib.contextmanager
    def _txn(self, name: str) -> Iterator[None]:
        """All or nothing: a change that fails (a refused load, a disk that will
        not write) leaves memory exactly as it was, matching what is on disk."""
        st = self._states.get(name)
        saved = None if st is None else (dict(st.models), list(st.history))
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
            if removed_copy is None:
                self._removed.pop(name, None)
            else:
                self._removed[name] = removed_copy
            self.store.forget_cache(name)
            raise

    async def _load_one(self, name: str, version: int) -> LoadedModel:
        ref = self.repo.version(name, version)  # NotFound when absent
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._loader, ref)
        except IntegrityError as e:
            _refused(name, version, e.message)
            raise Conflict(f"{name} version {version} refused: {e.message}") from None

    async def _join(self, st: ModelState, version: int) -> None:
        """Loads `version` into `st` if it is not loaded, refusing one whose inputs
        differ from the control's."""
        if version in st.models:
            return
        model = await self._load_one(st.name, version)
        control = st.current.control
        why = h.incompatibility(control, _signature(st.models[control]), _signature(model))
        if why is not None:
            raise Conflict(f"{st.name} version {version} refused: {why}")
        st.models[version] = model

    async def load(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self._states.get(name)
            if st is not None and version in st.models:
                return st.current
            if st is None:
                model = await self._load_one(name, version)
                prior = self._removed.pop(name, [])
                st = self._states[name] = ModelState(name, prior, {version: model})
                rev = h.first_load(
                    name, prior[-1] if prior else None, version, actor, reason, h.now()
                )
                return await self._commit(st, rev)
            await self._join(st, version)
            return await self._commit(st, h.load(st.current, st.models, actor, reason, h.now()))

    async def unload(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self.state(name)
            rev = h.unload(name, st.current, st.models, version, actor, reason, h.now())
            del st.models[version]
            return await self._commit(st, rev)

    async def remove(self, name: str, actor: str, reason: str) -> Revision:
        """Takes a model out of service entirely (it answers NOT_FOUND until a
        version is loaded again); the state survives restarts."""
        async with self._change(name):
            st = self.state(name)
            st.history.append(h.remove(st.current, actor, reason, h.now()))
            await self._persist(st)
            del self._states[name]
            self._removed[name] = st.history
            self._publish(self._table())
            log.info("model removed", extra={"model": name, "actor": actor, "reason": reason})
            return st.current

    async def set_traffic(
        self, name: str, variants: Iterable[tuple[int, int]], salt: str, actor: str, reason: str
    ) -> Revision:
        async with self._change(name):
            st = self.state(name)
            rev = h.set_traffic(
                name, st.current, st.models, list(variants), salt, actor, reason, h.now()
            )
            return await self._commit(st, rev)

    async def set_shadow(
        self, name: str, version: int, percent: float, actor: str, reason: str
    ) -> Revision:
        async with self._change(name):
            st = self.state(name)
            rev = h.set_shadow(
                name, st.current, st.models, version, percent, actor, reason, h.now()
            )
            return await self._commit(st, rev)

    async def promote(self, name: str, version: int, actor: str, reason: str) -> Revision:
        async with self._change(name):
            st = self.state(name)
            rev = h.promote(name, st.current, st.models, version, actor, reason, h.now())
            return await self._commit(st, rev)

    async def set_threshold(
        self, model: str, version: int, threshold: float | None, actor: str, reason: str
    ) -> Revision:
        """`version` of `model` serves with operating threshold `threshold` instead
        of its manifest's; None clears the override. Not a traffic change (no new
        canary period). The version must be loaded: NotFound when the registry has
        no such version, Conflict when it is not loaded."""
        if threshold is not None:
            h.check_threshold(threshold)
        async with self._change(model):
            st = self.state(model)
            if version not in st.models:
                self.repo.version(model, version)  # NotFound when the registry lacks it
            rev = h.set_threshold(
                st.current, version, threshold, actor, reason, h.now(), st.models, name=model
            )
            return await self._commit(st, rev)

    async def load_and_promote(self, name: str, version: int | None, actor: str) -> Revision:
        """The V2 repository extension's RepositoryModelLoad: loads a version (default
        the newest in the registry) and sends it all traffic."""
        v = version or self.newest_available(name)
        await self.load(name, v, actor, "RepositoryModelLoad")
        return await self.promote(name, v, actor, "RepositoryModelLoad")

    async def rollback(self, name: str, actor: str, reason: str) -> Revision:
        """Undoes the last traffic change, never giving traffic back to a version
        the canary guard holds at weight 0."""
        async with self._change(name):
            st = self.state(name)
            target, variants = h.rollback_target(name, st.history)
            needed = {v for v, w in variants if w > 0}
            if target.shadow_version is not None:
                needed.add(target.shadow_version)
            for v in sorted(needed):
                # e.g. the model was removed and came back with new inputs: refused
                await self._join(st, v)
            rev = h.rollback(st.current, target, variants, st.models, actor, reason, h.now())
            return await self._commit(st, rev)

    async def demote(
        self, name: str, versions: Iterable[int], actor: str, reason: str, expected_revision: int
    ) -> Revision:
        """The canary guard's rollback: `versions` to weight 0, their share to the
        control, only if the deployment is still at `expected_revision` (where the
        breach was measured; a newer change makes it stale)."""
        async with self._change(name):
            st = self.state(name)
            if st.current.revision != expected_revision:
                raise Conflict(
                    f"{name} moved from revision {expected_revision} to "
                    f"{st.current.revision}; not rolling back"
                )
            rev = h.demote(name, st.current, set(versions), actor, reason, h.now())
            return await self._commit(st, rev)

    async def _persist(self, st: ModelState) -> None:
        # The write runs off the event loop (still under the admin lock, so writes
        # cannot reorder).
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.store.write, st.name, st.history
            )
        except OSError as e:
            log.error("deployment state not written", extra={"model": st.name, "error": str(e)})
            raise Unavailable(f"cannot write the deployment state of {st.name!r}: {e}") from e

    async def _commit(self, st: ModelState, rev: Revision) -> Revision:
        """Appends `rev`, validates the table, writes deployment.json, publishes."""
        st.history.append(rev)
        try:
            table = self._table()  # validates before anything is written or published
        except Exception as e:
            raise RiskserveError(f"internal: deployment would be invalid: {e!r}") from e
        await self._persist(st)  # durable before visible
        self._publish(table)
        log.info(
            "deployment changed",
            extra={
                "model": st.name,
                "revision": rev.revision,
                "action": rev.action,
                "variants": [list(v) for v in rev.variants],
                "shadow": rev.shadow_version,
                "thresholds": [list(t) for t in rev.thresholds],
                "actor": rev.actor,
                "reason": rev.reason,
            },
        )
        return rev

    # -- following other processes ------------------------------------------------------

    async def refresh(self) -> None:
        """Adopts what other processes wrote now (before an admin read: a change
        just made through a sibling worker must show in GetDeployment/History)."""
        async with self._lock:
            await self._follow_locked()

    async def watch(self, poll_seconds: float) -> None:
        """Polls deployment.json for revisions written by another process."""
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                async with self._lock:
                    await self._follow_locked()
            except Exception:
                log.exception("deployment state not followed")

    def _known_revision(self, name: str) -> int:
        st = self._states.get(name)
        if st is not None:
            return st.current.revision
        removed = self._removed.get(name)
        return removed[-1].revision if removed else 0

    async def _follow_locked(self, strict: str | None = None) -> list[str]:
        """Adopts every model's newer revision on disk; returns the models changed.
        Before a change to model `strict`, its state must be followed (or the
        change is refused): a change on top of a stale revision would undo it."""
        loop = asyncio.get_running_loop()
        changed = []
        for name in self.store.changed(self.repo.models(), strict):
            try:
                history, key = await loop.run_in_executor(None, self.store.read, name)
                if history[-1].revision > self._known_revision(name):
                    await self._adopt(name, history)
                    changed.append(name)
                self.store.seen(name, key)
            except Exception as e:
                self.store.not_followed(name)
                why = getattr(e, "message", repr(e))
                log.error(
                    "cannot follow the deployment another process wrote; still serving "
                    f"revision {self._known_revision(name)}",
                    extra={"model": name, "reason": why},
                )
                if name == strict:
                    raise Unavailable(
                        f"{name}: deployment state on disk cannot be followed: {why}"
                    ) from e
        return changed

    async def _adopt(self, name: str, history: list[Revision]) -> None:
        """Serves `history[-1]` as written by another process: loads what it needs,
        then swaps the table; on any failure this process keeps what it had."""
        cur = history[-1]
        with self._txn(name):
            if cur.removed:
                self._states.pop(name, None)
                self._removed[name] = history
            else:
                st = self._states.get(name)
                have = dict(st.models) if st is not None else {}
                models = {v: have[v] for v in cur.wanted if v in have}
                for v in sorted(cur.wanted - set(have)):
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

    # -- the routing table --------------------------------------------------------------

    def _table(self) -> RoutingTable:
        deps: dict[str, Deployment] = {}
        for name, st in self._states.items():
            cur = st.current
            deps[name] = Deployment(
                name=name,
                versions=MappingProxyType(dict(st.models)),
                live=cur.control,
                variants=tuple(Variant(v, w) for v, w in cur.variants),
                salt=cur.salt,
                revision=cur.revision,
                traffic_since=h.traffic_since(st.history),
                shadow_version=cur.shadow_version,
                shadow_percent=cur.shadow_percent,
                thresholds=MappingProxyType({v: t for v, t in cur.thresholds if v in st.models}),
            )
        return RoutingTable(MappingProxyType(deps))
