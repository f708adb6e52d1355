"""The real server over a real socket, through our client and generated stubs.

Served scores are compared with LightGBM / ONNX Runtime run directly in the test
on features computed by the same Rust pipeline from the version's features.json.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import FRAUD_SPEC, train_model
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from riskserve.client import Client, build_request, pack_bytes, probabilities
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

LGB_TOL = 1e-6
ONNX_TOL = 1e-5
TOL = {"fraud": LGB_TOL, "fraud_onnx": ONNX_TOL}
PLATFORM = {"fraud": "lightgbm", "fraud_onnx": "onnxruntime_onnx"}
SERVICE = "inference.GRPCInferenceService"
RPC_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(server: Any) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(server.target)
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def version_dirs(models_dir: Path) -> dict[str, Path]:
    return {"fraud": models_dir / "fraud" / "1", "fraud_onnx": models_dir / "fraud_onnx" / "1"}


@pytest.fixture(scope="module")
def datatypes(reference: Any, version_dirs: dict[str, Path]) -> dict[str, dict[str, str]]:
    return {m: reference.datatypes(d) for m, d in version_dirs.items()}


@pytest.fixture(scope="module")
def fresh(reference: Any, version_dirs: dict[str, Path], fresh_table: Any) -> dict[str, Any]:
    """The fresh rows as each model's raw input columns."""
    return {m: reference.columns(fresh_table, d) for m, d in version_dirs.items()}


@pytest.fixture(scope="module")
def expected(
    reference: Any, version_dirs: dict[str, Path], fresh: dict[str, Any]
) -> dict[str, np.ndarray]:
    return {m: reference.predict(version_dirs[m], fresh[m]) for m in version_dirs}


def set_shape(req: pb.ModelInferRequest, shape_kind: str) -> pb.ModelInferRequest:
    """Turns every input's shape [n] into [n, 1] when shape_kind is "batch1"."""
    if shape_kind == "batch1":
        for t in req.inputs:
            n = t.shape[0]
            del t.shape[:]
            t.shape.extend([n, 1])
    return req


def index_of(req: pb.ModelInferRequest, name: str) -> int:
    return [t.name for t in req.inputs].index(name)


def check_reply(
    resp: pb.ModelInferResponse, model: str, version: str, request_id: str, n: int
) -> np.ndarray:
    assert resp.model_name == model
    assert resp.model_version == version
    if request_id:
        assert resp.id == request_id
    else:  # none sent: the server made a time-ordered one
        assert uuid.UUID(resp.id).version == 7
    assert len(resp.outputs) == 1
    out = resp.outputs[0]
    assert out.name == "probability"
    assert out.datatype == "FP32"
    assert list(out.shape) == [n]
    assert len(resp.raw_output_contents) == 1
    assert len(resp.raw_output_contents[0]) == 4 * n
    probs = probabilities(resp)
    assert probs.shape == (n,)
    return probs.astype(np.float64)


def assert_close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    diff = np.abs(got - want)
    worst = int(np.argmax(diff))
    assert diff.max() <= tol, f"row {worst}: served {got[worst]!r}, direct {want[worst]!r}"


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_still_serving(stub: pb_grpc.GRPCInferenceServiceStub, cols: Mapping[str, Any],
                         dts: Mapping[str, str], want: np.ndarray) -> None:  # fmt: skip
    live = stub.ServerLive(pb.ServerLiveRequest(), timeout=RPC_TIMEOUT)
    assert live.live
    resp = stub.ModelInfer(build_request("fraud", cols, dts, request_id="ok"), timeout=RPC_TIMEOUT)
    n = len(want)
    assert_close(check_reply(resp, "fraud", "1", "ok", n), want, LGB_TOL)


