"""The one-call native path (riskserve._native.Scorer, peek_request,
request_rows_json) against the Python path it stands in for, on a real model
trained here: the Python codec (Codec.decode), the data plane's request checks
(DataPlane._columns, _routing_key), LoadedModel.score and encode_response.

Scores must be bit-equal and replies the same message; drift counts after N fast
calls must equal those after the same N Python-path calls; every request the
Python path refuses (and every one that is not plain) must come back None with
nothing counted. The per-call times of both paths are printed, not asserted."""

from __future__ import annotations

import random
import struct
import timeit
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pytest
from conftest import train_model
from prometheus_client import CollectorRegistry

from riskserve._native import (
    DriftMonitor,
    FeaturePipeline,
    Gbdt,
    InputError,
    Scorer,
    peek_request,
    request_rows_json,
    rows_json,
)
from riskserve.client import build_request, pack_bytes
from riskserve.config import BatchingSettings, LimitsSettings, ScoringSettings
from riskserve.dataplane import (
    DataPlane,
    InferRequest,
    InferResult,
    _routing_key,
    scorer_limits,
)
from riskserve.errors import RiskserveError
from riskserve.monitoring import Metrics
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.protocol import FLAGGED_NAME, OUTPUT_NAME
from riskserve.registry import ModelRepository
from riskserve.routing import Deployment, RoutingTable
from riskserve.runtime.loaded import LoadedModel, VersionFiles, open_model, read_version
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of
from riskserve.transport.codec import Bounds, Codec, encode_response

pytestmark = [pytest.mark.unit, pytest.mark.timeout(300)]

LIMITS = LimitsSettings()
MAX_ROWS = 3_000
#: Rows the tests let the Scorer score inline (the server's is smaller).
INLINE = MAX_ROWS
VARIANT, REVISION = "v1", "7"
SMALL_LIMITS = (64, 64, 64, 64, 64)
Scores = npt.NDArray[np.float32]


# -- the model and the two paths ----------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> VersionFiles:
    d = tmp_path_factory.mktemp("fastpath")
    run_datagen(3_000, 21, d / "train.parquet")
    res = train_model(d / "train.parquet", d / "models", rounds=30, seed=2)
    return read_version(ModelRepository(d / "models"), res.ref)


def load(files: VersionFiles) -> LoadedModel:
    """A new LoadedModel of the version (its own drift monitor), in this process."""
    model = open_model(files, drift_slots=60, drift_slot_seconds=60)
    assert model.drift is not None
    return model


class Paths(NamedTuple):
    """One model loaded twice: `fast` is scored by `scorer`, `slow` by the Python
    path (`plane` is only used for its request checks)."""

    fast: LoadedModel
    slow: LoadedModel
    scorer: Scorer
    plane: DataPlane
    codec: Codec


def make_scorer(model: LoadedModel, files: VersionFiles, max_rows: int = MAX_ROWS) -> Scorer:
    return Scorer(
        model.pipeline,
        Gbdt(files.contents["model.txt"].decode()),
        model.drift,
        scorer_limits(LIMITS),
        max_rows,
    )


@pytest.fixture
def paths(files: VersionFiles) -> Iterator[Paths]:
    fast, slow = load(files), load(files)
    dep = Deployment(slow.name, MappingProxyType({slow.version: slow}), slow.version)
    table = RoutingTable(MappingProxyType({slow.name: dep}))
    plane = DataPlane(
        ScoringSettings(max_request_rows=MAX_ROWS),
        BatchingSettings(),
        table,
        Metrics(CollectorRegistry()),
    )
    yield Paths(fast, slow, make_scorer(fast, files), plane, Codec(Bounds(LIMITS)))
    plane.close()


def counts(model: LoadedModel) -> npt.NDArray[np.uint64]:
    assert model.drift is not None
    return model.drift.counts()


class PythonResult(NamedTuple):
    request: InferRequest
    columns: dict[str, Any]
    rows: int
    scores: Scores
    reply: pb.ModelInferResponse


