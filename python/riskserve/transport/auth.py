"""Authentication and authorisation of admin calls: every ModelAdmin method and the
V2 repository extension need a principal (riskserve.transport.principals) with the
method's role — `reader` for the read-only ones, `admin` for changes; the Feedback service's
label writes need `feedback`, its GetPerformance `reader` or `feedback`. A principal
is identified by `authorization: Bearer <token>` or, with mTLS, by its client
certificate. The inference methods stay open.

No credential, or an unknown one: UNAUTHENTICATED. A known principal without the
role: PERMISSION_DENIED, naming both. The principal of the call is what the audit
history records as its actor (`actor_of`)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from riskserve.transport.principals import Principal, Principals, Role
from riskserve.transport.tls import peer_names

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamHandler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]

ADMIN_PREFIXES = (
    "/riskserve.admin.v1.ModelAdmin/",
    "/inference.GRPCInferenceService/Repository",
    "/riskserve.feedback.v1.Feedback/",
)
FEEDBACK_PREFIX = "/riskserve.feedback.v1.Feedback/"
#: Feedback methods that only read: `reader` or `feedback` suffices.
FEEDBACK_READS = frozenset({"/riskserve.feedback.v1.Feedback/GetPerformance"})
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


def load_token(token: str, token_file: str, what: str = "admin token") -> bytes | None:
    """A single token from the setting or the file (None: none)."""
    if token_file:
        text = Path(token_file).read_text().strip()
        if not text:
            raise ValueError(f"{what} file {token_file} is empty")
        return text.encode()
    return token.encode() if token else None


def is_admin(method: str) -> bool:
    return method.startswith(ADMIN_PREFIXES)


def role_for(method: str) -> Role:
    if method.startswith(FEEDBACK_PREFIX):
        return Role.READER if method in FEEDBACK_READS else Role.FEEDBACK
    return Role.READER if method in READ_METHODS else Role.ADMIN


def allowed(who: Principal, method: str, role: Role) -> bool:
    return who.may(role) or (method in FEEDBACK_READS and who.may(Role.FEEDBACK))


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

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        """The caller's principal if it holds the method's role; else the call is
        aborted (UNAUTHENTICATED or PERMISSION_DENIED)."""
        role = role_for(method)
        who = self.identify(context)
        if who is None:
            log.warning("admin call refused", extra={"method": method, "reason": "no principal"})
            feedback = method.startswith(FEEDBACK_PREFIX)
            if not self.principals.configured:
                why = (
                    "feedback API disabled: set RISKSERVE_FEEDBACK_TOKEN, "
                    "RISKSERVE_FEEDBACK_TOKEN_FILE or RISKSERVE_PRINCIPALS_FILE"
                    if feedback
                    else "admin API disabled: set RISKSERVE_PRINCIPALS_FILE, "
                    "RISKSERVE_ADMIN_TOKEN or RISKSERVE_ADMIN_TOKEN_FILE"
                )
            else:
                kind = "feedback" if feedback else "admin"
                why = (
                    f"{kind} methods need metadata 'authorization: Bearer <token>' "
                    "(a valid token) or the client certificate of a known principal"
                )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        assert who is not None
        if not allowed(who, method, role):
            log.warning(
                "admin call refused",
                extra={"method": method, "principal": who.name, "reason": "role"},
            )
            roles = sorted(r.value for r in who.roles)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"principal {who.name!r} has roles {roles}; {method} needs {role.value!r}",
            )
        return who

    def guard(self, method: str, inner: Handler) -> Handler:
        """`inner`, run only for a principal holding the method's role."""

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = current_principal.set(await self.check(method, context))
            try:
                return await inner(request, context)
            finally:
                current_principal.reset(token)

        return handler

    def guard_stream(self, method: str, inner: StreamHandler) -> StreamHandler:
        """A bidirectional stream handler, run only for a principal with the role
        (checked before the first message is read)."""

        async def handler(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            token = current_principal.set(await self.check(method, context))
            try:
                async for reply in inner(requests, context):
                    yield reply
            finally:
                current_principal.reset(token)

        return handler
