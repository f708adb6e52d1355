"""The training pipeline: read data, fit the spec with the Rust pipeline, build the
training matrix with that same pipeline, train LightGBM (seeded, deterministic),
choose the operating threshold and evaluate at it on a holdout, and register a new
version with its provenance.

The operating point (manifest `operating_point`) is chosen on the holdout's scores
as the version's runtime serves them (float32): an explicit threshold, an alert
rate (the share of transactions flagged) or a target precision; by default the
alert rate that is twice the training rows' positive rate, within
[0.001, 0.2]. A chosen threshold is one of those float32 scores, so the served
decision `score >= threshold` flags exactly the holdout rows counted here,
whether it is compared in float32 or float64."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

import riskserve
from riskserve._native import FeaturePipeline, fit_reference, fit_spec
from riskserve.registry import ModelRepository, VersionRef
from riskserve.runtime.loaded import spec_hash
from riskserve.training.datagen import fingerprint, read_table
from riskserve.training.spec_infer import infer_template

if TYPE_CHECKING:
    from riskserve.training.tracking import TrackedRun, Tracker

Progress = Callable[[str], None]

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    # Determinism: same data + seed + these → byte-identical model.txt.
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbosity": -1,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: Path
    target: str
    model: str
    models_dir: Path
    spec: Path | None = None
    seed: int = 0
    model_format: str = "lightgbm"  # or "onnx"
    rounds: int = 300
    holdout: float = 0.2
    #: The operating point: at most one of these (none: DEFAULT_ALERT_MULTIPLE).
    #: An explicit operating threshold in [0, 1].
    threshold: float | None = None
    #: Flag this share of transactions, in (0, 1).
    alert_rate: float | None = None
    #: The lowest threshold whose holdout precision reaches this, in (0, 1].
    target_precision: float | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_operating_target(self.threshold, self.alert_rate, self.target_precision)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    ref: VersionRef
    metrics: dict[str, float]
    model_sha256: str
    #: The manifest's `operating_point`.
    operating_point: dict[str, Any] = dataclasses.field(default_factory=dict)


#: With no operating target given, flag this multiple of the training rows'
#: positive rate (room for every fraud and as many false alerts), ...
DEFAULT_ALERT_MULTIPLE = 2.0
#: ... kept within these bounds.
DEFAULT_ALERT_RATE_RANGE = (0.001, 0.2)


def check_operating_target(
    threshold: float | None, alert_rate: float | None, target_precision: float | None
) -> None:
    """ValueError unless at most one target is given and it is in its range."""
    given = [
        flag
        for flag, value in (
            ("--threshold", threshold),
            ("--alert-rate", alert_rate),
            ("--target-precision", target_precision),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of {', '.join(given)}")
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"--threshold must be a number in [0, 1], got {threshold}")
    if alert_rate is not None and not 0.0 < alert_rate < 1.0:
        raise ValueError(f"--alert-rate must be in (0, 1) (exclusive), got {alert_rate}")
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ValueError(f"--target-precision must be in (0, 1], got {target_precision}")


def default_alert_rate(positive_rate: float) -> float:
    lo, hi = DEFAULT_ALERT_RATE_RANGE
    return min(max(DEFAULT_ALERT_MULTIPLE * positive_rate, lo), hi)


@dataclasses.dataclass(frozen=True)
class _Curve:
    """Every distinct score, highest first, with the rows `score >= it` flags."""

    values: npt.NDArray[np.float64]
    flagged: npt.NDArray[np.int64]
    true_pos: npt.NDArray[np.int64]

    @classmethod
    def of(cls, y: npt.NDArray[Any], scores: npt.NDArray[np.float64]) -> _Curve:
        values, inverse = np.unique(scores, return_inverse=True)  # ascending
        counts = np.bincount(inverse, minlength=len(values))
        pos = np.bincount(inverse, weights=(y == 1).astype(np.float64), minlength=len(values))
        return cls(
            values[::-1].astype(np.float64),
            np.cumsum(counts[::-1]).astype(np.int64),
            np.cumsum(pos[::-1]).astype(np.int64),
        )


def threshold_for_alert_rate(scores: npt.NDArray[np.float64], rate: float) -> float:
    """The lowest score whose `score >= it` flags at most `rate` of the rows (the
    highest score when ties at the top already flag more)."""
    curve = _Curve.of(np.zeros(len(scores)), scores)
    budget = math.floor(rate * len(scores) + 1e-9)
    i = int(np.searchsorted(curve.flagged, budget, side="right")) - 1
    return float(curve.values[max(i, 0)])


def threshold_for_precision(
    y: npt.NDArray[Any], scores: npt.NDArray[np.float64], precision: float
) -> float:
    """The lowest score (the most recall) whose `score >= it` has at least
    `precision`; ValueError naming the best precision reachable when none has."""
    curve = _Curve.of(y, scores)
    prec = curve.true_pos / curve.flagged
    ok = np.flatnonzero(prec >= precision - 1e-12)
    if len(ok) == 0:
        best = int(np.flatnonzero(prec == prec.max())[-1])  # of the best, the most recall
        raise ValueError(
            f"no threshold reaches precision {precision:g} on the holdout ({len(y)} rows, "
            f"{int((y == 1).sum())} positive): the best reachable is {prec[best]:.4f} "
            f"(threshold {curve.values[best]:.6g}, flagging {curve.flagged[best]} rows)"
        )
    return float(curve.values[ok[-1]])


def operating_point(
    y: npt.NDArray[Any],
    scores: npt.NDArray[np.float64],
    *,
    positive_rate: float,
    threshold: float | None = None,
    alert_rate: float | None = None,
    target_precision: float | None = None,
) -> dict[str, Any]:
    """The manifest's `operating_point`, chosen on the holdout labels `y` and the
    holdout `scores` as served (float32 values); `positive_rate` (of the training
    rows) sets the default alert rate."""
    check_operating_target(threshold, alert_rate, target_precision)
    if len(y) == 0:
        raise ValueError("the holdout is empty: no operating threshold can be chosen")
    target: float | None
    if threshold is not None:
        chosen_for, target, t = "explicit", None, float(threshold)
    elif target_precision is not None:
        chosen_for, target = "precision", float(target_precision)
        t = threshold_for_precision(y, scores, target)
    else:
        chosen_for = "alert_rate"
        target = float(alert_rate) if alert_rate is not None else default_alert_rate(positive_rate)
        t = threshold_for_alert_rate(scores, target)
    flagged = scores >= t
    tp = int((flagged & (y == 1)).sum())
    return {
        "threshold": t,
        "chosen_for": chosen_for,
        "target": target,
        "holdout_alert_rate": float(flagged.mean()),
        "holdout_precision": tp / max(1, int(flagged.sum())),
        "holdout_recall": tp / max(1, int((y == 1).sum())),
    }


def columns_of(table: pa.Table, names: list[str]) -> dict[str, Any]:
    """Arrow columns → what the Rust pipeline reads (numpy or list of str)."""
    out: dict[str, Any] = {}
    for name in names:
        col = table.column(name)
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            out[name] = col.to_pylist()
        elif pa.types.is_boolean(t):
            out[name] = col.to_numpy(zero_copy_only=False).astype(bool)
        elif pa.types.is_integer(t) and col.null_count == 0:
            out[name] = col.to_numpy().astype(np.int64)
        else:
            out[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def binary_target(table: pa.Table, target: str) -> npt.NDArray[np.int32]:
    if target not in table.column_names:
        raise ValueError(
            f"target column {target!r} not in the data ({len(table.column_names)} columns)"
        )
    y = table.column(target).to_numpy(zero_copy_only=False)
    if y.dtype == object:
        raise ValueError(f"target column {target!r} must be 0/1 or boolean, got strings")
    y = y.astype(np.float64)
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"target column {target!r} must hold only 0 and 1")
    if y.min() == y.max():
        raise ValueError(f"target column {target!r} has a single class")
    out: npt.NDArray[np.int32] = y.astype(np.int32)
    return out


def auc(y: npt.NDArray[Any], p: npt.NDArray[Any]) -> float:
    """ROC AUC by the rank-sum formula, ties averaged."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(y: npt.NDArray[Any], p: npt.NDArray[Any], threshold: float) -> dict[str, float]:
    flagged = p >= threshold
    tp = int((flagged & (y == 1)).sum())
    k = max(1, round(0.01 * len(p)))
    top = np.argsort(-p, kind="mergesort")[:k]
    return {
        "auc": auc(y, p),
        "threshold": threshold,
        "alert_rate": float(flagged.mean()),
        "precision": tp / max(1, int(flagged.sum())),
        "recall": tp / max(1, int((y == 1).sum())),
        "precision_at_1pct": float(y[top].mean()),
        "recall_at_1pct": float(y[top].sum() / max(1, int((y == 1).sum()))),
        "holdout_rows": float(len(y)),
        "holdout_positive_rate": float(y.mean()),
    }