def python_path(p: Paths, data: bytes, threshold: float) -> PythonResult:
    """The Python path: decode, the data plane's checks, score, encode. Raises
    what it raises for a request it refuses."""
    req = p.codec.decode(data)
    _routing_key(req)
    columns, rows = p.plane._columns(p.slow, req)
    scores = p.slow.score(columns)
    outputs = tuple(req.requested_outputs) or (OUTPUT_NAME,)
    result = InferResult(
        model_name=p.slow.name,
        model_version=str(p.slow.version),
        id=req.id,
        probability=scores,
        parameters={"variant": VARIANT, "deployment_revision": REVISION},
        flagged=scores >= threshold if FLAGGED_NAME in outputs else None,
        outputs=outputs,
    )
    return PythonResult(req, columns, rows, scores, encode_response(result))


def fast_infer(
    p: Paths, data: bytes, threshold: float, request_id: str = "req-1", stream: bool = False
) -> tuple[bytes, Scores, int, int] | None:
    return p.scorer.infer(
        data,
        p.fast.name,
        str(p.fast.version),
        request_id,
        VARIANT,
        REVISION,
        threshold,
        INLINE,
        stream,
    )


# -- requests -----------------------------------------------------------------------------


def datatypes(model: LoadedModel) -> dict[str, str]:
    return {i.name: i.datatype for i in model.inputs}


def raw_columns(model: LoadedModel, rows: int, seed: int) -> dict[str, Any]:
    """Generated rows with missing numbers (NaN), unseen categories, empty strings
    and None (sent as empty) mixed in."""
    cols = columns_of(generate(rows, seed), [i.name for i in model.inputs])
    rng = np.random.default_rng(seed)
    for info in model.inputs:
        col = cols[info.name]
        hit = rng.random(rows) < 0.08
        if info.dtype == "float":
            col[hit] = np.nan
        elif info.dtype == "string":
            for i in np.flatnonzero(hit):
                col[i] = ("", None, f"unseen-{i}", "ünïcode-😀")[i % 4]
    return cols


def request(
    model: LoadedModel,
    rows: int = 3,
    seed: int = 5,
    request_id: str = "req-1",
    outputs: tuple[str, ...] = (),
    parameters: dict[str, str] | None = None,
) -> pb.ModelInferRequest:
    req = build_request(
        model.name,
        raw_columns(model, rows, seed),
        datatypes(model),
        request_id=request_id,
        parameters=parameters,
    )
    for name in outputs:
        req.outputs.add(name=name)
    return req


def index_of(req: pb.ModelInferRequest, datatype: str) -> int:
    return next(i for i, t in enumerate(req.inputs) if t.datatype == datatype)


# -- scores and replies -------------------------------------------------------------------


def test_scores_and_replies_equal_the_python_paths(paths: Paths) -> None:
    threshold = 0.1
    req = request(paths.fast, rows=2_500, seed=7, outputs=(FLAGGED_NAME, OUTPUT_NAME))
    data = req.SerializeToString()
    want = python_path(paths, data, threshold)
    got = fast_infer(paths, data, threshold)
    assert got is not None
    reply, scores, input_ns, infer_ns = got
    assert scores.dtype == np.float32 and scores.shape == (2_500,)
    assert np.array_equal(scores.view(np.uint32), want.scores.view(np.uint32))
    assert 0 < want.scores.min() < threshold < want.scores.max()  # both flags occur
    assert pb.ModelInferResponse.FromString(reply) == want.reply
    assert input_ns > 0 and infer_ns > 0
    # The same scores without a reply.
    alone = paths.scorer.score_request(data)
    assert alone is not None and np.array_equal(alone, scores)


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("outputs", [(), (OUTPUT_NAME,), (FLAGGED_NAME,)])
def test_small_requests_and_their_outputs(
    paths: Paths, rows: int, outputs: tuple[str, ...]
) -> None:
    data = request(paths.fast, rows=rows, seed=rows, outputs=outputs).SerializeToString()
    want = python_path(paths, data, 0.2)
    got = fast_infer(paths, data, 0.2)
    assert got is not None
    assert np.array_equal(got[1], want.scores)
    assert pb.ModelInferResponse.FromString(got[0]) == want.reply
    assert [o.name for o in want.reply.outputs] == list(outputs or (OUTPUT_NAME,))