# --------------------------------------------------------------------------------------
# scores: batch and single rows, raw and typed contents, [batch] and [batch, 1]
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_kind", ["batch", "batch1"])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_batch_scores_equal_direct_prediction(
    stub: Any, model: str, raw: bool, shape_kind: str, fresh: Any, datatypes: Any, expected: Any
) -> None:
    cols = fresh[model]
    n = len(expected[model])
    rid = f"batch-{model}-{raw}-{shape_kind}"
    req = set_shape(
        build_request(model, cols, datatypes[model], raw=raw, request_id=rid), shape_kind
    )
    resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
    got = check_reply(resp, model, "1", rid, n)
    assert_close(got, expected[model], TOL[model])
    # a real model: scores vary across rows
    assert got.std() > 0


@pytest.mark.parametrize("shape_kind", ["batch", "batch1"])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_single_row_scores_equal_direct_prediction(
    stub: Any,
    model: str,
    raw: bool,
    shape_kind: str,
    fresh: Any,
    datatypes: Any,
    expected: Any,
    rows: Any,
) -> None:
    cols = fresh[model]
    n = len(expected[model])
    got = np.full(n, np.nan)
    window = 50
    for start in range(0, n, window):
        futures = []
        for i in range(start, min(n, start + window)):
            req = build_request(
                model, rows(cols, slice(i, i + 1)), datatypes[model], raw=raw, request_id=f"r{i}"
            )
            futures.append((i, stub.ModelInfer.future(set_shape(req, shape_kind), timeout=30)))
        for i, fut in futures:
            got[i] = check_reply(fut.result(), model, "1", f"r{i}", 1)[0]
    assert_close(got, expected[model], TOL[model])


@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_explicit_version_and_requested_output(
    stub: Any, model: str, fresh: Any, datatypes: Any, expected: Any, rows: Any
) -> None:
    cols = rows(fresh[model], slice(0, 7))
    req = build_request(model, cols, datatypes[model], version="1", request_id="v1")
    req.outputs.add(name="probability")
    resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
    assert_close(check_reply(resp, model, "1", "v1", 7), expected[model][:7], TOL[model])


def test_client_score_helper(server: Any, fresh: Any, expected: Any, rows: Any) -> None:
    client = Client(server.target)
    try:
        cols = rows(fresh["fraud"], slice(10, 13))
        version, probs = client.score("fraud", {k: list(v) for k, v in cols.items()})
    finally:
        client.close()
    assert version == "1"
    assert_close(np.asarray(probs, dtype=np.float64), expected["fraud"][10:13], LGB_TOL)


# --------------------------------------------------------------------------------------
# missing values, non-finite numbers, unseen / empty categories
# --------------------------------------------------------------------------------------


