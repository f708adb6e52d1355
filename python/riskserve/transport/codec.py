"""Open Inference Protocol protobuf ⇄ data-plane types. Raw contents go straight
from bytes to numpy with np.frombuffer; BYTES stay packed and are parsed in Rust;
replies are encoded as raw little-endian bytes, never Python lists.

One parser decides whether request bytes decode: the Rust reader
(riskserve._native.parse_infer_request) accepts exactly what protobuf accepts;
the generated code only builds typed `contents` it has already passed. Every
request is then held to `settings.limits` (`Bounds`), whichever path read it.
The reader also notes the first input holding ±inf (InferRequest.infinite_input);
the data plane refuses it once the request is otherwise valid."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from riskserve._native import InputError, parse_infer_request
from riskserve.config import LimitsSettings, setting
from riskserve.dataplane import InferInput, InferRequest, InferResult, TensorData, shown
from riskserve.errors import InvalidInput
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.protocol import CONTENTS_FIELD, FLAGGED_NAME, NUMPY_DTYPE, OUTPUT_NAME

if TYPE_CHECKING:
    from riskserve._native import _WireRequest

#: Dimensions an input's shape may have (riskserve models take [batch] or
#: [batch, 1]; a few more are read so the data plane can say what it got).
MAX_DIMS = 8

_OUTPUT_TENSOR = pb.ModelInferResponse.InferOutputTensor(
    name=OUTPUT_NAME, datatype="FP32", shape=[0]
)
_FLAGGED_TENSOR = pb.ModelInferResponse.InferOutputTensor(
    name=FLAGGED_NAME, datatype="BOOL", shape=[0]
)
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_NAME = operator.itemgetter(0)  # InferInput.name


class RequestRefused(InvalidInput):
    """A request refused while it was decoded or checked against the limits.
    `model_name`, `model_version` and `request_id` are what could be read (and are
    within the limits), for metrics and stream replies; model_name is None when the
    bytes do not decode at all."""

    def __init__(
        self,
        message: str,
        model_name: str | None = None,
        model_version: str = "",
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.model_name = model_name
        self.model_version = model_version
        self.request_id = request_id


class Bounds:
    """`settings.limits` applied to request fields: each check raises
    InvalidInput naming the field, its size, the limit and its variable."""

    def __init__(self, limits: LimitsSettings) -> None:
        self.limits = limits
        self.max_name = limits.max_name_bytes
        self.max_key = limits.max_routing_key_bytes
        self.max_param = limits.max_parameter_bytes

    @staticmethod
    def size_over(text: str, limit: int) -> int | None:
        """The UTF-8 size of `text` when it is over `limit`, else None (cheap
        for short text: a character is at most 4 bytes)."""
        if len(text) * 4 <= limit:
            return None
        n = len(text.encode("utf-8", "surrogatepass"))
        return n if n > limit else None

    def refuse(self, what: str, size: int, key: str) -> InvalidInput:
        limit = getattr(self.limits, key)
        env = setting(key).env
        return InvalidInput(f"{what} is {size} bytes; the limit is {limit} ({env})")

    def text(self, what: str, value: str, key: str) -> str:
        """`value` if its UTF-8 size is within the limit `key`."""
        n = self.size_over(value, getattr(self.limits, key))
        if n is not None:
            raise self.refuse(what, n, key)
        return value

    def name(self, what: str, value: str) -> str:
        return self.text(what, value, "max_name_bytes")

    def reason(self, value: str) -> str:
        return self.text("field 'reason'", value, "max_reason_bytes")

    def count(self, what: str, n: int, key: str) -> None:
        limit = getattr(self.limits, key)
        if n > limit:
            env = setting(key).env
            raise InvalidInput(f"{what} {n}; the limit is {limit} ({env})")

    def parameters(self, params: Mapping[str, Any], what: str = "the request carries") -> None:
        """Parameters as key → value: how many, their names and string values."""
        if len(params) > self.limits.max_parameters:
            self.count(f"{what} parameters:", len(params), "max_parameters")
        short_name, short_key, short_param = (
            self.max_name // 4,
            self.max_key // 4,
            self.max_param // 4,
        )
        for key, value in params.items():
            if len(key) > short_name:
                n = self.size_over(key, self.max_name)
                if n is not None:
                    raise self.refuse("a parameter name", n, "max_name_bytes")
            if isinstance(value, str):
                if key == "routing_key":
                    if len(value) > short_key:
                        self.text("parameter 'routing_key'", value, "max_routing_key_bytes")
                elif len(value) > short_param:
                    self.text(f"parameter {shown(key)}", value, "max_parameter_bytes")
            elif isinstance(value, bytes) and len(value) > self.max_param:
                raise self.refuse(f"parameter {shown(key)}", len(value), "max_parameter_bytes")

    def request(self, req: InferRequest, longest_name: int | None = None) -> None:
        """Every string of a decoded request (counts are checked before decoding).
        `longest_name`: the size of its longest name when the reader measured it
        (the Rust one does), so the hot path skips looking at 35 input names."""
        # Text no longer than a quarter of its limit cannot be over it (4 bytes a
        # character at most).
        short = self.max_name // 4
        if longest_name is None:
            long_names = (
                len(req.model_name) > short
                or len(req.model_version) > short
                or (req.inputs and max(map(len, map(_NAME, req.inputs))) > short)
                or (req.requested_outputs and max(map(len, req.requested_outputs)) > short)
            )
        else:
            long_names = longest_name > self.max_name
        if long_names or len(req.id) > self.max_key // 4:
            self._strings(req)
        if req.parameters:
            self.parameters(req.parameters)

    def _strings(self, req: InferRequest) -> None:
        self.name("field 'model_name'", req.model_name)
        self.name("field 'model_version'", req.model_version)
        self.text("field 'id'", req.id, "max_routing_key_bytes")
        for i, inp in enumerate(req.inputs):
            self.name(f"the name of input #{i}", inp.name)
        for i, out in enumerate(req.requested_outputs):
            self.name(f"the name of output #{i}", out)


def _raw_count_error(raw: int, inputs: int) -> InvalidInput:
    return InvalidInput(
        f"raw_input_contents has {raw} entries for {inputs} inputs; "
        "send raw contents for every input or for none"
    )


def _mixed_error(name: str) -> InvalidInput:
    return InvalidInput(
        f"input {shown(name)} has typed contents, but the request carries "
        "raw_input_contents: send every input one way or the other"
    )


def _header(i: int, name: str, dims: Any) -> tuple[tuple[int, ...], int]:
    """Checks one input's name and shape; returns the shape and element count."""
    if not name:
        raise InvalidInput(f"input #{i} has no name")
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise InvalidInput(f"input {shown(name)} has a negative dimension in shape {list(shape)}")
    return shape, shape[0] if len(shape) == 1 else math.prod(shape)