def test_stream_replies_wrap_the_reply(paths: Paths) -> None:
    data = request(paths.fast, rows=4, outputs=(FLAGGED_NAME,)).SerializeToString()
    want = python_path(paths, data, 0.3)
    got = fast_infer(paths, data, 0.3, stream=True)
    assert got is not None
    msg = pb.ModelStreamInferResponse.FromString(got[0])
    assert msg.error_message == ""
    assert msg.infer_response == want.reply


def test_flagged_compares_in_float32(paths: Paths) -> None:
    """A threshold just above a score as float64 is that score as float32: NumPy 2
    flags the row (`probs >= threshold`), and so must the native path."""
    data = request(paths.fast, rows=200, seed=3, outputs=(FLAGGED_NAME,)).SerializeToString()
    scores = paths.scorer.score_request(data)
    assert scores is not None
    k = int(np.argsort(scores)[100])
    threshold = float(np.nextafter(np.float64(scores[k]), np.inf))
    assert threshold > float(scores[k]) and np.float32(threshold) == scores[k]
    got = fast_infer(paths, data, threshold)
    assert got is not None
    flagged = np.frombuffer(pb.ModelInferResponse.FromString(got[0]).raw_output_contents[0], "?")
    assert flagged[k]
    np.testing.assert_array_equal(flagged, scores >= threshold)


def test_unaligned_raw_contents_are_read(paths: Paths) -> None:
    """Raw contents sit at any offset inside the request bytes: a 1-byte id shifts
    every FP64 and INT64 tensor off 8-byte alignment."""
    for rid in ("a", "ab", "abc"):
        data = request(paths.fast, rows=5, request_id=rid).SerializeToString()
        got = fast_infer(paths, data, 0.5, request_id=rid)
        assert got is not None
        assert np.array_equal(got[1], python_path(paths, data, 0.5).scores)


def test_inputs_in_any_order(paths: Paths) -> None:
    req = request(paths.fast, rows=6, seed=8)
    order = list(reversed(range(len(req.inputs))))
    order[0], order[5] = order[5], order[0]
    shuffled = pb.ModelInferRequest(model_name=req.model_name, id=req.id)
    for i in order:
        shuffled.inputs.add().CopyFrom(req.inputs[i])
        shuffled.raw_input_contents.append(req.raw_input_contents[i])
    data = shuffled.SerializeToString()
    got = fast_infer(paths, data, 0.5)
    assert got is not None
    assert np.array_equal(got[1], python_path(paths, data, 0.5).scores)
    assert np.array_equal(got[1], python_path(paths, req.SerializeToString(), 0.5).scores)


def test_a_routing_key_is_accepted(paths: Paths) -> None:
    data = request(paths.fast, parameters={"routing_key": "customer-9"}).SerializeToString()
    got = fast_infer(paths, data, 0.5)
    assert got is not None
    assert np.array_equal(got[1], python_path(paths, data, 0.5).scores)


def test_inline_rows_are_bounded(paths: Paths) -> None:
    data = request(paths.fast, rows=65).SerializeToString()
    before = counts(paths.fast)
    common = (paths.fast.name, "1", "r", VARIANT, REVISION, 0.5)
    assert paths.scorer.infer(data, *common, 64) is None
    assert paths.scorer.infer(data, *common, 65) is not None
    assert counts(paths.fast).sum() > before.sum()


# -- drift --------------------------------------------------------------------------------


def test_drift_counts_equal_the_python_paths(paths: Paths) -> None:
    """Sizes on both sides of the drift monitor's sparse batch path (64 values)."""
    sizes = [1, 1, 2, 3, 64, 65, 500, 1, 7]
    for i, rows in enumerate(sizes):
        data = request(paths.fast, rows=rows, seed=100 + i).SerializeToString()
        assert fast_infer(paths, data, 0.5) is not None
        python_path(paths, data, 0.5)
    fast, slow = counts(paths.fast), counts(paths.slow)
    assert fast.sum() > 0
    np.testing.assert_array_equal(fast, slow)
    assert paths.fast.drift is not None and paths.slow.drift is not None
    np.testing.assert_array_equal(
        paths.fast.drift.counts("sliding"), paths.slow.drift.counts("sliding")
    )
    # Each row counts once per input and once for its score.
    assert fast.sum() == sum(sizes) * (len(paths.fast.inputs) + 1)


