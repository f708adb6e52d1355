"""The one place exceptions become gRPC status codes: every unary handler of our
services is wrapped once, when it is registered (Registrar). RiskserveError → its
code; anything else → INTERNAL for that request only, logged with a traceback;
the process lives on.

Not a grpc.aio server interceptor: an interceptor runs per RPC (two extra
coroutines and a fresh handler object for every inference call); wrapping at
registration costs one await per call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from riskserve.errors import Code, RiskserveError
from riskserve.transport.auth import AdminAuth, is_admin

log = logging.getLogger(__name__)

STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def guarded(method: str, inner: Handler) -> Handler:
    """`inner` with exceptions mapped to status codes."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if _expired(context):  # queued past its deadline: core has ended it; skip the work
                raise asyncio.CancelledError
            reply = await inner(request, context)
            if _expired(context):  # scored too late: core has already ended the call
                raise asyncio.CancelledError
            return reply
        except RiskserveError as e:
            if e.code is Code.DEADLINE_EXCEEDED and _expired(context):
                # gRPC core already ended the call with DEADLINE_EXCEEDED: there is
                # nothing left to send (an abort now would fail in core, logged
                # as an error by grpc). A cancelled handler is what it expects.
                raise asyncio.CancelledError from None
            await context.abort(STATUS[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("request failed with an internal error", extra={"method": method})
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
            )

    return handler


def _expired(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class Registrar:
    """Stands in for the grpc.aio server in the generated ``add_*_to_server``
    functions: registers each of our methods wrapped once — status mapping, and
    the bearer token for admin methods (ModelAdmin, the V2 repository extension)."""

    def __init__(self, server: grpc.aio.Server, auth: AdminAuth) -> None:
        self._server = server
        self._auth = auth
        self._generic: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the generated code registers the same methods again through
        add_registered_method_handlers, where they are wrapped."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        if service not in self._generic:  # the fallback path for unregistered calls
            self._generic.add(service)
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, wrapped),)
            )
        self._server.add_registered_method_handlers(service, wrapped)

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if h.unary_unary is None:
            if is_admin(method):
                raise ValueError(f"admin method {method} must be unary-unary")
            return h  # streams report their own errors per message
        inner = h.unary_unary
        if is_admin(method):
            inner = self._auth.guard(method, inner)
        return grpc.unary_unary_rpc_method_handler(
            guarded(method, inner),
            request_deserializer=h.request_deserializer,
            response_serializer=h.response_serializer,
        )
