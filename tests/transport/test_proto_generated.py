"""Checks for the Open Inference Protocol bindings under python/riskserve/pb.

* The committed generated code is exactly what scripts/gen_proto.py produces.
* The service exposes the expected RPCs and the key field numbers match the spec.
* Every message we define is wire-compatible with tritonclient's own
  ``tritonclient.grpc.service_pb2`` (field names, numbers, types, labels, oneofs).

Our ``inference/grpc_service.proto`` and tritonclient's ``grpc_service.proto``
define the same fully-qualified symbols (``inference.ModelInferRequest`` ...), so
the two generated modules cannot be imported into one process: the second import
fails with "duplicate symbol" in protobuf's default descriptor pool. Each side
is therefore imported in its own subprocess and only serialized
``FileDescriptorProto``s / message bytes cross into this process.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PYTHON_SRC = ROOT / "python"
COMMITTED = PYTHON_SRC / "riskserve" / "pb"
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.py"

OURS_MODULE = "riskserve.pb.inference.grpc_service_pb2"
TRITON_MODULE = "tritonclient.grpc.service_pb2"
SERVICE = "GRPCInferenceService"

EXPECTED_METHODS = {
    # name: (input, output, client_streaming, server_streaming)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False, False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False, False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False, False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", False, False),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", False, False),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", False, False),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse", True, True),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse", False, False),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse", False, False),
    "RepositoryModelLoad": (
        "RepositoryModelLoadRequest",
        "RepositoryModelLoadResponse",
        False,
        False,
    ),
    "RepositoryModelUnload": (
        "RepositoryModelUnloadRequest",
        "RepositoryModelUnloadResponse",
        False,
        False,
    ),
}

# Field numbers as published in Triton's grpc_service.proto and the KServe
# Open Inference Protocol (open_inference_grpc.proto).
EXPECTED_FIELD_NUMBERS = {
    "ModelInferRequest": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    "ModelInferResponse": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    "ModelStreamInferResponse": {"error_message": 1, "infer_response": 2},
    "InferParameter": {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    },
}

_DUMP_DESCRIPTOR = """
import importlib, sys
from google.protobuf import descriptor_pb2
mod = importlib.import_module(sys.argv[1])
fd = descriptor_pb2.FileDescriptorProto()
mod.DESCRIPTOR.CopyToProto(fd)
sys.stdout.buffer.write(fd.SerializeToString())
"""


def _run_python(code: str, *args: str, stdin: bytes | None = None) -> bytes:
    """Run ``code`` in a fresh interpreter with ``<root>/python`` first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"subprocess failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout


def _file_descriptor(module: str) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    fd.ParseFromString(_run_python(_DUMP_DESCRIPTOR, module))
    return fd


@pytest.fixture(scope="module")
def ours() -> descriptor_pb2.FileDescriptorProto:
    return _file_descriptor(OURS_MODULE)


@pytest.fixture(scope="module")
def triton() -> descriptor_pb2.FileDescriptorProto:
    # tritonclient is a dev dependency (make installs it): a missing one fails here.
    return _file_descriptor(TRITON_MODULE)


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    return {m.name: m for m in fd.message_type}


# ---------------------------------------------------------------------------
# Generated code is up to date and deterministic
# ---------------------------------------------------------------------------


def _tree(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    }


def test_committed_generated_code_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "pb"
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"gen_proto.py failed:\n{proc.stdout}\n{proc.stderr}"

    fresh, committed = _tree(out), _tree(COMMITTED)
    hint = "run `python scripts/gen_proto.py` and commit python/riskserve/pb"
    missing = sorted(str(p) for p in fresh - committed)
    extra = sorted(str(p) for p in committed - fresh)
    assert not missing, f"generated files missing from python/riskserve/pb: {missing}; {hint}"
    assert not extra, (
        f"stale files in python/riskserve/pb not produced by gen_proto: {extra}; {hint}"
    )
    for rel in sorted(fresh):
        assert filecmp.cmp(out / rel, COMMITTED / rel, shallow=False), (
            f"python/riskserve/pb/{rel} differs from freshly generated output; {hint} "
            "(or check that your grpcio-tools/protobuf versions match the committed header)"
        )


def test_generated_modules_import_under_riskserve_pb() -> None:
    code = (
        "import riskserve.pb.inference.grpc_service_pb2 as pb\n"
        "import riskserve.pb.inference.grpc_service_pb2_grpc as rpc\n"
        "assert rpc.inference_dot_grpc__service__pb2 is pb\n"
        "assert hasattr(rpc, 'GRPCInferenceServiceServicer')\n"
        "assert hasattr(rpc, 'add_GRPCInferenceServiceServicer_to_server')\n"
        "print(pb.DESCRIPTOR.name)\n"
    )
    assert _run_python(code).decode().strip() == "inference/grpc_service.proto"