def test_the_scorer_counts_in_the_models_own_monitor(paths: Paths, files: VersionFiles) -> None:
    """No drift monitor: nothing is counted anywhere; a monitor for another spec
    or a model for other features is refused."""
    bare = Scorer(
        paths.fast.pipeline, Gbdt(files.contents["model.txt"].decode()), None, (64,) * 5, 10
    )
    before = counts(paths.fast)
    data = request(paths.fast).SerializeToString()
    out = bare.score_request(data)
    assert out is not None and out.shape == (3,)
    np.testing.assert_array_equal(counts(paths.fast), before)
    spec = (
        '{"inputs": [{"name": "x", "dtype": "float"}], "transforms": [{"type": "numeric", '
        '"input": "x", "missing": {"strategy": "constant", "value": 0}}]}'
    )
    model = Gbdt(files.contents["model.txt"].decode())
    with pytest.raises(ValueError, match="features"):
        Scorer(FeaturePipeline(spec), model, None, SMALL_LIMITS, 10)
    other = DriftMonitor(
        files.spec_json.replace('"amount"', '"amount2"'), 60, 60
    )  # same bins, other input names
    with pytest.raises(ValueError, match="other inputs"):
        Scorer(paths.fast.pipeline, model, other, SMALL_LIMITS, 10)


# -- what the native path does not take ---------------------------------------------------


Edit = Callable[[pb.ModelInferRequest], None]


def _set_shape(i: int, shape: list[int]) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        del r.inputs[i].shape[:]
        r.inputs[i].shape.extend(shape)

    return edit


def _set_raw(i: int, change: Callable[[bytes], bytes]) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        r.raw_input_contents[i] = change(r.raw_input_contents[i])

    return edit


def _set_fp64(value: float) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        i = index_of(r, "FP64")
        r.raw_input_contents[i] = struct.pack("<d", value) + r.raw_input_contents[i][8:]

    return edit


def _typed_everywhere(r: pb.ModelInferRequest) -> None:
    for t, raw in zip(r.inputs, r.raw_input_contents, strict=True):
        if t.datatype == "BYTES":
            out, pos = [], 0
            for _ in range(t.shape[0]):
                (k,) = struct.unpack_from("<I", raw, pos)
                out.append(raw[pos + 4 : pos + 4 + k])
                pos += 4 + k
            t.contents.bytes_contents.extend(out)
        elif t.datatype == "FP64":
            t.contents.fp64_contents.extend(np.frombuffer(raw, "<f8").tolist())
        elif t.datatype == "INT64":
            t.contents.int64_contents.extend(np.frombuffer(raw, "<i8").tolist())
        else:
            t.contents.bool_contents.extend(np.frombuffer(raw, "?").tolist())
    del r.raw_input_contents[:]


def _duplicate_input(r: pb.ModelInferRequest) -> None:
    r.inputs.add().CopyFrom(r.inputs[0])
    r.raw_input_contents.append(r.raw_input_contents[0])


def _drop_input(r: pb.ModelInferRequest) -> None:
    del r.inputs[0]
    del r.raw_input_contents[0]


def _unknown_input(r: pb.ModelInferRequest) -> None:
    r.inputs.add(name="bogus", datatype="FP64", shape=[3])
    r.raw_input_contents.append(bytes(24))


def _batch_mismatch(r: pb.ModelInferRequest) -> None:
    i = index_of(r, "FP64")
    r.inputs[i].shape[0] = 2
    r.raw_input_contents[i] = r.raw_input_contents[i][:16]


def _rows_zero(r: pb.ModelInferRequest) -> None:
    for t in r.inputs:
        t.shape[0] = 0
    for i in range(len(r.raw_input_contents)):
        r.raw_input_contents[i] = b""


