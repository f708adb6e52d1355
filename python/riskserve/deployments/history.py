"""A deployment's history: the `Revision` record and one pure function per change.

A change is a function from the current revision (and what is loaded) to the next
one; it raises when the change is not allowed. Nothing here does I/O, loads a
model or knows asyncio: the service (riskserve.deployments.service) takes the
locks, loads versions, writes deployment.json and publishes the routing table
around these functions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from riskserve.errors import Conflict, InvalidInput, NotFound

#: Variants as (version, weight percent), sorted by version.
Variants = tuple[tuple[int, int], ...]
#: Operating threshold overrides as (version, threshold), sorted by version.
Thresholds = tuple[tuple[int, float], ...]
#: An input signature: (name, V2 datatype) pairs.
Signature = Sequence[tuple[str, str]]

#: The actor recorded for changes riskserve makes by itself.
SYSTEM_ACTOR = "riskserve"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class Revision:
    revision: int
    action: str
    variants: Variants
    salt: str
    shadow_version: int | None
    shadow_percent: float
    loaded: tuple[int, ...]
    updated_at: str
    actor: str
    reason: str
    #: The next rollback searches revisions numbered below this.
    undo_from: int
    #: Versions the canary guard took traffic from: no rollback gives them traffic
    #: again, only an operator's explicit set_traffic or promote of that version.
    held: tuple[int, ...] = ()
    #: Operating thresholds set by an operator, overriding the versions' own (their
    #: manifests'); only for versions in this revision. Not part of traffic().
    thresholds: Thresholds = ()

    def traffic(self) -> tuple[Any, ...]:
        """Where routing sends requests: variants with weight, salt, shadow (a version
        at weight 0 takes no traffic, so loading or unloading one is not a traffic
        change; nor is a threshold change, which moves no request)."""
        return (self.live, self.salt, self.shadow_version, self.shadow_percent)

    @property
    def live(self) -> Variants:
        """The variants that take traffic."""
        return tuple((v, w) for v, w in self.variants if w > 0)

    @property
    def removed(self) -> bool:
        """The model is out of service (RepositoryModelUnload, or nothing takes traffic)."""
        return self.action == "remove" or not self.live

    @property
    def wanted(self) -> set[int]:
        """Every version this revision needs loaded."""
        out = set(self.loaded) | {v for v, _ in self.variants}
        if self.shadow_version is not None:
            out.add(self.shadow_version)
        return out

    @property
    def control(self) -> int:
        return control_version(self.variants)

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
            "held": list(self.held),
            "thresholds": [[v, t] for v, t in self.thresholds],
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
            held=tuple(int(v) for v in d.get("held", ())),
            thresholds=tuple(
                sorted((int(v), _read_threshold(t)) for v, t in d.get("thresholds", ()))
            ),
        )


def _is_threshold(t: float) -> bool:
    return math.isfinite(t) and 0.0 <= t <= 1.0


def check_threshold(threshold: float) -> float:
    """`threshold` if it is a finite number in [0, 1], else InvalidInput naming it."""
    if not _is_threshold(threshold):
        raise InvalidInput(f"threshold must be a finite number in [0, 1], got {threshold}")
    return threshold


def _read_threshold(value: Any) -> float:
    t = float(value)
    if not _is_threshold(t):
        raise ValueError(f"threshold {value!r} is not a finite number in [0, 1]")
    return t


def control_version(variants: Iterable[tuple[int, int]]) -> int:
    """The control of a split: the largest weight; on a tie the older (lower)
    version, so that a new version at an even split is watched, not trusted."""
    return max(variants, key=lambda vw: (vw[1], -vw[0]))[0]


def traffic_since(history: Sequence[Revision]) -> int:
    """The revision at which the current traffic split began: later revisions
    that only load, unload or re-save do not start a new canary period."""
    cur = history[-1].traffic()
    since = history[-1].revision
    for r in reversed(history[:-1]):
        if r.traffic() != cur:
            break
        since = r.revision
    return since


def incompatibility(control: int, have: Signature, candidate: Signature) -> str | None:
    """Why a version with inputs `candidate` cannot join a deployment whose control
    (version `control`) has inputs `have`, or None."""
    if sorted(have) == sorted(candidate):
        return None
    missing = sorted(set(have) - set(candidate))
    extra = sorted(set(candidate) - set(have))
    return (
        f"inputs differ from version {control}: "
        f"missing {[f'{n}:{t}' for n, t in missing]}, new {[f'{n}:{t}' for n, t in extra]}"
    )


# -- changes -------------------------------------------------------------------------

Shadow = tuple[int | None, float]
_NO_SHADOW: Shadow = (None, 0.0)


def _next(
    cur: Revision | None,
    action: str,
    actor: str,
    reason: str,
    at: str,
    *,
    variants: Variants | None = None,
    salt: str | None = None,
    shadow: Shadow | None = None,
    loaded: Collection[int] | None = None,
    undo_from: int | None = None,
    held: Collection[int] | None = None,
    thresholds: Collection[tuple[int, float]] | None = None,
) -> Revision:
    """The revision after `cur`: what is not given stays as in `cur` (without a
    `cur`, everything but undo_from, held and thresholds must be given); undo_from
    defaults to the new revision itself. Threshold overrides of versions that are
    no longer in the deployment are dropped."""
    no = cur.revision + 1 if cur is not None else 1
    if cur is not None:
        variants = cur.variants if variants is None else variants
        salt = cur.salt if salt is None else salt
        shadow = (cur.shadow_version, cur.shadow_percent) if shadow is None else shadow
        loaded = cur.loaded if loaded is None else loaded
        held = cur.held if held is None else held
        thresholds = cur.thresholds if thresholds is None else thresholds
    assert variants is not None and salt is not None and shadow is not None and loaded is not None
    shadow_version, shadow_percent = shadow
    present = {*loaded, *(v for v, _ in variants)}
    if shadow_version is not None:
        present.add(shadow_version)
    return Revision(
        revision=no,
        action=action,
        variants=tuple(sorted(variants)),
        salt=salt,
        shadow_version=shadow_version,
        shadow_percent=shadow_percent if shadow_version is not None else 0.0,
        loaded=tuple(sorted(loaded)),
        updated_at=at,
        actor=actor,
        reason=reason,
        undo_from=no if undo_from is None else undo_from,
        held=tuple(sorted(set(held or ()))),
        thresholds=tuple(sorted((v, t) for v, t in dict(thresholds or ()).items() if v in present)),
    )


def _shadow_without(cur: Revision, version: int) -> Shadow | None:
    """The current shadow (None: unchanged), unless it is `version` (unloaded, or
    promoted to take the traffic itself)."""
    return _NO_SHADOW if cur.shadow_version == version else None


def first_load(
    name: str, prev: Revision | None, version: int, actor: str, reason: str, at: str
) -> Revision:
    """The first version of a model (new, or back after its removal): all traffic."""
    return _next(
        prev,
        "load",
        actor,
        reason or "first version of a new model",
        at,
        variants=((version, 100),),
        salt=name,
        shadow=_NO_SHADOW,
        loaded=(version,),
        held=(),
    )


def load(cur: Revision, loaded: Collection[int], actor: str, reason: str, at: str) -> Revision:
    """Another version joins at weight 0 (traffic unchanged)."""
    return _next(cur, "load", actor, reason, at, loaded=loaded)


def unload(
    name: str,
    cur: Revision,
    loaded: Collection[int],
    version: int,
    actor: str,
    reason: str,
    at: str,
) -> Revision:
    """`version` leaves (it must take no traffic); `loaded` no longer holds it."""
    if version not in loaded:
        raise NotFound(f"model {name!r} version {version} is not loaded")
    if any(v == version for v, _ in cur.live):
        raise Conflict(f"{name} version {version} takes traffic; move its traffic away first")
    return _next(
        cur,
        "unload",
        actor,
        reason,
        at,
        variants=tuple((v, w) for v, w in cur.variants if v != version),
        shadow=_shadow_without(cur, version),
        loaded=[v for v in loaded if v != version],
    )


def remove(cur: Revision, actor: str, reason: str, at: str) -> Revision:
    """The model leaves service (NOT_FOUND until a version is loaded again)."""
    return _next(
        cur, "remove", actor, reason, at, variants=(), shadow=_NO_SHADOW, loaded=(), held=()
    )


def check_variants(
    name: str, variants: Sequence[tuple[int, int]], loaded: Collection[int]
) -> Variants:
    """A valid split: each version once, loaded, weights in 0..100 summing to 100."""
    if not variants:
        raise InvalidInput("at least one variant is needed")
    seen: set[int] = set()
    for v, w in variants:
        if v in seen:
            raise InvalidInput(f"version {v} is listed twice")
        seen.add(v)
        if not 0 <= w <= 100:
            raise InvalidInput(f"weight of version {v} must be in 0..100, got {w}")
        if v not in loaded:
            raise Conflict(f"{name} version {v} is not loaded; load it first")
    total = sum(w for _, w in variants)
    if total != 100:
        raise InvalidInput(f"weights must sum to 100, got {total}")
    return tuple(sorted(variants))


def set_traffic(
    name: str,
    cur: Revision,
    loaded: Collection[int],
    variants: Sequence[tuple[int, int]],
    salt: str,
    actor: str,
    reason: str,
    at: str,
) -> Revision:
    """A new split (an empty salt keeps the current one). A version the canary
    guard holds is released when it is given traffic here: an operator's choice."""
    checked = check_variants(name, variants, loaded)
    return _next(
        cur,
        "set_traffic",
        actor,
        reason,
        at,
        variants=checked,
        salt=salt or cur.salt,
        loaded=loaded,
        held=set(cur.held) - {v for v, w in checked if w > 0},
    )