def _degrade(cols: Mapping[str, Any], dtypes: Mapping[str, str]) -> dict[str, Any]:
    """40 rows with NaN and extreme values in float fields and unseen / empty / odd
    strings. (±inf is refused with INVALID_ARGUMENT: tests/e2e/test_bad_input.py.)"""
    n = 40
    out: dict[str, Any] = {}
    specials = [math.nan, 0.0, -0.0, 1e308, -1e308, 5e-324]
    str_specials = ["", "__never_seen__", "ünïcödé-例え", " ", "USD ", "x" * 300]
    for k, (name, col) in enumerate(cols.items()):
        if dtypes[name] == "FP64":
            a = np.array(col[:n], dtype=np.float64)
            for j in range(n):
                if (j + k) % 3 == 0:
                    a[j] = specials[(j + k) % len(specials)]
            out[name] = a
        elif dtypes[name] == "BYTES":
            s = list(col[:n])
            for j in range(n):
                if (j + k) % 2 == 0:
                    s[j] = str_specials[((j + k) // 2) % len(str_specials)]
            out[name] = s
        else:
            out[name] = col[:n]
    # ratio denominators of zero
    if "avg_amount_30d" in out:
        out["avg_amount_30d"][1::7] = 0.0
    return out


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_missing_nonfinite_and_unseen_values_are_scored(
    stub: Any,
    model: str,
    raw: bool,
    fresh: Any,
    datatypes: Any,
    reference: Any,
    version_dirs: Any,
) -> None:
    cols = _degrade(fresh[model], datatypes[model])
    n = len(cols["amount"])
    assert np.isnan(cols["amount"]).any()
    assert "" in cols["currency"] and "__never_seen__" in cols["currency"]
    want = reference.predict(version_dirs[model], cols)
    assert np.isfinite(want).all()
    resp = stub.ModelInfer(
        build_request(model, cols, datatypes[model], raw=raw, request_id="odd"),
        timeout=RPC_TIMEOUT,
    )
    got = check_reply(resp, model, "1", "odd", n)
    assert ((got >= 0) & (got <= 1)).all()
    assert_close(got, want, TOL[model])


def test_all_missing_row_is_scored(
    stub: Any, datatypes: Any, reference: Any, version_dirs: Any
) -> None:
    dts = datatypes["fraud"]
    cols: dict[str, Any] = {}
    for name, dt in dts.items():
        if dt == "FP64":
            cols[name] = np.array([math.nan])
        elif dt == "BYTES":
            cols[name] = [""]
        elif dt == "BOOL":
            cols[name] = np.array([False])
        else:
            cols[name] = np.array([0], dtype=np.int64)
    want = reference.predict(version_dirs["fraud"], cols)
    resp = stub.ModelInfer(build_request("fraud", cols, dts), timeout=RPC_TIMEOUT)
    assert_close(check_reply(resp, "fraud", "1", "", 1), want, LGB_TOL)


def test_raw_bool_nonzero_byte_means_true_or_is_refused(
    stub: Any, fresh: Any, datatypes: Any, reference: Any, version_dirs: Any, rows: Any
) -> None:
    """A raw BOOL byte other than 0/1 (e.g. 0x02) must either be refused with
    INVALID_ARGUMENT naming the input, or read as true (the spec: bool inputs read
    as 0/1). It must never leak into the features as 2.0."""
    cols = rows(fresh["fraud"], slice(0, 8))
    cols["card_present"] = np.zeros(8, dtype=bool)
    req = build_request("fraud", cols, datatypes["fraud"], request_id="bool2")
    req.raw_input_contents[index_of(req, "card_present")] = b"\x02" * 8
    as_true = dict(cols, card_present=np.ones(8, dtype=bool))
    want = reference.predict(version_dirs["fraud"], as_true)
    features = reference.features(version_dirs["fraud"], as_true)
    names = reference.pipeline(version_dirs["fraud"]).feature_names
    assert features[:, names.index("card_present")].tolist() == [1.0] * 8
    try:
        resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert "card_present" in e.details()
        return
    got = check_reply(resp, "fraud", "1", "bool2", 8)
    assert_close(got, want, LGB_TOL)


# --------------------------------------------------------------------------------------
# metadata, liveness, readiness
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_model_metadata(stub: Any, model: str, reference: Any, version_dirs: Any) -> None:
    md = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=RPC_TIMEOUT)
    assert md.name == model
    assert list(md.versions) == ["1"]
    assert md.platform == PLATFORM[model]
    spec_inputs = reference.spec(version_dirs[model])["inputs"]
    assert len(spec_inputs) == 35
    want = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES"}
    got = [(t.name, t.datatype, list(t.shape)) for t in md.inputs]
    assert got == [(i["name"], want[i["dtype"]], [-1]) for i in spec_inputs]
    # the template's inputs are exactly the raw inputs served
    template = json.loads(FRAUD_SPEC.read_text())
    assert {t.name for t in md.inputs} == {i["name"] for i in template["inputs"]}
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [
        ("probability", "FP32", [-1]),
        ("flagged", "BOOL", [-1]),
    ]
    # explicit version
    md1 = stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version="1"), timeout=5)
    assert [t.name for t in md1.inputs] == [t.name for t in md.inputs]


def test_server_live_ready_metadata(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=RPC_TIMEOUT).live is True
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT).ready is True
    md = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=RPC_TIMEOUT)
    assert md.name == "riskserve"
    assert md.version


@pytest.mark.parametrize("model", ["fraud", "fraud_onnx"])
def test_model_ready(stub: Any, model: str) -> None:
    assert stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=RPC_TIMEOUT).ready is True
    r = stub.ModelReady(pb.ModelReadyRequest(name=model, version="1"), timeout=RPC_TIMEOUT)
    assert r.ready is True


