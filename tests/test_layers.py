"""The layer rules of docs/architecture.md, kept by import-linter (.importlinter):
on the real package, and on a copy with one upward import added, which must break.
And what import-linter cannot see: the modules the supervisor runs before it forks
load neither gRPC nor prometheus_client (multiprocess metrics are chosen when
prometheus_client is imported, and gRPC must not exist across a fork)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT), str(cwd / ".importlinter"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_contract_is_kept() -> None:
    out = lint(ROOT, ROOT / "python")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(
    "module,line,contract",
    [
        ("routing/table.py", "from riskserve.deployments import service", "point down"),
        ("dataplane.py", "import grpc", "gRPC or protobuf"),
        ("client.py", "from riskserve.transport import codec", "nothing of the server"),
        ("registry/repository.py", "import riskserve.runtime", "point down"),
        ("monitoring/metrics.py", "from riskserve.runtime import LoadedModel", "point down"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    pkg = tmp_path / "python" / "riskserve"
    shutil.copytree(
        ROOT / "python" / "riskserve", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = pkg / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = lint(tmp_path, tmp_path / "python")
    assert out.returncode != 0, out.stdout
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), out.stdout


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module", ["riskserve.supervisor", "riskserve.config", "riskserve.worker", "riskserve.cli"]
)
def test_the_supervisor_side_loads_no_grpc_or_prometheus(module: str) -> None:
    loaded = loaded_after(module)
    heavy = {m for m in loaded if m.split(".")[0] in ("grpc", "prometheus_client")}
    assert heavy == set()
    assert "riskserve.server" not in loaded