def _bad_utf8(r: pb.ModelInferRequest) -> None:
    """An unseen value that is not UTF-8, in a hashed input: the transform refuses it."""
    i = next(i for i, t in enumerate(r.inputs) if t.name == "email_domain")
    r.raw_input_contents[i] = pack_bytes([b"\xff\xfe", b"a.com", b""])


def _long(field: str, n: int) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        setattr(r, field, "x" * n)

    return edit


def _param(key: str, kind: str, value: Any) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        setattr(r.parameters[key], kind, value)

    return edit


def _output(*names: str) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        for n in names:
            r.outputs.add(name=n)

    return edit


def _datatype(dtype: str, to: str) -> Edit:
    def edit(r: pb.ModelInferRequest) -> None:
        r.inputs[index_of(r, dtype)].datatype = to

    return edit


def _tensor_parameter(r: pb.ModelInferRequest) -> None:
    r.inputs[0].parameters["binary_data_size"].int64_param = 24


def _mixed(r: pb.ModelInferRequest) -> None:
    r.inputs[0].contents.fp64_contents.extend([1.0, 2.0, 3.0])


#: name → (edit, whether the Python path refuses it: else it is only not plain).
EDITS: dict[str, tuple[Edit, bool]] = {
    "unknown input": (_unknown_input, True),
    "missing input": (_drop_input, True),
    "duplicate input": (_duplicate_input, True),
    "FP64 sent as INT64": (_datatype("FP64", "INT64"), True),
    "INT64 sent as FP64": (_datatype("INT64", "FP64"), True),
    "FP64 sent as FP32": (_datatype("FP64", "FP32"), True),
    "BOOL sent as UINT8": (_datatype("BOOL", "UINT8"), True),
    "BYTES sent as BOOL": (_datatype("BYTES", "BOOL"), True),
    "shape [rows, 2]": (_set_shape(0, [3, 2]), True),
    "shape [1, rows]": (_set_shape(0, [1, 3]), True),
    "shape []": (_set_shape(0, []), True),
    "shape [rows, 1, 1]": (_set_shape(0, [3, 1, 1]), True),
    "shape of 9 dims": (_set_shape(0, [3] + [1] * 8), True),
    "negative rows": (_set_shape(0, [-3]), True),
    "rows 0": (_rows_zero, True),
    "mismatched batch": (_batch_mismatch, True),
    "raw size short": (_set_raw(0, lambda b: b[:-1]), True),
    "raw size long": (_set_raw(0, lambda b: b + b"\0"), True),
    "bad BOOL byte": (lambda r: _set_raw(index_of(r, "BOOL"), lambda b: b"\x02" + b[1:])(r), True),
    "truncated packed BYTES": (
        lambda r: _set_raw(index_of(r, "BYTES"), lambda b: b[:-1] + b"\x00\x00")(r),
        True,
    ),
    "packed BYTES, one element more": (
        lambda r: _set_raw(index_of(r, "BYTES"), lambda b: b + pack_bytes(["x"]))(r),
        True,
    ),
    "+inf": (_set_fp64(float("inf")), True),
    "-inf": (_set_fp64(float("-inf")), True),
    "invalid UTF-8 in an unseen category": (_bad_utf8, True),
    "typed contents": (_typed_everywhere, False),
    "mixed raw and typed": (_mixed, True),
    "raw for one input fewer": (lambda r: r.raw_input_contents.pop(), True),
    "unknown output": (_output("score"), True),
    "duplicate output": (_output(OUTPUT_NAME, OUTPUT_NAME), True),
    "three outputs": (_output(OUTPUT_NAME, FLAGGED_NAME, OUTPUT_NAME), True),
    "extra parameter": (_param("priority", "string_param", "high"), False),
    "int routing_key": (_param("routing_key", "int64_param", 5), True),
    "empty routing_key": (_param("routing_key", "string_param", ""), True),
    "routing_key too long": (_param("routing_key", "string_param", "k" * 257), True),
    "tensor parameter": (_tensor_parameter, False),
    "model name too long": (_long("model_name", 257), True),
    "model version too long": (_long("model_version", 257), True),
    "id too long": (_long("id", 257), True),
    "output name too long": (_output("o" * 257), True),
}


