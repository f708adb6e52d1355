"""Experiment tracking in MLflow (RISKSERVE_MLFLOW_TRACKING_URI, `--mlflow-uri`).

Every `train` and `retrain` run with a tracking URI becomes an MLflow run: its
parameters, its metrics (a retrain's: both models' gate figures), its data as an MLflow
dataset input (name, digest, source, row counts) and the model files as artifacts
(`model/`). Once riskserve has registered the version, the run is tagged with it and an
MLflow model version (tag `riskserve.version`) is created under the riskserve model's
name; when a retrain starts a canary, the registered model's aliases `champion` and
`challenger` point at the control's and the canary's MLflow versions.

riskserve's registry (models/<name>/<version>/, its manifests and deployment.json)
stays the source of truth: nothing reads MLflow back. The order makes a tracker that
is down harmless: it is checked when the Tracker is opened (before any data is read),
everything a run logs before registering is logged before the version is written, and
a failure after registering is reported, never undoes the version.

MLflow's digest field is 36 characters at most in its SQL stores, so a dataset's
digest is the first 36 hex digits of its sha256; the whole sha256 is in the dataset's
profile and in the run's tag `riskserve.data_sha256`.

mlflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true: a `file:` URI (or
a plain path) given to riskserve is an explicit choice, so the Tracker turns it on
for this process unless the variable is set (to false: then the refusal is reported).
The client (mlflow-skinny) is imported only when a tracker is opened."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from riskserve.errors import Unavailable

#: MLflow's limits: parameters per log_batch call, length of a parameter value.
_PARAMS_PER_BATCH = 100
_MAX_PARAM_CHARS = 6000
#: MLflow's SQL stores keep a dataset digest of at most this many characters.
DIGEST_CHARS = 36
#: Seconds the reachability check of a tracking server waits.
CHECK_TIMEOUT_SECONDS = 10.0


class TrackingError(Unavailable):
    """The MLflow tracking URI cannot be used; the message names it and says why."""


def _file_store_path(uri: str) -> Path | None:
    """The local folder of a file store URI (`file:///x`, or a plain path); None for
    any other scheme."""
    if uri.startswith("file:"):
        parsed = urllib.parse.urlparse(uri)
        return Path(urllib.parse.unquote(parsed.path))
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:", "postgresql:")):
        return Path(uri)
    return None


def _auth_headers() -> dict[str, str]:
    """What MLflow's own client would send (its token or basic-auth variables)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get(k, "") for k in ("MLFLOW_TRACKING_USERNAME",
                                                       "MLFLOW_TRACKING_PASSWORD"))  # fmt: skip
    if user:
        import base64

        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def check_server(uri: str, experiment: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """TrackingError unless an MLflow tracking server answers at `uri` (http/https):
    one REST call with a short timeout (MLflow's client would retry for minutes)."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    req = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()[:2000].decode(errors="replace")
        if e.code == 404 and "RESOURCE_DOES_NOT_EXIST" in body:
            return  # a server without the experiment yet: it is created later
        if e.code in (401, 403):
            raise TrackingError(
                f"MLflow tracking server at {uri} refused the credentials (HTTP {e.code}); "
                "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
            ) from None
        raise TrackingError(
            f"MLflow tracking server at {uri} answered HTTP {e.code} to "
            f"/api/2.0/mlflow/experiments/get-by-name: is it an MLflow server?"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server at {uri} cannot be reached ({reason}); nothing was "
            "trained or registered"
        ) from None


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:_MAX_PARAM_CHARS]


class Tracker:
    """One MLflow experiment at one tracking URI, checked when opened."""

    def __init__(self, uri: str, experiment: str = "riskserve") -> None:
        if not uri:
            raise ValueError("a Tracker needs a tracking URI")
        self.uri = uri
        self.experiment = experiment
        folder = _file_store_path(uri)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"MLflow file store {uri}: cannot create {folder}: {e}") from e
            if not os.access(folder, os.W_OK):
                raise TrackingError(f"MLflow file store {uri}: {folder} is not writable")
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif uri.startswith(("http://", "https://")):
            check_server(uri, experiment)
        from mlflow.tracking import MlflowClient

        self._client = self._call(
            "opening the client", lambda: MlflowClient(tracking_uri=uri, registry_uri=uri)
        )
        self.experiment_id = self._call("finding the experiment", self._experiment)

    def _call(self, doing: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, its failures (MLflow's, the HTTP client's, the file store's) as a
        TrackingError naming the URI."""
        try:
            return fn()
        except TrackingError:
            raise
        except Exception as e:  # a third-party client: every failure is "tracking failed"
            text = " ".join(str(e).split())[:500]
            raise TrackingError(
                f"MLflow at {self.uri}: {doing} failed: {type(e).__name__}: {text}"
            ) from None

    def _experiment(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise TrackingError(
                    f"MLflow at {self.uri}: experiment {self.experiment!r} is deleted; "
                    "restore it or set RISKSERVE_MLFLOW_EXPERIMENT"
                )
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(self.experiment))
        except Exception:
            found = self._client.get_experiment_by_name(self.experiment)  # created meanwhile
            if found is None:
                raise
            return str(found.experiment_id)

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[TrackedRun]:
        """An MLflow run: FINISHED when the block ends, FAILED when it raises."""
        created = self._call(
            "creating a run",
            lambda: self._client.create_run(
                self.experiment_id, run_name=name, tags=dict(tags or {})
            ),
        )
        run = TrackedRun(self, created.info.run_id, created.info.artifact_uri)
        try:
            yield run
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.set_terminated(run.run_id, "FAILED")
            raise
        self._call("ending the run", lambda: self._client.set_terminated(run.run_id, "FINISHED"))

    def model_version_of(self, model: str, version: int) -> str | None:
        """The MLflow model version tagged with riskserve `version` of `model` (the
        newest if several), or None."""

        def find() -> str | None:
            from mlflow.exceptions import MlflowException

            try:
                self._client.get_registered_model(model)
            except MlflowException:
                return None  # no registered model of that name yet
            found = self._client.search_model_versions(f"name='{model}'")
            tagged = [m for m in found if m.tags.get("riskserve.version") == str(version)]
            return str(max(int(m.version) for m in tagged)) if tagged else None

        result: str | None = self._call(f"looking up {model} v{version}", find)
        return result

    def set_aliases(self, model: str, aliases: Mapping[str, int]) -> dict[str, str | None]:
        """Points each alias (champion, challenger) at the MLflow model version of its
        riskserve version; an alias whose version has no MLflow model version (trained
        without tracking) is left as it was (None in the result)."""
        out: dict[str, str | None] = {}
        for alias, version in aliases.items():
            mv = self.model_version_of(model, version)
            if mv is not None:
                self._call(
                    f"setting alias {alias}",
                    functools.partial(self._client.set_registered_model_alias, model, alias, mv),
                )
            out[alias] = mv
        return out


class TrackedRun:
    """One MLflow run (Tracker.run). Every method raises TrackingError on failure."""

    def __init__(self, tracker: Tracker, run_id: str, artifact_uri: str) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        #: The MLflow model version made for the registered riskserve version.
        self.model_version: str | None = None
        #: Why tracking failed after the riskserve version was registered.
        self.error: str | None = None

    @property
    def _client(self) -> Any:
        return self.tracker._client

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_text(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = items[i : i + _PARAMS_PER_BATCH]
            self.tracker._call(
                "logging parameters",
                functools.partial(self._client.log_batch, self.run_id, params=chunk),
            )

    def log_metrics(
        self, metrics: Mapping[str, float | int | bool | None], prefix: str = ""
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(f"{prefix}{k}", float(v), now, 0)
            for k, v in sorted(metrics.items())
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.tracker._call(
                "logging metrics", lambda: self._client.log_batch(self.run_id, metrics=items)
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _param_text(v)) for k, v in sorted(tags.items())]
        self.tracker._call(
            "tagging the run", lambda: self._client.log_batch(self.run_id, tags=items)
        )

    def log_dataset(
        self, *, name: str, sha256: str, source: str, rows: int, context: str, **profile: Any
    ) -> None:
        """The run's data as an MLflow dataset input: its digest (the sha256, cut to
        DIGEST_CHARS), its source (the file) and a profile (rows, whole sha256, ...)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=sha256[:DIGEST_CHARS],
            source_type="local",
            source=json.dumps({"uri": source}),
            schema=None,
            profile=json.dumps({"rows": rows, "sha256": sha256, **profile}, sort_keys=True),
        )
        tags = [InputTag("mlflow.data.context", context)]
        self.tracker._call(
            "logging the dataset",
            lambda: self._client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)]),
        )
        self.set_tags({"riskserve.data_sha256": sha256})

    def log_model_files(self, files: Mapping[str, bytes]) -> None:
        """The version's files as the run's artifacts under `model/`."""
        with tempfile.TemporaryDirectory(prefix="riskserve-mlflow-") as tmp:
            for fname, body in files.items():
                (Path(tmp) / fname).write_bytes(body)
            self.tracker._call(
                "logging the model files",
                lambda: self._client.log_artifacts(self.run_id, tmp, artifact_path="model"),
            )

    def registered(self, model: str, version: int, progress: Callable[[str], None]) -> None:
        """After riskserve registered `model` `version`: tag the run and make an MLflow
        model version for it. A failure here is reported (`error`), not raised: the
        riskserve version exists whatever MLflow says."""

        def make() -> str:
            from mlflow.exceptions import MlflowException

            try:
                self._client.get_registered_model(model)
            except MlflowException:
                self._client.create_registered_model(model)
            mv = self._client.create_model_version(
                model,
                source=f"{self.artifact_uri}/model",
                run_id=self.run_id,
                tags={"riskserve.version": str(version)},
            )
            return str(mv.version)

        try:
            self.set_tags({"riskserve.model": model, "riskserve.version": str(version)})
            self.model_version = self.tracker._call(f"registering {model} v{version}", make)
            progress(f"MLflow run {self.run_id}: model version {self.model_version} of {model}")
        except TrackingError as e:
            self.error = str(e)
            progress(f"warning: {e} (the riskserve version is registered)")


def open_tracker(uri: str, experiment: str) -> Tracker | None:
    """A Tracker when a tracking URI is configured, else None."""
    return Tracker(uri, experiment) if uri else None


__all__ = ["DIGEST_CHARS", "TrackedRun", "Tracker", "TrackingError", "check_server", "open_tracker"]
