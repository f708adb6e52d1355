"""The native path (issue 13) against real servers: one with it (the default) and
one with RISKSERVE_NATIVE_PATH=false, side by side.

- Scores served through it equal LightGBM's own Booster.predict on 10,000+ fresh
  rows (missing values, unseen and empty categories included), in single-row and
  64-row requests, on ModelInfer and ModelStreamInfer; and the replies equal the
  Python path's, field for field.
- Every refusal of the decoder and the data plane has the same status and message
  on both servers (the native scorer declines what it does not accept, and the
  Python path answers it).
- The request metrics the native counters export equal the requests sent."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Reference, ServerHandle, take_rows

from riskserve.client import build_request, probabilities
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.training.datagen import generate

pytestmark = pytest.mark.timeout(300)

INFER = "/inference.GRPCInferenceService/ModelInfer"
TIMEOUT = 10.0
ROWS = 10_240


@pytest.fixture(scope="module")
def servers(
    launch_server: Callable[..., ServerHandle],
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    """(native, python): the same models, the native path on and off."""
    models = tmp_path_factory.mktemp("native-path") / "models"
    shutil.copytree(models_dir, models)
    native = launch_server(models)
    python = launch_server(models, env={"RISKSERVE_NATIVE_PATH": "false"})
    try:
        yield native, python
    finally:
        codes = [native.stop(), python.stop()]
        native.check_exit(codes[0])
        python.check_exit(codes[1])


@pytest.fixture(scope="module")
def vdir(models_dir: Path) -> Path:
    return models_dir / "fraud" / "1"


@pytest.fixture(scope="module")
def dts(reference: Reference, vdir: Path) -> dict[str, str]:
    return reference.datatypes(vdir)


@pytest.fixture(scope="module")
def fresh(reference: Reference, vdir: Path) -> dict[str, Any]:
    """ROWS rows the model never saw, with missing numbers, unseen and empty strings."""
    cols = reference.columns(generate(ROWS, 9191), vdir)
    rng = np.random.default_rng(5)
    for name, dtype in reference.input_dtypes(vdir).items():
        hit = rng.random(ROWS) < 0.05
        if dtype == "float":
            cols[name] = np.where(hit, np.nan, cols[name])
        elif dtype == "string":
            cols[name] = [
                ("never-seen" if i % 2 else "") if h else v
                for i, (h, v) in enumerate(zip(hit, cols[name], strict=True))
            ]
    return cols


def native_requests(srv: ServerHandle) -> float:
    return srv.metric("riskserve_native_requests_total", model="fraud")


def test_scores_equal_lightgbm_on_ten_thousand_rows(
    servers: tuple[ServerHandle, ServerHandle],
    reference: Reference,
    vdir: Path,
    dts: dict[str, str],
    fresh: dict[str, Any],
) -> None:
    native, _ = servers
    want = reference.lightgbm(vdir, fresh)
    before = native_requests(native)
    got = np.empty(ROWS, dtype=np.float64)
    stub = native.stub
    singles = 1_024
    for i in range(singles):
        one = build_request("fraud", take_rows(fresh, slice(i, i + 1)), dts)
        got[i] = probabilities(stub.ModelInfer(one, timeout=TIMEOUT))[0]
    requests = singles
    for start in range(singles, ROWS, 64):
        part = build_request("fraud", take_rows(fresh, slice(start, start + 64)), dts)
        got[start : start + 64] = probabilities(stub.ModelInfer(part, timeout=TIMEOUT))
        requests += 1
    assert np.max(np.abs(got - want)) <= 1e-6
    # They took the native path, every one of them.
    assert native_requests(native) - before == requests


def test_stream_scores_equal_lightgbm(
    servers: tuple[ServerHandle, ServerHandle],
    reference: Reference,
    vdir: Path,
    dts: dict[str, str],
    fresh: dict[str, Any],
) -> None:
    native, _ = servers
    n = 512
    part = take_rows(fresh, slice(0, n))
    want = reference.lightgbm(vdir, part)
    msgs = [build_request("fraud", take_rows(part, slice(i, i + 1)), dts) for i in range(n)]
    before = native_requests(native)
    replies = list(native.stub.ModelStreamInfer(iter(msgs), timeout=60))
    assert [r.error_message for r in replies] == [""] * n
    got = np.array([probabilities(r.infer_response)[0] for r in replies], dtype=np.float64)
    assert np.max(np.abs(got - want)) <= 1e-6
    assert native_requests(native) - before == n


def test_replies_equal_the_python_paths(
    servers: tuple[ServerHandle, ServerHandle], dts: dict[str, str], fresh: dict[str, Any]
) -> None:
    native, python = servers
    for rows, outputs, params in [
        (1, [], {}),
        (3, ["flagged"], {"routing_key": "card-1"}),
        (64, ["flagged", "probability"], {}),
        (2, ["probability"], {}),
    ]:
        req = build_request(
            "fraud", take_rows(fresh, slice(0, rows)), dts, request_id="r-1", parameters=params
        )
        for o in outputs:
            req.outputs.add(name=o)
        a = native.stub.ModelInfer(req, timeout=TIMEOUT)
        b = python.stub.ModelInfer(req, timeout=TIMEOUT)
        assert a == b, (rows, outputs)
    # A request without an id gets a generated one on both paths.
    req = build_request("fraud", take_rows(fresh, slice(0, 1)), dts)
    a = native.stub.ModelInfer(req, timeout=TIMEOUT)
    assert len(a.id) == 36 and a.id != native.stub.ModelInfer(req, timeout=TIMEOUT).id


def _bad_requests(
    good: pb.ModelInferRequest, fresh: dict[str, Any], dts: dict[str, str]
) -> dict[str, bytes]:
    """Every kind of refusal, as request bytes (named for the failure message)."""
    out: dict[str, bytes] = {}

    def mutated(name: str, change: Callable[[pb.ModelInferRequest], Any]) -> None:
        r = pb.ModelInferRequest()
        r.CopyFrom(good)
        change(r)
        out[name] = r.SerializeToString()

    names = [t.name for t in good.inputs]
    fp64 = next(i for i, t in enumerate(good.inputs) if t.datatype == "FP64")
    bools = [i for i, t in enumerate(good.inputs) if t.datatype == "BOOL"]
    strs = next(i for i, t in enumerate(good.inputs) if t.datatype == "BYTES")

    mutated("unknown model", lambda r: setattr(r, "model_name", "nope"))
    mutated("unknown version", lambda r: setattr(r, "model_version", "9"))
    mutated("bad version", lambda r: setattr(r, "model_version", "x"))
    mutated("unknown input", lambda r: setattr(r.inputs[0], "name", "nope"))
    mutated("empty input name", lambda r: setattr(r.inputs[0], "name", ""))

    def drop_input(r: pb.ModelInferRequest) -> None:
        del r.inputs[-1]
        del r.raw_input_contents[-1]

    mutated("missing input", drop_input)

    def dup_input(r: pb.ModelInferRequest) -> None:
        r.inputs.add().CopyFrom(r.inputs[0])
        r.raw_input_contents.append(r.raw_input_contents[0])

    mutated("duplicate input", dup_input)
    mutated("wrong datatype", lambda r: setattr(r.inputs[fp64], "datatype", "FP32"))
    mutated("unknown datatype", lambda r: setattr(r.inputs[fp64], "datatype", "FP99"))
    mutated("3-d shape", lambda r: r.inputs[fp64].shape.extend([1, 1]))
    mutated("[1, 2] shape", lambda r: r.inputs[fp64].shape.append(2))
    mutated("negative dim", lambda r: r.inputs[fp64].shape.__setitem__(0, -1))

    def zero_rows(r: pb.ModelInferRequest) -> None:
        for i, t in enumerate(r.inputs):
            t.shape[0] = 0
            r.raw_input_contents[i] = b""

    mutated("zero rows", zero_rows)
    mutated("batch mismatch", lambda r: r.inputs[fp64].shape.__setitem__(0, 2))
    mutated(
        "raw size",
        lambda r: r.raw_input_contents.__setitem__(fp64, r.raw_input_contents[fp64] + b"\0"),
    )
    if bools:
        mutated("bad bool", lambda r: r.raw_input_contents.__setitem__(bools[0], b"\x02"))
    mutated("bad packed bytes", lambda r: r.raw_input_contents.__setitem__(strs, b"\x09\0\0\0ab"))
    mutated(
        "+inf",
        lambda r: r.raw_input_contents.__setitem__(fp64, np.array([np.inf]).tobytes()),
    )
    mutated(
        "-inf",
        lambda r: r.raw_input_contents.__setitem__(fp64, np.array([-np.inf]).tobytes()),
    )

    def typed(r: pb.ModelInferRequest) -> None:
        r.inputs[fp64].contents.fp64_contents.append(1.0)

    mutated("mixed raw and typed", typed)
    mutated("raw count", lambda r: r.raw_input_contents.append(b"x"))
    mutated("unknown output", lambda r: r.outputs.add(name="nope"))

    def dup_output(r: pb.ModelInferRequest) -> None:
        r.outputs.add(name="flagged")
        r.outputs.add(name="flagged")

    mutated("duplicate output", dup_output)
    mutated("int routing key", lambda r: r.parameters["routing_key"].__setattr__("int64_param", 3))
    mutated(
        "empty routing key", lambda r: r.parameters["routing_key"].__setattr__("string_param", "")
    )
    mutated(
        "long routing key",
        lambda r: r.parameters["routing_key"].__setattr__("string_param", "k" * 300),
    )
    mutated("long id", lambda r: setattr(r, "id", "i" * 300))
    mutated("long model name", lambda r: setattr(r, "model_name", "m" * 300))
    mutated("long input name", lambda r: setattr(r.inputs[0], "name", "n" * 300))
    mutated(
        "many parameters",
        lambda r: [r.parameters[f"p{i}"].__setattr__("bool_param", True) for i in range(100)],
    )
    mutated(
        "tensor parameter (valid)",
        lambda r: r.inputs[0].parameters["x"].__setattr__("bool_param", True),
    )
    big = build_request("fraud", {n: list(fresh[n][:1]) * 10_001 for n in names}, dts)
    out["over max rows"] = big.SerializeToString()
    data = good.SerializeToString()
    out["truncated"] = data[:-3]
    out["garbage"] = b"\x0f" + data
    # Typed contents alone are valid: the Python path scores them.
    typed_only = build_request("fraud", take_rows(fresh, slice(0, 2)), dts, raw=False)
    out["typed contents (valid)"] = typed_only.SerializeToString()
    # An extra parameter is valid too: the native path declines it, the Python path scores it.
    mutated(
        "other parameter (valid)", lambda r: r.parameters["note"].__setattr__("string_param", "x")
    )
    return out


def _unary(ch: grpc.Channel, data: bytes) -> tuple[str, str, bytes]:
    rpc = ch.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    try:
        reply = rpc(data, timeout=TIMEOUT)
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", b""
    return "OK", "", pb.ModelInferResponse.FromString(reply).raw_output_contents[0]


def test_every_refusal_has_the_python_paths_status_and_message(
    servers: tuple[ServerHandle, ServerHandle], dts: dict[str, str], fresh: dict[str, Any]
) -> None:
    native, python = servers
    good = build_request("fraud", take_rows(fresh, slice(0, 1)), dts, request_id="bad-1")
    cases = _bad_requests(good, fresh, dts)
    assert len(cases) >= 35
    before = native_requests(native)
    refused = 0
    for name, data in cases.items():
        a = _unary(native.channel, data)
        b = _unary(python.channel, data)
        assert a == b, name
        if name.endswith("(valid)"):
            assert a[0] == "OK", (name, a)
        else:
            refused += 1
            assert a[0] in ("INVALID_ARGUMENT", "NOT_FOUND"), (name, a)
            assert a[1], name
    # The stream answers each with the same error_message.
    msgs = [
        pb.ModelInferRequest.FromString(d)
        for n, d in cases.items()
        if n not in ("truncated", "garbage")
    ]
    sa = [r.error_message for r in native.stub.ModelStreamInfer(iter(msgs), timeout=60)]
    sb = [r.error_message for r in python.stub.ModelStreamInfer(iter(msgs), timeout=60)]
    assert sa == sb
    assert sum(1 for m in sa if m) == refused - 2
    # None of them was scored natively, and the native server counted each one as
    # the Python server did.
    assert native_requests(native) == before
    for code in ("INVALID_ARGUMENT", "NOT_FOUND"):
        assert native.metric("riskserve_requests_total", code=code) == python.metric(
            "riskserve_requests_total", code=code
        ), code


def test_exported_request_metrics_equal_the_requests_sent(
    servers: tuple[ServerHandle, ServerHandle], dts: dict[str, str], fresh: dict[str, Any]
) -> None:
    native, _ = servers

    def figures() -> dict[str, float]:
        m = native.metric
        return {
            "ok": m("riskserve_requests_total", model="fraud", code="OK"),
            "invalid": m("riskserve_requests_total", model="fraud", code="INVALID_ARGUMENT"),
            "duration": m("riskserve_request_duration_seconds_count", model="fraud"),
            "le_inf": m("riskserve_request_duration_seconds_bucket", model="fraud", le="+Inf"),
            "rows": m("riskserve_inference_rows_total", model="fraud"),
            "request_rows": m("riskserve_request_rows_count", model="fraud"),
            "request_rows_sum": m("riskserve_request_rows_sum", model="fraud"),
            "native": native_requests(native),
        }

    before = figures()
    stub = native.stub
    for i in range(40):
        stub.ModelInfer(
            build_request("fraud", take_rows(fresh, slice(i, i + 1)), dts), timeout=TIMEOUT
        )
    for i in range(5):
        stub.ModelInfer(
            build_request("fraud", take_rows(fresh, slice(64 * i, 64 * i + 64)), dts),
            timeout=TIMEOUT,
        )
    # Bigger than RISKSERVE_NATIVE_MAX_ROWS: the batch queue scores it.
    stub.ModelInfer(build_request("fraud", take_rows(fresh, slice(0, 200)), dts), timeout=TIMEOUT)
    bad = build_request("fraud", take_rows(fresh, slice(0, 1)), dts)
    bad.inputs[0].name = "nope"
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(bad, timeout=TIMEOUT)
    after = figures()
    d = {k: after[k] - before[k] for k in before}
    assert d == {
        "ok": 46,
        "invalid": 3,
        "duration": 46,
        "le_inf": 46,
        "rows": 40 + 5 * 64 + 200,
        "request_rows": 46,
        "request_rows_sum": 40 + 5 * 64 + 200,
        "native": 45,
    }
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="fraud"), timeout=TIMEOUT)
    (v1,) = stats.model_stats
    assert v1.inference_stats.success.count == after["ok"]
    assert v1.inference_count == after["rows"]