# ---------------------------------------------------------------------------
# Our own descriptor
# ---------------------------------------------------------------------------


def test_service_methods(ours: descriptor_pb2.FileDescriptorProto) -> None:
    assert ours.package == "inference"
    assert list(ours.dependency) == [], "grpc_service.proto must not import anything"
    services = {s.name: s for s in ours.service}
    assert set(services) == {SERVICE}
    got = {
        m.name: (
            m.input_type.removeprefix(".inference."),
            m.output_type.removeprefix(".inference."),
            m.client_streaming,
            m.server_streaming,
        )
        for m in services[SERVICE].method
    }
    assert got == EXPECTED_METHODS


@pytest.mark.parametrize("message", sorted(EXPECTED_FIELD_NUMBERS))
def test_spec_field_numbers(ours: descriptor_pb2.FileDescriptorProto, message: str) -> None:
    fields = {f.name: f.number for f in _messages(ours)[message].field}
    assert fields == EXPECTED_FIELD_NUMBERS[message]


def test_raw_contents_are_repeated_bytes(ours: descriptor_pb2.FileDescriptorProto) -> None:
    fdp = descriptor_pb2.FieldDescriptorProto
    msgs = _messages(ours)
    for message, field in (
        ("ModelInferRequest", "raw_input_contents"),
        ("ModelInferResponse", "raw_output_contents"),
    ):
        (f,) = [f for f in msgs[message].field if f.name == field]
        assert (f.label, f.type) == (fdp.LABEL_REPEATED, fdp.TYPE_BYTES), f"{message}.{field}"


# ---------------------------------------------------------------------------
# Wire compatibility with tritonclient
# ---------------------------------------------------------------------------