def set_shadow(
    name: str,
    cur: Revision,
    loaded: Collection[int],
    version: int,
    percent: float,
    actor: str,
    reason: str,
    at: str,
) -> Revision:
    """Version 0 or 0 % turns the shadow off."""
    if not 0.0 <= percent <= 100.0:
        raise InvalidInput(f"shadow sample percent must be in 0..100, got {percent}")
    shadow = _NO_SHADOW
    if version != 0 and percent != 0:
        if version not in loaded:
            raise Conflict(f"{name} version {version} is not loaded; load it first")
        shadow = (version, percent)
    return _next(cur, "set_shadow", actor, reason, at, shadow=shadow, loaded=loaded)


def promote(
    name: str,
    cur: Revision,
    loaded: Collection[int],
    version: int,
    actor: str,
    reason: str,
    at: str,
) -> Revision:
    """`version` takes all traffic; the other variants stay at weight 0."""
    if version not in loaded:
        raise Conflict(f"{name} version {version} is not loaded; load it first")
    return _next(
        cur,
        "promote",
        actor,
        reason,
        at,
        variants=tuple(({v: 0 for v, _ in cur.variants} | {version: 100}).items()),
        shadow=_shadow_without(cur, version),
        loaded=loaded,
        held=set(cur.held) - {version},
    )


