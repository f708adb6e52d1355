"""The Prometheus rules in deploy/prometheus: `promtool check rules` (syntax, PromQL)
and `promtool test rules` (the unit tests in rules_test.yml: fleet PSI computed by
hand, alert timing). promtool is required: `make tools` installs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed (it comes with Prometheus): run `make tools` to install "
            "Debian's prometheus package, which provides promtool and prometheus",
            pytrace=False,
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=50, check=False
    )


def test_rules_are_valid() -> None:
    res = _run("check", "rules", str(DEPLOY / "rules.yml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"promtool check rules failed:\n{out}"
    assert "SUCCESS" in out, out


def test_rules_unit_tests_pass() -> None:
    res = _run("test", "rules", str(DEPLOY / "rules_test.yml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"promtool test rules failed:\n{out}"
    assert "SUCCESS" in out, out


def test_example_config_is_valid() -> None:
    res = _run("check", "config", str(DEPLOY / "prometheus.yml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"promtool check config failed:\n{out}"
