"""The training pipeline: read data, fit the spec with the Rust pipeline, build the
training matrix with that same pipeline, train LightGBM (seeded, deterministic),
evaluate on a holdout, and register a new version with its provenance."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

import riskserve
from riskserve._native import FeaturePipeline, fit_reference, fit_spec
from riskserve.registry import ModelRepository, VersionRef
from riskserve.runtime.loaded import spec_hash
from riskserve.training.datagen import fingerprint, read_table
from riskserve.training.spec_infer import infer_template

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
    threshold: float = 0.5
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    ref: VersionRef
    metrics: dict[str, float]
    model_sha256: str


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


def train(cfg: TrainConfig, progress: Progress = lambda _m: None) -> TrainResult:
    import lightgbm

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

    progress(f"fitting the feature spec ({spec_source}) on {len(train_idx)} training rows")
    spec_json = fit_spec(json.dumps(template), columns_of(train_tab, names))
    pipeline = FeaturePipeline(spec_json)
    x_train = pipeline.transform(columns_of(train_tab, names))
    x_hold = pipeline.transform(columns_of(hold_tab, names))
    progress(f"{pipeline.n_features} features from {len(names)} raw inputs")

    params = {**DEFAULT_PARAMS, **cfg.params, "seed": cfg.seed}
    dtrain = lightgbm.Dataset(
        x_train,
        label=y[train_idx],
        feature_name=_safe_feature_names(list(pipeline.feature_names)),
        free_raw_data=True,
    )
    every = max(1, cfg.rounds // 10)

    def report(env: Any) -> None:
        if (env.iteration + 1) % every == 0 or env.iteration + 1 == cfg.rounds:
            progress(f"boosting round {env.iteration + 1}/{cfg.rounds}")

    booster = lightgbm.train(params, dtrain, num_boost_round=cfg.rounds, callbacks=[report])
    model_txt = booster.model_to_string().encode()
    p_hold = booster.predict(x_hold)
    metrics = evaluate(y[hold_idx], np.asarray(p_hold), cfg.threshold)
    progress(
        f"holdout AUC {metrics['auc']:.4f}, precision {metrics['precision']:.3f} / recall "
        f"{metrics['recall']:.3f} at threshold {cfg.threshold}"
    )

    progress("fitting drift reference bins (training inputs, holdout scores)")
    # Served scores are float32: fit the score bins on the same rounding, or
    # scores tied at an edge land in a bin the reference calls empty.
    served_scores = np.asarray(p_hold, dtype=np.float32).astype(np.float64)
    spec_json = fit_reference(spec_json, columns_of(train_tab, names), served_scores)
    files: dict[str, bytes] = {"model.txt": model_txt, "features.json": spec_json.encode()}
    if cfg.model_format == "onnx":
        progress("converting to ONNX")
        files["model.onnx"] = to_onnx(booster, pipeline.n_features)

    manifest = {
        "model_format": cfg.model_format,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": {
            "path": str(cfg.data),
            "fingerprint_sha256": data_fp,
            "rows": table.num_rows,
            "train_rows": len(train_idx),
            "holdout_rows": n_hold,
            "target": cfg.target,
            "positive_rate": float(y.mean()),
        },
        "spec_sha256": spec_hash(spec_json),
        "spec_source": spec_source,
        "feature_names": list(pipeline.feature_names),
        "hyperparameters": {**params, "num_boost_round": cfg.rounds, "holdout": cfg.holdout},
        "metrics": metrics,
        "libraries": library_versions(),
        "code_revision": code_revision(),
    }
    repo = ModelRepository(cfg.models_dir)
    ref = repo.write_version(cfg.model, files, manifest)
    sha = repo.verify(ref).model_sha256
    progress(
        f"registered {cfg.model} version {ref.version} at {ref.path} (model sha256 {sha[:16]}…)"
    )
    return TrainResult(ref=ref, metrics=metrics, model_sha256=sha)