def set_threshold(
    cur: Revision,
    version: int,
    threshold: float | None,
    actor: str,
    reason: str,
    at: str,
    loaded: Collection[int],
    *,
    name: str = "",
) -> Revision:
    """`version` serves with `threshold` (a score >= it is flagged) instead of its
    own (its manifest's); None clears the override. Not a traffic change: no
    request moves, so no new canary period begins (traffic_since) and a rollback
    skips it. `version` must be loaded (`loaded`, as for set_shadow and promote)."""
    who = f"{name} version {version}" if name else f"version {version}"
    if threshold is not None:
        check_threshold(threshold)
    if version not in loaded:
        raise Conflict(f"{who} is not loaded; load it first")
    overrides = dict(cur.thresholds)
    if threshold is None:
        overrides.pop(version, None)
    else:
        overrides[version] = float(threshold)
    return _next(
        cur,
        "set_threshold",
        actor,
        reason,
        at,
        loaded=loaded,
        undo_from=cur.undo_from,
        thresholds=overrides.items(),
    )


def _capped(variants: Variants, held: Collection[int]) -> Variants | None:
    """`variants` with every held version at weight 0, its share given to the
    control of the rest; None when only held versions have traffic."""
    free = [(v, w) for v, w in variants if w > 0 and v not in held]
    if not free:
        return None
    moved = sum(w for v, w in variants if w > 0 and v in held)
    control = control_version(free)
    return tuple(
        sorted((v, 0 if v in held else w + (moved if v == control else 0)) for v, w in variants)
    )