class Codec:
    """ModelInferRequest bytes → InferRequest, under `bounds`. With `rust_parser`
    (the default) the bytes are read in Rust (twice as fast as the generated code
    on 35-input requests, bench/decode.py) and raw contents become numpy views of
    them; without it the generated protobuf code reads them."""

    def __init__(self, bounds: Bounds, rust_parser: bool = True) -> None:
        self.bounds = bounds
        self.rust_parser = rust_parser
        self._caps = (bounds.limits.max_parameters, bounds.limits.max_inputs, MAX_DIMS)

    def decode(self, data: bytes, time_remaining: float | None = None) -> InferRequest:
        """The request in `data`; RequestRefused when it does not decode or breaks a limit."""
        if self.rust_parser:
            return self.decode_bytes(data, time_remaining)
        try:
            message = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            raise RequestRefused("request is not a valid inference.ModelInferRequest") from None
        return self.decode_message(message, time_remaining)

    def decode_bytes(self, data: bytes, time_remaining: float | None = None) -> InferRequest:
        """`data` read in Rust; typed contents through the generated code."""
        try:
            w = parse_infer_request(data, *self._caps)
        except InputError as e:
            raise RequestRefused(str(e)) from None
        try:
            return self._from_wire(data, w, time_remaining)
        except RequestRefused:
            raise
        except InvalidInput as e:
            raise self._refused(e, w["model_name"], w["model_version"], w["id"]) from None

    def decode_message(
        self, req: pb.ModelInferRequest, time_remaining: float | None = None
    ) -> InferRequest:
        """A request the generated code has read."""
        try:
            return self._from_message(req, time_remaining)
        except InvalidInput as e:
            raise self._refused(e, req.model_name, req.model_version, req.id) from None

    def _refused(self, e: InvalidInput, model: str, version: str, rid: str) -> RequestRefused:
        b, over = self.bounds, self.bounds.size_over
        return RequestRefused(
            e.message,
            model if over(model, b.max_name) is None else "",
            version if over(version, b.max_name) is None else "",
            rid if over(rid, b.max_key) is None else "",
        )

    def _counts(
        self, params: int, inputs: int, outputs: int, raw: int, tensor_params: int, dims: int
    ) -> None:
        lim = self.bounds.limits
        if (
            params <= lim.max_parameters
            and tensor_params <= lim.max_parameters
            and max(inputs, outputs, raw) <= lim.max_inputs
            and dims <= MAX_DIMS
        ):
            return
        b = self.bounds
        b.count("the request carries parameters:", params, "max_parameters")
        b.count("the request carries inputs:", inputs, "max_inputs")
        b.count("the request requests outputs:", outputs, "max_inputs")
        b.count("raw_input_contents entries:", raw, "max_inputs")
        b.count("an input or output carries parameters:", tensor_params, "max_parameters")
        if dims > MAX_DIMS:
            raise InvalidInput(
                f"an input's shape has {dims} dimensions; at most {MAX_DIMS} are accepted "
                "(riskserve models take [batch] or [batch, 1])"
            )

    def _from_wire(
        self, data: bytes, w: _WireRequest, time_remaining: float | None
    ) -> InferRequest:
        tensors, raw = w["inputs"], w["raw"]
        self._counts(
            w["n_parameters"],
            w["n_inputs"],
            w["n_outputs"],
            w["n_raw"],
            w["tensor_parameters"],
            w["max_dims"],
        )
        if not raw:
            # Typed contents: the generated code builds them. The bytes passed the
            # Rust reader, which refuses whatever protobuf refuses; if protobuf
            # still refused them, the readers disagree: undecodable, and warned of.
            try:
                message = pb.ModelInferRequest.FromString(data)
            except DecodeError:  # pragma: no cover - a disagreement is a bug
                raise RequestRefused("request is not a valid inference.ModelInferRequest") from None
            return self._from_message(message, time_remaining)
        for name, _dt, _dims, typed in tensors:
            if typed:
                raise _mixed_error(name)
        if len(raw) != len(tensors):
            raise _raw_count_error(len(raw), len(tensors))
        infinite = w["infinite"]
        inputs = []
        for i, ((name, datatype, dims, _typed), (start, end)) in enumerate(
            zip(tensors, raw, strict=True)
        ):
            shape, count = _header(i, name, dims)
            data_i = _decode_raw(name, datatype, shape, count, data, start, end)
            inputs.append(InferInput(name, datatype, shape, data_i))
        req = InferRequest(
            model_name=w["model_name"],
            model_version=w["model_version"],
            id=w["id"],
            inputs=inputs,
            requested_outputs=w["outputs"],
            parameters=dict(w["parameters"]),
            time_remaining=time_remaining,
            infinite_input=None if infinite is None else tensors[infinite][0],
        )
        self.bounds.request(req, w["longest_name"])
        return req

    def _from_message(
        self, req: pb.ModelInferRequest, time_remaining: float | None
    ) -> InferRequest:
        raw = req.raw_input_contents
        tensor_params = max(
            [len(t.parameters) for t in req.inputs] + [len(o.parameters) for o in req.outputs],
            default=0,
        )
        dims = max((len(t.shape) for t in req.inputs), default=0)
        self._counts(
            len(req.parameters), len(req.inputs), len(req.outputs), len(raw), tensor_params, dims
        )
        if raw:
            for t in req.inputs:
                if t.HasField("contents"):
                    raise _mixed_error(t.name)
            if len(raw) != len(req.inputs):
                raise _raw_count_error(len(raw), len(req.inputs))
        inputs = []
        infinite = None
        for i, t in enumerate(req.inputs):
            name, datatype = t.name, t.datatype
            shape, count = _header(i, name, t.shape)
            data: TensorData
            if raw:
                buf = raw[i]
                data = _decode_raw(name, datatype, shape, count, buf, 0, len(buf))
            else:
                data = _decode_contents(name, datatype, t.contents)
            if infinite is None and datatype in _FLOAT_TYPES and _has_infinity(data):
                infinite = name
            inputs.append(InferInput(name, datatype, shape, data))
        out = InferRequest(
            model_name=req.model_name,
            model_version=req.model_version,
            id=req.id,
            inputs=inputs,
            requested_outputs=[o.name for o in req.outputs],
            parameters={k: _param_value(v) for k, v in req.parameters.items()},
            time_remaining=time_remaining,
            infinite_input=infinite,
        )
        self.bounds.request(out)
        return out


