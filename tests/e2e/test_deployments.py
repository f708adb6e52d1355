"""Deployments end to end: a real `riskserve serve` subprocess per test (each on its
own copy of the models folder, since deployment state is persisted in
models/<name>/deployment.json), driven over gRPC with our generated stubs.

Models: `fraud` trained twice on 4,000 generated rows (seeds 1 and 2 → versions 1
and 2). Some tests add a version 3 of their own: trained on inverted labels (the
canary guard), trained on another input set (refused), tampered copies (refused),
or a hand-built ONNX model whose scoring fails at runtime on real rows (the
failing shadow).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle, run_cli, train_model

from riskserve.client import build_request
from riskserve.deployments.canary import VariantStats, score_psi
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.inference import grpc_service_pb2_grpc as igrpc
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.routing.table import Deployment, Variant, bucket_of

pytestmark = pytest.mark.timeout(180)

MODEL = "fraud"
TOKEN = "deployments-test-token"
TRAIN_ROWS = 4_000
ROUNDS = 20
TRAFFIC_ROWS = 1_000
TRAFFIC_SEED = 4711
RPC_TIMEOUT = 20.0

#: Stand-ins for loaded models when computing assignments in process.
_ANY_MODEL: Any = object()


# --------------------------------------------------------------------------------------
# the admin client and the server's settings (conftest's start_server starts it)
# --------------------------------------------------------------------------------------


class Admin:
    """ModelAdmin calls with the bearer token: admin.SetTraffic(request) etc."""

    def __init__(self, channel: grpc.Channel, token: str | None = TOKEN) -> None:
        self._stub = agrpc.ModelAdminStub(channel)
        md = [("x-actor", "pytest")]
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        self._md = tuple(md)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any) -> Any:
            return method(request, metadata=self._md, timeout=RPC_TIMEOUT)

        return call

    # conveniences
    def deployment(self) -> apb.Deployment:
        return self.GetDeployment(apb.GetDeploymentRequest(model=MODEL))

    def traffic(self, weights: dict[int, int], salt: str = "") -> apb.Deployment:
        return self.SetTraffic(traffic_request(weights, salt))

    def history(self) -> list[apb.Deployment]:
        return list(self.History(apb.HistoryRequest(model=MODEL)).revisions)


def traffic_request(weights: dict[int, int], salt: str = "") -> apb.SetTrafficRequest:
    return apb.SetTrafficRequest(
        model=MODEL,
        variants=[apb.Variant(version=v, weight=w) for v, w in weights.items()],
        salt=salt,
        reason="test",
    )


def weights_of(d: apb.Deployment) -> dict[int, int]:
    return {v.version: v.weight for v in d.variants}


def live_of(d: apb.Deployment) -> frozenset[int]:
    return frozenset(v.version for v in d.variants if v.weight > 0)


def settings_env(token: str | None = TOKEN, **settings: Any) -> dict[str, str]:
    """RISKSERVE_* variables for `settings` (canary_min_requests=... →
    RISKSERVE_CANARY_MIN_REQUESTS) and the admin token."""
    env = {f"RISKSERVE_{key.upper()}": str(value) for key, value in settings.items()}
    if token is not None:
        env["RISKSERVE_ADMIN_TOKEN"] = token
    return env


#: The canary guard records every request but never acts unless a test lowers this:
#: the fixture models (20 boosting rounds) score in tight clusters, so even v1 and v2
#: (seeds 1 and 2) differ by a score PSI of ~3 on the guard's bins, and the guard
#: would roll back any split between them behind the test's back.
GUARD_IDLE = {"canary_min_requests": 10**9}


@pytest.fixture
def servers(start_server: Callable[..., ServerHandle]) -> Callable[..., ServerHandle]:
    """conftest's start_server with these settings (GUARD_IDLE unless overridden) and
    the admin token; every server is stopped and checked (exit 0, no traceback)
    after the test."""

    def start(
        models: Path, token: str | None = TOKEN, workers: int | None = None, **settings: Any
    ) -> ServerHandle:
        env = settings_env(token, **{**GUARD_IDLE, **settings})
        return start_server(models, env=env, workers=workers)

    return start


# --------------------------------------------------------------------------------------
# models and traffic
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deployments")


@pytest.fixture(scope="module")
def train_data(workdir: Path) -> Path:
    from riskserve.training.datagen import run_datagen

    path = workdir / "train.parquet"
    run_datagen(TRAIN_ROWS, 0, path)
    return path


def train_version(data: Path, models: Path, seed: int, spec: Path = FRAUD_SPEC) -> int:
    """Trains the next version of `fraud` (ROUNDS rounds); returns its number."""
    return int(train_model(data, models, ROUNDS, seed, model=MODEL, spec=spec).ref.version)


@pytest.fixture(scope="module")
def base_models(workdir: Path, train_data: Path) -> Path:
    """fraud v1 (seed 1) and v2 (seed 2). Never served directly: tests copy it."""
    models = workdir / "base-models"
    assert train_version(train_data, models, 1) == 1
    assert train_version(train_data, models, 2) == 2
    return models


@pytest.fixture
def models_copy(base_models: Path, tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str = "models") -> Path:
        dst = tmp_path / name
        shutil.copytree(base_models, dst)
        return dst

    return copy


def input_columns(table: pa.Table) -> dict[str, Any]:
    spec = json.loads(FRAUD_SPEC.read_text())
    out: dict[str, Any] = {}
    for i in spec["inputs"]:
        col = table.column(i["name"])
        if i["dtype"] == "string":
            out[i["name"]] = [str(v) for v in col.to_pylist()]
        else:
            np_type = {"bool": bool, "int": np.int64, "float": np.float64}[i["dtype"]]
            out[i["name"]] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np_type)
    return out


@dataclasses.dataclass(frozen=True)
class Traffic:
    table: pa.Table
    columns: dict[str, Any]
    #: One single-row request per row (no id, no routing key yet).
    rows: tuple[ipb.ModelInferRequest, ...]

    def request(self, i: int, key: str, version: str = "") -> ipb.ModelInferRequest:
        req = ipb.ModelInferRequest()
        req.CopyFrom(self.rows[i % len(self.rows)])
        req.id = key
        req.model_version = version
        req.parameters["routing_key"].string_param = key
        return req


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    from riskserve.training.datagen import generate

    table = generate(TRAFFIC_ROWS, TRAFFIC_SEED)
    cols = input_columns(table)
    spec = json.loads(FRAUD_SPEC.read_text())
    dts = {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}
    rows = []
    for r in range(TRAFFIC_ROWS):
        one = {k: (v[r : r + 1] if isinstance(v, np.ndarray) else [v[r]]) for k, v in cols.items()}
        rows.append(build_request(MODEL, one, dts))
    return Traffic(table, cols, tuple(rows))


def infer_many(
    stub: igrpc.GRPCInferenceServiceStub,
    requests: Sequence[ipb.ModelInferRequest],
    inflight: int = 16,
) -> list[ipb.ModelInferResponse]:
    """Sends every request with at most `inflight` outstanding; raises on any error."""
    out: list[ipb.ModelInferResponse | None] = [None] * len(requests)
    pending: collections.deque[tuple[int, Any]] = collections.deque()
    for i, req in enumerate(requests):
        pending.append((i, stub.ModelInfer.future(req, timeout=RPC_TIMEOUT)))
        if len(pending) >= inflight:
            j, fut = pending.popleft()
            out[j] = fut.result()
    while pending:
        j, fut = pending.popleft()
        out[j] = fut.result()
    return [r for r in out if r is not None]


def variants_for(srv: ServerHandle, traffic: Traffic, keys: Sequence[str]) -> list[int]:
    replies = infer_many(srv.stub, [traffic.request(i, k) for i, k in enumerate(keys)])
    for k, r in zip(keys, replies, strict=True):
        assert r.id == k
        assert r.parameters["variant"].string_param == f"v{r.model_version}"
    return [int(r.model_version) for r in replies]


def in_process(weights: dict[int, int], salt: str) -> Deployment:
    """The real table's assignment for these weights and salt."""
    return Deployment(
        MODEL,
        dict.fromkeys(weights, _ANY_MODEL),
        max(weights.items(), key=lambda vw: (vw[1], vw[0]))[0],
        tuple(Variant(v, w) for v, w in weights.items()),
        salt,
    )


