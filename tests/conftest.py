"""Shared fixtures: small generated data, models trained by riskserve itself, and a
real `riskserve serve` subprocess on port 0.

Everything here is session-scoped and built once (~10 s): a 6,000-row training
set, a LightGBM model `fraud` and an ONNX model `fraud_onnx` in one models folder,
and the server serving that folder. Tests that need their own server (another
models folder, other settings, several workers) use the `start_server` factory;
every server in the suite is started by `start_server_process`, and every model
trained in process by `train_model` (tests/training tests train() itself).

Tiers (markers registered in pyproject.toml, set here at collection):

* `unit`: no server and no riskserve subprocess. `make test-fast` runs these.
* `e2e`: starts a real server or CLI subprocess: every test under tests/e2e and
  every test that uses a server fixture (SERVER_FIXTURES, directly or through
  another fixture). A test marked `unit` or `e2e` itself keeps its mark.
* `slow`: builds with cargo or compiles with lleaves: marked in the test, or the
  test module imports riskserve.runtime.compiled.
* `tools`: needs a binary `make tools` installs (promtool, prometheus): NEEDS_TOOLS.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pyarrow as pa
import pytest

if TYPE_CHECKING:
    from riskserve.training.train import TrainResult

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
FRAUD_SPEC = ROOT / "python" / "riskserve" / "training" / "specs" / "fraud.json"

TRAIN_ROWS = 6_000
TRAIN_SEED = 1
TRAIN_ROUNDS = 40
FRESH_ROWS = 500
FRESH_SEED = 4242

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

#: Spec dtype → Open Inference Protocol datatype (docs/feature-spec.md).
V2_DATATYPE = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES"}

#: Log substrings that mean the server hit a bug.
BAD_LOG_MARKERS = ("Traceback", "internal error")


# --------------------------------------------------------------------------------------
# Test tiers
# --------------------------------------------------------------------------------------

TIERS = ("unit", "e2e")
#: Fixtures that start a real `riskserve serve`: a test using one is e2e.
SERVER_FIXTURES = frozenset({"server", "start_server", "launch_server"})
#: A test module importing from one of these is slow (lleaves compiles models).
SLOW_MODULES = frozenset({"riskserve.runtime.compiled"})
#: Test files that need promtool or prometheus (`make tools`).
NEEDS_TOOLS = frozenset(
    {
        "monitoring/test_rules.py",
        "monitoring/test_prometheus_scrape.py",
        "e2e/test_grafana_dashboard.py",
    }
)

_DEFAULT_TIMEOUT = 120  # seconds, for e2e and registry tests without their own mark


def tier_of(item: pytest.Item) -> str:
    """The item's own `unit`/`e2e` mark (the closest one), else e2e for tests/e2e and
    for tests using a server fixture, else unit."""
    uses_server = sorted(SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    for mark in item.iter_markers():
        if mark.name in TIERS:
            if mark.name == "unit" and uses_server:
                raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {uses_server}")
            return mark.name
    path = Path(str(item.path)).resolve()
    return "e2e" if uses_server or path.is_relative_to(TESTS / "e2e") else "unit"


def _imports_slow_module(module: types.ModuleType | None) -> bool:
    if module is None:
        return False
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else None
        if (name or getattr(value, "__module__", None)) in SLOW_MODULES:
            return True
    return False


def needs_postgres(item: pytest.Item) -> bool:
    """A test on the PostgreSQL cluster (tests/feedback/store_fixtures.py): its
    `pg_cluster` fixture, or the "postgresql" case of the store fixtures."""
    if "pg_cluster" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("spot") == "postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files: dict[Path, bool] = {}
    for item in items:
        if needs_postgres(item):  # initdb and pg_ctl come from `make tools`
            if item.get_closest_marker("unit") is None:
                item.add_marker("e2e")
            item.add_marker("tools")
        path = Path(str(item.path)).resolve()
        rel = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
        if path not in slow_files:
            slow_files[path] = _imports_slow_module(getattr(item, "module", None))
        if slow_files[path] and item.get_closest_marker("slow") is None:
            item.add_marker("slow")
        if rel in NEEDS_TOOLS:
            item.add_marker("tools")
        timed = tier == "e2e" or rel.startswith("registry/")
        if timed and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(_DEFAULT_TIMEOUT))


# --------------------------------------------------------------------------------------
# The server subprocess
# --------------------------------------------------------------------------------------


def log_events(lines: list[str], name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log records among a process's output lines so far (other lines are
    skipped); only those whose "event" is `name` when given."""
    out = []
    for line in list(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (name is None or rec.get("event") == name):
            out.append(rec)
    return out


@dataclasses.dataclass
class ServerHandle:
    """A running `riskserve serve` subprocess and everything it has logged."""

    proc: subprocess.Popen[str]
    port: int
    #: Its output so far, stdout and stderr (the JSON log) in one stream.
    lines: list[str]
    reader: threading.Thread
    #: Set by a test that deliberately provokes an internal error.
    allow_internal_errors: bool = False
    #: The Prometheus /metrics port the server logged.
    metrics_port: int = 0
    _channel: grpc.Channel | None = dataclasses.field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def channel(self) -> grpc.Channel:
        """One channel to the server, opened on first use and closed by stop()."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
            grpc.channel_ready_future(self._channel).result(timeout=10)
        return self._channel

    @property
    def stub(self) -> Any:
        """A GRPCInferenceServiceStub on `channel`."""
        from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    def log_text(self) -> str:
        return "".join(self.lines)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.lines, name)

    def metric(self, sample: str, **labels: str) -> float:
        """Sum of the samples named `sample` on /metrics whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def bad_lines(self) -> list[str]:
        bad = [ln for ln in list(self.lines) if any(m in ln for m in BAD_LOG_MARKERS)]
        bad += [json.dumps(e) for e in self.events() if "exception" in e]
        return bad

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code (kills it after STOP_TIMEOUT)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(
                f"server pid {self.proc.pid} did not exit within {STOP_TIMEOUT}s of SIGTERM\n"
                + self.log_text()[-5000:]
            )
        self.reader.join(5)
        return rc

    def stop_and_check(self) -> None:
        self.check_exit(self.stop())

    def check_exit(self, rc: int) -> None:
        """Exit code 0 after SIGTERM, a "stopped" line, and no traceback in the log."""
        log = self.log_text()
        assert rc == 0, f"server exited with {rc} after SIGTERM\n{log[-5000:]}"
        assert self.events("stopped"), log[-5000:]
        if not self.allow_internal_errors:
            bad = self.bad_lines()
            assert not bad, "server log has tracebacks / internal errors:\n" + "\n".join(bad)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSERVE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> None:
    """Polls `check` every 0.1 s until it is true; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m riskserve.cli ARGS` to completion, without the test's RISKSERVE_*
    variables (as every server here is started)."""
    return subprocess.run(
        [sys.executable, "-m", "riskserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_server_env(),
    )


def start_server_process(
    models_dir: Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> ServerHandle:
    """Starts `python -m riskserve.cli serve` on port 0 (`--workers` when given);
    returns once it logs "serving", with its gRPC and metrics ports. The test's own
    RISKSERVE_* variables are dropped; `env` adds settings. The server's stdout and
    stderr are read into `lines` for its whole life. The caller stops it (stop(),
    stop_and_check()); the `start_server` fixture does that itself."""
    workers_args = () if workers is None else ("--workers", str(workers))
    cmd = [
        sys.executable, "-m", "riskserve.cli", "serve",
        "--models", str(models_dir), "--host", "127.0.0.1", "--port", "0",
        *workers_args, *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**_server_env(), **(env or {})},
    )
    lines: list[str] = []
    port: list[int] = []
    metrics_port: list[int] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not ready.is_set():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("event") == "serving":
                    port.append(int(rec["port"]))
                    metrics_port.append(int(rec.get("metrics_port") or 0))
                    ready.set()
        ready.set()  # EOF: the process ended

    reader = threading.Thread(target=read, name=f"riskserve-log-{proc.pid}", daemon=True)
    reader.start()
    ok = ready.wait(START_TIMEOUT)
    if not ok or not port:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        reader.join(5)
        why = "did not log 'serving'" if not ok else f"exited with {proc.returncode}"
        pytest.fail(
            f"riskserve serve {why} within {START_TIMEOUT}s; command {cmd}\noutput:\n"
            + "".join(lines)[-8000:]
        )
    _running.append(proc)
    return ServerHandle(
        proc=proc, port=port[0], lines=lines, reader=reader, metrics_port=metrics_port[0]
    )


#: Every server started, so none outlives an interrupted test run.
_running: list[subprocess.Popen[str]] = []


@atexit.register
def _kill_leftover_servers() -> None:
    for proc in _running:
        if proc.poll() is None:
            proc.kill()


def served_versions(target: str, models: list[str]) -> dict[str, list[str] | str]:
    """ModelMetadata.versions per model, or the gRPC status name when it fails."""
    from riskserve.pb.inference import grpc_service_pb2 as pb
    from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

    out: dict[str, list[str] | str] = {}
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for name in models:
            try:
                md = stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
                out[name] = list(md.versions)
            except grpc.RpcError as e:
                out[name] = e.code().name
    return out


@pytest.fixture(scope="session")
def served() -> Callable[[str, list[str]], dict[str, list[str] | str]]:
    return served_versions


@pytest.fixture(scope="session")
def launch_server() -> Callable[..., ServerHandle]:
    """start_server_process itself: the caller stops the server (handle.stop())."""
    return start_server_process


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerHandle]]:
    """Factory: start_server(models_dir, *args, env=..., workers=...) → ServerHandle
    (start_server_process's arguments), every one stopped and checked afterwards."""
    started: list[ServerHandle] = []

    def start(
        models_dir: Path,
        *extra_args: str,
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
    ) -> ServerHandle:
        h = start_server_process(models_dir, *extra_args, env=env, workers=workers)
        started.append(h)
        return h

    yield start
    codes = [h.stop() for h in started]  # stop them all before checking any
    for h, rc in zip(started, codes, strict=True):
        h.check_exit(rc)


