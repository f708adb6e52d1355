"""Admin authentication: every ModelAdmin method and the V2 repository extension
need `authorization: Bearer <token>`; tokens are compared in constant time. The
inference methods stay open."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

ADMIN_PREFIXES = (
    "/riskserve.admin.v1.ModelAdmin/",
    "/inference.GRPCInferenceService/Repository",
)


def load_token(token: str, token_file: str) -> bytes | None:
    """The admin token from the setting or the file; None disables the admin API."""
    if token_file:
        text = Path(token_file).read_text().strip()
        if not text:
            raise ValueError(f"admin token file {token_file} is empty")
        return text.encode()
    return token.encode() if token else None


def is_admin(method: str) -> bool:
    return method.startswith(ADMIN_PREFIXES)


class AdminAuth:
    """Checks the bearer token of admin calls; wraps each admin handler once."""

    def __init__(self, token: bytes | None) -> None:
        self._token = token
        if token is None:
            log.warning("no admin token configured: the admin API refuses every call")

    def _authorized(self, metadata: Any) -> bool:
        if self._token is None:
            return False
        for key, value in metadata or ():
            if key == "authorization":
                v = value.decode() if isinstance(value, bytes) else value
                scheme, _, presented = v.partition(" ")
                if scheme.lower() != "bearer":
                    return False
                return hmac.compare_digest(presented.strip().encode(), self._token)
        return False

    def guard(self, method: str, inner: Handler) -> Handler:
        """`inner`, run only for calls that present the token."""
        disabled = self._token is None
        if disabled:
            why = "admin API disabled: set RISKSERVE_ADMIN_TOKEN or RISKSERVE_ADMIN_TOKEN_FILE"
        else:
            why = "admin methods need metadata 'authorization: Bearer <token>' (valid token)"

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._authorized(context.invocation_metadata()):
                return await inner(request, context)
            log.warning("admin call refused", extra={"method": method})
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

        return handler