def rollback_target(name: str, history: Sequence[Revision]) -> tuple[Revision, Variants]:
    """The revision a rollback restores and the split it gives: the newest revision
    before the current undo point that had traffic (a revision without traffic
    marks a removal) and, with the versions the canary guard holds kept at weight
    0, a split different from the current one. Never gives a held version traffic."""
    cur = history[-1]
    for r in reversed(history):
        if r.revision >= cur.undo_from or not r.live:
            continue
        variants = _capped(r.variants, cur.held)
        if variants is None:
            continue
        live = tuple((v, w) for v, w in variants if w > 0)
        if (live, r.salt, r.shadow_version, r.shadow_percent) != cur.traffic():
            return r, variants
    held = (
        f" that keeps {list(cur.held)} (held by the canary guard) at weight 0" if cur.held else ""
    )
    raise Conflict(f"{name} has no earlier deployment revision to roll back to{held}")


def rollback(
    cur: Revision,
    target: Revision,
    variants: Variants,
    loaded: Collection[int],
    actor: str,
    reason: str,
    at: str,
) -> Revision:
    """Back to `target`'s split, as rollback_target gave it (`variants`); `loaded`
    must hold every version with traffic. Weight-0 versions that have been unloaded
    since stay out."""
    return _next(
        cur,
        "rollback",
        actor,
        reason or f"roll back to revision {target.revision}",
        at,
        variants=tuple((v, w) for v, w in variants if w > 0 or v in loaded),
        salt=target.salt,
        shadow=(target.shadow_version, target.shadow_percent),
        loaded=loaded,
        undo_from=target.revision,
    )


def demote(
    name: str, cur: Revision, versions: Collection[int], actor: str, reason: str, at: str
) -> Revision:
    """The canary guard's rollback: each of `versions` goes to weight 0 and its
    share to the control; no other weight rises. The versions are held at 0 until
    an operator gives them traffic again explicitly."""
    control = control_version(cur.live)
    bad = set(versions)
    if control in bad:
        raise Conflict(f"{name}: the control v{control} cannot be demoted")
    missing = sorted(v for v in bad if v not in dict(cur.live))
    if missing:
        raise Conflict(f"{name}: versions {missing} take no traffic")
    moved = sum(w for v, w in cur.live if v in bad)
    return _next(
        cur,
        "canary_rollback",
        actor,
        reason,
        at,
        variants=tuple(
            (v, 0 if v in bad else w + (moved if v == control else 0)) for v, w in cur.variants
        ),
        held=set(cur.held) | bad,
    )


# -- restore at start --------------------------------------------------------------


def reconcile(cur: Revision, loaded: Collection[int], at: str) -> Revision | None:
    """`cur` restored with the versions that loaded: None when it can be served as
    it is; a "restore" revision when only versions without traffic (weight 0, the
    shadow, loaded spares) are missing. Raises Conflict when a version with
    traffic did not load (the caller then starts afresh)."""
    missing_live = [v for v, _ in cur.live if v not in loaded]
    if missing_live:
        raise Conflict(f"versions {missing_live} take traffic but did not load")
    shadow_ok = cur.shadow_version is None or cur.shadow_version in loaded
    stale = {v for v, _ in cur.variants if v not in loaded}
    if shadow_ok and not (set(cur.loaded) - set(loaded)) and not stale:
        return None
    return _next(
        cur,
        "restore",
        SYSTEM_ACTOR,
        "some versions failed to load at start",
        at,
        variants=tuple((v, w) for v, w in cur.variants if v not in stale),
        shadow=None if shadow_ok else _NO_SHADOW,
        loaded=loaded,
    )


def fresh_start(name: str, prev: Revision | None, loaded: Collection[int], at: str) -> Revision:
    """No usable state: the newest loaded version takes all traffic."""
    return _next(
        prev,
        "start",
        SYSTEM_ACTOR,
        "no deployment state: newest version live",
        at,
        variants=((max(loaded), 100),),
        salt=name,
        shadow=_NO_SHADOW,
        loaded=loaded,
        held=(),
    )