def code_revision() -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import lightgbm
    import onnxruntime

    return {
        "python": platform.python_version(),
        "riskserve": riskserve.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "lightgbm": lightgbm.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _safe_feature_names(names: list[str]) -> list[str]:
    # LightGBM refuses JSON special characters in feature names.
    return [re.sub(r'[\[\]{}",:]', "_", n) for n in names]


def to_onnx(booster: Any, n_features: int) -> bytes:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_lightgbm(
        booster,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=15,
    )
    return bytes(onx.SerializeToString())


def served_scores(files: dict[str, bytes], model_format: str, x: Any) -> npt.NDArray[np.float64]:
    """The scores of rows `x` as the version's runtime serves them (float32),
    widened exactly to float64."""
    from riskserve.runtime.runtimes import LightGBMRuntime, ModelRuntime, OnnxRuntime

    n = int(x.shape[1])
    runtime: ModelRuntime
    if model_format == "onnx":
        runtime = OnnxRuntime(files["model.onnx"], n)
    else:
        runtime = LightGBMRuntime(files["model.txt"], n)
    return np.asarray(runtime.predict(x), dtype=np.float32).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class OperatingTarget:
    """How the operating threshold is chosen: at most one of these (none: the alert
    rate DEFAULT_ALERT_MULTIPLE times the training positive rate)."""

    threshold: float | None = None
    alert_rate: float | None = None
    target_precision: float | None = None

    def __post_init__(self) -> None:
        check_operating_target(self.threshold, self.alert_rate, self.target_precision)

    @classmethod
    def like(cls, point: dict[str, Any]) -> OperatingTarget:
        """The rule a manifest's `operating_point` was chosen by, to choose another
        version's threshold the same way (the same alert rate, target precision or
        explicit threshold)."""
        chosen_for, target = point.get("chosen_for"), point.get("target")
        if chosen_for == "precision" and target is not None:
            return cls(target_precision=float(target))
        if chosen_for == "alert_rate" and target is not None:
            return cls(alert_rate=float(target))
        if chosen_for == "explicit":
            return cls(threshold=float(point["threshold"]))
        return cls()


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A model trained and scored, not registered yet: what `fit_model` returns and
    `register` writes. Train and retrain share both."""

    files: dict[str, bytes]
    model_format: str
    #: The fitted spec with its drift reference (features.json).
    spec_json: str
    feature_names: list[str]
    #: LightGBM parameters as trained (seed included), and the rounds.
    params: dict[str, Any]
    rounds: int
    #: The holdout's scores as served (float32 values widened to float64).
    holdout_scores: npt.NDArray[np.float64]
    operating_point: dict[str, Any]
    metrics: dict[str, float]
    train_rows: int
    train_positive_rate: float

    @property
    def model_file(self) -> str:
        return "model.onnx" if self.model_format == "onnx" else "model.txt"

    @property
    def model_sha256(self) -> str:
        """The sha256 of the model file (the manifest's model_sha256 once registered)."""
        return hashlib.sha256(self.files[self.model_file]).hexdigest()


def fit_model(
    template: dict[str, Any],
    train_tab: pa.Table,
    y_train: npt.NDArray[np.int32],
    hold_tab: pa.Table,
    y_hold: npt.NDArray[np.int32],
    *,
    params: dict[str, Any],
    rounds: int,
    model_format: str,
    target: OperatingTarget,
    spec_source: str,
    progress: Progress = lambda _m: None,
) -> Fitted:
    """The one training implementation: fit the spec template on the training rows
    with the Rust pipeline, build both matrices with that pipeline, train LightGBM
    (deterministic: `params` carry the seed), score the holdout as served, choose the
    operating threshold on those scores, evaluate at it and fit the drift reference
    bins (training inputs, holdout scores)."""
    import lightgbm

    if model_format not in ("lightgbm", "onnx"):
        raise ValueError(f"--format must be lightgbm or onnx, not {model_format!r}")
    names = [i["name"] for i in template["inputs"]]
    progress(f"fitting the feature spec ({spec_source}) on {train_tab.num_rows} training rows")
    train_cols = columns_of(train_tab, names)
    spec_json = fit_spec(json.dumps(template), train_cols)
    pipeline = FeaturePipeline(spec_json)
    x_train = pipeline.transform(train_cols)
    x_hold = pipeline.transform(columns_of(hold_tab, names))
    progress(f"{pipeline.n_features} features from {len(names)} raw inputs")

    dtrain = lightgbm.Dataset(
        x_train,
        label=y_train,
        feature_name=_safe_feature_names(list(pipeline.feature_names)),
        free_raw_data=True,
    )
    every = max(1, rounds // 10)

    def report(env: Any) -> None:
        if (env.iteration + 1) % every == 0 or env.iteration + 1 == rounds:
            progress(f"boosting round {env.iteration + 1}/{rounds}")

    booster = lightgbm.train(params, dtrain, num_boost_round=rounds, callbacks=[report])
    files: dict[str, bytes] = {"model.txt": booster.model_to_string().encode()}
    if model_format == "onnx":
        progress("converting to ONNX")
        files["model.onnx"] = to_onnx(booster, pipeline.n_features)
    # Served scores are float32 (and, for ONNX, ONNX Runtime's): the threshold,
    # the metrics and the score bins are all taken on the scores as served, or
    # scores tied at a threshold or an edge land on the other side of it.
    scores = served_scores(files, model_format, x_hold)
    positive_rate = float(y_train.mean())
    point = operating_point(
        y_hold,
        scores,
        positive_rate=positive_rate,
        threshold=target.threshold,
        alert_rate=target.alert_rate,
        target_precision=target.target_precision,
    )
    t = point["threshold"]
    chosen = "" if point["target"] is None else f" {point['target']:g}"
    progress(
        f"operating threshold {t:.6g} ({point['chosen_for']}{chosen}): holdout alert rate "
        f"{point['holdout_alert_rate']:.4f}, precision {point['holdout_precision']:.3f}, "
        f"recall {point['holdout_recall']:.3f}"
    )
    metrics = evaluate(y_hold, scores, t)
    progress(f"holdout AUC {metrics['auc']:.4f}")

    progress("fitting drift reference bins (training inputs, holdout scores)")
    spec_json = fit_reference(spec_json, train_cols, scores)
    files["features.json"] = spec_json.encode()
    return Fitted(
        files=files,
        model_format=model_format,
        spec_json=spec_json,
        feature_names=list(pipeline.feature_names),
        params=params,
        rounds=rounds,
        holdout_scores=scores,
        operating_point=point,
        metrics=metrics,
        train_rows=train_tab.num_rows,
        train_positive_rate=positive_rate,
    )


def manifest_of(
    fitted: Fitted,
    *,
    data: dict[str, Any],
    template: dict[str, Any],
    spec_source: str,
    holdout: float | str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new version's manifest: what produced it (`data`: where its rows came from)
    and what it is. The spec template is kept so that a retrain refits exactly what
    this training fitted."""
    return {
        "model_format": fitted.model_format,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": data,
        "spec_sha256": spec_hash(fitted.spec_json),
        "spec_source": spec_source,
        "spec_template": template,
        "feature_names": fitted.feature_names,
        "hyperparameters": {**fitted.params, "num_boost_round": fitted.rounds, "holdout": holdout},
        "operating_point": fitted.operating_point,
        "metrics": fitted.metrics,
        "libraries": library_versions(),
        "code_revision": code_revision(),
        **(extra or {}),
    }


def register(
    models_dir: Path,
    model: str,
    fitted: Fitted,
    manifest: dict[str, Any],
    progress: Progress = lambda _m: None,
) -> TrainResult:
    """Writes the next version of `model` (atomically: all of it or nothing)."""
    repo = ModelRepository(models_dir)
    ref = repo.write_version(model, fitted.files, manifest)
    sha = repo.verify(ref).model_sha256
    progress(f"registered {model} version {ref.version} at {ref.path} (model sha256 {sha[:16]}…)")
    return TrainResult(
        ref=ref, metrics=fitted.metrics, model_sha256=sha, operating_point=fitted.operating_point
    )


def train(
    cfg: TrainConfig, progress: Progress = lambda _m: None, tracker: Tracker | None = None
) -> TrainResult:
    """`riskserve train`: a file of rows → a random holdout → fit_model → register
    (logged to MLflow when a tracker is given)."""
    if cfg.model_format not in ("lightgbm", "onnx"):
        raise ValueError(f"--format must be lightgbm or onnx, not {cfg.model_format!r}")
    progress(f"reading {cfg.data}")
    table = read_table(cfg.data)
    data_fp = fingerprint(cfg.data)
    y = binary_target(table, cfg.target)
    progress(f"{table.num_rows} rows, {table.num_columns} columns, fingerprint {data_fp[:16]}…")

    if cfg.spec is not None:
        template = json.loads(cfg.spec.read_text())
        spec_source = str(cfg.spec)
    else:
        template = infer_template(table, cfg.target)
        spec_source = "inferred"
    names = [i["name"] for i in template["inputs"]]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"the spec reads columns the data lacks: {', '.join(missing)}")

    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(table.num_rows)
    n_hold = round(cfg.holdout * table.num_rows)
    hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    train_tab, hold_tab = table.take(pa.array(train_idx)), table.take(pa.array(hold_idx))

    params = {**DEFAULT_PARAMS, **cfg.params, "seed": cfg.seed}
    data = {
        "path": str(cfg.data),
        "fingerprint_sha256": data_fp,
        "rows": table.num_rows,
        "train_rows": len(train_idx),
        "holdout_rows": n_hold,
        "target": cfg.target,
        "positive_rate": float(y.mean()),
    }

    def fit_and_register(run: TrackedRun | None) -> TrainResult:
        if run is not None:
            run.log_params(
                {**params, "num_boost_round": cfg.rounds, "holdout": cfg.holdout,
                 "model_format": cfg.model_format, "spec_source": spec_source}
            )  # fmt: skip
            run.log_dataset(
                name=cfg.data.name, sha256=data_fp, source=str(cfg.data), rows=table.num_rows,
                context="training", target=cfg.target,
            )  # fmt: skip
        fitted = fit_model(
            template,
            train_tab,
            y[train_idx],
            hold_tab,
            y[hold_idx],
            params=params,
            rounds=cfg.rounds,
            model_format=cfg.model_format,
            target=OperatingTarget(cfg.threshold, cfg.alert_rate, cfg.target_precision),
            spec_source=spec_source,
            progress=progress,
        )
        if run is not None:
            run.log_metrics(fitted.metrics)
            run.log_model_files(fitted.files)  # before registering: a broken tracker stops here
        manifest = manifest_of(
            fitted, data=data, template=template, spec_source=spec_source, holdout=cfg.holdout
        )
        result = register(cfg.models_dir, cfg.model, fitted, manifest, progress)
        if run is not None:
            run.registered(cfg.model, result.ref.version, progress)
        return result

    if tracker is None:
        return fit_and_register(None)
    with tracker.run(f"train {cfg.model}", {"riskserve.command": "train"}) as run:
        return fit_and_register(run)
