"""A hypothesis-based fuzzer for a running riskserve (issue 10, "Fuzzing in CI").

    .venv/bin/python bench/fuzz.py [--cases 200000] [--seed 0] [--out bench/results/fuzz.json]
    .venv/bin/python bench/fuzz.py --target HOST:PORT --token T [--victim MODEL] ...

Without --target it trains two small models (`fraud`, and `victim` with two
versions, which admin cases may change), starts `riskserve serve` on them with an
admin token, fuzzes it, then checks the process is alive, serves a good request
and logged no traceback. tests/fuzz/test_fuzz.py runs the same engine on >= 10,000
cases inside `make test`.

Cases, many per hypothesis example over one long-lived channel:

* ModelInfer: valid requests mutated byte by byte (flips, cuts, insertions,
  deletions, bytes that matter to the wire format, spliced frames), and valid
  requests edited into wrong ones: datatypes, shapes (empty, negative, huge, too
  many dimensions), raw content sizes and counts, names (empty, unknown, NUL,
  traversal, 10 KB, duplicates), dropped and duplicated inputs, typed contents
  next to raw ones, typed-only requests, ±inf/NaN, bad BOOL and BYTES contents,
  model names and versions, ids, routing keys of every type and size, many or
  odd parameters, requested outputs;
* ModelStreamInfer: streams of such messages, good ones among them;
* ModelAdmin and the V2 repository extension: messages with hostile names
  ("../x", "..", "a/b", NUL, 10 KB), versions, reasons, salts, variants, shadow
  percentages (NaN, inf) and limits, or mutated bytes; without, with a wrong and
  with the right token, with odd x-actor metadata;
* the open metadata RPCs with mutated bytes.

Every case must end in a documented status (ALLOWED), never INTERNAL or UNKNOWN,
within MAX_SECONDS, with short status details; a stream answers every message,
good ones without error. Admin cases with the right token change only the victim
model; `fraud` keeps serving."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from riskserve.client import build_request, pack_bytes
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb

ALLOWED = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    }
)
MAX_SECONDS = 2.0
#: Longest status details a case may get back (our messages cut echoed names).
MAX_DETAILS = 1024
RPC_TIMEOUT = 5.0
CASES_PER_EXAMPLE = 25

V2 = "/inference.GRPCInferenceService/"
ADMIN = "/riskserve.admin.v1.ModelAdmin/"
INFER = V2 + "ModelInfer"
STREAM = V2 + "ModelStreamInfer"
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
HOSTILE_NAMES = [
    "",
    "..",
    "../x",
    "../../etc/passwd",
    "a/b",
    "/abs",
    "a\0b",
    "\0",
    ".hidden",
    "-x",
    "x" * 10_240,
    "é" * 200,
    "fraud\n",
    "fraud ",
    "FRAUD",
    "nope",
    "victim/../fraud",
]
ADMIN_MUTATIONS = frozenset(
    {
        "LoadVersion",
        "UnloadVersion",
        "SetTraffic",
        "SetShadow",
        "Promote",
        "Rollback",
        "SetThreshold",
    }
)
REPOSITORY = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
OPEN = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")


# --------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------


class Target:
    """One server, reached over one long-lived channel: the valid requests cases
    start from, the admin token, and the model admin cases may change."""

    def __init__(self, address: str, token: str, model: str = "fraud", victim: str = "victim"):
        self.address = address
        self.token = token
        self.model = model
        self.victim = victim
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        )
        grpc.channel_ready_future(self.channel).result(timeout=30)
        meta = self.unary_message(
            V2 + "ModelMetadata", pb.ModelMetadataRequest(name=model), pb.ModelMetadataResponse
        )
        self.datatypes = {i.name: i.datatype for i in meta.inputs}
        self.valid = [self._request(rows, i) for i, rows in enumerate((1, 1, 2, 3))]
        self.valid_bytes = [r.SerializeToString() for r in self.valid]
        self.typed_bytes = self._request(1, 9, raw=False).SerializeToString()

    def _request(self, rows: int, i: int, raw: bool = True) -> pb.ModelInferRequest:
        from riskserve.training.datagen import generate
        from riskserve.training.train import columns_of

        cols = columns_of(generate(rows, 100 + i), list(self.datatypes))
        return build_request(
            self.model,
            cols,
            self.datatypes,
            request_id=f"fuzz-{i}",
            raw=raw,
            parameters={"routing_key": f"card-{i}"},
        )

    def close(self) -> None:
        self.channel.close()

    def unary_message(self, method: str, request: Any, reply: Any) -> Any:
        rpc = self.channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        return rpc(request, timeout=RPC_TIMEOUT)

    def unary(self, method: str, data: bytes, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        """(status name, details)."""
        rpc = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            rpc(data, timeout=RPC_TIMEOUT, metadata=metadata)
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""
        return "OK", ""

    def stream(
        self, messages: Sequence[bytes]
    ) -> tuple[str, str, list[pb.ModelStreamInferResponse]]:
        rpc = self.channel.stream_stream(
            STREAM,
            request_serializer=None,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        replies: list[pb.ModelStreamInferResponse] = []
        try:
            for r in rpc(iter(messages), timeout=RPC_TIMEOUT):
                replies.append(r)
        except grpc.RpcError as e:
            return e.code().name, e.details() or "", replies
        return "OK", "", replies

    def serves_a_good_request(self) -> bool:
        return self.unary(INFER, self.valid_bytes[0])[0] == "OK"


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One call: `kind` names it in the statistics."""

    kind: str
    method: str
    data: bytes | tuple[bytes, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    #: Messages of a stream that are valid requests (they must succeed).
    good: tuple[bool, ...] = ()

    def __repr__(self) -> str:  # short enough for a hypothesis failure report
        if isinstance(self.data, bytes):
            size: Any = len(self.data)
            head = self.data[:48].hex()
        else:
            size, head = [len(d) for d in self.data], ""
        md = [(k, v[:40]) for k, v in self.metadata]
        return f"Case({self.kind}, size={size}, head={head}, md={md})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis' printer
        p.text(repr(self))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


# Hypothesis chooses the shape of each case (its kind, base request, which edits
# or mutations, method, credential) and a seed; the details come from
# random.Random(seed). A case is then a handful of hypothesis draws instead of
# dozens, which keeps 10,000 cases inside `make test`; failures still shrink
# (to fewer, simpler edits and smaller seeds) and runs are reproducible.
SEEDS = st.integers(0, 2**32 - 1)
MUTATIONS = ("flip", "cut", "insert", "delete", "set", "splice", "varint")
WIRE_BYTES = (0x00, 0x03, 0x04, 0x0B, 0x0C, 0x0F, 0x7F, 0x80, 0xFF)
BAD_VARINTS = (b"\xff" * 11, b"\x80" * 5 + b"\x00", _varint(2**63), b"\x80")


def mutate(data: bytes, ops: Sequence[str], rnd: random.Random, bases: Sequence[bytes]) -> bytes:
    """`data` with the byte-level mutations `ops` applied at random places."""
    b = bytearray(data)
    for op in ops:
        pos = rnd.randrange(len(b)) if b else 0
        if op == "flip" and b:
            b[pos] ^= 1 << rnd.randrange(8)
        elif op == "cut":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = rnd.randbytes(rnd.randint(1, 8))
        elif op == "delete":
            del b[pos : pos + rnd.randint(1, 16)]
        elif op == "set" and b:
            b[pos] = rnd.choice(WIRE_BYTES)
        elif op == "splice":
            other = rnd.choice(bases)
            b[pos:] = other[rnd.randint(0, len(other)) :]
        elif op == "varint":  # an over-long or huge varint where a tag or length may sit
            b[pos:pos] = rnd.choice(BAD_VARINTS)
    return bytes(b)


def mutated(bases: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A valid frame with 1-4 byte-level mutations (or spliced with another)."""
    return st.builds(
        lambda base, ops, sd: mutate(base, ops, random.Random(sd), bases),
        st.sampled_from(bases),
        st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4),
        SEEDS,
    )


def _copy(r: pb.ModelInferRequest) -> pb.ModelInferRequest:
    out = pb.ModelInferRequest()
    out.CopyFrom(r)
    return out


EDITS = (
    "datatype",
    "shape",
    "raw_size",
    "raw_count",
    "name",
    "duplicate",
    "drop",
    "mixed",
    "model_name",
    "model_version",
    "id",
    "routing_key",
    "parameters",
    "outputs",
    "values",
    "rows",
    "input_parameters",
)
SHAPES = (
    [], [0], [-1], [2], [1, 1], [1, 2], [2**62], [2**63 - 1, 2], [1] * 9, [-(2**63)],
    [1] * 200, [3, -1],
)  # fmt: skip
VERSIONS = ("", "1", "2", "0", "-1", "abc", "9" * 30, "x" * 300, "1\0")


def edit(r: pb.ModelInferRequest, what: str, rnd: random.Random, target: Target) -> None:
    """One structural edit of request `r`, in place."""
    n = len(r.inputs)
    i = rnd.randrange(n) if n else 0
    has_raw = len(r.raw_input_contents) == n and n > 0
    if what == "datatype" and n:
        r.inputs[i].datatype = rnd.choice([*DATATYPES, "", "fp64", "FP64 ", "X" * 300, "\0"])
    elif what == "shape" and n:
        r.inputs[i].ClearField("shape")
        r.inputs[i].shape.extend(rnd.choice(SHAPES))
    elif what == "raw_size" and has_raw:
        raw = r.raw_input_contents[i]
        k = rnd.randint(-8, 8)
        r.raw_input_contents[i] = raw[:k] if k < 0 else raw + b"\x00" * k
    elif what == "raw_count" and has_raw:
        if rnd.random() < 0.5:
            del r.raw_input_contents[-1]
        else:
            r.raw_input_contents.append(rnd.randbytes(rnd.randint(0, 16)))
    elif what == "name" and n:
        r.inputs[i].name = rnd.choice(HOSTILE_NAMES + [t.name for t in r.inputs])
    elif what == "duplicate" and n:
        r.inputs.append(r.inputs[i])
        if has_raw:
            r.raw_input_contents.append(r.raw_input_contents[i])
    elif what == "drop" and n:
        del r.inputs[i]
        if has_raw:
            del r.raw_input_contents[i]
    elif what == "mixed" and n:
        c = r.inputs[i].contents
        kind = rnd.randrange(4)
        if kind == 0:
            c.fp64_contents.append(1.0)
        elif kind == 1:
            c.bytes_contents.append(b"x")
        elif kind == 2:
            c.int64_contents.append(1)
        else:
            c.SetInParent()
    elif what == "model_name":
        r.model_name = rnd.choice([*HOSTILE_NAMES, target.victim, "fraud_onnx"])
    elif what == "model_version":
        r.model_version = rnd.choice(VERSIONS)
    elif what == "id":
        r.id = rnd.choice(["", "x" * 300, "é" * 100, "\0"])
    elif what == "routing_key":
        p = r.parameters["routing_key"]
        kind = rnd.randrange(7)
        if kind == 0:
            p.int64_param = rnd.randint(-(2**63), 2**63 - 1)
        elif kind == 1:
            p.bool_param = rnd.random() < 0.5
        elif kind == 2:
            p.double_param = rnd.choice([math.nan, math.inf, -0.0, 1e308])
        elif kind == 3:
            p.uint64_param = rnd.randint(0, 2**64 - 1)
        elif kind == 4:
            p.string_param = ""
        elif kind == 5:
            p.string_param = "k" * rnd.choice([257, 5000, 100_000])
        else:
            p.Clear()
    elif what == "parameters":
        for j in range(rnd.choice([1, 3, 70])):
            key = rnd.choice(["", "k", "x" * 300, "é", f"p{j}", "\0"])
            if rnd.random() < 0.5:
                r.parameters[key].string_param = rnd.choice(["", "v", "v" * 2000])
            else:
                r.parameters[key].double_param = rnd.choice([math.nan, -math.inf, 1.5])
    elif what == "outputs":
        for _ in range(rnd.choice([1, 2, 1100])):
            o = r.outputs.add(name=rnd.choice(["probability", "nope", "", "x" * 300]))
            if rnd.random() < 0.5:
                o.parameters["classification"].int64_param = 1
    elif what == "values" and has_raw:
        dt = r.inputs[i].datatype
        raw = r.raw_input_contents[i]
        if dt in ("FP64", "FP32"):
            fmt = "<d" if dt == "FP64" else "<f"
            v = rnd.choice([math.inf, -math.inf, math.nan, 1e308, -0.0])
            r.raw_input_contents[i] = struct.pack(fmt, v) * (len(raw) // struct.calcsize(fmt))
        elif dt == "BOOL":
            r.raw_input_contents[i] = bytes([rnd.choice([2, 255])]) * len(raw)
        elif dt == "BYTES":
            r.raw_input_contents[i] = rnd.choice(
                [b"\xff\xff\xff\xff", b"\x05\x00\x00\x00ab", b"\x01\x00", b"",
                 pack_bytes([b"\xff\xfe"]), pack_bytes(["x" * 5000])]
            )  # fmt: skip
        else:
            r.raw_input_contents[i] = rnd.choice([b"\xff" * len(raw), raw[::-1]])
    elif what == "rows" and has_raw:
        t = r.inputs[i]
        rows = rnd.choice([0, 2, 10_001])
        t.ClearField("shape")
        t.shape.append(rows)
        if t.datatype == "BYTES":
            r.raw_input_contents[i] = pack_bytes(["x"] * rows)
        else:
            size = 8 if t.datatype in ("FP64", "INT64") else 1
            r.raw_input_contents[i] = b"\x00" * (size * rows)
    elif what == "input_parameters" and n:
        for j in range(rnd.choice([1, 70])):
            r.inputs[i].parameters[f"q{j}"].string_param = "v"


def edited(target: Target) -> st.SearchStrategy[bytes]:
    """A valid request with 1-3 structural edits that make it (mostly) wrong."""

    def build(base: pb.ModelInferRequest, edits: list[str], sd: int) -> bytes:
        r, rnd = _copy(base), random.Random(sd)
        for what in edits:
            edit(r, what, rnd, target)
        return bytes(r.SerializeToString())

    return st.builds(
        build,
        st.sampled_from(target.valid),
        st.lists(st.sampled_from(EDITS), min_size=1, max_size=3),
        SEEDS,
    )


def infer_messages(target: Target) -> st.SearchStrategy[bytes]:
    fixed = [b"", bytes.fromhex("0500000000"), bytes.fromhex("0aff"), b"\x0c", b"\x0f",
             b"\x0b" * 101 + b"\x0c" * 101, target.typed_bytes]  # fmt: skip
    return st.one_of(
        mutated([*target.valid_bytes, target.typed_bytes]),
        edited(target),
        st.binary(max_size=64),
        st.sampled_from(fixed),
    )


def infer_cases(target: Target) -> st.SearchStrategy[Case]:
    return infer_messages(target).map(lambda d: Case("infer", INFER, d))


def stream_cases(target: Target) -> st.SearchStrategy[Case]:
    """1-6 messages on one stream, about a third of them valid requests."""
    message = st.one_of(
        st.sampled_from(target.valid_bytes).map(lambda d: (d, True)),
        infer_messages(target).map(lambda d: (d, False)),
        infer_messages(target).map(lambda d: (d, False)),
    )

    def build(msgs: list[tuple[bytes, bool]]) -> Case:
        return Case("stream", STREAM, tuple(d for d, _ in msgs), good=tuple(g for _, g in msgs))

    return st.lists(message, min_size=1, max_size=6).map(build)


REASONS = ("", "fuzz", "r" * 2000, "\0\n\u202e")
#: Where admin cases point: hostile names, the victim (changes allowed), the model.
TARGETS = ("hostile", "victim", "victim", "model")


def admin_message(
    method: str, where: str, rnd: random.Random, target: Target, authorized: bool
) -> Any:
    name = {"victim": target.victim, "model": target.model}.get(where) or rnd.choice(HOSTILE_NAMES)
    mutates = method in ADMIN_MUTATIONS or method in (
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    )
    if authorized and mutates and name == target.model:
        name = target.victim  # the right token changes only the victim
    version = rnd.choice([-1, 0, 1, 2, 3, 2**62])
    reason = rnd.choice(REASONS)
    if method == "ListModels":
        return apb.ListModelsRequest()
    if method in ("LoadVersion", "UnloadVersion", "Promote"):
        cls = getattr(apb, f"{method}Request")
        return cls(model=name, version=version, reason=reason)
    if method == "GetDeployment":
        return apb.GetDeploymentRequest(model=name)
    if method == "SetTraffic":
        variants = [
            apb.Variant(
                version=rnd.choice([-1, 0, 1, 2, 7]),
                weight=rnd.choice([-1, 0, 5, 50, 95, 100, 2**31 - 1]),
            )
            for _ in range(rnd.randint(0, 4))
        ]
        salt = rnd.choice(["", "s", "s" * 300, "\0"])
        return apb.SetTrafficRequest(model=name, variants=variants, salt=salt, reason=reason)
    if method == "SetShadow":
        pct = rnd.choice([math.nan, math.inf, -1.0, 0.0, 5.0, 100.0, 101.0])
        return apb.SetShadowRequest(model=name, version=version, sample_percent=pct, reason=reason)
    if method == "SetThreshold":
        t = rnd.choice([math.nan, math.inf, -0.5, 0.0, 0.3, 1.0, 1.5])
        return apb.SetThresholdRequest(
            model=name, version=version, threshold=t, clear=rnd.random() < 0.3, reason=reason
        )
    if method == "Rollback":
        return apb.RollbackRequest(model=name, reason=reason)
    if method == "History":
        return apb.HistoryRequest(model=name, limit=rnd.choice([-1, 0, 1, 2**31 - 1]))
    if method == "RepositoryIndex":
        return pb.RepositoryIndexRequest(
            repository_name=rnd.choice(["", "x" * 300]), ready=rnd.random() < 0.5
        )
    req = getattr(pb, f"{method}Request")(model_name=name)
    p = req.parameters
    kind = rnd.randrange(7)
    if kind == 1:
        p["version"].int64_param = rnd.choice([-1, 0, 1, 2, 99, 2**62])
    elif kind == 2:
        p["version"].string_param = rnd.choice(["1", "2", "x", "", "9" * 5000])
    elif kind == 3:
        p["version"].bytes_param = rnd.choice([b"1", b"\xff", b"9" * 5000])
    elif kind == 4:
        p["version"].bool_param = True
    elif kind == 5:
        p["config"].string_param = "c" * 5000
    elif kind == 6:
        for j in range(70):
            p[f"k{j}"].bool_param = True
    return req


ADMIN_RPCS = tuple(m.name for m in apb.DESCRIPTOR.services_by_name["ModelAdmin"].methods)
AUTH = ("none", "wrong", "right", "right", "scheme")
#: (gRPC metadata values are printable ASCII: clients refuse anything else.)
ACTORS = (None, None, "", "fuzzer", "a" * 300, "../../x", " ")
BODIES = ("message", "message", "mutated", "random")


def admin_cases(target: Target) -> st.SearchStrategy[Case]:
    def build(method: str, auth: str, where: str, body: str, sd: int) -> Case:
        rnd = random.Random(sd)
        path = (V2 if method in REPOSITORY else ADMIN) + method
        md: list[tuple[str, str]] = []
        if auth == "wrong":
            md.append(("authorization", "Bearer wrong"))
        elif auth == "right":
            md.append(("authorization", f"Bearer {target.token}"))
        elif auth == "scheme":
            md.append(("authorization", f"Basic {target.token}"))
        actor = rnd.choice(ACTORS)
        if actor is not None:
            md.append(("x-actor", actor))
        data = admin_message(method, where, rnd, target, auth == "right").SerializeToString()
        if not (auth == "right" and method in ADMIN_MUTATIONS):  # no random changes of fraud
            if body == "mutated":
                ops = rnd.sample(MUTATIONS, rnd.randint(1, 3))
                data = mutate(data or b"\x0a\x00", ops, rnd, [data or b"\x0a\x00"])
            elif body == "random":
                data = rnd.randbytes(rnd.randint(0, 32))
        return Case(f"admin:{method}", path, data, tuple(md))

    return st.builds(
        build,
        st.sampled_from(ADMIN_RPCS + REPOSITORY),
        st.sampled_from(AUTH),
        st.sampled_from(TARGETS),
        st.sampled_from(BODIES),
        SEEDS,
    )


def open_cases(target: Target) -> st.SearchStrategy[Case]:
    def build(method: str, body: str, sd: int) -> Case:
        rnd = random.Random(sd)
        name = rnd.choice([*HOSTILE_NAMES, target.model, target.model])
        version = rnd.choice(["", "1", "9", "x" * 300])
        data = pb.ModelMetadataRequest(name=name, version=version).SerializeToString()
        if body == "mutated":
            data = mutate(data or b"\x0a\x00", rnd.sample(MUTATIONS, 2), rnd, [data or b"\x0a"])
        elif body == "random":
            data = rnd.randbytes(rnd.randint(0, 16))
        return Case(f"open:{method}", V2 + method, data)

    return st.builds(build, st.sampled_from(OPEN), st.sampled_from(BODIES), SEEDS)


#: The mix of cases (hypothesis' one_of favours its first branches; this is even).
KINDS = ("infer",) * 4 + ("stream",) * 2 + ("admin",) * 3 + ("open",)


def cases(target: Target) -> st.SearchStrategy[Case]:
    by_kind = {
        "infer": infer_cases(target),
        "stream": stream_cases(target),
        "admin": admin_cases(target),
        "open": open_cases(target),
    }
    return st.sampled_from(KINDS).flatmap(by_kind.__getitem__)


# --------------------------------------------------------------------------------------
# Running and checking
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    cases: int = 0
    messages: int = 0
    statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    slowest: float = 0.0
    slowest_case: str = ""
    seconds: float = 0.0
    #: Time spent in calls (the rest is hypothesis generating cases).
    call_seconds: float = 0.0
    durations: list[float] = dataclasses.field(default_factory=list, repr=False)

    def percentile(self, q: float) -> float:
        d = sorted(self.durations)
        return d[min(len(d) - 1, math.ceil(q * len(d)) - 1)] if d else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "messages": self.messages,
            "seconds": round(self.seconds, 2),
            "call_seconds": round(self.call_seconds, 2),
            "call_ms": {
                q: round(self.percentile(v) * 1000, 2)
                for q, v in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))
            },
            "slowest_call_seconds": round(self.slowest, 4),
            "slowest_case": self.slowest_case,
            "statuses": dict(self.statuses.most_common()),
            "by_kind": dict(sorted(self.by_kind.items())),
        }


def run_case(target: Target, case: Case, stats: Stats) -> None:
    """Runs one case and asserts what every case must satisfy."""
    start = time.perf_counter()
    if case.method == STREAM:
        assert isinstance(case.data, tuple)
        code, details, replies = target.stream(case.data)
        took = time.perf_counter() - start
        assert code == "OK", (case, code, details)
        assert len(replies) == len(case.data), (case, len(replies))
        for reply, good in zip(replies, case.good, strict=True):
            status = reply.error_message.partition(":")[0] if reply.error_message else "OK"
            assert status in ALLOWED, (case, reply.error_message)
            assert len(reply.error_message) <= MAX_DETAILS, (case, reply.error_message[:200])
            if good:
                assert status == "OK", (case, reply.error_message)
            stats.statuses[f"stream:{status}"] += 1
        stats.messages += len(case.data)
    else:
        assert isinstance(case.data, bytes)
        code, details = target.unary(case.method, case.data, case.metadata)
        took = time.perf_counter() - start
        assert code in ALLOWED, (case, code, details)
        assert len(details) <= MAX_DETAILS, (case, code, details[:200])
        stats.statuses[code] += 1
        stats.messages += 1
    assert took < MAX_SECONDS, (case, took)
    stats.call_seconds += took
    stats.durations.append(took)
    stats.cases += 1
    stats.by_kind[case.kind.partition(":")[0]] += 1
    if took > stats.slowest:
        stats.slowest, stats.slowest_case = took, repr(case)


def fuzz(
    target: Target,
    cases_wanted: int,
    *,
    per_example: int = CASES_PER_EXAMPLE,
    random_seed: int | None = None,
    stats: Stats | None = None,
    report: Callable[[Stats], None] | None = None,
) -> Stats:
    """Runs about `cases_wanted` cases, `per_example` per hypothesis example.
    Without a seed the run is derandomized (the same cases every time); a seed
    gives another reproducible run. Raises AssertionError (hypothesis shrinks it
    to a small failing batch first) on the first case that breaks a rule."""
    stats = stats or Stats()
    examples = max(1, math.ceil(cases_wanted / per_example))
    strategy = st.lists(cases(target), min_size=per_example, max_size=per_example)
    started = time.perf_counter()

    @settings(
        max_examples=examples,
        derandomize=random_seed is None,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def batch(batch_cases: list[Case]) -> None:
        for c in batch_cases:
            run_case(target, c, stats)
        if report is not None and stats.cases % (per_example * 200) < per_example:
            report(stats)

    if random_seed is not None:
        batch = seed(random_seed)(batch)
    try:
        batch()
    finally:
        stats.seconds = time.perf_counter() - started
    return stats


# --------------------------------------------------------------------------------------
# A server of its own
# --------------------------------------------------------------------------------------

#: Log markers of a bug (as tests/conftest.py's ServerHandle.bad_lines).
BAD_LOG_MARKERS = ("Traceback", "internal error", '"exception"')


def prepare_models(root: Path) -> Path:
    """`fraud` (1 version) and `victim` (2 versions), small and quick to train."""
    from riskserve.training.datagen import run_datagen
    from riskserve.training.train import TrainConfig, train

    spec = Path(__file__).resolve().parents[1] / "python/riskserve/training/specs/fraud.json"
    data = root / "train.parquet"
    run_datagen(3000, 1, data)
    models = root / "models"
    for model, versions in (("fraud", 1), ("victim", 2)):
        for v in range(versions):
            train(
                TrainConfig(
                    data=data,
                    target="is_fraud",
                    model=model,
                    models_dir=models,
                    spec=spec,
                    seed=v,
                    rounds=10,
                )
            )
    return models


@dataclasses.dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str]

    def bad_lines(self) -> list[str]:
        return [ln for ln in self.lines if any(m in ln for m in BAD_LOG_MARKERS)]


def serve(models: Path, token: str) -> Served:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSERVE_")}
    env |= {"RISKSERVE_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "riskserve.cli",
        "serve",
        "--models",
        str(models),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "-1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not ready.is_set() and '"serving"' in line:
                port.append(int(json.loads(line)["port"]))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or not port:
        proc.kill()
        raise SystemExit("server did not start:\n" + "".join(lines)[-4000:])
    return Served(proc, port[0], lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=None, help="default: derandomized")
    ap.add_argument("--per-example", type=int, default=CASES_PER_EXAMPLE)
    ap.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    ap.add_argument("--token", default="fuzz-token")
    ap.add_argument("--model", default="fraud")
    ap.add_argument("--victim", default="victim")
    ap.add_argument("--out", default="bench/results/fuzz.json")
    a = ap.parse_args(argv)

    served: Served | None = None
    tmp: str | None = None
    if a.target is None:
        tmp = tempfile.mkdtemp(prefix="riskserve-fuzz-")
        print(">> training fraud and victim (v1, v2) in", tmp)
        models = prepare_models(Path(tmp))
        served = serve(models, a.token)
        address = f"127.0.0.1:{served.port}"
    else:
        address = a.target
    try:
        return _fuzz_and_check(a, address, served)
    finally:
        if served is not None and served.proc.poll() is None:
            served.proc.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _fuzz_and_check(a: argparse.Namespace, address: str, served: Served | None) -> int:
    target = Target(address, a.token, a.model, a.victim)

    def progress(s: Stats) -> None:
        top = ", ".join(f"{k} {v}" for k, v in s.statuses.most_common(6))
        print(f"  {s.cases:>8,} cases, slowest {s.slowest * 1000:.0f} ms: {top}", flush=True)

    failure: BaseException | None = None
    stats = Stats()
    try:  # a broken rule (hypothesis may group it as flaky): report it with the figures
        fuzz(
            target,
            a.cases,
            per_example=a.per_example,
            random_seed=a.seed,
            stats=stats,
            report=progress,
        )
    except Exception as e:
        failure = e
    alive = served is None or served.proc.poll() is None
    good = alive and target.serves_a_good_request()
    target.close()
    bad: list[str] = []
    if served is not None:
        served.proc.send_signal(signal.SIGTERM)
        try:
            served.proc.wait(30)
        except subprocess.TimeoutExpired:
            served.proc.kill()
        bad = served.bad_lines()
    doc = {
        **stats.as_json(),
        "seed": a.seed,
        "derandomized": a.seed is None,
        "server_alive": alive,
        "serves_a_good_request": good,
        "bad_log_lines": bad[:20],
        "failure": None if failure is None else str(failure)[:4000],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(f"fuzz: {stats.cases:,} cases ({stats.messages:,} messages) in {stats.seconds:.1f} s")
    print(f"  slowest call {stats.slowest * 1000:.1f} ms")
    for k, v in stats.statuses.most_common():
        print(f"  {k:<28} {v:>8,}")
    print(f"  server alive: {alive}, serves a good request: {good}, bad log lines: {len(bad)}")
    if failure is not None:
        print("FAILED:", str(failure)[:2000])
    ok = failure is None and alive and good and not bad
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