def _param_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _has_infinity(values: TensorData) -> bool:
    return isinstance(values, np.ndarray) and bool(values.size) and bool(np.isinf(values).any())


def _decode_raw(
    name: str, datatype: str, shape: tuple[int, ...], count: int, buf: bytes, start: int, end: int
) -> TensorData:
    """The raw content of one input: `buf[start:end]`, viewed without a copy."""
    if datatype == "BYTES":
        return buf if start == 0 and end == len(buf) else buf[start:end]  # packed; Rust checks
    dtype = NUMPY_DTYPE.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {shown(name)} has unknown datatype {shown(datatype)}")
    size = end - start
    if size != count * dtype.itemsize:
        raise InvalidInput(
            f"input {shown(name)}: raw content is {size} bytes, but shape {list(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    if datatype == "BOOL" and buf[start:end].translate(None, b"\x00\x01"):
        # Anything but 0/1 bytes is not a bool (bytes.translate: C speed, no numpy).
        raise InvalidInput(f"input {shown(name)}: BOOL raw content must hold only bytes 0 and 1")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=start)


def _decode_contents(name: str, datatype: str, contents: pb.InferTensorContents) -> TensorData:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {shown(name)} has unknown or unsupported datatype {shown(datatype)}"
        )
    values = getattr(contents, field)
    if datatype == "BYTES":
        return list(values)
    return np.asarray(values, dtype=NUMPY_DTYPE[datatype])


def encode_response(result: InferResult) -> pb.ModelInferResponse:
    """The reply: the outputs the client asked for, in its order (probability
    alone by default), as raw little-endian contents."""
    probs = result.probability
    outputs, raw = [], []
    for name in result.outputs:
        out = pb.ModelInferResponse.InferOutputTensor()
        if name == OUTPUT_NAME:
            out.CopyFrom(_OUTPUT_TENSOR)
            raw.append(probs.astype("<f4", copy=False).tobytes())
        else:
            assert result.flagged is not None
            out.CopyFrom(_FLAGGED_TENSOR)
            raw.append(result.flagged.astype(np.bool_, copy=False).tobytes())
        out.shape[0] = len(probs)
        outputs.append(out)
    resp = pb.ModelInferResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        id=result.id,
        outputs=outputs,
        raw_output_contents=raw,
    )
    for k, v in result.parameters.items():
        resp.parameters[k].string_param = v
    return resp