def _check_declined(p: Paths, data: bytes, python_refuses: bool) -> None:
    before_fast, before_slow = counts(p.fast), counts(p.slow)
    assert fast_infer(p, data, 0.5) is None
    assert p.scorer.score_request(data) is None
    np.testing.assert_array_equal(counts(p.fast), before_fast)
    try:
        python_path(p, data, 0.5)
    except (RiskserveError, InputError):
        refused = True
    else:
        refused = False
    assert refused is python_refuses
    if refused:
        np.testing.assert_array_equal(counts(p.slow), before_slow)


@pytest.mark.parametrize("case", sorted(EDITS))
def test_what_the_native_path_declines(paths: Paths, case: str) -> None:
    edit, python_refuses = EDITS[case]
    req = request(paths.fast)
    python_path(paths, req.SerializeToString(), 0.5)  # the unedited request scores
    edit(req)
    _check_declined(paths, req.SerializeToString(), python_refuses)


def test_rows_over_the_limit_are_declined(paths: Paths) -> None:
    data = request(paths.fast, rows=MAX_ROWS + 1).SerializeToString()
    _check_declined(paths, data, True)
    at_limit = request(paths.fast, rows=MAX_ROWS).SerializeToString()
    assert fast_infer(paths, at_limit, 0.5) is not None


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0f", b"garbage!" * 4],
    ids=["varint", "short field", "wire type 7", "text"],
)
def test_bytes_that_do_not_decode(paths: Paths, data: bytes) -> None:
    _check_declined(paths, data, True)


def test_truncated_requests(paths: Paths) -> None:
    data = request(paths.fast).SerializeToString()
    # Every prefix lacks at least the last raw content: the Python path refuses it
    # whether or not the cut falls on a field boundary (where the bytes decode).
    for n in (1, 2, 7, 40, len(data) // 2, len(data) - 1):
        _check_declined(paths, data[:n], True)


def test_mutated_bytes_agree_with_the_python_path(paths: Paths) -> None:
    """Random byte edits of a valid request (flips, cuts, insertions): whenever the
    native path scores the result, the Python path scores it the same, reply and
    all; whenever the Python path refuses it, the native path declined it."""
    rng = random.Random(13)
    base = request(paths.fast, rows=2, seed=31, outputs=(FLAGGED_NAME,)).SerializeToString()
    outcomes = {"both scored": 0, "both refused": 0, "only Python scored": 0}
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.choice((1, 1, 2, 3))):
            at = rng.randrange(len(data))
            how = rng.random()
            if how < 0.6:
                data[at] ^= 1 << rng.randrange(8)
            elif how < 0.8:
                del data[at]
            else:
                data.insert(at, rng.randrange(256))
        blob = bytes(data)
        try:
            want = python_path(paths, blob, 0.5)
        except (RiskserveError, InputError):
            assert fast_infer(paths, blob, 0.5) is None, blob
            outcomes["both refused"] += 1
            continue
        got = fast_infer(paths, blob, 0.5, request_id=want.request.id)
        if got is None:
            outcomes["only Python scored"] += 1
            continue
        assert np.array_equal(got[1].view(np.uint32), want.scores.view(np.uint32))
        assert pb.ModelInferResponse.FromString(got[0]) == want.reply
        outcomes["both scored"] += 1
    print(outcomes)
    assert outcomes["both scored"] > 0 and outcomes["both refused"] > 0


# -- the prediction log's rows ------------------------------------------------------------


def test_request_rows_json_equals_rows_json_of_the_decoded_columns(paths: Paths) -> None:
    data = request(paths.fast, rows=300, seed=9).SerializeToString()
    want = python_path(paths, data, 0.5)
    assert request_rows_json(data, 300) == rows_json(want.columns, want.rows)
    with pytest.raises(InputError, match="300"):
        request_rows_json(data, 299)
    with pytest.raises(InputError, match="not a plain raw request"):
        request_rows_json(b"\x0f", 1)
    typed = request(paths.fast)
    _typed_everywhere(typed)
    with pytest.raises(InputError, match="not a plain raw request"):
        request_rows_json(typed.SerializeToString(), 3)