def test_health_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    e = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5))
    assert e.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT
        )
    )
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    # and the inference service's descriptor is served (grpcurl needs it)
    responses = list(
        refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]),
            timeout=RPC_TIMEOUT,
        )
    )
    assert responses[0].file_descriptor_response.file_descriptor_proto


# --------------------------------------------------------------------------------------
# errors: the right status, a message naming the field, never INTERNAL
# --------------------------------------------------------------------------------------

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT

Mutator = Callable[[pb.ModelInferRequest, bool], Any]


def _drop(name: str) -> Mutator:
    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        i = index_of(req, name)
        del req.inputs[i]
        if raw:
            del req.raw_input_contents[i]

    return f


def _add_input(name: str, datatype: str, values: Any, contents_field: str) -> Mutator:
    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        t = req.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        if raw:
            if datatype == "BYTES":
                req.raw_input_contents.append(pack_bytes(values))
            else:
                req.raw_input_contents.append(np.asarray(values).tobytes())
        else:
            getattr(t.contents, contents_field).extend(values)

    return f


def _retype(name: str, datatype: str, raw_values: bytes, field: str, typed: list[Any]) -> Mutator:
    """Sends input `name` with another datatype (content consistent with it)."""

    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        i = index_of(req, name)
        t = req.inputs[i]
        t.datatype = datatype
        t.ClearField("contents")
        if raw:
            req.raw_input_contents[i] = raw_values
        else:
            getattr(t.contents, field).extend(typed)

    return f


def _reshape(name: str, shape: list[int]) -> Mutator:
    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        t = req.inputs[index_of(req, name)]
        del t.shape[:]
        t.shape.extend(shape)

    return f


def _truncate_rows(name: str, keep: int) -> Mutator:
    """Sends input `name` with fewer rows (consistent shape and content)."""

    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        i = index_of(req, name)
        t = req.inputs[i]
        del t.shape[:]
        t.shape.append(keep)
        if raw:
            if t.datatype == "BYTES":
                buf, out = req.raw_input_contents[i], []
                pos = 0
                for _ in range(keep):
                    (ln,) = struct.unpack_from("<I", buf, pos)
                    out.append(buf[pos : pos + 4 + ln])
                    pos += 4 + ln
                req.raw_input_contents[i] = b"".join(out)
            else:
                width = len(req.raw_input_contents[i]) // 4
                req.raw_input_contents[i] = req.raw_input_contents[i][: keep * width]
        else:
            field = t.contents.ListFields()[0][0].name
            vals = list(getattr(t.contents, field))[:keep]
            t.contents.ClearField(field)
            getattr(t.contents, field).extend(vals)

    return f


def _zero_rows(req: pb.ModelInferRequest, raw: bool) -> None:
    for i, t in enumerate(req.inputs):
        del t.shape[:]
        t.shape.append(0)
        t.ClearField("contents")
        if raw:
            req.raw_input_contents[i] = b""


def _raw_only(mut: Mutator) -> Mutator:
    mut.modes = (True,)  # type: ignore[attr-defined]
    return mut


def _typed_only(mut: Mutator) -> Mutator:
    mut.modes = (False,)  # type: ignore[attr-defined]
    return mut


def _set_raw(name: str, data: bytes) -> Mutator:
    return _raw_only(lambda req, raw: req.raw_input_contents.__setitem__(index_of(req, name), data))


def _set_typed_bytes(name: str, values: list[bytes]) -> Mutator:
    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        t = req.inputs[index_of(req, name)]
        t.contents.ClearField("bytes_contents")
        t.contents.bytes_contents.extend(values)

    return _typed_only(f)


def _attr(field: str, value: str) -> Mutator:
    return lambda req, raw: setattr(req, field, value)


def _drop_last_raw(req: pb.ModelInferRequest, raw: bool) -> None:
    del req.raw_input_contents[-1]


def _extra_raw(req: pb.ModelInferRequest, raw: bool) -> None:
    req.raw_input_contents.append(b"\x00" * 32)


