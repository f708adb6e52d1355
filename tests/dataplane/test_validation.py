"""The data plane's request rules, in process: a real DataPlane around a model
trained here, fed decoded InferRequests. Every rule that refuses a request is
checked for its error type, its transport-neutral code and its message, and the
valid request next to it is checked to score."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from conftest import train_model
from prometheus_client import CollectorRegistry

from riskserve.client import pack_bytes
from riskserve.config import BatchingSettings, ScoringSettings
from riskserve.dataplane import DataPlane, InferInput, InferRequest, InferResult
from riskserve.errors import Code, DeadlineExceeded, InvalidInput, Overloaded, RiskserveError
from riskserve.monitoring import Metrics
from riskserve.registry import ModelRepository
from riskserve.routing import Deployment, RoutingTable
from riskserve.runtime import LoadedModel, load_version
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(120)

ROWS = 3
FIRST = "amount"  # the spec's first input, FP64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = tmp_path_factory.mktemp("dataplane")
    run_datagen(2000, 5, d / "train.parquet")
    res = train_model(d / "train.parquet", d / "models", rounds=10)
    return load_version(ModelRepository(d / "models"), res.ref, drift_slots=0)


def table_of(model: LoadedModel) -> RoutingTable:
    dep = Deployment(model.name, MappingProxyType({model.version: model}), model.version)
    return RoutingTable(MappingProxyType({model.name: dep}))


@pytest.fixture
def plane(model: LoadedModel) -> Iterator[DataPlane]:
    dp = make_plane(model)
    yield dp
    dp.close()


def make_plane(model: LoadedModel, **scoring: Any) -> DataPlane:
    return DataPlane(
        ScoringSettings(**scoring),
        BatchingSettings(),
        table_of(model),
        Metrics(CollectorRegistry()),
    )


def inputs(model: LoadedModel, rows: int = ROWS, seed: int = 11) -> list[InferInput]:
    """One valid input tensor per model input, as the transport decodes them."""
    cols = columns_of(generate(rows, seed), [i.name for i in model.inputs])
    out = []
    for info in model.inputs:
        col = cols[info.name]
        data = pack_bytes(col) if info.datatype == "BYTES" else np.ascontiguousarray(col)
        out.append(InferInput(info.name, info.datatype, (rows,), data))
    return out


def request(
    model: LoadedModel,
    tensors: Sequence[InferInput] | None = None,
    **fields: Any,
) -> InferRequest:
    return InferRequest(
        model_name=model.name,
        model_version="",
        id="req-1",
        inputs=list(inputs(model) if tensors is None else tensors),
        **fields,
    )


def infer(plane: DataPlane, req: InferRequest) -> InferResult:
    return asyncio.run(plane.infer(req))


def refused(plane: DataPlane, req: InferRequest) -> RiskserveError:
    with pytest.raises(RiskserveError) as e:
        infer(plane, req)
    return e.value


def invalid(plane: DataPlane, req: InferRequest) -> str:
    """The INVALID_ARGUMENT message the data plane refuses `req` with."""
    err = refused(plane, req)
    assert isinstance(err, InvalidInput), repr(err)
    assert err.code is Code.INVALID_ARGUMENT
    return err.message


def replaced(tensors: list[InferInput], name: str, **changes: Any) -> list[InferInput]:
    return [t._replace(**changes) if t.name == name else t for t in tensors]


# -- the valid request ------------------------------------------------------------------


def test_a_valid_request_scores(plane: DataPlane, model: LoadedModel) -> None:
    res = infer(plane, request(model, requested_outputs=["probability"]))
    assert res.model_name == model.name and res.model_version == str(model.version)
    assert res.id == "req-1"
    assert res.probability.shape == (ROWS,) and res.probability.dtype == np.float32
    assert np.all((res.probability >= 0) & (res.probability <= 1))
    assert res.parameters == {"variant": f"v{model.version}", "deployment_revision": "1"}
    # [batch, 1] is the same as [batch]; so is a list of byte strings for BYTES.
    tensors = [t._replace(shape=(ROWS, 1)) for t in inputs(model)]
    tensors = replaced(tensors, "currency", data=[b"EUR", b"USD", b""])
    assert infer(plane, request(model, tensors)).probability.shape == (ROWS,)


# -- inputs -------------------------------------------------------------------------------


def test_unknown_input(plane: DataPlane, model: LoadedModel) -> None:
    extra = InferInput("nonsense", "FP64", (ROWS,), np.zeros(ROWS))
    msg = invalid(plane, request(model, [*inputs(model), extra]))
    assert msg == f"unexpected input 'nonsense': model {model.name!r} has no such input"


def test_duplicate_input(plane: DataPlane, model: LoadedModel) -> None:
    tensors = inputs(model)
    msg = invalid(plane, request(model, [*tensors, tensors[0]]))
    assert msg == f"input {FIRST!r} appears more than once"


def test_wrong_datatype(plane: DataPlane, model: LoadedModel) -> None:
    tensors = replaced(inputs(model), FIRST, datatype="FP32", data=np.zeros(ROWS, np.float32))
    msg = invalid(plane, request(model, tensors))
    assert msg == f"input {FIRST!r} must have datatype FP64, got FP32"


@pytest.mark.parametrize("shape", [(ROWS, 2), (1, ROWS), (ROWS, 1, 1), ()])
def test_bad_shape(plane: DataPlane, model: LoadedModel, shape: tuple[int, ...]) -> None:
    msg = invalid(plane, request(model, replaced(inputs(model), FIRST, shape=shape)))
    assert msg == f"input {FIRST!r} must have shape [batch] or [batch, 1], got {list(shape)}"


def test_empty_batch(plane: DataPlane, model: LoadedModel) -> None:
    tensors = replaced(inputs(model), FIRST, shape=(0,), data=np.zeros(0))
    msg = invalid(plane, request(model, tensors))
    assert msg == f"input {FIRST!r} has batch size 0; it must be >= 1"


def test_batch_size_mismatch(plane: DataPlane, model: LoadedModel) -> None:
    tensors = inputs(model)
    second = tensors[1].name
    more = inputs(model, rows=ROWS + 1)[1]
    msg = invalid(plane, request(model, [tensors[0], more, *tensors[2:]]))
    assert msg == f"input {second!r} has batch size {ROWS + 1}, other inputs have {ROWS}"


def test_rows_over_the_limit(model: LoadedModel) -> None:
    dp = make_plane(model, max_request_rows=ROWS - 1)
    try:
        msg = invalid(dp, request(model))
        assert msg == f"input {FIRST!r} has {ROWS} rows; the limit is {ROWS - 1}"
    finally:
        dp.close()
    at_limit = make_plane(model, max_request_rows=ROWS)
    try:
        assert infer(at_limit, request(model)).probability.shape == (ROWS,)
    finally:
        at_limit.close()


def test_element_count_mismatch(plane: DataPlane, model: LoadedModel) -> None:
    short = replaced(inputs(model), FIRST, data=np.zeros(ROWS - 1))
    msg = invalid(plane, request(model, short))
    assert msg == f"input {FIRST!r} holds {ROWS - 1} elements but its shape [{ROWS}] says {ROWS}"
    # Packed BYTES count their elements too, and a torn buffer is refused.
    packed = replaced(inputs(model), "currency", data=pack_bytes(["EUR"] * (ROWS + 1)))
    msg = invalid(plane, request(model, packed))
    assert msg == f"input 'currency' holds {ROWS + 1} elements but its shape [{ROWS}] says {ROWS}"
    torn = replaced(inputs(model), "currency", data=pack_bytes(["EUR"] * ROWS)[:-2])
    msg = invalid(plane, request(model, torn))
    assert msg.startswith("input 'currency': ")


def test_missing_input(plane: DataPlane, model: LoadedModel) -> None:
    tensors = inputs(model)
    first, second = tensors[0].name, tensors[1].name
    assert invalid(plane, request(model, tensors[1:])) == f"missing input {first!r}"
    msg = invalid(plane, request(model, tensors[2:]))
    assert msg == f"missing input {first!r} (and 1 more)"
    assert second != first


def test_unknown_requested_output(plane: DataPlane, model: LoadedModel) -> None:
    msg = invalid(plane, request(model, requested_outputs=["probability", "score"]))
    assert msg == "unknown output 'score'; this model outputs 'probability' and 'flagged'"
    msg = invalid(plane, request(model, requested_outputs=["flagged", "flagged"]))
    assert msg == "an output is requested more than once"


def test_flagged_output_is_the_decision_at_the_threshold(
    plane: DataPlane, model: LoadedModel
) -> None:
    res = infer(plane, request(model, requested_outputs=["flagged", "probability"]))
    assert res.outputs == ("flagged", "probability")
    assert res.flagged is not None
    np.testing.assert_array_equal(res.flagged, res.probability >= model.threshold)
    plain = infer(plane, request(model))
    assert plain.outputs == ("probability",) and plain.flagged is None
    assert plain.id  # a server-made id when the request carried none


@pytest.mark.parametrize("key", ["", 7, b"abc", ["a"]])
def test_bad_routing_key(plane: DataPlane, model: LoadedModel, key: Any) -> None:
    msg = invalid(plane, request(model, parameters={"routing_key": key}))
    assert msg == "parameter 'routing_key' must be a non-empty string"


def test_a_routing_key_is_accepted(plane: DataPlane, model: LoadedModel) -> None:
    res = infer(plane, request(model, parameters={"routing_key": "card-42"}))
    assert res.probability.shape == (ROWS,)


# -- deadline and admission ----------------------------------------------------------------


@pytest.mark.parametrize("left", [0.0, -0.5])
def test_deadline_already_passed(plane: DataPlane, model: LoadedModel, left: float) -> None:
    err = refused(plane, request(model, time_remaining=left))
    assert isinstance(err, DeadlineExceeded) and err.code is Code.DEADLINE_EXCEEDED
    assert err.message == "the request's deadline passed before it was scored"
    assert infer(plane, request(model, time_remaining=30.0)).probability.shape == (ROWS,)


def test_admission_bound(model: LoadedModel) -> None:
    dp = make_plane(model, max_inflight=1)

    async def two_at_once() -> list[Any]:
        # The first holds the one slot while it waits for its batch; the second
        # arrives meanwhile.
        return await asyncio.gather(
            dp.infer(request(model)), dp.infer(request(model)), return_exceptions=True
        )

    try:
        first, second = asyncio.run(two_at_once())
        assert isinstance(first, InferResult), repr(first)
        assert isinstance(second, Overloaded), repr(second)
        assert second.code is Code.RESOURCE_EXHAUSTED
        assert second.message == "server is at its admission bound of 1 requests"
        # The slot is free again once the first finished.
        assert infer(dp, request(model)).probability.shape == (ROWS,)
    finally:
        dp.close()