# -- peek_request -------------------------------------------------------------------------


def peek(data: bytes) -> tuple[str, str, str, str | None] | None:
    return peek_request(
        data, LIMITS.max_name_bytes, LIMITS.max_routing_key_bytes, LIMITS.max_parameters
    )


def test_peek_reads_the_request_level_fields(paths: Paths) -> None:
    req = request(paths.fast, request_id="r-9")
    req.model_version = "1"
    assert peek(req.SerializeToString()) == (paths.fast.name, "1", "r-9", None)
    req.parameters["routing_key"].string_param = "cust-é"
    assert peek(req.SerializeToString()) == (paths.fast.name, "1", "r-9", "cust-é")
    assert peek(pb.ModelInferRequest().SerializeToString()) == ("", "", "", None)


@pytest.mark.parametrize(
    "case",
    [
        "extra parameter",
        "int routing_key",
        "empty routing_key",
        "routing_key too long",
        "model name too long",
        "model version too long",
        "id too long",
    ],
)
def test_peek_declines_what_is_not_plain(paths: Paths, case: str) -> None:
    req = request(paths.fast)
    EDITS[case][0](req)
    assert peek(req.SerializeToString()) is None


def test_peek_validates_the_whole_message(paths: Paths) -> None:
    data = request(paths.fast).SerializeToString()
    assert peek(data) is not None
    assert peek(data[:-1]) is None
    assert peek(data + b"\x0f") is None
    # A malformed input deep inside: its datatype is not UTF-8.
    req = request(paths.fast)
    req.inputs[3].datatype = "FP64"
    bad = req.SerializeToString().replace(b"\x12\x04FP64", b"\x12\x04\xff\xfe64", 1)
    assert peek(bad) is None
    many = request(paths.fast)
    for k in range(LIMITS.max_parameters + 1):
        many.parameters[f"p{k}"].bool_param = True
    assert peek(many.SerializeToString()) is None
    assert peek_request(data, 2, 256, 64) is None  # the model name is over 2 bytes


# -- per-call times (printed) -------------------------------------------------------------


def test_print_per_call_times(paths: Paths) -> None:
    """Scorer.infer against the Python path it replaces (decode, checks, score,
    encode and serialize the reply), same process, same requests."""
    for rows in (1, 64):
        data = request(paths.fast, rows=rows, seed=rows).SerializeToString()

        def fast(data: bytes = data) -> None:
            fast_infer(paths, data, 0.5)

        def slow(data: bytes = data) -> None:
            python_path(paths, data, 0.5).reply.SerializeToString()

        n = 2_000 if rows == 1 else 500
        t_fast = min(timeit.repeat(fast, number=n, repeat=5)) / n
        t_slow = min(timeit.repeat(slow, number=n, repeat=5)) / n
        print(
            f"\n{rows:>3} rows: Scorer.infer {t_fast * 1e6:8.1f} µs, Python path "
            f"{t_slow * 1e6:8.1f} µs, {t_slow / t_fast:5.1f}x"
        )
    data = request(paths.fast, rows=1).SerializeToString()
    caps = (LIMITS.max_name_bytes, LIMITS.max_routing_key_bytes, LIMITS.max_parameters)
    n = 20_000
    t_peek = min(timeit.repeat(lambda: peek_request(data, *caps), number=n, repeat=5)) / n
    print(f"peek_request ({len(paths.fast.inputs)} inputs, 1 row): {t_peek * 1e9:.0f} ns")


def test_threads_share_one_scorer(paths: Paths) -> None:
    """The GIL is released: threads scoring at once get the same scores, and every
    call is counted."""
    data = request(paths.fast, rows=32, seed=77).SerializeToString()
    want = paths.scorer.score_request(data)
    before = counts(paths.fast).sum()

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(paths.scorer.score_request, [data] * 64))
    for g in got:
        assert g is not None and want is not None
        assert np.array_equal(g, want)
    per_call = 32 * (len(paths.fast.inputs) + 1)
    assert counts(paths.fast).sum() - before == 64 * per_call