def _unnamed(req: pb.ModelInferRequest, raw: bool) -> None:
    req.inputs[0].name = ""


def _too_many_rows(req: pb.ModelInferRequest, raw: bool) -> None:
    n = 10_001
    t = req.inputs[index_of(req, "amount")]
    del t.shape[:]
    t.shape.append(n)
    t.ClearField("contents")
    if raw:
        req.raw_input_contents[index_of(req, "amount")] = np.zeros(n).tobytes()
    else:
        t.contents.fp64_contents.extend([0.0] * n)


def _requested_output(req: pb.ModelInferRequest, raw: bool) -> None:
    req.outputs.add(name="score")


def _duplicate(name: str) -> Mutator:
    def f(req: pb.ModelInferRequest, raw: bool) -> None:
        i = index_of(req, name)
        t = req.inputs.add()
        t.CopyFrom(req.inputs[i])
        if raw:
            req.raw_input_contents.append(req.raw_input_contents[i])

    return f


def _packed_count(name: str, n: int) -> Mutator:
    return _set_raw(name, pack_bytes(["pos"] * n))


def _typed_fewer_values(req: pb.ModelInferRequest, raw: bool) -> None:
    t = req.inputs[index_of(req, "amount")]
    vals = list(t.contents.fp64_contents)[:3]
    t.contents.ClearField("fp64_contents")
    t.contents.fp64_contents.extend(vals)


