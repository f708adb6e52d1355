"""Who is calling: principals from credentials, and what each may do.

A principal is identified by its client certificate (mTLS: the certificate's
common name or a DNS/URI subject alternative name) or by a bearer token. Tokens
are kept as their sha256 in the principals file, never in clear. Roles:

* ``reader``: the read-only admin and repository calls (GetDeployment, History,
  ListModels, RepositoryIndex);
* ``admin``: every admin and repository call (implies reader);
* ``feedback``: the Feedback service's writes (ground-truth labels).

Inference stays open to every caller that reaches the port (restrict the port by
network policy and, with mTLS, by requiring a client certificate).

The principals file (RISKSERVE_PRINCIPALS_FILE) is JSON::

    {"format": "riskserve.principals/v1",
     "principals": [
       {"name": "ops-oncall", "roles": ["admin"], "token_sha256": "<64 hex>"},
       {"name": "payments-gateway", "roles": ["reader"],
        "certificate": {"common_name": "payments-gateway.payments.svc"}}]}

It is re-read when it changes (checked at most once a second), so a token can
be revoked without a restart; an unreadable or invalid new version is refused
with a logged reason and the previous one stays in force."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "riskserve.principals/v1"
#: How often the principals file's mtime is checked, seconds.
RELOAD_CHECK_SECONDS = 1.0
#: Names riskserve writes itself into the audit history: no principal may take one.
RESERVED_NAMES = frozenset({"riskserve", "canary-guard"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(enum.Enum):
    READER = "reader"
    ADMIN = "admin"
    FEEDBACK = "feedback"


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        return role in self.roles or (role is Role.READER and Role.ADMIN in self.roles)


class PrincipalsError(ValueError):
    """The principals file is invalid; the message names the entry and field."""


@dataclasses.dataclass(frozen=True)
class _Table:
    by_token: Mapping[bytes, Principal]  # sha256 digest → principal
    by_cert: Mapping[str, Principal]  # certificate identity → principal


def token_sha256(token: str | bytes) -> str:
    """The hex sha256 to write in the principals file for `token`."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).hexdigest()


def parse(data: Any, where: str = "principals file") -> _Table:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PrincipalsError(f'{where}: must be a JSON object with "format": {FORMAT!r}')
    entries = data.get("principals")
    if not isinstance(entries, list):
        raise PrincipalsError(f"{where}: field 'principals' must be a list")
    by_token: dict[bytes, Principal] = {}
    by_cert: dict[str, Principal] = {}
    names: set[str] = set()
    for i, e in enumerate(entries):
        at = f"{where}: principals[{i}]"
        if not isinstance(e, dict):
            raise PrincipalsError(f"{at} must be an object")
        name = e.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PrincipalsError(f"{at}: 'name' must be 1-128 characters of [A-Za-z0-9_.@:/-]")
        if name in RESERVED_NAMES:
            raise PrincipalsError(f"{at}: the name {name!r} is reserved for riskserve itself")
        if name in names:
            raise PrincipalsError(f"{at}: the name {name!r} is used twice")
        names.add(name)
        raw_roles = e.get("roles")
        if not isinstance(raw_roles, list) or not raw_roles:
            raise PrincipalsError(f"{at}: 'roles' must be a non-empty list")
        try:
            roles = frozenset(Role(r) for r in raw_roles)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise PrincipalsError(f"{at}: unknown role in {raw_roles!r} (known: {known})") from None
        p = Principal(name, roles)
        digest, cert = e.get("token_sha256"), e.get("certificate")
        if digest is None and cert is None:
            raise PrincipalsError(f"{at}: needs 'token_sha256' or 'certificate'")
        if digest is not None:
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise PrincipalsError(f"{at}: 'token_sha256' must be 64 lowercase hex digits")
            key = bytes.fromhex(digest)
            if key in by_token:
                raise PrincipalsError(f"{at}: the same token is listed twice")
            by_token[key] = p
        if cert is not None:
            cn = cert.get("common_name") if isinstance(cert, dict) else None
            if not isinstance(cn, str) or not cn:
                raise PrincipalsError(f'{at}: \'certificate\' must be {{"common_name": "..."}}')
            if cn in by_cert:
                raise PrincipalsError(f"{at}: the certificate name {cn!r} is listed twice")
            by_cert[cn] = p
    return _Table(by_token, by_cert)


class Principals:
    """The principals in force: from a file (reloaded on change), and/or the single
    tokens of the settings: RISKSERVE_ADMIN_TOKEN is the principal "admin" (roles
    admin, reader), RISKSERVE_FEEDBACK_TOKEN the principal "feedback" (role
    feedback: it sends labels and reads outcomes, nothing else)."""

    def __init__(
        self,
        path: Path | None = None,
        admin_token: bytes | None = None,
        feedback_token: bytes | None = None,
    ) -> None:
        self._path = path
        legacy: list[tuple[bytes, Principal]] = []
        if admin_token is not None:
            admin = Principal("admin", frozenset({Role.ADMIN, Role.READER}))
            legacy.append((hashlib.sha256(admin_token).digest(), admin))
        if feedback_token is not None:
            if feedback_token == admin_token:
                raise PrincipalsError("the feedback token must differ from the admin token")
            feedback = Principal("feedback", frozenset({Role.FEEDBACK}))
            legacy.append((hashlib.sha256(feedback_token).digest(), feedback))
        self._legacy = tuple(legacy)
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._checked = 0.0
        self._table = _Table({}, {})
        if path is not None:
            self._table = self._read(path)  # at start an invalid file is fatal
            self._mtime = path.stat().st_mtime_ns

    @property
    def configured(self) -> bool:
        """Whether any credential could ever be accepted."""
        self._maybe_reload()
        t = self._table
        return bool(self._legacy) or bool(t.by_token) or bool(t.by_cert)

    @staticmethod
    def _read(path: Path) -> _Table:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PrincipalsError(f"{path}: unreadable: {e}") from None
        return parse(data, str(path))

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = os.stat(self._path).st_mtime_ns
            except OSError as e:
                log.error(
                    "principals file not readable; keeping the previous one",
                    extra={"path": str(self._path), "reason": str(e)},
                )
                return
            if mtime == self._mtime:
                return
            try:
                table = self._read(self._path)
            except PrincipalsError as e:
                log.error(
                    "principals file refused; keeping the previous one",
                    extra={"path": str(self._path), "reason": str(e)},
                )
                self._mtime = mtime  # judged: do not re-read until it changes again
                return
            self._table, self._mtime = table, mtime
            log.info(
                "principals reloaded",
                extra={
                    "path": str(self._path),
                    "principals": len(table.by_token) + len(table.by_cert),
                },
            )

    def by_token(self, token: bytes) -> Principal | None:
        """The principal holding `token` (digests compared in constant time)."""
        self._maybe_reload()
        digest = hashlib.sha256(token).digest()
        found = None
        candidates: Iterable[tuple[bytes, Principal]] = self._table.by_token.items()
        if self._legacy:
            candidates = [*candidates, *self._legacy]
        for key, p in candidates:  # every entry compared: no early exit on a match
            if hmac.compare_digest(key, digest):
                found = p
        return found

    def by_certificate(self, names: Sequence[str]) -> Principal | None:
        """The principal whose certificate name is among `names` (the peer
        certificate's common name and subject alternative names)."""
        self._maybe_reload()
        for n in names:
            p = self._table.by_cert.get(n)
            if p is not None:
                return p
        return None
