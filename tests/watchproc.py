"""`riskserve retrain-watch` as a subprocess for e2e tests: the one launcher.

It watches a ServerHandle's /metrics, serves its own /metrics on a free port (read
from its "watching" log line), and passes the admin token on to the `riskserve
retrain` children it starts (for the canary)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerHandle, _server_env, log_events, wait_for
from prometheus_client.parser import text_string_to_metric_families


@dataclasses.dataclass
class WatchHandle:
    """A running `riskserve retrain-watch` and its log."""

    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.lines, name)

    def log_text(self) -> str:
        return "".join(self.lines)[-8000:]

    @property
    def metrics_port(self) -> int:
        (watching,) = self.events("watching")
        return int(watching["metrics_port"])

    def metric(self, name: str, **labels: str) -> float:
        """The one sample `name{labels}` on its /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        found = [
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def stop(self) -> int:
        """SIGTERM, and its exit code; fails the test if it does not stop in 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail("retrain-watch did not stop on SIGTERM\n" + self.log_text())
        self.reader.join(5)
        return rc


def start_watch(
    models: Path, srv: ServerHandle, model: str, admin_token: str, *args: str
) -> WatchHandle:
    """`riskserve retrain-watch --model model` on `srv`, once it logs "watching"."""
    cmd = [
        sys.executable, "-m", "riskserve.cli", "retrain-watch",
        "--models", str(models), "--model", model,
        "--metrics-url", f"http://127.0.0.1:{srv.metrics_port}/metrics",
        "--server", srv.target, "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**_server_env(), "RISKSERVE_ADMIN_TOKEN": admin_token},
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, name="retrain-watch-log", daemon=True)
    reader.start()
    h = WatchHandle(proc, lines, reader)
    try:
        wait_for("retrain-watch to log 'watching'", lambda: bool(h.events("watching")), 30)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return h