# --------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------


def train_model(
    data: Path,
    models: Path,
    rounds: int = TRAIN_ROUNDS,
    seed: int = 0,
    *,
    model: str = "fraud",
    model_format: str = "lightgbm",
    spec: Path | None = FRAUD_SPEC,
    target: str = "is_fraud",
) -> TrainResult:
    """Trains a real model into the models folder `models` from the rows in `data`
    (by default "fraud": LightGBM, the fraud spec, target is_fraud, as datagen writes
    them); returns train()'s result (its `ref` is the new version). `spec=None`
    infers the spec from the data."""
    from riskserve.training.train import TrainConfig, train

    return train(
        TrainConfig(
            data=data,
            target=target,
            model=model,
            models_dir=models,
            spec=spec,
            seed=seed,
            model_format=model_format,
            rounds=rounds,
        )
    )


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("riskserve")


@pytest.fixture(scope="session")
def train_data(workdir: Path) -> Path:
    from riskserve.training.datagen import run_datagen

    path = workdir / "train.parquet"
    run_datagen(TRAIN_ROWS, TRAIN_SEED, path)
    return path


@pytest.fixture(scope="session")
def models_dir(workdir: Path, train_data: Path) -> Path:
    models = workdir / "models"
    for name, fmt in (("fraud", "lightgbm"), ("fraud_onnx", "onnx")):
        res = train_model(
            train_data, models, TRAIN_ROUNDS, TRAIN_SEED, model=name, model_format=fmt
        )
        assert res.ref.version == 1
        assert res.metrics["auc"] > 0.6, res.metrics
    return models