def _field_signature(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict[str, object]:
    return {
        "number": field.number,
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
        "type_name": field.type_name,
        "oneof": (
            msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
        ),
        "proto3_optional": field.proto3_optional,
    }


def _compare_messages(
    path: str,
    ours: descriptor_pb2.DescriptorProto,
    theirs: descriptor_pb2.DescriptorProto,
    problems: list[str],
) -> None:
    """Record every way ``ours`` is not a field-for-field subset of ``theirs``."""
    if ours.options.map_entry != theirs.options.map_entry:
        problems.append(f"{path}: map_entry {ours.options.map_entry} != {theirs.options.map_entry}")
    their_fields = {f.name: f for f in theirs.field}
    their_numbers = {f.number: f.name for f in theirs.field}
    for field in ours.field:
        where = f"{path}.{field.name}"
        if field.name not in their_fields:
            clash = their_numbers.get(field.number)
            problems.append(f"{where}: not in tritonclient (number {field.number} is {clash!r})")
            continue
        mine = _field_signature(ours, field)
        other = _field_signature(theirs, their_fields[field.name])
        if mine != other:
            problems.append(f"{where}: ours {mine} != tritonclient {other}")
    their_nested = {n.name: n for n in theirs.nested_type}
    for nested in ours.nested_type:
        if nested.name not in their_nested:
            problems.append(f"{path}.{nested.name}: nested message not in tritonclient")
            continue
        _compare_messages(f"{path}.{nested.name}", nested, their_nested[nested.name], problems)
    their_enums = {e.name: e for e in theirs.enum_type}
    for enum in ours.enum_type:
        other_enum = their_enums.get(enum.name)
        mine_values = {v.name: v.number for v in enum.value}
        their_values = {v.name: v.number for v in other_enum.value} if other_enum else {}
        if not mine_values.items() <= their_values.items():
            problems.append(f"{path}.{enum.name}: enum values {mine_values} vs {their_values}")


def test_every_message_exists_in_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    assert ours.package == triton.package == "inference"
    not_in_triton = sorted(set(_messages(ours)) - set(_messages(triton)))
    assert not not_in_triton, f"messages not defined by tritonclient: {not_in_triton}"


def test_messages_wire_compatible_with_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    theirs = _messages(triton)
    shared = sorted(set(_messages(ours)) & set(theirs))
    assert shared, "no message names shared with tritonclient"
    problems: list[str] = []
    for name in shared:
        _compare_messages(name, _messages(ours)[name], theirs[name], problems)
    assert not problems, "incompatible with tritonclient.grpc.service_pb2:\n" + "\n".join(problems)


def test_compatibility_check_detects_mismatches(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    """Guard against a vacuous comparator: perturbations of our descriptor are caught."""
    fdp = descriptor_pb2.FieldDescriptorProto
    theirs = _messages(triton)["ModelInferRequest"]
    mutations = {
        "renumbered": lambda f: setattr(f, "number", 17),
        "retyped": lambda f: setattr(f, "type", fdp.TYPE_STRING),
        "relabelled": lambda f: setattr(f, "label", fdp.LABEL_OPTIONAL),
    }
    for what, mutate in mutations.items():
        mutated = descriptor_pb2.DescriptorProto()
        mutated.CopyFrom(_messages(ours)["ModelInferRequest"])
        (raw,) = [f for f in mutated.field if f.name == "raw_input_contents"]
        mutate(raw)
        problems: list[str] = []
        _compare_messages("ModelInferRequest", mutated, theirs, problems)
        assert problems, f"{what} raw_input_contents went unnoticed"
    nested = descriptor_pb2.DescriptorProto()
    nested.CopyFrom(_messages(ours)["ModelInferRequest"])
    nested.nested_type[0].field[0].number = 99
    problems = []
    _compare_messages("ModelInferRequest", nested, theirs, problems)
    assert problems, "nested-message mismatch went unnoticed"


def test_service_methods_match_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    def methods(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[str, str, bool, bool]]:
        (svc,) = [s for s in fd.service if s.name == SERVICE]
        return {
            m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in svc.method
        }

    mine, theirs = methods(ours), methods(triton)
    for name, signature in mine.items():
        assert theirs.get(name) == signature, f"rpc {name}: ours {signature} != {theirs.get(name)}"


_TRITON_ENCODE = """
import sys
from tritonclient.grpc import service_pb2 as pb
req = pb.ModelInferRequest(model_name="fraud", model_version="3", id="req-1")
req.parameters["priority"].int64_param = 7
req.parameters["threshold"].double_param = 0.25
req.parameters["tag"].string_param = "x"
inp = req.inputs.add(name="features", datatype="FP32", shape=[2, 3])
inp.parameters["binary_data_size"].int64_param = 24
inp.contents.fp32_contents.extend([1.0, 2.0])
req.outputs.add(name="score").parameters["binary_data"].bool_param = True
req.raw_input_contents.append(bytes(range(24)))
resp = pb.ModelInferResponse(model_name="fraud", model_version="3", id="req-1")
out = resp.outputs.add(name="score", datatype="FP32", shape=[2])
out.parameters["p"].uint64_param = 5
resp.raw_output_contents.append(b"\\x00\\x00\\x80?\\x00\\x00\\x00@")
stream = pb.ModelStreamInferResponse(error_message="", infer_response=resp)
for m in (req, resp, stream):
    data = m.SerializeToString(deterministic=True)
    sys.stdout.buffer.write(len(data).to_bytes(4, "big") + data)
"""

_OURS_ROUNDTRIP = """
import sys
from riskserve.pb.inference import grpc_service_pb2 as pb
blob = sys.stdin.buffer.read()
msgs = []
for cls in (pb.ModelInferRequest, pb.ModelInferResponse, pb.ModelStreamInferResponse):
    n = int.from_bytes(blob[:4], "big")
    data, blob = blob[4 : 4 + n], blob[4 + n :]
    msg = cls.FromString(data)
    msg.DiscardUnknownFields()  # recursive: anything we failed to decode is dropped here
    again = msg.SerializeToString(deterministic=True)
    assert again == data, (cls.__name__, data, again)
    msgs.append(msg)
req, resp, stream = msgs
assert req.model_name == "fraud" and req.id == "req-1"
assert req.parameters["threshold"].double_param == 0.25
assert req.parameters["priority"].WhichOneof("parameter_choice") == "int64_param"
assert list(req.inputs[0].shape) == [2, 3]
assert list(req.inputs[0].contents.fp32_contents) == [1.0, 2.0]
assert req.outputs[0].parameters["binary_data"].bool_param is True
assert req.raw_input_contents[0] == bytes(range(24))
assert resp.outputs[0].parameters["p"].uint64_param == 5
assert resp.raw_output_contents[0] == b"\\x00\\x00\\x80?\\x00\\x00\\x00@"
assert stream.infer_response == resp
print("ok")
"""


def test_tritonclient_bytes_roundtrip_through_our_messages(
    triton: descriptor_pb2.FileDescriptorProto,
) -> None:
    # Unknown fields are discarded before re-encoding, so byte equality proves every
    # field tritonclient wrote was decoded by our messages.
    encoded = _run_python(_TRITON_ENCODE)
    assert _run_python(_OURS_ROUNDTRIP, stdin=encoded).decode().strip() == "ok"
