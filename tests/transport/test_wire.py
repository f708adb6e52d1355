"""Reading ModelInferRequest bytes in Rust gives the same InferRequest as the
generated protobuf code; the Rust reader accepts exactly the bytes protobuf
accepts (hypothesis, thousands of generated and mutated messages); malformed
bytes and requests beyond the limits are a clear INVALID_ARGUMENT."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskserve._native import InputError, parse_infer_request
from riskserve.client import build_request
from riskserve.config import LimitsSettings
from riskserve.errors import InvalidInput
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.transport.codec import MAX_DIMS, Bounds, Codec, RequestRefused

DTS = {"amount": "FP64", "hour": "INT64", "flag": "BOOL", "channel": "BYTES", "f32": "FP32"}
COLS: dict[str, Any] = {
    "amount": [1.5, float("nan"), -2.0],
    "hour": [1, 2, 23],
    "flag": [True, False, True],
    "channel": ["pos", "", "café"],
    "f32": [0.5, 1.5, 2.5],
}

RUST = Codec(Bounds(LimitsSettings()))
PROTOBUF = Codec(Bounds(LimitsSettings()), rust_parser=False)


def _same(a: Any, b: Any) -> None:
    assert (a.model_name, a.model_version, a.id) == (b.model_name, b.model_version, b.id)
    assert list(a.requested_outputs) == list(b.requested_outputs)
    assert dict(a.parameters) == dict(b.parameters)
    assert a.infinite_input == b.infinite_input
    assert len(a.inputs) == len(b.inputs)
    for x, y in zip(a.inputs, b.inputs, strict=True):
        assert (x.name, x.datatype, tuple(x.shape)) == (y.name, y.datatype, tuple(y.shape))
        if isinstance(x.data, np.ndarray):
            assert x.data.dtype == y.data.dtype
            np.testing.assert_array_equal(x.data, y.data)
        else:
            assert x.data == y.data


@pytest.mark.parametrize("raw", [True, False])
def test_rust_and_generated_decoding_agree(raw: bool) -> None:
    req = build_request("fraud", COLS, DTS, version="3", request_id="abc", raw=raw)
    req.parameters["routing_key"].string_param = "card-1"
    req.parameters["flag"].bool_param = True
    req.parameters["n"].int64_param = -7
    req.parameters["x"].double_param = 0.25
    req.parameters["u"].uint64_param = 2**63
    req.parameters["none"].SetInParent()
    req.outputs.add(name="probability")
    req.inputs[1].shape[:] = [3, 1]
    data = req.SerializeToString()
    _same(RUST.decode(data), PROTOBUF.decode(data))
    _same(RUST.decode(data), RUST.decode_message(pb.ModelInferRequest.FromString(data)))


def test_raw_contents_are_views_not_copies() -> None:
    data = build_request("fraud", COLS, DTS).SerializeToString()
    req = RUST.decode(data)
    amount = next(i for i in req.inputs if i.name == "amount").data
    assert isinstance(amount, np.ndarray) and amount.base is not None
    assert not amount.flags.writeable


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05fra",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x3a\x80",
        b"\x0f",
        bytes.fromhex("0500000000"),  # field number 0 (protobuf refuses it)
        bytes.fromhex("0aff"),
        b"\x0c",  # an end-group tag outside a group
        b"\x0b" * 101 + b"\x0c" * 101,  # deeper than protobuf's 100 levels
    ],
)
@pytest.mark.parametrize("codec", [RUST, PROTOBUF], ids=["rust", "protobuf"])
def test_malformed_bytes_are_invalid_argument(data: bytes, codec: Codec) -> None:
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    if codec is RUST:
        with pytest.raises(InputError, match="malformed request"):
            parse_infer_request(data)
    with pytest.raises(RequestRefused) as e:
        codec.decode(data)
    assert e.value.model_name is None  # undecodable: counted as __undecoded__


# -- the Rust reader and protobuf accept the same bytes ----------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(no: int, wire_type: int, body: bytes) -> bytes:
    tag = _varint(no << 3 | wire_type)
    return tag + (_varint(len(body)) + body if wire_type == 2 else body)


#: Field numbers that mean something somewhere in ModelInferRequest (1-8), one
#: unknown everywhere, and the largest valid one.
FIELD_NUMBERS = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 536870911])


@st.composite
def _scalar_field(draw: st.DrawFn) -> bytes:
    no, wire_type = draw(FIELD_NUMBERS), draw(st.sampled_from([0, 1, 5]))
    if wire_type == 0:
        value = _varint(draw(st.integers(0, 2**64 - 1)))
    else:
        size = 8 if wire_type == 1 else 4
        value = draw(st.binary(min_size=size, max_size=size))
    return _varint(no << 3 | wire_type) + value


def _group(no: int, body: bytes) -> bytes:
    return _varint(no << 3 | 3) + body + _varint(no << 3 | 4)


def _message(depth: int) -> st.SearchStrategy[bytes]:
    """Protobuf-shaped bytes: fields of every wire type, sub-messages that are
    themselves such bytes (so every nested message type of the schema is
    exercised), packed runs, UTF-8 and non-UTF-8 strings, groups."""
    leaf = st.one_of(
        _scalar_field(),
        st.builds(_field, FIELD_NUMBERS, st.just(2), st.text(max_size=6).map(str.encode)),
        st.builds(_field, FIELD_NUMBERS, st.just(2), st.binary(max_size=8)),
        st.builds(
            _field,
            FIELD_NUMBERS,
            st.just(2),
            st.lists(st.integers(0, 2**64 - 1), max_size=4).map(
                lambda xs: b"".join(map(_varint, xs))
            ),
        ),
    )
    if depth == 0:
        return st.lists(leaf, max_size=4).map(b"".join)
    inner = _message(depth - 1)
    sub = st.builds(_field, FIELD_NUMBERS, st.just(2), inner)
    group = st.builds(_group, FIELD_NUMBERS, inner)
    return st.lists(st.one_of(leaf, sub, group), max_size=5).map(b"".join)


def _mutants(data: bytes, rnd: random.Random, n: int) -> list[bytes]:
    """`n` cheap mutations of `data` (flips, cuts, insertions, deletions, bytes
    that matter to the wire format)."""
    out = []
    for _ in range(n):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            op = rnd.randrange(5)
            pos = rnd.randrange(len(b)) if b else 0
            if op == 0 and b:
                b[pos] ^= 1 << rnd.randrange(8)
            elif op == 1:
                del b[pos:]
            elif op == 2:
                b[pos:pos] = rnd.randbytes(rnd.randint(1, 4))
            elif op == 3:
                del b[pos : pos + rnd.randint(1, 4)]
            elif b:
                b[pos] = rnd.choice([0x00, 0x80, 0xFF, 0x0B, 0x0C, 0x0F, 0x7F, 0x04, 0x03])
        out.append(bytes(b))
    return out


def _valid_request(raw: bool) -> bytes:
    req = build_request("fraud", COLS, DTS, request_id="r", raw=raw)
    req.parameters["routing_key"].string_param = "card"
    req.inputs[0].parameters["p"].int64_param = 3
    req.outputs.add(name="probability").parameters["q"].bool_param = True
    return bytes(req.SerializeToString())


VALID = [_valid_request(True), _valid_request(False)]
#: Generated messages; each example also checks MUTANTS random mutations of one.
WIRE = st.one_of(_message(3), st.sampled_from(VALID), st.binary(max_size=24))
MUTANTS = 12


def _param(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    value = None if which is None else getattr(p, which)
    return struct.pack("<d", value) if isinstance(value, float) else value


def _comparable_rust(data: bytes, w: Any) -> Any:
    params = {k: struct.pack("<d", v) if isinstance(v, float) else v for k, v in w["parameters"]}
    inputs = [(n, d, list(s), typed) for n, d, s, typed in w["inputs"]]
    raw = [data[s:e] for s, e in w["raw"]]
    return (w["model_name"], w["model_version"], w["id"], params, inputs, w["outputs"], raw)


def _comparable_pb(m: pb.ModelInferRequest) -> Any:
    params = {k: _param(v) for k, v in m.parameters.items()}
    inputs = [(t.name, t.datatype, list(t.shape), t.HasField("contents")) for t in m.inputs]
    outputs = [o.name for o in m.outputs]
    return (
        m.model_name,
        m.model_version,
        m.id,
        params,
        inputs,
        outputs,
        list(m.raw_input_contents),
    )


@settings(
    max_examples=800,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(WIRE, st.randoms(use_true_random=False))
def test_the_rust_reader_accepts_exactly_what_protobuf_accepts(
    data: bytes, rnd: random.Random
) -> None:
    """~10,000 messages: each generated one and MUTANTS mutations of it."""
    for d in [data, *_mutants(data, rnd, MUTANTS)]:
        _check_parity(d)


def _check_parity(data: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        message = None
    try:
        w = parse_infer_request(data)
    except InputError as e:
        assert message is None, f"protobuf accepts {data.hex()}, Rust refuses: {e}"
        return
    assert message is not None, f"Rust accepts {data.hex()}, protobuf refuses it"
    assert _comparable_rust(data, w) == _comparable_pb(message), data.hex()
    # Whatever protobuf refuses, both codecs refuse as INVALID_ARGUMENT; whatever it
    # accepts, both decode alike or refuse alike (a riskserve rule, same message).
    outcomes = []
    for codec in (RUST, PROTOBUF):
        try:
            outcomes.append(("ok", codec.decode(data)))
        except InvalidInput as e:
            outcomes.append(("refused", e.message))
    (a, x), (b, y) = outcomes
    assert a == b, (data.hex(), outcomes)
    if a == "ok":
        _same(x, y)


def test_protobufs_refusals_are_invalid_argument_in_both_codecs() -> None:
    for data in (bytes.fromhex("0500000000"), b"\x0b", bytes.fromhex("0a01ff")):
        for codec in (RUST, PROTOBUF):
            with pytest.raises(RequestRefused):
                codec.decode(data)


# -- limits -----------------------------------------------------------------------


def _request(**params: Any) -> pb.ModelInferRequest:
    req = build_request("fraud", COLS, DTS, request_id="r")
    for k, v in params.items():
        req.parameters[k].string_param = v
    return req


@pytest.mark.parametrize("codec", [RUST, PROTOBUF], ids=["rust", "protobuf"])
def test_every_field_is_bounded_naming_the_limit(codec: Codec) -> None:
    def refused(req: pb.ModelInferRequest) -> str:
        with pytest.raises(RequestRefused) as e:
            codec.decode(req.SerializeToString())
        return e.value.message

    msg = refused(_request(routing_key="k" * 5 * 1024 * 1024))
    assert msg == (
        "parameter 'routing_key' is 5242880 bytes; the limit is 256 "
        "(RISKSERVE_MAX_ROUTING_KEY_BYTES)"
    )
    many = _request()
    for i in range(5000):
        many.parameters[f"p{i}"].int64_param = i
    assert refused(many) == (
        "the request carries parameters: 5000; the limit is 64 (RISKSERVE_MAX_PARAMETERS)"
    )
    long_name = _request()
    long_name.model_name = "m" * 10_240
    assert refused(long_name) == (
        "field 'model_name' is 10240 bytes; the limit is 256 (RISKSERVE_MAX_NAME_BYTES)"
    )
    long_id = _request()
    long_id.id = "é" * 200  # 400 bytes in 200 characters
    assert "field 'id' is 400 bytes" in refused(long_id)
    long_input = _request()
    long_input.inputs[2].name = "x" * 300
    assert "the name of input #2 is 300 bytes" in refused(long_input)
    other = _request(note="n" * 2000)
    assert "(RISKSERVE_MAX_PARAMETER_BYTES)" in refused(other)
    key = _request()
    key.parameters["k" * 257].bool_param = True
    assert refused(key).startswith("a parameter name is 257 bytes")
    inputs = _request()
    for _ in range(1100):
        inputs.inputs.add(name="extra", datatype="FP64", shape=[1])
    assert "inputs: 1105; the limit is 1024 (RISKSERVE_MAX_INPUTS)" in refused(inputs)
    dims = _request()
    dims.inputs[0].shape[:] = [1] * (MAX_DIMS + 1)
    assert f"{MAX_DIMS + 1} dimensions" in refused(dims)
    tensor = _request()
    for i in range(65):
        tensor.inputs[0].parameters[f"t{i}"].bool_param = True
    assert "an input or output carries parameters: 65" in refused(tensor)


def test_limits_come_from_the_settings() -> None:
    codec = Codec(Bounds(LimitsSettings(max_routing_key_bytes=4)))
    codec.decode(_request(routing_key="abcd").SerializeToString())
    with pytest.raises(RequestRefused, match=r"is 5 bytes; the limit is 4 \("):
        codec.decode(_request(routing_key="abcde").SerializeToString())


@pytest.mark.parametrize("codec", [RUST, PROTOBUF], ids=["rust", "protobuf"])
def test_typed_contents_next_to_raw_contents_are_refused(codec: Codec) -> None:
    req = build_request("fraud", COLS, DTS)
    req.inputs[3].contents.bytes_contents.append(b"pos")
    with pytest.raises(RequestRefused, match="'channel' has typed contents, but the request"):
        codec.decode(req.SerializeToString())
    empty = build_request("fraud", COLS, DTS)
    empty.inputs[0].contents.SetInParent()  # present, even empty: ambiguous
    with pytest.raises(RequestRefused, match="'amount' has typed contents"):
        codec.decode(empty.SerializeToString())


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("codec", [RUST, PROTOBUF], ids=["rust", "protobuf"])
@pytest.mark.parametrize("name, value", [("amount", math.inf), ("f32", -math.inf)])
def test_both_readers_find_the_first_infinite_input(
    codec: Codec, raw: bool, name: str, value: float
) -> None:
    cols = {**COLS, name: [1.0, value, 2.0], "hour": [1, 2, 3]}
    data = build_request("fraud", cols, DTS, raw=raw).SerializeToString()
    assert codec.decode(data).infinite_input == name  # the data plane refuses it
    ok = build_request("fraud", COLS, DTS, raw=raw).SerializeToString()  # NaN: missing
    req = codec.decode(ok)
    assert req.infinite_input is None and np.isnan(req.inputs[0].data[1])


def test_echoed_names_are_cut() -> None:
    req = build_request("fraud", COLS, DTS)
    req.inputs[0].datatype = "X" * 200
    with pytest.raises(RequestRefused) as e:
        RUST.decode(req.SerializeToString())
    assert len(e.value.message) < 250
    assert "... (200 bytes)" in e.value.message


def test_refusals_keep_what_was_readable() -> None:
    req = _request(routing_key="k" * 300)
    req.model_version = "1"
    with pytest.raises(RequestRefused) as e:
        RUST.decode(req.SerializeToString())
    assert (e.value.model_name, e.value.model_version, e.value.request_id) == ("fraud", "1", "r")
    long_id = _request()
    long_id.id = "i" * 300
    with pytest.raises(RequestRefused) as e:
        RUST.decode(long_id.SerializeToString())
    assert (e.value.model_name, e.value.request_id) == ("fraud", "")  # over its limit


def test_the_server_answers_malformed_bytes_with_invalid_argument(server: Any) -> None:
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for data in (b"\x0a\x05fra", bytes.fromhex("0500000000")):
            with pytest.raises(grpc.RpcError) as e:
                call(data, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in (e.value.details() or "")
