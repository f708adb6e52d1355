"""Training pipeline pieces: metrics against scikit-learn, target checks, spec
inference, and that the matrix is built by the same Rust pipeline that serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from riskserve._native import FeaturePipeline
from riskserve.training import datagen
from riskserve.training.spec_infer import infer_template
from riskserve.training.train import TrainConfig, auc, binary_target, columns_of, train


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
