"""Malformed model files against a real server (issue 10, item 1): a model.txt
whose hashes match its manifest but which aborts LightGBM's parser (num_leaves
of a tree edited, the manifest re-hashed by the registry's own writer).

Admin LoadVersion of such a version answers FAILED_PRECONDITION with the reason
and the server keeps serving; a fresh start with it as the newest version serves
the good one, and the next start does not check either version again (their
verdicts are kept under models/.checked), so a restart cannot crash-loop."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ServerHandle, served_versions, train_model

from riskserve.client import build_request
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.registry import ModelRepository, VersionRef
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(180)

MODEL = "fraud"
TOKEN = "bad-models-test-token"
RPC_TIMEOUT = 30.0
CRASHED = re.compile(r"model\.txt crashed LightGBM's parser in a check process \(SIG(ABRT|SEGV)\)")


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud/1, trained. Never served directly: tests copy it."""
    d = tmp_path_factory.mktemp("bad-models")
    run_datagen(3000, 3, d / "train.parquet")
    train_model(d / "train.parquet", d / "models", rounds=20, seed=1)
    return d / "models"


@pytest.fixture
def models(base_models: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(base_models, dst)
    return dst


def add_malformed_version(models: Path) -> VersionRef:
    """The next version of fraud: version 1 with the first tree's num_leaves made
    huge, registered by the registry (the manifest holds the new sha256)."""
    repo = ModelRepository(models)
    src = repo.version(MODEL, 1).path
    manifest = json.loads((src / "manifest.json").read_text())
    files = {f: (src / f).read_bytes() for f in manifest["files"]}
    text, n = re.subn(
        rb"^num_leaves=\d+$", b"num_leaves=1000000000", files["model.txt"], count=1, flags=re.M
    )
    assert n == 1
    files["model.txt"] = text
    meta = {k: v for k, v in manifest.items() if k not in ("files", "version")}
    ref = repo.write_version(MODEL, files, meta)
    assert repo.verify(ref).model_sha256 == manifest_sha(ref)
    return ref


def manifest_sha(ref: VersionRef) -> str:
    return str(json.loads((ref.path / "manifest.json").read_text())["files"]["model.txt"])


def admin_call(srv: ServerHandle, method: str, request: Any) -> Any:
    stub = agrpc.ModelAdminStub(srv.channel)
    md = (("authorization", f"Bearer {TOKEN}"), ("x-actor", "pytest"))
    return getattr(stub, method)(request, metadata=md, timeout=RPC_TIMEOUT)


def score(srv: ServerHandle, rows: int = 8) -> ipb.ModelInferResponse:
    md = srv.stub.ModelMetadata(ipb.ModelMetadataRequest(name=MODEL), timeout=RPC_TIMEOUT)
    dts = {i.name: i.datatype for i in md.inputs}
    cols = columns_of(generate(rows, 11), list(dts))
    resp: ipb.ModelInferResponse = srv.stub.ModelInfer(
        build_request(MODEL, cols, dts), timeout=RPC_TIMEOUT
    )
    assert list(resp.outputs[0].shape) == [rows]
    return resp


def checked_versions(srv: ServerHandle) -> list[int]:
    """The versions this server started a check process for."""
    return [int(e["version"]) for e in srv.events("model version checked")]


def test_loading_a_malformed_version_is_refused_and_the_server_keeps_serving(
    models: Path, start_server: Callable[..., ServerHandle]
) -> None:
    srv = start_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
    assert score(srv).model_version == "1"
    bad = add_malformed_version(models)

    for attempt in range(2):
        with pytest.raises(grpc.RpcError) as info:
            admin_call(srv, "LoadVersion", apb.LoadVersionRequest(model=MODEL, version=2))
        err = info.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        details = str(err.details())
        assert str(bad.path / "model.txt") in details and CRASHED.search(details), details

        assert srv.proc.poll() is None, srv.log_text()[-3000:]  # alive
        assert score(srv).model_version == "1", attempt  # and serving
        assert served_versions(srv.target, [MODEL]) == {MODEL: ["1"]}
    # One check process for version 2: the second refusal came from its kept verdict.
    assert checked_versions(srv) == [1, 2]
    refused = [e for e in srv.events("model version refused") if e["version"] == 2]
    assert len(refused) == 2 and all(CRASHED.search(e["reason"]) for e in refused)
    dep = admin_call(srv, "GetDeployment", apb.GetDeploymentRequest(model=MODEL))
    assert list(dep.loaded_versions) == [1]


def test_a_fresh_start_with_a_malformed_newest_version_serves_the_good_one(
    models: Path, launch_server: Callable[..., ServerHandle]
) -> None:
    """Two fresh starts (no deployment.json, as after a crash before it was written):
    each serves version 1; the second starts no check process."""
    bad = add_malformed_version(models)
    state = models / MODEL / "deployment.json"
    for start in range(2):
        state.unlink(missing_ok=True)
        srv = launch_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
        try:
            assert served_versions(srv.target, [MODEL]) == {MODEL: ["1"]}, srv.log_text()
            assert score(srv).model_version == "1"
            refused = {e["version"]: e["reason"] for e in srv.events("model version refused")}
            assert set(refused) == {2}, (start, refused)
            assert str(bad.path / "model.txt") in refused[2] and CRASHED.search(refused[2])
            # The first start checks both versions; the next one reads their verdicts.
            assert checked_versions(srv) == ([1, 2] if start == 0 else []), start
        finally:
            srv.stop_and_check()
        assert json.loads(state.read_text())["history"][-1]["loaded"] == [1]
    kept = sorted((models / ".checked").glob("*.json"))
    assert sorted(json.loads(p.read_text())["ok"] for p in kept) == [False, True]


def test_list_models_shows_a_version_known_to_be_bad_as_refused(
    models: Path, start_server: Callable[..., ServerHandle]
) -> None:
    add_malformed_version(models)
    srv = start_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
    assert served_versions(srv.target, [MODEL]) == {MODEL: ["1"]}  # version 2 refused
    listing = admin_call(srv, "ListModels", apb.ListModelsRequest())
    (model,) = [m for m in listing.models if m.name == MODEL]
    states = {v.version: (v.state, v.reason) for v in model.versions}
    assert states[1] == ("LOADED", "")
    assert states[2][0] == "REFUSED" and CRASHED.search(states[2][1]), states
    assert checked_versions(srv) == [1, 2]  # the listing started no check process
