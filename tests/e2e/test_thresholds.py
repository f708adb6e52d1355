"""Operating thresholds end to end: a real `riskserve serve` over its own copy of a
models folder, driven over gRPC with our generated stubs and the CLI.

Models: `fraud` v1 and v2 trained on 4,000 generated rows (seeds 1 and 2; each
records the threshold chosen at training in its manifest's `operating_point`),
and v3, a copy of v1 whose manifest has no `operating_point` (as trained before
thresholds were recorded: it serves at 0.5). A fresh folder starts with the
newest, v3, live.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ServerHandle, run_cli, train_model

from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc

pytestmark = pytest.mark.timeout(180)

MODEL = "fraud"
TOKEN = "thresholds-test-token"
RPC_TIMEOUT = 20.0
#: The canary guard never acts here (the versions' scores differ a lot).
ENV = {"RISKSERVE_ADMIN_TOKEN": TOKEN, "RISKSERVE_CANARY_MIN_REQUESTS": str(10**9)}


def manifest_threshold(models: Path, version: int) -> float:
    manifest = json.loads((models / MODEL / str(version) / "manifest.json").read_text())
    return float(manifest.get("operating_point", {"threshold": 0.5})["threshold"])


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from riskserve.training.datagen import run_datagen

    work = tmp_path_factory.mktemp("thresholds")
    data = work / "train.parquet"
    run_datagen(4_000, 0, data)
    models = work / "models"
    for seed in (1, 2):
        train_model(data, models, 20, seed, model=MODEL)
    legacy = models / MODEL / "3"
    shutil.copytree(models / MODEL / "1", legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["operating_point"]
    manifest["version"] = 3
    (legacy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return models


@pytest.fixture
def models(base_models: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(base_models, dst)
    return dst


def call(srv: ServerHandle, method: str, request: Any, token: str | None = TOKEN) -> Any:
    md = [("x-actor", "pytest")]
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    stub = agrpc.ModelAdminStub(srv.channel)
    return getattr(stub, method)(request, metadata=tuple(md), timeout=RPC_TIMEOUT)


def refused(srv: ServerHandle, method: str, request: Any, token: str | None = TOKEN) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        call(srv, method, request, token)
    return info.value


def deployment(srv: ServerHandle) -> Any:
    return call(srv, "GetDeployment", apb.GetDeploymentRequest(model=MODEL))


def set_threshold(
    srv: ServerHandle, version: int, threshold: float = 0.0, clear: bool = False, **kw: Any
) -> Any:
    req = apb.SetThresholdRequest(
        model=MODEL, version=version, threshold=threshold, clear=clear, reason="test"
    )
    return call(srv, "SetThreshold", req, **kw)


def thresholds(d: Any) -> dict[int, tuple[float, bool, float]]:
    """version → (effective threshold, overridden, manifest threshold)."""
    return {t.version: (t.threshold, t.overridden, t.manifest_threshold) for t in d.thresholds}


def test_set_threshold_overrides_survives_a_restart_and_clears(
    models: Path, start_server: Callable[..., ServerHandle]
) -> None:
    own = {v: manifest_threshold(models, v) for v in (1, 2, 3)}
    assert own[3] == 0.5 and all(0 < own[v] < 1 for v in (1, 2)), own
    assert own[1] != 0.5

    srv = start_server(models, env=ENV)
    before = deployment(srv)
    assert thresholds(before) == {v: (t, False, t) for v, t in own.items()}
    listed = call(srv, "ListModels", apb.ListModelsRequest())
    (fraud,) = [m for m in listed.models if m.name == MODEL]
    assert {v.version: v.threshold for v in fraud.versions} == own

    d = set_threshold(srv, 1, 0.42)
    assert d.revision == before.revision + 1
    assert list(d.variants) == list(before.variants)  # not a traffic change
    assert thresholds(d) == {
        1: (0.42, True, own[1]),
        2: (own[2], False, own[2]),
        3: (0.5, False, 0.5),
    }
    assert deployment(srv) == d
    newest = call(srv, "History", apb.HistoryRequest(model=MODEL, limit=1)).revisions[0]
    assert newest == d and "pytest" in newest.actor
    overridden = d

    # refused: values, versions, models, callers; nothing changes
    for bad in (1.5, -0.1, math.nan, math.inf, -math.inf):
        e = refused(
            srv, "SetThreshold", apb.SetThresholdRequest(model=MODEL, version=1, threshold=bad)
        )
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "threshold" in str(e.details()), e.details()
    e = refused(srv, "SetThreshold", apb.SetThresholdRequest(model=MODEL, version=0, threshold=0.3))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in str(e.details())
    e = refused(srv, "SetThreshold", apb.SetThresholdRequest(model=MODEL, version=9, threshold=0.3))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in str(e.details())
    e = refused(
        srv, "SetThreshold", apb.SetThresholdRequest(model="nope", version=1, threshold=0.3)
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    for token in (None, "not-the-token"):
        e = refused(
            srv,
            "SetThreshold",
            apb.SetThresholdRequest(model=MODEL, version=2, threshold=0.3),
            token=token,
        )
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert deployment(srv) == overridden

    # a rollback undoes the last traffic change, not the threshold change after it
    split = apb.SetTrafficRequest(
        model=MODEL,
        variants=[apb.Variant(version=1, weight=0), apb.Variant(version=2, weight=50),
                  apb.Variant(version=3, weight=50)],
        reason="split",
    )  # fmt: skip
    call(srv, "SetTraffic", split)
    set_threshold(srv, 2, 0.9)
    back = call(srv, "Rollback", apb.RollbackRequest(model=MODEL, reason="undo"))
    assert {v.version: v.weight for v in back.variants if v.weight} == {3: 100}
    assert thresholds(back)[1] == (0.42, True, own[1]) and thresholds(back)[2][:2] == (0.9, True)
    set_threshold(srv, 2, clear=True)
    overridden = deployment(srv)
    srv.stop_and_check()

    state = json.loads((models / MODEL / "deployment.json").read_text())
    assert state["history"][-1]["thresholds"] == [[1, 0.42]]

    again = start_server(models, env=ENV)
    assert deployment(again) == overridden  # the override survived the restart
    cleared = set_threshold(again, 1, clear=True)
    assert thresholds(cleared) == {v: (t, False, t) for v, t in own.items()}
    assert deployment(again) == cleared


def test_cli_set_threshold(models: Path, start_server: Callable[..., ServerHandle]) -> None:
    srv = start_server(models, env=ENV)
    base = ("admin", "--server", srv.target, "--token", TOKEN)
    own = manifest_threshold(models, 2)

    p = run_cli(*base, "--reason", "cli", "set-threshold", MODEL, "2", "0.375")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("thresholds: "))
    assert f"v2 0.375 (override; manifest {own:.6g})" in line
    assert "v1 " in line and "v3 0.5 (manifest)" in line
    assert thresholds(deployment(srv))[2] == (0.375, True, own)

    p = run_cli(*base, "set-threshold", MODEL, "2", "--clear")
    assert p.returncode == 0, p.stderr
    assert f"v2 {own:.6g} (manifest)" in p.stdout
    assert thresholds(deployment(srv))[2] == (own, False, own)

    for args in (("2",), ("2", "0.3", "--clear")):
        p = run_cli(*base, "set-threshold", MODEL, *args)
        assert p.returncode == 2 and "THRESHOLD or --clear" in p.stderr
    p = run_cli(*base, "set-threshold", MODEL, "2", "7")
    assert p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "threshold" in p.stderr
    p = run_cli(
        "admin", "--server", srv.target, "--token", "wrong", "set-threshold", MODEL, "2", "0.3"
    )
    assert p.returncode == 1 and "UNAUTHENTICATED" in p.stderr
    assert thresholds(deployment(srv))[2] == (own, False, own)
