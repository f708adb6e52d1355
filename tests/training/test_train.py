"""Training pipeline pieces: metrics against scikit-learn, target checks, spec
inference, that the matrix is built by the same Rust pipeline that serves, and the
operating point: chosen on the scores as served, recorded in the manifest, and
reproduced exactly by the served decision `score >= threshold`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from riskserve._native import FeaturePipeline
from riskserve.registry import ModelRepository
from riskserve.runtime.loaded import open_model, read_version
from riskserve.training import datagen
from riskserve.training.spec_infer import infer_template
from riskserve.training.train import (
    TrainConfig,
    auc,
    binary_target,
    columns_of,
    operating_point,
    threshold_for_alert_rate,
    threshold_for_precision,
    train,
)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 5000)
    p = np.round(rng.random(5000) * 0.3 + y * 0.2, 2)  # many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0, 1, 2], "only 0 and 1"),
        ([1, 1, 1], "single class"),
        (["a", "b", "a"], "0/1 or boolean"),
        ([0.0, float("nan"), 1.0], "only 0 and 1"),
    ],
)
def test_binary_target_refuses_bad_targets(values: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_target(pa.table({"y": values}), "y")
    with pytest.raises(ValueError, match="not in the data"):
        binary_target(pa.table({"y": values}), "label")


def test_inferred_template_by_type() -> None:
    table = pa.table(
        {
            "f": [1.5, None, 2.0],
            "i": [1, 2, 3],
            "b": [True, False, True],
            "s": ["a", "b", "a"],
            "y": [0, 1, 0],
        }
    )
    t = infer_template(table, "y")
    assert [(i["name"], i["dtype"]) for i in t["inputs"]] == [
        ("f", "float"),
        ("i", "int"),
        ("b", "bool"),
        ("s", "string"),
    ]
    kinds = [tr["type"] for tr in t["transforms"]]
    assert kinds == ["numeric", "numeric", "numeric", "one_hot"]
    high = pa.table({"s": [f"v{i}" for i in range(40)], "y": [0, 1] * 20})
    assert infer_template(high, "y")["transforms"][0]["type"] == "ordinal"


def test_training_matrix_is_the_serving_transform(tmp_path: Path) -> None:
    data = tmp_path / "d.parquet"
    datagen.run_datagen(3000, 11, data)
    res = train(
        TrainConfig(
            data=data,
            target="is_fraud",
            model="m",
            models_dir=tmp_path / "models",
            rounds=15,
            spec=Path(__file__).parents[2] / "python/riskserve/training/specs/fraud.json",
        )
    )
    manifest = json.loads((res.ref.path / "manifest.json").read_text())
    assert manifest["data"]["fingerprint_sha256"] == datagen.fingerprint(data)
    assert set(manifest["files"]) == {"model.txt", "features.json"}
    assert manifest["hyperparameters"]["seed"] == 0
    assert 0.5 < manifest["metrics"]["auc"] <= 1.0
    assert {"lightgbm", "numpy", "riskserve"} <= set(manifest["libraries"])
    # The served pipeline reproduces the names LightGBM was trained with.
    pipe = FeaturePipeline((res.ref.path / "features.json").read_text())
    assert manifest["feature_names"] == pipe.feature_names
    import lightgbm

    booster = lightgbm.Booster(model_file=str(res.ref.path / "model.txt"))
    assert booster.num_feature() == pipe.n_features
    table = datagen.generate(200, 99)
    x = pipe.transform(columns_of(table, [n for n, _ in pipe.inputs]))
    assert np.isfinite(x).all()


# --------------------------------------------------------------------------------------
# the operating point
# --------------------------------------------------------------------------------------


def _f32(values: list[float]) -> np.ndarray:
    """Scores as served: float32, widened exactly."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def test_alert_rate_threshold_flags_at_most_the_rate_on_served_scores() -> None:
    rng = np.random.default_rng(5)
    scores = _f32(list(np.round(rng.random(10_000), 3)))  # many ties
    for rate in (0.001, 0.01, 0.0123, 0.05, 0.2, 0.5):
        t = threshold_for_alert_rate(scores, rate)
        assert t in scores and np.float32(t) == t  # one of the float32 scores
        flagged = int((scores >= t).sum())
        assert flagged <= rate * len(scores)
        # the next lower score would flag more than the rate
        lower = scores[scores < t]
        assert int((scores >= lower.max()).sum()) > rate * len(scores)
        # the same decision whether the server compares in float32 or float64
        assert int((scores.astype(np.float32) >= np.float32(t)).sum()) == flagged


def test_alert_rate_threshold_with_ties_at_the_top() -> None:
    scores = _f32([0.9] * 30 + [0.1] * 70)
    assert threshold_for_alert_rate(scores, 0.1) == pytest.approx(0.9)  # flags 30 %: the fewest
    assert threshold_for_alert_rate(scores, 0.3) == scores[0]