@pytest.fixture(scope="session")
def server(models_dir: Path) -> Iterator[ServerHandle]:
    """The shared server over `models_dir` (fraud: LightGBM, fraud_onnx: ONNX)."""
    h = start_server_process(models_dir)
    served = served_versions(h.target, ["fraud", "fraud_onnx"])
    if served != {"fraud": ["1"], "fraud_onnx": ["1"]}:
        h.stop()
        pytest.fail(f"the server serves {served}, not fraud/1 and fraud_onnx/1:\n{h.log_text()}")
    try:
        yield h
    finally:
        h.stop_and_check()


@pytest.fixture(scope="session")
def fresh_table() -> pa.Table:
    """Rows the models never saw: another seed than the training data."""
    from riskserve.training.datagen import generate

    return generate(FRESH_ROWS, FRESH_SEED)


# --------------------------------------------------------------------------------------
# Direct (in-process) reference computations
# --------------------------------------------------------------------------------------

Columns = dict[str, Any]


class Reference:
    """Scores computed directly with the Rust pipeline + LightGBM / ONNX Runtime,
    from the files of a model version, without the server."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Path], Any] = {}

    def _get(self, kind: str, path: Path, make: Callable[[], Any]) -> Any:
        key = (kind, path.resolve())
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def spec(self, version_dir: Path) -> dict[str, Any]:
        return json.loads((version_dir / "features.json").read_text())

    def input_dtypes(self, version_dir: Path) -> dict[str, str]:
        """Raw input name → spec dtype, in spec order."""
        return {i["name"]: i["dtype"] for i in self.spec(version_dir)["inputs"]}

    def datatypes(self, version_dir: Path) -> dict[str, str]:
        """Raw input name → V2 datatype, in spec order."""
        return {n: V2_DATATYPE[d] for n, d in self.input_dtypes(version_dir).items()}

    def pipeline(self, version_dir: Path) -> Any:
        from riskserve._native import FeaturePipeline

        return self._get(
            "pipe",
            version_dir,
            lambda: FeaturePipeline((version_dir / "features.json").read_text()),
        )

    def columns(self, table: pa.Table, version_dir: Path) -> Columns:
        """The model's raw inputs from an Arrow table: float64 / int64 / bool numpy
        arrays, and lists of str for strings."""
        out: Columns = {}
        for name, dtype in self.input_dtypes(version_dir).items():
            col = table.column(name)
            if dtype == "string":
                out[name] = [str(v) for v in col.to_pylist()]
            elif dtype == "bool":
                out[name] = np.array(col.to_numpy(zero_copy_only=False), dtype=bool)
            elif dtype == "int":
                out[name] = np.array(col.to_numpy(zero_copy_only=False), dtype=np.int64)
            else:
                out[name] = np.array(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return out

    def features(self, version_dir: Path, columns: Mapping[str, Any]) -> np.ndarray:
        return self.pipeline(version_dir).transform(dict(columns))

    def lightgbm(self, version_dir: Path, columns: Mapping[str, Any]) -> np.ndarray:
        import lightgbm

        booster = self._get(
            "lgb", version_dir, lambda: lightgbm.Booster(model_file=str(version_dir / "model.txt"))
        )
        return np.asarray(booster.predict(self.features(version_dir, columns)), dtype=np.float64)

    def onnx(self, version_dir: Path, columns: Mapping[str, Any]) -> np.ndarray:
        import onnxruntime as ort

        sess = self._get(
            "onnx",
            version_dir,
            lambda: ort.InferenceSession(
                str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
            ),
        )
        x = self.features(version_dir, columns)
        (probs,) = sess.run(["probabilities"], {sess.get_inputs()[0].name: x})
        return np.asarray(probs, dtype=np.float64)[:, 1]

    def predict(self, version_dir: Path, columns: Mapping[str, Any]) -> np.ndarray:
        manifest = json.loads((version_dir / "manifest.json").read_text())
        if manifest["model_format"] == "onnx":
            return self.onnx(version_dir, columns)
        return self.lightgbm(version_dir, columns)


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


def take_rows(columns: Mapping[str, Any], idx: slice | list[int]) -> Columns:
    """A copy of a subset of rows of every column."""
    out: Columns = {}
    for name, col in columns.items():
        if isinstance(col, np.ndarray):
            out[name] = col[idx].copy()
        elif isinstance(idx, slice):
            out[name] = col[idx]
        else:
            out[name] = [col[i] for i in idx]
    return out


@pytest.fixture(scope="session")
def rows() -> Callable[[Mapping[str, Any], slice | list[int]], Columns]:
    return take_rows