ERROR_CASES: list[tuple[str, Mutator, grpc.StatusCode, list[str]]] = [
    ("unknown-model", _attr("model_name", "no_such_model"), NOT_FOUND, ["no_such_model"]),
    ("empty-model-name", _attr("model_name", ""), NOT_FOUND, []),
    ("unknown-version", _attr("model_version", "99"), NOT_FOUND, ["99"]),
    ("non-numeric-version", _attr("model_version", "latest"), NOT_FOUND, ["latest"]),
    ("missing-float-input", _drop("amount"), INVALID, ["amount"]),
    ("missing-bytes-input", _drop("channel"), INVALID, ["channel"]),
    ("missing-bool-input", _drop("card_present"), INVALID, ["card_present"]),
    ("unexpected-input", _add_input("bogus", "FP64", [1.0] * 4, "fp64_contents"), INVALID,
     ["bogus"]),
    ("duplicate-input", _duplicate("amount"), INVALID, ["amount"]),
    ("unnamed-input", _unnamed, INVALID, ["name"]),
    ("fp32-for-fp64", _retype("amount", "FP32", np.ones(4, "<f4").tobytes(), "fp32_contents",
                              [1.0] * 4), INVALID, ["amount", "FP64"]),
    ("int32-for-int64", _retype("transaction_hour", "INT32", np.ones(4, "<i4").tobytes(),
                                "int_contents", [1] * 4), INVALID, ["transaction_hour", "INT64"]),
    ("fp64-for-bool", _retype("card_present", "FP64", np.ones(4).tobytes(), "fp64_contents",
                              [1.0] * 4), INVALID, ["card_present", "BOOL"]),
    ("fp64-for-bytes", _retype("channel", "FP64", np.ones(4).tobytes(), "fp64_contents",
                               [1.0] * 4), INVALID, ["channel", "BYTES"]),
    ("bytes-for-fp64", _retype("amount", "BYTES", pack_bytes(["1"] * 4), "bytes_contents",
                               [b"1"] * 4), INVALID, ["amount", "FP64"]),
    ("unknown-datatype", _retype("amount", "FP128", np.ones(8).tobytes(), "fp64_contents",
                                 [1.0] * 4), INVALID, ["amount"]),
    ("batch-size-mismatch", _truncate_rows("currency", 3), INVALID, ["currency"]),
    ("batch-size-mismatch-bool", _truncate_rows("is_recurring", 2), INVALID, ["is_recurring"]),
    ("shape-2x2", _reshape("amount", [2, 2]), INVALID, ["amount"]),
    ("shape-1x4", _reshape("channel", [1, 4]), INVALID, ["channel"]),
    ("shape-4x1x1", _reshape("amount", [4, 1, 1]), INVALID, ["amount"]),
    ("shape-scalar", _reshape("amount", []), INVALID, ["amount"]),
    ("shape-negative", _reshape("amount", [-4]), INVALID, ["amount"]),
    ("shape-says-more-rows", _reshape("amount", [5]), INVALID, ["amount"]),
    ("raw-wrong-byte-length", _set_raw("amount", b"\x00" * 31), INVALID, ["amount"]),
    ("raw-bool-wrong-length", _set_raw("card_present", b"\x01" * 5), INVALID, ["card_present"]),
    ("raw-fewer-contents", _raw_only(_drop_last_raw), INVALID, ["raw_input_contents"]),
    ("raw-more-contents", _raw_only(_extra_raw), INVALID, ["raw_input_contents"]),
    ("raw-bytes-non-utf8", _set_raw("channel", pack_bytes([b"pos", b"\xff\xfe", b"pos", b"x"])),
     INVALID, ["channel"]),
    ("raw-bytes-truncated", _set_raw("channel", pack_bytes(["pos"] * 4)[:-2]), INVALID,
     ["channel"]),
    ("raw-bytes-length-past-end", _set_raw("channel", struct.pack("<I", 1 << 30) + b"abc"),
     INVALID, ["channel"]),
    ("raw-bytes-more-elements", _packed_count("channel", 5), INVALID, ["channel"]),
    ("raw-bytes-fewer-elements", _packed_count("channel", 3), INVALID, ["channel"]),
    ("typed-bytes-non-utf8", _set_typed_bytes("channel", [b"pos", b"\xc3\x28", b"a", b"b"]),
     INVALID, ["channel"]),
    ("typed-fewer-values", _typed_only(_typed_fewer_values), INVALID, ["amount"]),
    ("zero-rows", _zero_rows, INVALID, ["amount"]),
    ("too-many-rows", _too_many_rows, INVALID, ["amount"]),
    ("unknown-output", _requested_output, INVALID, ["score"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "code", "needles", "raw"),
    [
        pytest.param(m, c, n, raw, id=f"{i}-{'raw' if raw else 'typed'}")
        for i, m, c, n in ERROR_CASES
        for raw in getattr(m, "modes", (True, False))
    ],
)
def test_bad_request_gets_its_status_and_server_lives_on(
    stub: Any,
    mutate: Mutator,
    code: grpc.StatusCode,
    needles: list[str],
    raw: bool,
    fresh: Any,
    datatypes: Any,
    expected: Any,
    rows: Any,
) -> None:
    cols = rows(fresh["fraud"], slice(0, 4))
    req = build_request("fraud", cols, datatypes["fraud"], raw=raw, request_id="bad")
    mutate(req, raw)
    e = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT))
    assert e.code() == code, f"{e.code()}: {e.details()}"
    assert e.code() != grpc.StatusCode.INTERNAL
    for needle in needles:
        assert needle in (e.details() or ""), e.details()
    assert_still_serving(stub, cols, datatypes["fraud"], expected["fraud"][:4])


def test_metadata_and_readiness_errors(stub: Any) -> None:
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=5), "nope"),
        (
            lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud", version="7"), 5),
            "7",
        ),
        (lambda: stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=5), "nope"),
        (lambda: stub.ModelReady(pb.ModelReadyRequest(name="fraud", version="7"), 5), "7"),
    ]
    for call, needle in cases:
        e = rpc_error(call)
        assert e.code() == NOT_FOUND, (e.code(), e.details())
        assert needle in e.details()


def test_good_inference_after_bad_ones(
    stub: Any, fresh: Any, datatypes: Any, expected: Any
) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=RPC_TIMEOUT).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT).ready
    for model in ("fraud", "fraud_onnx"):
        resp = stub.ModelInfer(
            build_request(model, fresh[model], datatypes[model], request_id="after"),
            timeout=RPC_TIMEOUT,
        )
        got = check_reply(resp, model, "1", "after", len(expected[model]))
        assert_close(got, expected[model], TOL[model])


