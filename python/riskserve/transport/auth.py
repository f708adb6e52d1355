"""Authentication and authorisation of admin calls: every ModelAdmin method and the
V2 repository extension need a principal (riskserve.transport.principals) with the
method's role — `reader` for the read-only ones, `admin` for changes. A principal
is identified by `authorization: Bearer <token>` or, with mTLS, by its client
certificate. The inference methods stay open.

No credential, or an unknown one: UNAUTHENTICATED. A known principal without the
role: PERMISSION_DENIED, naming both. The principal of the call is what the audit
history records as its actor (`actor_of`)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from riskserve.transport.principals import Principal, Principals, Role
from riskserve.transport.tls import peer_names

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

ADMIN_PREFIXES = (
    "/riskserve.admin.v1.ModelAdmin/",
    "/inference.GRPCInferenceService/Repository",
)
#: Admin methods that change nothing: the `reader` role suffices.
READ_METHODS = frozenset(
    {
        "/riskserve.admin.v1.ModelAdmin/GetDeployment",
        "/riskserve.admin.v1.ModelAdmin/History",
        "/riskserve.admin.v1.ModelAdmin/ListModels",
        "/inference.GRPCInferenceService/RepositoryIndex",
    }
)

#: The principal of the admin call being handled (each call runs in its own task).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "riskserve_principal", default=None
)


def load_token(token: str, token_file: str) -> bytes | None:
    """The legacy single admin token from the setting or the file (None: none)."""
    if token_file:
        text = Path(token_file).read_text().strip()
        if not text:
            raise ValueError(f"admin token file {token_file} is empty")
        return text.encode()
    return token.encode() if token else None


def is_admin(method: str) -> bool:
    return method.startswith(ADMIN_PREFIXES)


def role_for(method: str) -> Role:
    return Role.READER if method in READ_METHODS else Role.ADMIN


class AdminAuth:
    """Identifies the caller of admin calls and checks its role; wraps each admin
    handler once."""

    def __init__(self, principals: Principals) -> None:
        self.principals = principals
        if not principals.configured:
            log.warning("no admin credential configured: the admin API refuses every call")

    def identify(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The bearer token's principal if one is presented (a wrong token is not
        rescued by a certificate), else the client certificate's."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                v = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, presented = v.partition(" ")
                if scheme.lower() != "bearer":
                    return None
                return self.principals.by_token(presented.strip().encode())
        names = peer_names(context)
        return self.principals.by_certificate(names) if names else None

    def guard(self, method: str, inner: Handler) -> Handler:
        """`inner`, run only for a principal holding the method's role."""
        role = role_for(method)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            who = self.identify(context)
            if who is None:
                log.warning(
                    "admin call refused", extra={"method": method, "reason": "no principal"}
                )
                if not self.principals.configured:
                    why = (
                        "admin API disabled: set RISKSERVE_PRINCIPALS_FILE, "
                        "RISKSERVE_ADMIN_TOKEN or RISKSERVE_ADMIN_TOKEN_FILE"
                    )
                else:
                    why = (
                        "admin methods need metadata 'authorization: Bearer <token>' "
                        "(a valid token) or the client certificate of a known principal"
                    )
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
            assert who is not None
            if not who.may(role):
                log.warning(
                    "admin call refused",
                    extra={"method": method, "principal": who.name, "reason": "role"},
                )
                roles = sorted(r.value for r in who.roles)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"principal {who.name!r} has roles {roles}; {method} needs {role.value!r}",
                )
            token = current_principal.set(who)
            try:
                return await inner(request, context)
            finally:
                current_principal.reset(token)

        return handler
