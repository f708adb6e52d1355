"""Bad input against a real server (issue 10, items 2, 3 and 7): bytes that do not
decode are INVALID_ARGUMENT on every RPC (a stream goes on; admin calls check the
token first); every refused inference request is counted under a bounded model
label; every field is bounded by settings.limits, naming the limit; echoed names
are cut; typed contents next to raw contents and ±inf are refused. None of it
leaves a traceback in the log, and a client's mistakes are at most a throttled
warning."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerHandle

from riskserve.client import build_request, probabilities
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.training.datagen import generate
from riskserve.training.train import columns_of

TOKEN = "bad-input-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
V2 = "/inference.GRPCInferenceService/"
ADMIN = "/riskserve.admin.v1.ModelAdmin/"
INFER = V2 + "ModelInfer"
STREAM = V2 + "ModelStreamInfer"
ADMIN_METHODS = [
    (ADMIN + m.name, m.input_type.full_name)
    for m in apb.DESCRIPTOR.services_by_name["ModelAdmin"].methods
]
REPOSITORY_METHODS = [
    (V2 + name, f"inference.{name}Request")
    for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
]
OPEN_METHODS = [
    (V2 + name, f"inference.{name}Request")
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelStatistics",
    )
]
#: Bytes protobuf refuses as any message: a truncated length, an end-group tag
#: outside a group, wire type 7.
UNDECODABLE = [bytes.fromhex("0aff"), b"\x0c", b"\x0f"]
#: ...and as a ModelInferRequest, field number 0 (protobuf accepts it in a
#: message without fields, ListModelsRequest, and inside a group).
UNDECODABLE_INFER = [bytes.fromhex("0500000000"), *UNDECODABLE]
RPC_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def srv(
    launch_server: Callable[..., ServerHandle],
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    """A server of its own (admin calls write deployment.json), with a token."""
    models = tmp_path_factory.mktemp("bad-input") / "models"
    shutil.copytree(models_dir, models)
    h = launch_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
    try:
        yield h
    finally:
        h.stop_and_check()


@pytest.fixture(scope="module")
def good(srv: ServerHandle) -> pb.ModelInferRequest:
    md = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=RPC_TIMEOUT)
    dts = {i.name: i.datatype for i in md.inputs}
    cols = columns_of(generate(1, 77), list(dts))
    return build_request("fraud", cols, dts, request_id="good")


def call(
    ch: grpc.Channel, method: str, data: bytes, metadata: Any = ()
) -> tuple[grpc.StatusCode, str]:
    """One unary call with raw request bytes: (status, details)."""
    rpc = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        rpc(data, timeout=RPC_TIMEOUT, metadata=metadata)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def requests_total(srv: ServerHandle, **labels: str) -> float:
    return srv.metric("riskserve_requests_total", **labels)


# -- item 2: undecodable messages -------------------------------------------------


def test_undecodable_model_infer_is_invalid_argument(srv: ServerHandle) -> None:
    for data in UNDECODABLE_INFER:
        code, details = call(srv.channel, INFER, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (data, code, details)
        assert details.startswith("malformed request: ")
    code, details = call(srv.channel, INFER, UNDECODABLE_INFER[0])
    assert details == "malformed request: field number 0 at byte 0"


def test_the_protobuf_path_refuses_the_same_bytes(
    start_server: Callable[..., ServerHandle], models_dir: Path
) -> None:
    h = start_server(models_dir, env={"RISKSERVE_RUST_REQUEST_PARSER": "false"})
    for data in UNDECODABLE_INFER:
        code, details = call(h.channel, INFER, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (data, code, details)
        assert details == "request is not a valid inference.ModelInferRequest"


def test_a_stream_answers_undecodable_messages_and_goes_on(
    srv: ServerHandle, good: pb.ModelInferRequest
) -> None:
    ok = good.SerializeToString()
    sent = [ok, bytes.fromhex("0aff"), ok, bytes.fromhex("0500000000"), ok]
    stream = srv.channel.stream_stream(
        STREAM,
        request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    replies = list(stream(iter(sent), timeout=RPC_TIMEOUT))
    assert len(replies) == len(sent)
    unary = probabilities(srv.stub.ModelInfer(good, timeout=RPC_TIMEOUT))
    for data, reply in zip(sent, replies, strict=True):
        if data is ok:
            assert reply.error_message == ""
            np.testing.assert_array_equal(probabilities(reply.infer_response), unary)
        else:
            assert reply.error_message.startswith("INVALID_ARGUMENT: malformed request: ")


@pytest.mark.parametrize("method, message", ADMIN_METHODS + REPOSITORY_METHODS)
def test_admin_calls_check_the_token_before_decoding(
    srv: ServerHandle, method: str, message: str
) -> None:
    for data in UNDECODABLE:
        for md in ((), (("authorization", "Bearer wrong"),)):
            code, details = call(srv.channel, method, data, md)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, details)
            assert "Bearer <token>" in details and "valid" in details
            assert message not in details  # nothing about decoding
        code, details = call(srv.channel, method, data, AUTH)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert details == f"request is not a valid {message}"


@pytest.mark.parametrize("method, message", OPEN_METHODS)
def test_open_calls_refuse_undecodable_bytes(srv: ServerHandle, method: str, message: str) -> None:
    for data in UNDECODABLE:
        code, details = call(srv.channel, method, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert details == f"request is not a valid {message}"


def test_client_mistakes_are_at_most_a_throttled_warning(srv: ServerHandle) -> None:
    for _ in range(50):
        assert call(srv.channel, INFER, b"\x0f")[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert call(srv.channel, V2 + "ModelReady", b"\x0f")[0] == grpc.StatusCode.INVALID_ARGUMENT
    warnings = srv.events("request refused: it does not decode")
    kinds = [w["kind"] for w in warnings]
    assert len(kinds) == len(set(kinds)), kinds  # one per kind within 10 s
    assert {"undecodable ModelInfer", f"undecodable {V2}ModelReady"} <= set(kinds)
    assert all(w["level"] == "warning" for w in warnings)
    assert srv.bad_lines() == []


# -- item 3: failures before routing are counted -----------------------------------


def test_failures_before_routing_are_counted(srv: ServerHandle, good: pb.ModelInferRequest) -> None:
    labels = {
        "undecoded": {"model": "__undecoded__", "code": "INVALID_ARGUMENT"},
        "unknown": {"model": "__unknown__", "code": "NOT_FOUND"},
        "limit": {"model": "fraud", "code": "INVALID_ARGUMENT"},
        "unknown_limit": {"model": "__unknown__", "code": "INVALID_ARGUMENT"},
    }
    before = {k: requests_total(srv, **v) for k, v in labels.items()}
    total_before = requests_total(srv)
    unknown = pb.ModelInferRequest()
    unknown.CopyFrom(good)
    unknown.model_name = "no-such-model"
    too_long = pb.ModelInferRequest()
    too_long.CopyFrom(good)
    too_long.parameters["routing_key"].string_param = "k" * 1000
    unknown_long = pb.ModelInferRequest()
    unknown_long.CopyFrom(too_long)
    unknown_long.model_name = "other-" + "x" * 100
    for _ in range(100):
        call(srv.channel, INFER, b"\x0f")
        call(srv.channel, INFER, unknown.SerializeToString())
        call(srv.channel, INFER, too_long.SerializeToString())
    for _ in range(10):
        call(srv.channel, INFER, unknown_long.SerializeToString())
    stream = srv.channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    assert len(list(stream(iter([b"\x0f"] * 5), timeout=RPC_TIMEOUT))) == 5
    after = {k: requests_total(srv, **v) for k, v in labels.items()}
    assert after["undecoded"] - before["undecoded"] == 105
    assert after["unknown"] - before["unknown"] == 100
    assert after["limit"] - before["limit"] == 100
    assert after["unknown_limit"] - before["unknown_limit"] == 10
    assert requests_total(srv) - total_before == 315
    # No client string became a label.
    text = srv.metric("riskserve_requests_total", model="no-such-model")
    assert text == 0


# -- item 7: bounds ---------------------------------------------------------------


def _with(good: pb.ModelInferRequest, edit: Callable[[pb.ModelInferRequest], Any]) -> bytes:
    req = pb.ModelInferRequest()
    req.CopyFrom(good)
    edit(req)
    return bytes(req.SerializeToString())


def test_every_inference_field_is_bounded(srv: ServerHandle, good: pb.ModelInferRequest) -> None:
    ch = srv.channel

    def key(r: pb.ModelInferRequest) -> None:
        r.parameters["routing_key"].string_param = "k" * 5 * 1024 * 1024

    code, details = call(ch, INFER, _with(good, key))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter 'routing_key' is 5242880 bytes; the limit is 256 "
        "(RISKSERVE_MAX_ROUTING_KEY_BYTES)",
    )

    def params(r: pb.ModelInferRequest) -> None:
        for i in range(5000):
            r.parameters[f"p{i}"].int64_param = i

    code, details = call(ch, INFER, _with(good, params))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        details
        == "the request carries parameters: 5000; the limit is 64 (RISKSERVE_MAX_PARAMETERS)"
    )

    def name(r: pb.ModelInferRequest) -> None:
        r.model_name = "m" * 10_240

    # A default client: the refusal is short enough for its metadata limit (it used
    # to see RESOURCE_EXHAUSTED, the whole name echoed into the details).
    code, details = call(ch, INFER, _with(good, name))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'model_name' is 10240 bytes; the limit is 256 (RISKSERVE_MAX_NAME_BYTES)",
    )
    for method in ("ModelMetadata", "ModelReady"):
        code, details = call(
            ch, V2 + method, pb.ModelMetadataRequest(name="m" * 10_240).SerializeToString()
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "RISKSERVE_MAX_NAME_BYTES" in details

    def unknown(r: pb.ModelInferRequest) -> None:
        r.model_name = "u" * 256

    code, details = call(ch, INFER, _with(good, unknown))
    assert code == grpc.StatusCode.NOT_FOUND and len(details) < 400

    def long_input(r: pb.ModelInferRequest) -> None:
        r.inputs[0].name = "i" * 200  # within the limit, not an input of the model

    code, details = call(ch, INFER, _with(good, long_input))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("unexpected input 'iiii") and "... (200 bytes)" in details
    assert len(details) < 200


def test_mixed_contents_and_infinities_are_refused(
    srv: ServerHandle, good: pb.ModelInferRequest
) -> None:
    def mixed(r: pb.ModelInferRequest) -> None:
        r.inputs[0].contents.fp64_contents.append(1.0)

    code, details = call(srv.channel, INFER, _with(good, mixed))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"input {good.inputs[0].name!r} has typed contents, but the request")
    amount = next(i for i, t in enumerate(good.inputs) if t.datatype == "FP64")
    name = good.inputs[amount].name
    for value in (np.inf, -np.inf):

        def infinite(r: pb.ModelInferRequest, v: float = value) -> None:
            r.raw_input_contents[amount] = np.array([v]).tobytes()

        code, details = call(srv.channel, INFER, _with(good, infinite))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == (
            f"input {name!r} holds +inf or -inf; riskserve takes finite numbers, "
            "and NaN for a missing value"
        )

    def nan(r: pb.ModelInferRequest) -> None:
        r.raw_input_contents[amount] = np.array([np.nan]).tobytes()

    assert call(srv.channel, INFER, _with(good, nan))[0] == grpc.StatusCode.OK


def test_admin_fields_are_bounded(srv: ServerHandle) -> None:
    ch = srv.channel
    get = ch.unary_unary(
        ADMIN + "GetDeployment",
        request_serializer=apb.GetDeploymentRequest.SerializeToString,
        response_deserializer=apb.Deployment.FromString,
    )
    before = get(apb.GetDeploymentRequest(model="fraud"), timeout=RPC_TIMEOUT, metadata=AUTH)
    huge = "r" * 4 * 1024 * 1024
    promote = apb.PromoteRequest(model="fraud", version=1, reason=huge).SerializeToString()
    code, details = call(ch, ADMIN + "Promote", promote, AUTH)
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'reason' is 4194304 bytes; the limit is 1024 (RISKSERVE_MAX_REASON_BYTES)",
    )
    ok = apb.PromoteRequest(model="fraud", version=1, reason="fine").SerializeToString()
    code, details = call(ch, ADMIN + "Promote", ok, (*AUTH, ("x-actor", "a" * 1000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        details == "metadata 'x-actor' is 1000 bytes; the limit is 256 (RISKSERVE_MAX_NAME_BYTES)"
    )
    salt = apb.SetTrafficRequest(
        model="fraud", variants=[apb.Variant(version=1, weight=100)], salt="s" * 300
    )
    code, details = call(ch, ADMIN + "SetTraffic", salt.SerializeToString(), AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "field 'salt' is 300 bytes" in details
    for name in ("n" * 10_240, "../x", "..", "a/b", "a\0b"):
        for method, req in (
            ("GetDeployment", apb.GetDeploymentRequest(model=name)),
            ("LoadVersion", apb.LoadVersionRequest(model=name, version=1)),
        ):
            code, details = call(ch, ADMIN + method, req.SerializeToString(), AUTH)
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            assert len(details) < 400
        load = pb.RepositoryModelLoadRequest(model_name=name).SerializeToString()
        code, details = call(ch, V2 + "RepositoryModelLoad", load, AUTH)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert len(details) < 400
    after = get(apb.GetDeploymentRequest(model="fraud"), timeout=RPC_TIMEOUT, metadata=AUTH)
    assert after.revision == before.revision  # nothing was written
    assert srv.bad_lines() == []


def test_limits_follow_the_settings(
    start_server: Callable[..., ServerHandle], models_dir: Path
) -> None:
    h = start_server(models_dir, env={"RISKSERVE_MAX_ROUTING_KEY_BYTES": "8"})
    md = h.stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=RPC_TIMEOUT)
    dts = {i.name: i.datatype for i in md.inputs}
    cols = columns_of(generate(1, 5), list(dts))
    for key, want in (
        ("12345678", grpc.StatusCode.OK),
        ("123456789", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        req = build_request("fraud", cols, dts, parameters={"routing_key": key})
        code, details = call(h.channel, INFER, req.SerializeToString())
        assert code == want, details
    assert details.endswith("the limit is 8 (RISKSERVE_MAX_ROUTING_KEY_BYTES)")