# --------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------

THREADS = 16
PER_THREAD = 50


def test_concurrent_clients_get_their_own_scores(
    server: Any, reference: Any, version_dirs: Any, datatypes: Any, rows: Any
) -> None:
    from riskserve.training.datagen import generate

    table = generate(THREADS * PER_THREAD, 31337)
    cols = reference.columns(table, version_dirs["fraud"])
    want = reference.predict(version_dirs["fraud"], cols)
    assert len(np.unique(want)) > 100  # rows are distinguishable by their scores
    got = np.full(len(want), np.nan)
    versions: set[str] = set()
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            ch = grpc.insecure_channel(server.target)
            st = pb_grpc.GRPCInferenceServiceStub(ch)
            barrier.wait(10)
            for j in range(PER_THREAD):
                i = t * PER_THREAD + j
                size = 1 + (i % 3)  # 1-3 rows, starting at row i (wrapping)
                idx = [(i + k) % len(want) for k in range(size)]
                raw = j % 2 == 0
                req = build_request(
                    "fraud", rows(cols, idx), datatypes["fraud"], raw=raw, request_id=f"c{i}"
                )
                resp = st.ModelInfer(req, timeout=30)
                assert resp.id == f"c{i}"
                p = probabilities(resp)
                assert p.shape == (size,)
                np.testing.assert_allclose(p, want[idx], rtol=0, atol=LGB_TOL)
                got[i] = p[0]
                versions.add(resp.model_version)
            ch.close()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[:3]
    assert versions == {"1"}
    assert_close(got, want, LGB_TOL)


# --------------------------------------------------------------------------------------
# raw BOOL bytes other than 0/1, where the value matters (a ratio by a bool input)
# --------------------------------------------------------------------------------------


def test_raw_bool_byte_2_in_a_ratio_reads_as_true_or_is_refused(
    tmp_path: Path, start_server: Any
) -> None:
    """`spend / active` with `active` a bool: a raw BOOL byte 0x02 is "true" (V2:
    one byte per element, nonzero is true) or an INVALID_ARGUMENT naming the input;
    it must not be read as the number 2 (spec: bool inputs read as 0/1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    n = 4000
    spend = rng.uniform(0.0, 100.0, n)
    active = rng.random(n) < 0.7
    label = (active & (spend > 60.0)).astype(np.int64)
    data = tmp_path / "ratio.parquet"
    pq.write_table(pa.table({"spend": spend, "active": active, "label": label}), data)
    template = {
        "format": "riskserve.features/v1",
        "inputs": [{"name": "spend", "dtype": "float"}, {"name": "active", "dtype": "bool"}],
        "transforms": [
            {
                "type": "ratio",
                "numerator": "spend",
                "denominator": "active",
                "name": "spend_if_active",
                "missing": {"strategy": "constant", "value": -1.0},
            }
        ],
    }
    spec = tmp_path / "ratio.json"
    spec.write_text(json.dumps(template))
    models = tmp_path / "models"
    train_model(data, models, rounds=30, model="ratio", spec=spec, target="label")
    h = start_server(models)
    ch = grpc.insecure_channel(h.target)
    st = pb_grpc.GRPCInferenceServiceStub(ch)
    try:
        dts = {"spend": "FP64", "active": "BOOL"}
        cols = {"spend": np.array([90.0, 90.0]), "active": np.array([True, False])}
        base = probabilities(st.ModelInfer(build_request("ratio", cols, dts), timeout=10))
        assert base[0] > 0.5 > base[1]  # the model learned spend/active
        req = build_request("ratio", cols, dts)
        req.raw_input_contents[index_of(req, "active")] = b"\x02\x00"
        try:
            resp = st.ModelInfer(req, timeout=10)
        except grpc.RpcError as e:
            assert e.code() == INVALID, (e.code(), e.details())
            assert "active" in e.details()
            return
        got = probabilities(resp)
        np.testing.assert_allclose(got, base, rtol=0, atol=LGB_TOL, err_msg="0x02 read as 2")
    finally:
        ch.close()