def v1_live(admin: Admin) -> apb.Deployment:
    """A fresh folder starts with the newest version live: put version 1 back."""
    d = admin.traffic({1: 100, 2: 0})
    assert weights_of(d) == {1: 100, 2: 0}
    return d


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clone_version(models: Path, src: int, dst: int, fmt: str | None = None) -> Path:
    """Copies version `src` to `dst` with its manifest renumbered (hashes unchanged)."""
    s, d = models / MODEL / str(src), models / MODEL / str(dst)
    shutil.copytree(s, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["version"] = dst
    if fmt is not None:
        manifest["model_format"] = fmt
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def other_inputs_spec(tmp_path: Path) -> Path:
    """fraud.json without the input chargebacks_180d (and its transform)."""
    spec = json.loads(FRAUD_SPEC.read_text())
    spec["inputs"] = [i for i in spec["inputs"] if i["name"] != "chargebacks_180d"]
    spec["transforms"] = [t for t in spec["transforms"] if t.get("input") != "chargebacks_180d"]
    path = tmp_path / "other-inputs.json"
    path.write_text(json.dumps(spec))
    return path


def rehash(version_dir: Path, *files: str) -> None:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    for f in files:
        manifest["files"][f] = sha256(version_dir / f)
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


# --------------------------------------------------------------------------------------
# hot swap under load
# --------------------------------------------------------------------------------------

N_CLIENTS = 8
CYCLES = 50
WARMUP_SECONDS = 1.0
STEADY_SECONDS = 8.0


@dataclasses.dataclass(frozen=True)
class Change:
    t0: float  # the admin call was sent
    t1: float  # its reply arrived
    op: str
    revision: int
    live: frozenset[int]


@dataclasses.dataclass(frozen=True)
class Reply:
    sent: float
    received: float
    key: str
    version: int
    revision: int
    variant: str


def p99_ms(replies: Sequence[Reply]) -> float:
    return float(np.percentile([r.received - r.sent for r in replies], 99) * 1000)


def test_swap_under_load(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, Any], None],
) -> None:
    # The guard stays on (it records every request) but never acts (GUARD_IDLE): the
    # test's own admin script must be the only writer of revisions.
    srv = servers(models_copy("models"))
    admin = Admin(srv.channel)
    changes: list[Change] = []

    def change(op: str, request: Any) -> apb.Deployment:
        t0 = time.perf_counter()
        resp = getattr(admin, op)(request)
        t1 = time.perf_counter()
        dep = resp.deployment if op in ("LoadVersion", "UnloadVersion") else resp
        changes.append(Change(t0, t1, op, dep.revision, live_of(dep)))
        return dep

    change("SetTraffic", traffic_request({1: 100, 2: 0}))
    d = change("UnloadVersion", apb.UnloadVersionRequest(model=MODEL, version=2))
    assert list(d.loaded_versions) == [1]

    stop = threading.Event()
    results: list[list[Reply]] = [[] for _ in range(N_CLIENTS)]
    failures: list[tuple[float, str, str]] = []

    def client(w: int) -> None:
        channel = grpc.insecure_channel(srv.target)
        stub = igrpc.GRPCInferenceServiceStub(channel)
        mine = results[w]
        n = 0
        try:
            while not stop.is_set():
                key = f"w{w}-{n}"
                req = traffic.request(w * 7919 + n, key)
                n += 1
                sent = time.perf_counter()
                try:
                    resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
                except grpc.RpcError as e:
                    failures.append((sent, e.code().name, str(e.details())))
                    continue
                received = time.perf_counter()
                if resp.id != key:
                    failures.append((sent, "MIXED_UP", f"{resp.id} != {key}"))
                mine.append(
                    Reply(
                        sent,
                        received,
                        key,
                        int(resp.model_version),
                        int(resp.parameters["deployment_revision"].string_param),
                        resp.parameters["variant"].string_param,
                    )
                )
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(N_CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(WARMUP_SECONDS + STEADY_SECONDS)
        swap_start = time.perf_counter()
        for _ in range(CYCLES):
            change("LoadVersion", apb.LoadVersionRequest(model=MODEL, version=2))
            change("SetTraffic", traffic_request({1: 90, 2: 10}))
            change("Promote", apb.PromoteRequest(model=MODEL, version=2))
            d = change("Rollback", apb.RollbackRequest(model=MODEL))
            assert weights_of(d) == {1: 90, 2: 10}
            change("SetTraffic", traffic_request({1: 100, 2: 0}))
            change("UnloadVersion", apb.UnloadVersionRequest(model=MODEL, version=2))
        swap_end = time.perf_counter()
        # Rollback right after an unload undoes the last traffic change (100/0 → 90/10),
        # loading v2 again.
        d = change("Rollback", apb.RollbackRequest(model=MODEL))
        assert weights_of(d) == {1: 90, 2: 10} and list(d.loaded_versions) == [1, 2]
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(RPC_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads)

    replies = sorted((r for rs in results for r in rs), key=lambda r: r.sent)
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:5]}"

    # --- the revision timeline: from History, cross-checked with the admin replies
    history = admin.history()
    by_rev = {h.revision: h for h in history}
    assert sorted(by_rev) == list(range(1, max(by_rev) + 1))
    assert [c.revision for c in changes] == list(
        range(changes[0].revision, changes[0].revision + len(changes))
    )
    assert changes[-1].revision == max(by_rev)
    for c in changes:
        assert live_of(by_rev[c.revision]) == c.live, c
    made = {c.revision: c for c in changes}
    assign = {r: in_process(weights_of(h), h.salt) for r, h in by_rev.items() if weights_of(h)}

    # --- every reply names a version live in its revision, assigned as the table says,
    # and its revision was current at some moment between send and receive
    wrong = []
    for r in replies:
        if r.revision not in made:
            wrong.append((r, "revision not made by this test"))
            continue
        if r.version not in made[r.revision].live:
            wrong.append((r, f"v{r.version} has no weight in revision {r.revision}"))
        if r.variant != f"v{r.version}":
            wrong.append((r, "variant parameter"))
        if assign[r.revision].assign(r.key) != r.version:
            wrong.append((r, "not the key's assignment in that revision"))
        if r.received < made[r.revision].t0:
            wrong.append((r, "revision seen before it was requested"))
        nxt = made.get(r.revision + 1)
        if nxt is not None and r.sent > nxt.t1:
            wrong.append((r, "revision seen after it was replaced"))
    assert not wrong, f"{len(wrong)} inconsistent replies, e.g. {wrong[:5]}"

    swap = [r for r in replies if swap_start <= r.sent < swap_end]
    length = swap_end - swap_start
    steady_len = min(length, STEADY_SECONDS)
    steady = [r for r in replies if swap_start - steady_len <= r.sent < swap_start]
    assert len(swap) > 200 and len(steady) > 200, (len(swap), len(steady))
    served_in_swap = collections.Counter(r.version for r in swap)
    assert served_in_swap[1] > 0 and served_in_swap[2] > 0, served_in_swap
    revisions_seen = {r.revision for r in swap}
    assert len(revisions_seen) > CYCLES, len(revisions_seen)  # replies span many revisions

    p99_steady, p99_swap = p99_ms(steady), p99_ms(swap)
    record_property("p99_steady_ms", round(p99_steady, 3))
    record_property("p99_swap_ms", round(p99_swap, 3))
    with capsys.disabled():
        print(
            f"\n[swap under load] {N_CLIENTS} clients, {CYCLES} cycles x 6 admin changes "
            f"in {length:.2f} s (steady window {steady_len:.2f} s before it): "
            f"steady p99 {p99_steady:.2f} ms over {len(steady)} requests "
            f"({len(steady) / steady_len:.0f}/s), swap p99 {p99_swap:.2f} ms over "
            f"{len(swap)} requests ({len(swap) / length:.0f}/s); served during swap "
            f"v1={served_in_swap[1]} v2={served_in_swap[2]}; "
            f"{len(revisions_seen)} revisions seen in replies"
        )


