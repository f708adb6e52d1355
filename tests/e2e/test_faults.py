"""Faults a long-running server must absorb: many load/unload cycles leave memory,
file descriptors and threads flat. `make test` runs 100 cycles (~0.3 s each: every
load verifies, parses, warms up and agreement-checks the version, every change
fsyncs deployment.json); for the long run:
RISKSERVE_FAULT_CYCLES=1000 .venv/bin/python -m pytest -s tests/e2e/test_faults.py"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ServerHandle

from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc

pytestmark = pytest.mark.timeout(600)

TOKEN = "faults-token"
CYCLES = int(os.environ.get("RISKSERVE_FAULT_CYCLES", "100"))


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open fds, threads) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def test_load_unload_cycles_leave_memory_fds_and_threads_flat(
    models_dir: Path,
    start_server: Callable[..., ServerHandle],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models, ignore=shutil.ignore_patterns("fraud_onnx"))
    shutil.copytree(models / "fraud" / "1", models / "fraud" / "2")
    manifest = models / "fraud" / "2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 2'))
    srv = start_server(models, env={"RISKSERVE_ADMIN_TOKEN": TOKEN})
    admin = agrpc.ModelAdminStub(srv.channel)
    md = (("authorization", f"Bearer {TOKEN}"),)

    # A fresh folder starts with the newest (v2) live: put v1 back, v2 spare.
    admin.Promote(apb.PromoteRequest(model="fraud", version=1), metadata=md)

    def cycle() -> None:
        admin.LoadVersion(apb.LoadVersionRequest(model="fraud", version=2), metadata=md)
        admin.UnloadVersion(apb.UnloadVersionRequest(model="fraud", version=2), metadata=md)

    for _ in range(20):  # warm: allocator pools, caches, the kept check verdict
        cycle()
    before = proc_stats(srv.proc.pid)
    for _ in range(CYCLES):
        cycle()
    after = proc_stats(srv.proc.pid)
    with capsys.disabled():
        print(
            f"\n[faults] {CYCLES} load/unload cycles: RSS {before[0]:.0f} → {after[0]:.0f} MiB, "
            f"fds {before[1]} → {after[1]}, threads {before[2]} → {after[2]}"
        )
    assert after[0] - before[0] < 25, (before, after)
    assert after[1] <= before[1] + 2, (before, after)
    assert after[2] <= before[2] + 2, (before, after)
    d = admin.GetDeployment(apb.GetDeploymentRequest(model="fraud"), metadata=md)
    assert 2 not in d.loaded_versions and 1 in d.loaded_versions