def test_precision_threshold_is_the_lowest_reaching_the_target() -> None:
    scores = _f32([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    # precision at each score: 1, 1, .667, .75, .6, .5, .571, .5
    assert threshold_for_precision(y, scores, 1.0) == scores[1]
    assert threshold_for_precision(y, scores, 0.75) == scores[3]
    assert threshold_for_precision(y, scores, 0.55) == scores[6]  # not monotonic: lowest wins
    assert threshold_for_precision(y, scores, 0.5) == scores[7]
    best = r"the best reachable is 0\.5000 \(threshold 0\.3, flagging 4 rows\)"
    with pytest.raises(ValueError, match=best):
        threshold_for_precision(np.array([0, 1, 0, 1]), _f32([0.9, 0.5, 0.4, 0.3]), 0.75)


@pytest.mark.parametrize(("positive_rate", "rate"), [(0.01, 0.02), (1e-5, 0.001), (0.3, 0.2)])
def test_default_operating_point_is_twice_the_positive_rate_capped(
    positive_rate: float, rate: float
) -> None:
    scores = _f32(list(np.linspace(0, 1, 5_000)))
    y = (np.arange(5_000) % 7 == 0).astype(np.int32)
    point = operating_point(y, scores, positive_rate=positive_rate)
    assert point["chosen_for"] == "alert_rate" and point["target"] == pytest.approx(rate)
    assert point["threshold"] == threshold_for_alert_rate(scores, rate)
    assert point["holdout_alert_rate"] == pytest.approx(rate, abs=1 / 5_000)


def test_operating_point_records_the_holdout_outcome() -> None:
    scores = _f32([0.9, 0.8, 0.7, 0.6])
    y = np.array([1, 0, 1, 0])
    point = operating_point(y, scores, positive_rate=0.5, threshold=0.75)
    assert point == {
        "threshold": 0.75,
        "chosen_for": "explicit",
        "target": None,
        "holdout_alert_rate": 0.5,
        "holdout_precision": 0.5,
        "holdout_recall": 0.5,
    }
    point = operating_point(y, scores, positive_rate=0.5, target_precision=0.6)
    assert (point["chosen_for"], point["target"], point["threshold"]) == (
        "precision",
        0.6,
        scores[2],
    )
    assert point["holdout_precision"] == pytest.approx(2 / 3) and point["holdout_recall"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.5, "alert_rate": 0.1}, "at most one of --threshold, --alert-rate"),
        ({"alert_rate": 0.1, "target_precision": 0.9}, "--alert-rate, --target-precision"),
        ({"threshold": 1.5}, r"--threshold must be a number in \[0, 1\]"),
        ({"threshold": float("nan")}, r"--threshold must be a number in \[0, 1\]"),
        ({"alert_rate": 0.0}, r"--alert-rate must be in \(0, 1\)"),
        ({"alert_rate": 1.0}, r"--alert-rate must be in \(0, 1\)"),
        ({"target_precision": 0.0}, r"--target-precision must be in \(0, 1\]"),
        ({"target_precision": 1.01}, r"--target-precision must be in \(0, 1\]"),
    ],
)
def test_train_config_refuses_bad_operating_targets(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(data=Path("d"), target="y", model="m", models_dir=Path("m"), **kwargs)


# -- trained end to end ------------------------------------------------------------------

SPEC = Path(__file__).parents[2] / "python/riskserve/training/specs/fraud.json"


def _train(data: Path, models: Path, **kwargs: Any) -> Any:
    return train(
        TrainConfig(
            data=data,
            target="is_fraud",
            model="m",
            models_dir=models,
            spec=SPEC,
            **{"rounds": 30, **kwargs},
        )
    )


def _holdout(data: Path, seed: int = 0, holdout: float = 0.2) -> tuple[pa.Table, np.ndarray]:
    """The holdout rows train() draws (the same permutation) and their labels."""
    table = datagen.read_table(data)
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    idx = np.sort(perm[: round(holdout * table.num_rows)])
    rows = table.take(pa.array(idx))
    return rows, rows.column("is_fraud").to_numpy().astype(np.int32)


@pytest.fixture(scope="module")
def fraud_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("operating") / "d.parquet"
    datagen.run_datagen(8_000, 3, data)
    return data


@pytest.mark.parametrize("model_format", ["lightgbm", "onnx"])
def test_the_served_decision_flags_what_the_manifest_says(
    fraud_data: Path, tmp_path: Path, model_format: str
) -> None:
    res = _train(fraud_data, tmp_path / "models", model_format=model_format)
    manifest = json.loads((res.ref.path / "manifest.json").read_text())
    point = manifest["operating_point"]
    assert set(point) == {
        "threshold",
        "chosen_for",
        "target",
        "holdout_alert_rate",
        "holdout_precision",
        "holdout_recall",
    }
    assert point == res.operating_point and point["chosen_for"] == "alert_rate"
    # the default: twice the training rows' positive rate (the rows not held out)
    table = datagen.read_table(fraud_data)
    perm = np.random.default_rng(0).permutation(table.num_rows)
    y_train = table.column("is_fraud").to_numpy()[perm[round(0.2 * table.num_rows) :]]
    assert point["target"] == pytest.approx(min(max(2 * float(np.mean(y_train)), 0.001), 0.2))
    assert manifest["metrics"]["threshold"] == point["threshold"]
    assert manifest["metrics"]["alert_rate"] == point["holdout_alert_rate"]
    assert manifest["metrics"]["precision"] == point["holdout_precision"]
    assert manifest["metrics"]["recall"] == point["holdout_recall"]

    # The version as the server loads and scores it.
    repo = ModelRepository(tmp_path / "models")
    model = open_model(read_version(repo, res.ref))
    assert model.threshold == point["threshold"]
    rows, y = _holdout(fraud_data)
    scores = model.score(columns_of(rows, [i.name for i in model.inputs]))
    assert scores.dtype == np.float32
    flagged = scores >= model.threshold
    assert float(flagged.mean()) == point["holdout_alert_rate"]
    assert flagged.sum() <= point["target"] * len(y)
    tp = int((flagged & (y == 1)).sum())
    assert tp / max(1, int(flagged.sum())) == point["holdout_precision"]
    assert tp / int((y == 1).sum()) == point["holdout_recall"]


def test_alert_rate_precision_and_explicit_targets(fraud_data: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    default = _train(fraud_data, models).operating_point
    rate = _train(fraud_data, models, alert_rate=0.05).operating_point
    assert (rate["chosen_for"], rate["target"]) == ("alert_rate", 0.05)
    assert rate["threshold"] < default["threshold"] and 0.04 < rate["holdout_alert_rate"] <= 0.05
    # a precision the default reaches: the lowest threshold reaching it is no higher
    want = default["holdout_precision"]
    prec = _train(fraud_data, models, target_precision=want).operating_point
    assert (prec["chosen_for"], prec["target"]) == ("precision", want)
    assert prec["threshold"] <= default["threshold"] and prec["holdout_precision"] >= want
    explicit = _train(fraud_data, models, threshold=0.3).operating_point
    assert (explicit["chosen_for"], explicit["target"], explicit["threshold"]) == (
        "explicit",
        None,
        0.3,
    )


def test_an_unreachable_precision_names_the_best_and_registers_nothing(tmp_path: Path) -> None:
    data, models = tmp_path / "small.parquet", tmp_path / "models"
    datagen.run_datagen(3_000, 11, data)  # a weak model: 7 frauds in the holdout
    with pytest.raises(ValueError) as info:
        _train(data, models, target_precision=0.5, rounds=15)
    msg = str(info.value)
    assert msg.startswith(
        "no threshold reaches precision 0.5 on the holdout (600 rows, 7 positive)"
    )
    assert "the best reachable is 0.0" in msg
    assert not (models / "m").exists() or not any((models / "m").iterdir())


def test_training_stays_deterministic(fraud_data: Path, tmp_path: Path) -> None:
    a, b = _train(fraud_data, tmp_path / "a"), _train(fraud_data, tmp_path / "b")
    assert (a.ref.path / "model.txt").read_bytes() == (b.ref.path / "model.txt").read_bytes()
    ma = json.loads((a.ref.path / "manifest.json").read_text())
    mb = json.loads((b.ref.path / "manifest.json").read_text())
    assert {k for k in ma if ma[k] != mb[k]} <= {"created_at"}


def test_a_version_without_an_operating_point_serves_at_0_5(
    fraud_data: Path, tmp_path: Path
) -> None:
    res = _train(fraud_data, tmp_path / "models")
    path = res.ref.path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["operating_point"]  # as trained before thresholds were recorded
    path.write_text(json.dumps(manifest))
    model = open_model(read_version(ModelRepository(tmp_path / "models"), res.ref))
    assert model.manifest.threshold is None and model.threshold == 0.5


def test_the_train_command_s_operating_point_flags(
    fraud_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from riskserve import cli

    base = ["train", "--data", str(fraud_data), "--target", "is_fraud", "--model", "m"]
    base += ["--models", str(tmp_path / "models"), "--spec", str(SPEC), "--rounds", "10"]
    with pytest.raises(SystemExit) as info:
        cli.main([*base, "--threshold", "0.3", "--alert-rate", "0.1"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.main([*base, "--alert-rate", "1.5"]) == 2
    assert "--alert-rate must be in (0, 1)" in capsys.readouterr().err
    assert cli.main([*base, "--target-precision", "0"]) == 2
    assert "--target-precision must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # refused before training

    assert cli.main([*base, "--alert-rate", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["operating_point"]["chosen_for"] == "alert_rate"
    assert out["operating_point"]["target"] == 0.05
    assert out["metrics"]["threshold"] == out["operating_point"]["threshold"]