# --------------------------------------------------------------------------------------
# split and stickiness
# --------------------------------------------------------------------------------------

SPLIT_KEYS = 100_000
SERVER_SAMPLE = 2_000


def test_split_and_stickiness(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    a = servers(models_copy("a"))
    b = servers(models_copy("b"))
    salt = "split-test-salt"
    for srv in (a, b):
        d = Admin(srv.channel).traffic({1: 90, 2: 10}, salt)
        assert weights_of(d) == {1: 90, 2: 10} and d.salt == salt

    keys = [f"customer-{i}" for i in range(SPLIT_KEYS)]
    buckets = np.array([bucket_of(salt, k) for k in keys])
    dep = in_process({1: 90, 2: 10}, salt)
    assigned = np.array([dep.assign(k) for k in keys])
    assert (assigned == np.where(buckets < 9_000, 1, 2)).all()
    share_v2 = float((assigned == 2).mean())
    assert 0.09 <= share_v2 <= 0.11, share_v2

    sample = keys[:SERVER_SAMPLE]
    served = variants_for(a, traffic, sample)
    assert served == assigned[:SERVER_SAMPLE].tolist()
    assert 1 in served and 2 in served

    # Another process, another copy of the folder, same traffic and salt: same answers.
    served_b = variants_for(b, traffic, sample[:500])
    assert served_b == served[:500]

    # 50/50 → 60/40 moves the keys of buckets [5000, 6000) from v2 to v1, and no others.
    before, after = in_process({1: 50, 2: 50}, salt), in_process({1: 60, 2: 40}, salt)
    moves = [(before.assign(k), after.assign(k)) for k in keys]
    moved = [m for m in moves if m[0] != m[1]]
    assert 0.09 <= len(moved) / SPLIT_KEYS <= 0.11, len(moved)
    assert set(moved) == {(2, 1)}

    admin = Admin(a.channel)
    admin.traffic({1: 50, 2: 50})  # empty salt keeps the current one
    assert admin.deployment().salt == salt
    got_before = variants_for(a, traffic, sample)
    admin.traffic({1: 60, 2: 40})
    got_after = variants_for(a, traffic, sample)
    assert got_before == [m[0] for m in moves[:SERVER_SAMPLE]]
    assert got_after == [m[1] for m in moves[:SERVER_SAMPLE]]
    server_moved = [(x, y) for x, y in zip(got_before, got_after, strict=True) if x != y]
    assert set(server_moved) == {(2, 1)}
    assert 0.07 <= len(server_moved) / SERVER_SAMPLE <= 0.13


# --------------------------------------------------------------------------------------
# shadow
# --------------------------------------------------------------------------------------


def build_poison_onnx(version_dir: Path) -> None:
    """A model.onnx over the same features.json that loads and warms up (the
    all-missing warm-up row hashes email_domain to the missing bucket 128) but fails
    in ONNX Runtime on any row with an email domain: Gather(table[1], 128 - bucket)
    reads out of bounds. A real model file, scored by the real runtime."""
    import onnx
    from onnx import TensorProto, helper

    from riskserve._native import FeaturePipeline

    pipe = FeaturePipeline((version_dir / "features.json").read_text())
    j = list(pipe.feature_names).index("email_domain")
    const = helper.make_tensor
    nodes = [
        helper.make_node("Constant", [], ["j"], value=const("jv", TensorProto.INT64, [], [j])),
        helper.make_node("Gather", ["features", "j"], ["col"], axis=1),
        helper.make_node("Cast", ["col"], ["bucket"], to=TensorProto.INT64),
        helper.make_node("Constant", [], ["m"], value=const("mv", TensorProto.INT64, [], [128])),
        helper.make_node("Sub", ["m", "bucket"], ["idx"]),
        helper.make_node(
            "Constant", [], ["table"], value=const("tv", TensorProto.FLOAT, [1], [0.01])
        ),
        helper.make_node("Gather", ["table", "idx"], ["probabilities"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "poison",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, pipe.n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "model.txt").unlink()
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"] = {
        "features.json": sha256(version_dir / "features.json"),
        "model.onnx": sha256(version_dir / "model.onnx"),
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_shadow_never_changes_replies_and_a_failing_shadow_never_reaches_clients(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    from riskserve.registry import ModelRepository
    from riskserve.runtime import load_version

    models = models_copy("models")
    # No shadow may be shed (outcome "dropped") on a busy machine: the counts are exact.
    srv = servers(models, shadow_max_pending=100_000)
    admin = Admin(srv.channel)
    v1_live(admin)
    n = 300
    keys = [f"shadow-{i}" for i in range(n)]
    requests = [traffic.request(i, k) for i, k in enumerate(keys)]

    def replies() -> list[tuple[str, bytes]]:
        out = infer_many(srv.stub, requests)
        assert [r.id for r in out] == keys
        return [(r.model_version, r.raw_output_contents[0]) for r in out]

    baseline = replies()
    assert {v for v, _ in baseline} == {"1"}
    assert srv.metric("riskserve_shadow_requests_total") == 0

    d = admin.SetShadow(apb.SetShadowRequest(model=MODEL, version=2, sample_percent=100))
    assert (d.shadow.version, d.shadow.sample_percent) == (2, 100.0)
    assert replies() == baseline
    wait_for(
        lambda: srv.metric("riskserve_shadow_requests_total", version="2", outcome="ok") >= n,
        10,
        "shadow ok count",
    )
    assert srv.metric("riskserve_shadow_score_abs_diff_count", version="2") >= n

    # A shadow whose scoring fails at runtime: version 3 loads and warms up, then fails
    # on every row with an email domain.
    v3 = clone_version(models, 2, 3, fmt="onnx")
    build_poison_onnx(v3)
    repo = ModelRepository(models)
    poison = load_version(repo, repo.version(MODEL, 3))  # loads: the warm-up passes
    with pytest.raises(Exception, match="out of data bounds"):
        poison.score({k: v[:5] for k, v in traffic.columns.items()})
    with_domain = sum(1 for i in range(n) if traffic.columns["email_domain"][i])
    assert with_domain > n // 2

    r = admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=3))
    assert r.version.platform == "onnxruntime_onnx"
    admin.SetShadow(apb.SetShadowRequest(model=MODEL, version=3, sample_percent=100))
    assert replies() == baseline
    wait_for(
        lambda: (
            srv.metric("riskserve_shadow_requests_total", version="3", outcome="error")
            >= with_domain
        ),
        10,
        "shadow error count",
    )
    assert srv.metric("riskserve_shadow_requests_total", version="3", outcome="error") == (
        with_domain
    )
    assert srv.metric("riskserve_shadow_requests_total", version="3", outcome="ok") == (
        n - with_domain
    )
    assert srv.metric("riskserve_shadow_requests_total", outcome="dropped") == 0
    failed = srv.events("shadow scoring failed")
    assert len(failed) == with_domain
    assert all(e["version"] == "3" and "out of data bounds" in e["error"] for e in failed)
    # the clients saw only successes
    assert srv.metric("riskserve_requests_total", code="OK") == 3 * n
    assert srv.metric("riskserve_requests_total") == 3 * n


# --------------------------------------------------------------------------------------
# refused versions
# --------------------------------------------------------------------------------------


def test_refused_versions_leave_the_deployment_alone(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    train_data: Path,
    tmp_path: Path,
) -> None:
    models = models_copy("models")
    srv = servers(models)
    admin = Admin(srv.channel)
    v1_live(admin)

    # v3: trained on another input set (fraud.json without chargebacks_180d)
    assert train_version(train_data, models, 3, other_inputs_spec(tmp_path)) == 3

    # v4: model.txt tampered after registration (hash mismatch)
    v4 = clone_version(models, 2, 4)
    (v4 / "model.txt").write_bytes((v4 / "model.txt").read_bytes() + b"\n")

    # v5: features.json does not compile (a negative std), manifest hash updated
    v5 = clone_version(models, 2, 5)
    fspec = json.loads((v5 / "features.json").read_text())
    for t in fspec["transforms"]:
        for step in t.get("steps") or []:
            if step.get("op") == "standardize":
                step["std"] = -1.0
    (v5 / "features.json").write_text(json.dumps(fspec))
    rehash(v5, "features.json")

    cases = {
        3: ["inputs differ from version 1", "chargebacks_180d:INT64"],
        4: [str(v4 / "model.txt"), "does not match the manifest"],
        5: [str(v5 / "features.json")],
    }
    requests = [traffic.request(i, f"refused-{i}") for i in range(50)]
    history = admin.history()
    for version, needles in cases.items():
        before = admin.deployment()
        err = rpc_error(
            lambda v=version: admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=v))
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (version, err.details())
        details = str(err.details())
        assert f"{MODEL} version {version} refused" in details
        for needle in needles:
            assert needle in details, (version, details)
        assert admin.deployment() == before
        out = infer_many(srv.stub, requests)
        assert {r.model_version for r in out} == {"1"}

    refused = {e["version"]: e for e in srv.events("model version refused")}
    assert set(refused) == {4, 5}  # v3 loads; it is refused for its inputs
    assert "std" in refused[5]["reason"]
    states = {
        v.version: (v.state, v.reason)
        for m in admin.ListModels(apb.ListModelsRequest()).models
        if m.name == MODEL
        for v in m.versions
    }
    assert states[1][0] == "LOADED" and states[2][0] == "LOADED"
    assert states[3][0] == "AVAILABLE"
    assert states[4][0] == "REFUSED" and "does not match" in states[4][1]
    assert states[5] == ("AVAILABLE", "")  # hashes match; the spec is checked at load
    assert admin.history() == history  # no revision was added


def test_a_fresh_start_refuses_versions_with_other_inputs(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    train_data: Path,
    tmp_path: Path,
) -> None:
    """Without deployment state the newest version goes live, and older versions
    whose inputs differ are refused as LoadVersion would refuse them, so no split
    can mix input sets (half the clients would get INVALID_ARGUMENT)."""
    models = models_copy("models")
    assert train_version(train_data, models, 3, other_inputs_spec(tmp_path)) == 3
    srv = servers(models)
    refused = {e["version"]: e["reason"] for e in srv.events("model version refused")}
    assert set(refused) == {1, 2}, srv.log_text()
    assert all("inputs differ from version 3" in r for r in refused.values()), refused
    admin = Admin(srv.channel)
    d = admin.deployment()
    assert weights_of(d) == {3: 100} and list(d.loaded_versions) == [3]
    err = rpc_error(lambda: admin.traffic({1: 50, 3: 50}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 1 is not loaded" in str(err.details())
    err = rpc_error(lambda: admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=1)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "inputs differ from version 3" in str(err.details())
    stub = srv.stub
    md = stub.ModelMetadata(ipb.ModelMetadataRequest(name=MODEL), timeout=RPC_TIMEOUT)
    assert list(md.versions) == ["3"]
    assert "chargebacks_180d" not in {i.name for i in md.inputs}
    dts = {i.name: i.datatype for i in md.inputs}
    cols = {k: v[:20] for k, v in traffic.columns.items() if k in dts}
    resp = stub.ModelInfer(build_request(MODEL, cols, dts), timeout=RPC_TIMEOUT)
    assert resp.model_version == "3" and list(resp.outputs[0].shape) == [20]


# --------------------------------------------------------------------------------------
# authentication
# --------------------------------------------------------------------------------------

#: Admin method → (a request, the code a valid token gets: OK or a bad-argument error).
ADMIN_CALLS: dict[str, tuple[Any, grpc.StatusCode]] = {
    "ListModels": (apb.ListModelsRequest(), grpc.StatusCode.OK),
    "LoadVersion": (apb.LoadVersionRequest(model=MODEL, version=1), grpc.StatusCode.OK),
    "UnloadVersion": (
        apb.UnloadVersionRequest(model=MODEL, version=99),
        grpc.StatusCode.NOT_FOUND,
    ),
    "GetDeployment": (apb.GetDeploymentRequest(model=MODEL), grpc.StatusCode.OK),
    "SetTraffic": (traffic_request({1: 50}), grpc.StatusCode.INVALID_ARGUMENT),
    "SetShadow": (
        apb.SetShadowRequest(model=MODEL, version=2, sample_percent=150),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "Promote": (apb.PromoteRequest(model=MODEL, version=99), grpc.StatusCode.FAILED_PRECONDITION),
    "Rollback": (apb.RollbackRequest(model="no-such-model"), grpc.StatusCode.NOT_FOUND),
    "History": (apb.HistoryRequest(model=MODEL), grpc.StatusCode.OK),
    "SetThreshold": (
        apb.SetThresholdRequest(model=MODEL, version=1, threshold=1.5),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}
REPOSITORY_CALLS: dict[str, tuple[Any, grpc.StatusCode]] = {
    "RepositoryIndex": (ipb.RepositoryIndexRequest(), grpc.StatusCode.OK),
    "RepositoryModelLoad": (
        ipb.RepositoryModelLoadRequest(model_name=""),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "RepositoryModelUnload": (
        ipb.RepositoryModelUnloadRequest(model_name=""),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}
#: Valid, state-changing requests that must not run without the token.
MUTATIONS: dict[str, Any] = {
    "SetTraffic": traffic_request({1: 50, 2: 50}),
    "Promote": apb.PromoteRequest(model=MODEL, version=1),
    "UnloadVersion": apb.UnloadVersionRequest(model=MODEL, version=1),
    "SetThreshold": apb.SetThresholdRequest(model=MODEL, version=1, threshold=0.5),
    "RepositoryModelUnload": ipb.RepositoryModelUnloadRequest(model_name=MODEL),
}


def _call(srv: ServerHandle, method: str, request: Any, metadata: Sequence[tuple[str, str]]) -> Any:
    if method.startswith("Repository"):
        stub: Any = srv.stub
    else:
        stub = agrpc.ModelAdminStub(srv.channel)
    return getattr(stub, method)(request, metadata=tuple(metadata), timeout=RPC_TIMEOUT)


def _code(srv: ServerHandle, method: str, request: Any, metadata: Sequence[tuple[str, str]]) -> Any:
    try:
        _call(srv, method, request, metadata)
    except grpc.RpcError as e:
        return e.code(), str(e.details())
    return grpc.StatusCode.OK, ""


@pytest.mark.unit  # no server: the tables against the service descriptors
def test_the_call_tables_cover_every_admin_method() -> None:
    admin_methods = {m.name for m in apb.DESCRIPTOR.services_by_name["ModelAdmin"].methods}
    assert admin_methods == set(ADMIN_CALLS)
    inference = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    assert {m.name for m in inference if m.name.startswith("Repository")} == set(REPOSITORY_CALLS)


def test_admin_needs_the_token_and_inference_does_not(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = servers(models_copy("models"))
    right = [("authorization", f"Bearer {TOKEN}")]
    wrongs = {
        "none": [],
        "wrong": [("authorization", "Bearer not-the-token")],
        "prefix": [("authorization", f"Bearer {TOKEN[:-1]}")],
        "longer": [("authorization", f"Bearer {TOKEN}x")],
        "scheme": [("authorization", f"Basic {TOKEN}")],
        "bare": [("authorization", TOKEN)],
        "empty": [("authorization", "Bearer ")],
        "other-header": [("x-token", TOKEN)],
    }
    before = Admin(srv.channel).deployment()
    calls = {**ADMIN_CALLS, **REPOSITORY_CALLS}
    for method, (request, _) in calls.items():
        for why, md in wrongs.items():
            code, details = _code(srv, method, request, md)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, why, code, details)
            assert "Bearer <token>" in details
    for method, request in MUTATIONS.items():
        code, _ = _code(srv, method, request, wrongs["wrong"])
        assert code == grpc.StatusCode.UNAUTHENTICATED, method
    assert Admin(srv.channel).deployment() == before  # nothing ran

    for method, (request, want) in calls.items():
        code, details = _code(srv, method, request, right)
        assert code == want, (method, code, details)

    # inference stays open
    stub = srv.stub
    resp = stub.ModelInfer(traffic.request(0, "open"), timeout=RPC_TIMEOUT)
    assert resp.model_version == "2"
    assert stub.ServerLive(ipb.ServerLiveRequest(), timeout=RPC_TIMEOUT).live
    md = stub.ModelMetadata(ipb.ModelMetadataRequest(name=MODEL), timeout=RPC_TIMEOUT)
    assert list(md.versions) == ["1", "2"]
    refused = srv.events("admin call refused")
    assert len(refused) == len(calls) * len(wrongs) + len(MUTATIONS)


def test_without_a_configured_token_the_admin_api_is_closed(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = servers(models_copy("models"), token=None)
    assert srv.events("no admin credential configured: the admin API refuses every call")
    for method, (request, _) in {**ADMIN_CALLS, **REPOSITORY_CALLS}.items():
        for md in ([], [("authorization", f"Bearer {TOKEN}")], [("authorization", "Bearer ")]):
            code, details = _code(srv, method, request, md)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, md, code)
            assert "admin API disabled" in details
    resp = srv.stub.ModelInfer(traffic.request(0, "open"), timeout=RPC_TIMEOUT)
    assert resp.model_version == "2"


# --------------------------------------------------------------------------------------
# restart
# --------------------------------------------------------------------------------------


def test_restart_restores_the_deployment_exactly(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    models = models_copy("models")
    first = servers(models)
    admin = Admin(first.channel)
    admin.traffic({1: 70, 2: 30}, "abc")
    admin.SetShadow(
        apb.SetShadowRequest(model=MODEL, version=2, sample_percent=25, reason="watch v2")
    )
    before = admin.deployment()
    assert weights_of(before) == {1: 70, 2: 30} and before.salt == "abc"
    assert (before.shadow.version, before.shadow.sample_percent) == (2, 25.0)
    history = admin.history()
    keys = [f"restart-{i}" for i in range(400)]
    variants = variants_for(first, traffic, keys)
    assert variants == [in_process({1: 70, 2: 30}, "abc").assign(k) for k in keys]
    assert set(variants) == {1, 2}
    first.stop_and_check()

    state = json.loads((models / MODEL / "deployment.json").read_text())
    assert state["current"] == before.revision

    second = servers(models)
    admin = Admin(second.channel)
    assert admin.deployment() == before  # revision, variants, salt, shadow, loaded, ...
    assert admin.history() == history
    assert variants_for(second, traffic, keys) == variants
    assert second.events("deployment restored")[0]["revision"] == before.revision


# --------------------------------------------------------------------------------------
# the canary guard
# --------------------------------------------------------------------------------------


def test_canary_guard_rolls_back_a_bad_canary(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    train_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from riskserve.registry import ModelRepository
    from riskserve.runtime import load_version

    models = models_copy("models")
    # The latency ratio is raised so that a busy test machine cannot trip it: this test
    # is about the score PSI bound (error and latency bounds: tests/deployments).
    srv = servers(
        models, canary_min_requests=100, canary_check_seconds=0.5, canary_max_p95_ratio=50.0
    )
    admin = Admin(srv.channel)
    v1_live(admin)

    # The canary: trained on inverted labels, so it scores nearly everything as fraud.
    table = pq.read_table(train_data)
    flipped = pa.array(1 - table.column("is_fraud").to_numpy(), type=pa.int64())
    bad_data = tmp_path / "inverted.parquet"
    pq.write_table(
        table.set_column(table.schema.get_field_index("is_fraud"), "is_fraud", flipped), bad_data
    )
    assert train_version(bad_data, models, 3) == 3

    repo = ModelRepository(models)
    scores = {v: load_version(repo, repo.version(MODEL, v)).score(traffic.columns) for v in (1, 3)}
    st = {v: VariantStats() for v in scores}
    for v, s in scores.items():
        st[v].add_scores(s)
    psi = score_psi(st[3].scores, st[1].scores)
    assert psi > 0.25, psi
    with capsys.disabled():
        print(f"\n[canary guard] score PSI of the inverted-label canary vs v1: {psi:.2f}")

    # A healthy canary (a byte-identical copy of v1 as v4) at 50/50 is left alone.
    clone_version(models, 1, 4)
    admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=4))
    good = admin.traffic({1: 50, 4: 50})
    out = infer_many(srv.stub, [traffic.request(i, f"good-{i}") for i in range(400)], inflight=4)
    counts = collections.Counter(r.model_version for r in out)
    assert counts["1"] >= 100 and counts["4"] >= 100, counts
    time.sleep(1.2)  # two guard periods
    assert admin.deployment() == good
    assert not srv.events("canary rolled back")
    admin.traffic({1: 100, 4: 0})

    admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=3))
    before = admin.deployment()
    split = admin.traffic({1: 50, 3: 50})
    assert weights_of(split) == {1: 50, 3: 50}
    requests = [traffic.request(i, f"canary-{i}") for i in range(600)]
    out = infer_many(srv.stub, requests, inflight=4)
    counts = collections.Counter(r.model_version for r in out)
    assert counts["1"] >= 100 and counts["3"] >= 100, counts

    def rolled_back() -> apb.Deployment | None:
        d = admin.deployment()
        return d if d.revision > split.revision else None

    after = wait_for(rolled_back, 10, "the guard's rollback")
    assert weights_of(after) == {1: 100, 3: 0}  # the canary's share went to the control
    assert (after.salt, after.shadow) == (before.salt, before.shadow)
    newest = admin.history()[0]
    assert newest.revision == after.revision
    assert newest.actor == "canary-guard"
    assert newest.reason.startswith("canary v3: score PSI against the control"), newest.reason
    assert "> 0.25" in newest.reason

    def guard_rollbacks() -> float:
        return sum(
            srv.metric("riskserve_rollbacks_total", reason=r)
            for r in ("canary_error_ratio", "canary_latency", "canary_score_psi")
        )

    assert guard_rollbacks() == 1
    assert srv.metric("riskserve_rollbacks_total", reason="canary_score_psi") == 1
    (event,) = srv.events("canary rolled back")
    assert (event["model"], event["version"], event["breach"]) == (MODEL, 3, "score_psi")
    # The rolled-back deployment stays put: one more guard period, more traffic.
    infer_many(srv.stub, requests[:200], inflight=4)
    time.sleep(1.2)
    assert admin.deployment() == after
    assert guard_rollbacks() == 1


# --------------------------------------------------------------------------------------
# the V2 repository extension
# --------------------------------------------------------------------------------------


def keys_for(weights: dict[int, int], salt: str, version: int, n: int, prefix: str) -> list[str]:
    """`n` routing keys the real assignment sends to `version` under `weights`."""
    dep = in_process(weights, salt)
    out = [k for k in (f"{prefix}-{i}" for i in range(100 * n)) if dep.assign(k) == version]
    assert len(out) >= n
    return out[:n]


def test_the_guard_lowers_a_failing_canary_and_clients_cannot_trip_it(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    """The probes of the security review: (1) a client pinning its routing key to a
    healthy canary and sending 2,000-row requests must not get it rolled back (its
    big requests have no like control requests to be compared with); (2) a canary that
    really fails at 10 % after a 50/50 split goes to 0 %, never back to 50 %; (3) a
    manual rollback afterwards never gives it traffic again."""
    models = models_copy("models")
    # The prediction log off: its writer's burst after the 2,000-row requests below
    # adds GIL waits that a 30-sample canary p95 sees on a loaded machine (issue 11's
    # note; bench/README.md, the feedback loop). This test is about the guard.
    srv = servers(models, canary_min_requests=50, canary_check_seconds=0.3, prediction_log=False)
    admin = Admin(srv.channel)
    v1_live(admin)
    clone_version(models, 1, 4)  # a healthy canary: v1's model as v4
    admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=4))
    admin.traffic({1: 50, 2: 0, 4: 50})
    split = admin.traffic({1: 90, 2: 0, 4: 10})
    pinned = keys_for({1: 90, 4: 10}, split.salt, 4, 40, "big")
    dts = {
        i.name: i.datatype
        for i in srv.stub.ModelMetadata(ipb.ModelMetadataRequest(name=MODEL)).inputs
    }
    big_cols = {
        k: (np.resize(v, 2_000) if isinstance(v, np.ndarray) else (v * 2)[:2_000])
        for k, v in traffic.columns.items()
    }
    big = [build_request(MODEL, big_cols, dts, parameters={"routing_key": k}) for k in pinned]
    out = infer_many(srv.stub, big * 2, inflight=2)
    assert {r.model_version for r in out} == {"4"}
    # Then ordinary traffic (after the big requests: a canary's own batch queue behind
    # a 2,000-row request does make its 1-row requests slower, for real).
    out = infer_many(srv.stub, [traffic.request(i, f"small-{i}") for i in range(600)], inflight=4)
    assert sum(1 for r in out if r.model_version == "4") >= 30
    time.sleep(1.0)  # three guard periods
    assert admin.deployment() == split, "a healthy canary was rolled back"
    assert not srv.events("canary rolled back")

    # A canary that fails on every row with an email domain (a poisoned ONNX model):
    # its clients get INTERNAL, which the server logs.
    srv.allow_internal_errors = True
    v3 = clone_version(models, 2, 3, fmt="onnx")
    build_poison_onnx(v3)
    admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=3))
    admin.traffic({1: 50, 2: 0, 3: 50, 4: 0})
    split = admin.traffic({1: 90, 2: 0, 3: 10, 4: 0})
    assert srv.metric("riskserve_rollbacks_total") == 0
    failing = [i for i in range(len(traffic.rows)) if traffic.columns["email_domain"][i]]
    to_v3 = keys_for({1: 90, 3: 10}, split.salt, 3, 80, "bad")
    for i, k in zip(failing, to_v3, strict=False):
        with contextlib.suppress(grpc.RpcError):
            srv.stub.ModelInfer(traffic.request(i, k), timeout=RPC_TIMEOUT)

    def rolled_back() -> apb.Deployment | None:
        d = admin.deployment()
        return d if d.revision > split.revision else None

    after = wait_for(rolled_back, 10, "the guard's rollback")
    assert weights_of(after) == {1: 100, 2: 0, 3: 0, 4: 0}  # 10 % went to v1, not 50 % to v3
    newest = admin.history()[0]
    assert newest.actor == "canary-guard" and newest.reason.startswith("canary v3: error ratio")
    assert srv.metric("riskserve_rollbacks_total", reason="canary_error_ratio") == 1

    # A manual rollback skips the splits that would give v3 traffic again (90/10,
    # 50/50: with v3 held at 0 they equal the current one) and undoes to the v4 canary.
    d = admin.Rollback(apb.RollbackRequest(model=MODEL))
    assert weights_of(d).get(3, 0) == 0
    assert live_of(d) == {1, 4} and weights_of(d)[4] == 10
    # An operator can still give v3 traffic explicitly.
    assert weights_of(admin.traffic({1: 95, 3: 5, 2: 0, 4: 0}))[3] == 5


def test_repository_extension(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = servers(models_copy("models"))
    md = (("authorization", f"Bearer {TOKEN}"),)
    stub = srv.stub
    admin = Admin(srv.channel)
    v1_live(admin)
    admin.UnloadVersion(apb.UnloadVersionRequest(model=MODEL, version=2))

    def index(ready: bool = False) -> dict[tuple[str, str], str]:
        r = stub.RepositoryIndex(ipb.RepositoryIndexRequest(ready=ready), metadata=md)
        return {(m.name, m.version): m.state for m in r.models}

    assert index() == {(MODEL, "1"): "READY", (MODEL, "2"): "UNAVAILABLE"}
    assert index(ready=True) == {(MODEL, "1"): "READY"}

    load = ipb.RepositoryModelLoadRequest(model_name=MODEL)
    load.parameters["version"].string_param = "2"
    stub.RepositoryModelLoad(load, metadata=md, timeout=RPC_TIMEOUT)
    assert index() == {(MODEL, "1"): "READY", (MODEL, "2"): "READY"}
    assert weights_of(admin.deployment()) == {1: 0, 2: 100}
    keys = [f"repo-{i}" for i in range(200)]
    assert set(variants_for(srv, traffic, keys)) == {2}

    stub.RepositoryModelUnload(
        ipb.RepositoryModelUnloadRequest(model_name=MODEL), metadata=md, timeout=RPC_TIMEOUT
    )
    err = rpc_error(lambda: stub.ModelInfer(traffic.request(0, "gone"), timeout=RPC_TIMEOUT))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(lambda: stub.ModelReady(ipb.ModelReadyRequest(name=MODEL), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert index() == {(MODEL, "1"): "UNAVAILABLE", (MODEL, "2"): "UNAVAILABLE"}

    # Without a version parameter the newest version is loaded and gets all traffic.
    stub.RepositoryModelLoad(
        ipb.RepositoryModelLoadRequest(model_name=MODEL), metadata=md, timeout=RPC_TIMEOUT
    )
    assert index(ready=True) == {(MODEL, "2"): "READY"}
    assert set(variants_for(srv, traffic, keys[:50])) == {2}
    newest = admin.history()[0]
    assert (newest.actor, newest.reason) == ("admin", "RepositoryModelLoad")
    assert weights_of(newest) == {2: 100} and list(newest.loaded_versions) == [2]

    # Rollback skips the removal and restores the traffic from before it, loading v1.
    d = admin.Rollback(apb.RollbackRequest(model=MODEL))
    assert weights_of(d) == {1: 100} and list(d.loaded_versions) == [1, 2]
    assert set(variants_for(srv, traffic, keys[:50])) == {1}


# --------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("admin", *args)


def test_cli_admin(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle]
) -> None:
    srv = servers(models_copy("models"))
    base = ("--server", srv.target, "--token", TOKEN)

    p = cli(*base, "models")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["model", "version", "state", "platform", "sha256"]
    rows = {tuple(ln.split()[:4]) for ln in lines[1:]}
    assert rows == {(MODEL, "1", "LOADED", "lightgbm"), (MODEL, "2", "LOADED", "lightgbm")}

    p = cli(*base, "--reason", "cli test", "set-traffic", MODEL, "1=90", "2=10")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"model {MODEL}  revision 2" in out
    assert any(ln.split() == ["v1", "90%"] for ln in out.splitlines()), out
    assert any(ln.split() == ["v2", "10%"] for ln in out.splitlines()), out
    assert out.rstrip().endswith(": cli test")
    d = Admin(srv.channel).deployment()
    assert weights_of(d) == {1: 90, 2: 10} and d.reason == "cli test"

    p = cli("--server", srv.target, "--token", "wrong", "models")
    assert p.returncode == 1
    assert p.stdout == ""
    assert "riskserve admin models: UNAUTHENTICATED" in p.stderr
    p = cli("--server", srv.target, "--token", "wrong", "set-traffic", MODEL, "1=10", "2=90")
    assert p.returncode == 1 and "UNAUTHENTICATED" in p.stderr
    assert weights_of(Admin(srv.channel).deployment()) == {1: 90, 2: 10}
