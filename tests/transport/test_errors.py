"""transport/errors.py without a server: the throttled warning of client mistakes,
and the Registrar's wrapping (bytes in, the credential before decoding)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from riskserve.errors import InvalidInput
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.transport.auth import AdminAuth
from riskserve.transport.errors import Registrar, Throttle, takes_bytes
from riskserve.transport.principals import Principals


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_warning_per_kind_per_interval_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = Throttle(logging.getLogger("t"), every=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle.warning("a", "bad a")
        for _ in range(5):
            clock.now += 1
            assert not throttle.warning("a", "bad a")
        assert throttle.warning("b", "bad b")  # another kind: its own interval
        clock.now = 10.0
        assert throttle.warning("a", "bad a", method="m")
        assert not throttle.warning("a", "bad a")
    records = [(r.getMessage(), r.kind, r.suppressed) for r in caplog.records]  # type: ignore[attr-defined]
    assert records == [("bad a", "a", 0), ("bad b", "b", 0), ("bad a", "a", 5)]
    assert caplog.records[-1].method == "m"  # type: ignore[attr-defined]


class FakeServer:
    def __init__(self) -> None:
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.registered[service] = handlers


class Context:
    def __init__(self, metadata: Any = ()) -> None:
        self.metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> Any:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS: no client certificate

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError


def _register(inner: Any, service: str = "riskserve.admin.v1.ModelAdmin") -> Any:
    server = FakeServer()
    reg = Registrar(server, AdminAuth(Principals(admin_token=b"tok")))  # type: ignore[arg-type]
    reg.add_registered_method_handlers(
        service,
        {
            "GetDeployment": grpc.unary_unary_rpc_method_handler(
                inner,
                request_deserializer=apb.GetDeploymentRequest.FromString,
                response_serializer=apb.Deployment.SerializeToString,
            )
        },
    )
    h = server.registered[service]["GetDeployment"]
    assert h.request_deserializer is None  # every method gets the bytes
    return h.unary_unary


def _run(handler: Any, data: bytes, ctx: Context) -> Any:
    try:
        return asyncio.run(handler(data, ctx))
    except grpc.aio.AbortError:
        return ctx.aborted


def test_admin_methods_check_the_token_then_decode() -> None:
    seen: list[Any] = []

    async def inner(request: Any, context: Any) -> Any:
        seen.append(request)
        return apb.Deployment(model=request.model)

    handler = _register(inner)
    good = apb.GetDeploymentRequest(model="fraud").SerializeToString()
    code, details = _run(handler, b"\x0aff", Context())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer <token>" in details
    code, details = _run(handler, b"\x0a\xff", Context([("authorization", "Bearer tok")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "request is not a valid riskserve.admin.v1.GetDeploymentRequest"
    reply = _run(handler, good, Context([("authorization", "Bearer tok")]))
    assert reply.model == "fraud" and seen[0].model == "fraud"


def test_a_method_marked_takes_bytes_gets_them_undecoded() -> None:
    got: list[Any] = []

    @takes_bytes
    async def inner(request: Any, context: Any) -> Any:
        got.append(request)
        raise InvalidInput("refused")

    handler = _register(inner, service="inference.GRPCInferenceService")
    code, details = _run(handler, b"\x0f", Context())
    assert got == [b"\x0f"]
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "refused")
