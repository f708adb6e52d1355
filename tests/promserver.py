"""A real Prometheus for the tests: started on a free port with our rules, scraping
the targets a test gives it, and its HTTP API (tests/monitoring/test_prometheus_scrape.py,
tests/e2e/test_grafana_dashboard.py).

Needs `prometheus` on PATH (`make tools`: Debian's package); a test without it fails
loudly, never skips."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

#: Seconds for each wait on Prometheus.
WAIT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


class Prom:
    """A Prometheus process and its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """Instant query at `at` (unix seconds) or now: [(labels, value)] (a scalar
        gives one row, no labels)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.4f}"
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if check():
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout}s waiting for {what}\n"
                    f"targets: {self.targets()}\nprometheus log:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def targets(self) -> str:
        """(instance, health, last error) of every active target, for messages."""
        try:
            body = json.loads(http_get(f"{self.url}/api/v1/targets"))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return f"unavailable ({e})"
        return repr(
            [
                (t["labels"]["instance"], t["health"], t["lastError"])
                for t in body["data"]["activeTargets"]
            ]
        )

    def wait_up(self, job: str, instances: Sequence[str]) -> None:
        """Until every instance of `job` was scraped successfully."""

        def up() -> bool:
            got = {m["instance"]: v for m, v in self.query(f'up{{job="{job}"}}')}
            return got == dict.fromkeys(instances, 1.0)

        self.wait_for(f"{job} targets {list(instances)} up", up)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_prometheus(
    work: Path, jobs: Mapping[str, Sequence[str]], interval: str = "1s", rules: Path = RULES
) -> Prom:
    """Starts Prometheus in `work` (config, TSDB, log), scraping each job's targets
    (host:port) every `interval`, evaluating a copy of `rules` as often; returns
    once /-/ready answers. The caller stops it (Prom.stop())."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail(
            "prometheus is not installed: run `make tools` (Debian's prometheus package)",
            pytrace=False,
        )
    copy = work / "rules.yml"
    shutil.copy(rules, copy)
    config = work / "prometheus.yml"
    scrape = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: {list(targets)!r}\n"
        for job, targets in jobs.items()
    )
    config.write_text(
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  scrape_timeout: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        f"rule_files:\n  - {copy}\n"
        f"scrape_configs:\n{scrape}"
    )
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    prom = Prom(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    try:
        prom.wait_for("prometheus /-/ready", ready)
    except BaseException:
        prom.stop()
        raise
    return prom
