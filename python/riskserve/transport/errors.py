"""The one place exceptions become gRPC status codes: every handler of our
services is wrapped once, when it is registered (Registrar). RiskserveError → its
code; anything else → INTERNAL for that request only, logged with a traceback;
the process lives on.

Our methods receive the request bytes, not a message grpc decoded: a message
that does not decode would otherwise fail inside grpc (UNKNOWN, a traceback in
the log, and for a stream the end of the whole stream). The wrapper decodes
after the admin token is checked (an unauthenticated caller learns nothing about
decoding) and answers bytes that are not the method's message with
INVALID_ARGUMENT. A client's mistakes are logged at most once per
`Throttle.every` seconds per kind, with a count of the ones left out.

Not a grpc.aio server interceptor: an interceptor runs per RPC (two extra
coroutines and a fresh handler object for every inference call); wrapping at
registration costs one await per call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from riskserve.errors import Code, InvalidInput, RiskserveError
from riskserve.transport.auth import AdminAuth, is_admin
from riskserve.transport.drain import Quiesce

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
F = TypeVar("F", bound=Callable[..., Any])

_TAKES_BYTES = "_riskserve_takes_bytes"


def takes_bytes(method: F) -> F:
    """Marks a unary servicer method that decodes its request bytes itself (the
    Registrar then hands it the bytes). Stream methods always get bytes."""
    setattr(method, _TAKES_BYTES, True)
    return method


class Throttle:
    """Logs a warning at most once per `every` seconds per kind, saying how many
    of that kind were left out since the last one. Kinds must be a bounded set
    (method names, our own words), never a client's string."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.every = every
        self._clock = clock
        #: kind → (when it was last logged, how many were left out since)
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, **extra: Any) -> bool:
        """Logs `message` unless `kind` was logged less than `every` seconds ago;
        True when it logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.every:
            self._last[kind] = (last[0], last[1] + 1)
            return False
        self._last[kind] = (now, 0)
        suppressed = last[1] if last is not None else 0
        self._log.warning(message, extra={"kind": kind, "suppressed": suppressed, **extra})
        return True


def guarded(method: str, inner: Handler, quiesce: Quiesce) -> Handler:
    """`inner` with exceptions mapped to status codes, counted for `quiesce` (and
    its reply held while a stop holds replies)."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        quiesce.picked_up()
        try:
            if _expired(context):  # queued past its deadline: core has ended it; skip the work
                raise asyncio.CancelledError
            reply = await inner(request, context)
            await quiesce.reply_allowed()
            if _expired(context):  # scored too late: core has already ended the call
                raise asyncio.CancelledError
            return reply
        except RiskserveError as e:
            if e.code is Code.DEADLINE_EXCEEDED and _expired(context):
                # gRPC core already ended the call with DEADLINE_EXCEEDED: there is
                # nothing left to send (an abort now would fail in core, logged
                # as an error by grpc). A cancelled handler is what it expects.
                raise asyncio.CancelledError from None
            await quiesce.reply_allowed()
            await context.abort(STATUS[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("request failed with an internal error", extra={"method": method})
            await quiesce.reply_allowed()
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
            )

    return handler


def decoding(
    method: str, deserialize: Callable[[bytes], Any], inner: Handler, throttle: Throttle
) -> Handler:
    """`inner` fed the message decoded from the request bytes; bytes that are
    not one are INVALID_ARGUMENT (a warning, throttled)."""
    cls = getattr(deserialize, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    message = getattr(descriptor, "full_name", None) or f"{method} request"
    why = f"request is not a valid {message}"

    async def handler(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = deserialize(data)
        except DecodeError as e:
            throttle.warning(
                f"undecodable {method}",
                "request refused: it does not decode",
                method=method,
                error=str(e),
                size=len(data),
            )
            raise InvalidInput(why) from None
        return await inner(request, context)

    return handler


def _expired(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class Registrar:
    """Stands in for the grpc.aio server in the generated ``add_*_to_server``
    functions: registers each of our methods wrapped once — status mapping, the
    bearer token for admin methods (ModelAdmin, the V2 repository extension),
    then decoding — and with no request deserializer, so that every message
    reaches our code as bytes."""

    def __init__(self, server: grpc.aio.Server, auth: AdminAuth) -> None:
        self._server = server
        self._auth = auth
        self._generic: set[str] = set()
        self.throttle = Throttle(log)
        self.quiesce = Quiesce()

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
        admin = is_admin(method)
        if h.stream_stream is not None:
            # A stream decodes (and answers) each message itself: one bad
            # message must not end an inference stream. A credentialed stream
            # checks the caller before it reads the first message.
            stream = h.stream_stream
            if admin:
                stream = self._auth.guard_stream(method, stream)
            return grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=None,
                response_serializer=_passing_bytes(h.response_serializer),
            )
        if h.unary_unary is None:
            raise ValueError(f"{method}: only unary methods and non-admin streams are served")
        inner: Handler = h.unary_unary
        if h.request_deserializer is not None and not getattr(inner, _TAKES_BYTES, False):
            inner = decoding(method, h.request_deserializer, inner, self.throttle)
        if admin:
            inner = self._auth.guard(method, inner)  # the credential, then decoding
        return grpc.unary_unary_rpc_method_handler(
            guarded(method, inner, self.quiesce),
            request_deserializer=None,
            response_serializer=_passing_bytes(h.response_serializer),
        )


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """`serialize`, except that a reply already encoded (bytes: the native path's)
    goes out as it is."""
    if serialize is None:
        return None
    ser = serialize

    def out(reply: Any) -> bytes:
        return reply if type(reply) is bytes else ser(reply)

    return out
