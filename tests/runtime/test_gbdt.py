"""The Rust tree evaluator (riskserve._native.Gbdt) against LightGBM itself, for
real: LightGBM models trained here on generated data that make LightGBM use every
kind of split (missing type None, Zero and NaN, default left and right, categorical
bitsets of one and several words), and the models riskserve trains through its
FeaturePipeline. Each is scored on >= 10,000 rows, fresh ones and ones full of edge
values (NaN, ±0, values below LightGBM's zero threshold, ±inf, the thresholds
themselves and their float32 neighbours, unseen, negative, fractional and huge
categories), and must agree with Booster.predict within PARITY_TOLERANCE on every
row (in practice bit for bit: the largest difference is printed). Model texts that
abort LightGBM, loop it forever or make it read past the row are refused with a
ModelError naming the line, in this process."""

from __future__ import annotations

import re
import threading
from itertools import pairwise
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import pytest
from conftest import train_model

from riskserve._native import FeaturePipeline, Gbdt, InputError, ModelError
from riskserve.registry import ModelRepository
from riskserve.runtime.runtimes import PARITY_TOLERANCE
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(300)

Matrix = npt.NDArray[np.float32]

N_TRAIN = 6_000
N_SCORE = 12_000
#: Columns of the synthetic data; CATEGORICAL are LightGBM categorical features.
N_FEATURES = 8
CATEGORICAL = [4, 5]
ROUNDS = 40

BASE: dict[str, Any] = {
    "objective": "binary",
    "num_leaves": 31,
    "min_data_in_leaf": 10,
    "min_data_per_group": 5,
    "cat_smooth": 1.0,
    "learning_rate": 0.1,
    "deterministic": True,
    "num_threads": 2,
    "seed": 0,
    "verbosity": -1,
}

#: Name → (extra parameters, the (decision type, missing type, default_left) kinds
#: of split its trees must contain).
MODELS: dict[str, tuple[dict[str, Any], set[tuple[str, str, bool]]]] = {
    "nan_missing": (
        {},
        {
            ("<=", "NaN", True),
            ("<=", "NaN", False),
            ("<=", "None", True),
            ("==", "None", False),
        },
    ),
    "zero_missing": (
        {"zero_as_missing": True},
        {("<=", "Zero", True), ("<=", "Zero", False), ("==", "None", False)},
    ),
    "no_missing": (
        {"use_missing": False},
        {("<=", "None", True), ("==", "None", False)},
    ),
    "regression": ({"objective": "regression"}, {("<=", "NaN", True), ("<=", "NaN", False)}),
    "random_forest": (
        {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1, "feature_fraction": 0.8},
        {("<=", "NaN", True), ("<=", "NaN", False), ("==", "None", False)},
    ),
}


def synthetic(n: int, seed: int) -> tuple[Matrix, npt.NDArray[np.float64]]:
    """Rows whose missing values and zeros carry signal in both directions, and two
    categorical columns (25 and 70 categories, the second with NaN)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, N_FEATURES), dtype=np.float32)
    x[:, 0] = rng.standard_normal(n)
    x[:, 1] = rng.standard_normal(n)
    x[:, 2] = np.where(rng.random(n) < 0.3, 0.0, rng.standard_normal(n) + 1.0)
    x[:, 3] = rng.uniform(-2, 2, n)
    x[:, 4] = rng.integers(0, 25, n)
    x[:, 5] = rng.integers(0, 70, n)
    x[:, 6] = rng.integers(0, 10, n)
    x[:, 7] = np.where(rng.random(n) < 0.2, 0.0, rng.standard_normal(n))
    nan0, nan1 = rng.random(n) < 0.15, rng.random(n) < 0.15
    x[nan0, 0] = np.nan
    x[nan1, 1] = np.nan
    x[rng.random(n) < 0.05, 5] = np.nan
    x[rng.random(n) < 0.05, 7] = np.nan
    signal = (
        np.nan_to_num(x[:, 0], nan=1.5)
        - np.nan_to_num(x[:, 1], nan=1.5)
        + np.where(x[:, 2] == 0, -1.0, 0.5 * x[:, 2])
        + np.sin(2 * x[:, 3])
        + np.where(x[:, 4] % 3 == 0, 1.0, -0.5)
        + np.where(np.nan_to_num(x[:, 5], nan=0) % 4 < 2, 0.8, -0.8)
        + 0.2 * x[:, 6]
        + np.where(x[:, 7] == 0, 0.7, np.nan_to_num(x[:, 7], nan=-1.0))
    )
    y = (signal + rng.standard_normal(n) > 0.5).astype(np.float64)
    return x, y


def split_kinds(
    booster: lightgbm.Booster,
) -> tuple[set[tuple[str, str, bool]], dict[int, set[float]]]:
    """The kinds of split in the model, and each feature's numerical thresholds."""
    kinds: set[tuple[str, str, bool]] = set()
    thresholds: dict[int, set[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_index" not in node:
            return
        kinds.add((node["decision_type"], node["missing_type"], bool(node["default_left"])))
        if node["decision_type"] == "<=":
            thresholds.setdefault(node["split_feature"], set()).add(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return kinds, thresholds


def edge_rows(base: Matrix, thresholds: dict[int, set[float]], seed: int) -> Matrix:
    """`base` with a third of its cells replaced by edge values."""
    rng = np.random.default_rng(seed)
    x = base.copy()
    common = [np.nan, 0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, np.inf, -np.inf, 3e38, -3e38]
    categories = [-1.0, -3.0, -0.5, 0.5, 2.5, 24.9, 25.0, 69.0, 70.0, 300.0, 1e6, 3e9, 2**31]
    for f in range(x.shape[1]):
        values = list(common)
        if f in CATEGORICAL:
            values += categories
        for t in thresholds.get(f, ()):
            t32 = np.float32(t)
            values += [t, float(t32), float(np.nextafter(t32, np.float32(np.inf)))]
            values += [float(np.nextafter(t32, np.float32(-np.inf)))]
        pick = rng.random(len(x)) < 1 / 3
        x[pick, f] = rng.choice(np.array(values, dtype=np.float32), size=int(pick.sum()))
    return x


@pytest.fixture(scope="module")
def trained() -> dict[str, lightgbm.Booster]:
    x, y = synthetic(N_TRAIN, 0)
    out = {}
    for name, (params, _) in MODELS.items():
        data = lightgbm.Dataset(x, label=y, categorical_feature=CATEGORICAL, free_raw_data=False)
        out[name] = lightgbm.train({**BASE, **params}, data, num_boost_round=ROUNDS)
    return out


def compare(g: Gbdt, booster: lightgbm.Booster, x: Matrix) -> float:
    """Max |Gbdt - LightGBM| over the rows of x (probabilities and raw scores), with
    the same scores whatever the batch size."""
    ours, theirs = g.predict(x), booster.predict(x)
    assert ours.dtype == np.float64 and ours.shape == (len(x),)
    worst = float(np.max(np.abs(ours - theirs)))
    raw = float(np.max(np.abs(g.predict_raw(x) - booster.predict(x, raw_score=True))))
    assert worst <= PARITY_TOLERANCE and raw <= PARITY_TOLERANCE, (worst, raw)
    # Rows one at a time and in batches of every size that takes another path.
    for i in range(300):
        np.testing.assert_array_equal(g.predict(x[i : i + 1]), ours[i : i + 1])
    start = 0
    for size in (1, 2, 3, 4, 5, 7, 8, 9, 15, 63, 64, 65, 200):
        np.testing.assert_array_equal(
            g.predict(x[start : start + size]), ours[start : start + size]
        )
        start += size
    return max(worst, raw)


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_equal_lightgbms_on_every_kind_of_split(
    trained: dict[str, lightgbm.Booster], name: str
) -> None:
    booster = trained[name]
    kinds, thresholds = split_kinds(booster)
    assert MODELS[name][1] <= kinds, f"{name} lacks {MODELS[name][1] - kinds}"
    g = Gbdt(booster.model_to_string())
    assert (g.n_features, g.num_trees) == (N_FEATURES, booster.num_trees())
    assert g.feature_names == booster.feature_name()

    fresh, _ = synthetic(N_SCORE, 1)
    worst = compare(g, booster, fresh)
    edges = edge_rows(fresh, thresholds, 2)
    worst = max(worst, compare(g, booster, edges))
    print(f"{name}: {2 * N_SCORE} rows, max |Gbdt - LightGBM| = {worst:.3g}")


def test_a_multi_word_categorical_bitset_is_used(trained: dict[str, lightgbm.Booster]) -> None:
    """The 70-category column needs bitsets of 3 words: the test data reaches them."""
    text = trained["nan_missing"].model_to_string()
    bounds = [
        [int(v) for v in m.group(1).split()]
        for m in re.finditer(r"^cat_boundaries=(.*)$", text, flags=re.M)
    ]
    assert any(b - a >= 2 for bb in bounds for a, b in pairwise(bb))


# --------------------------------------------------------------------------------------
# riskserve's own models
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fraud_repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    d = tmp_path_factory.mktemp("gbdt")
    run_datagen(N_TRAIN, 3, d / "train.parquet")
    train_model(d / "train.parquet", d / "models", rounds=60, seed=3)
    return ModelRepository(d / "models")


def test_scores_equal_lightgbms_on_a_model_riskserve_trained(fraud_repo: ModelRepository) -> None:
    path = fraud_repo.version("fraud", 1).path
    text = (path / "model.txt").read_text()
    pipeline = FeaturePipeline((path / "features.json").read_text())
    names = [name for name, _ in pipeline.inputs]
    x = pipeline.transform(columns_of(generate(N_SCORE, 99), names))
    booster = lightgbm.Booster(model_str=text)
    g = Gbdt(text)
    assert g.n_features == pipeline.n_features == booster.num_feature()
    assert g.num_trees == 60
    worst = compare(g, booster, x)
    print(f"fraud: {len(x)} rows, max |Gbdt - LightGBM| = {worst:.3g}")


def test_threads_share_one_model(fraud_repo: ModelRepository) -> None:
    """predict releases the GIL: threads scoring at once get the same scores."""
    path = fraud_repo.version("fraud", 1).path
    g = Gbdt((path / "model.txt").read_text())
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4000, g.n_features)) * 2).astype(np.float32)
    want = g.predict(x)
    got: list[npt.NDArray[np.float64]] = []

    def score() -> None:
        for _ in range(5):
            got.append(g.predict(x))

    threads = [threading.Thread(target=score) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 20
    for scores in got:
        np.testing.assert_array_equal(scores, want)


# --------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_text(fraud_repo: ModelRepository) -> str:
    return (fraud_repo.version("fraud", 1).path / "model.txt").read_text()


def _sub(text: str, pattern: str, repl: str) -> str:
    out, n = re.subn(pattern, repl, text, count=1, flags=re.M)
    assert n == 1, pattern
    return out


def _line_of(text: str, pattern: str) -> int:
    m = re.search(pattern, text, flags=re.M)
    assert m is not None, pattern
    return text.count("\n", 0, m.start()) + 1


#: Edits that abort LightGBM's parser, loop it forever, or make it read past the
#: row (tests/runtime/test_probe.py): edit → (pattern, replacement, the message,
#: the field whose line the message names).
HOSTILE = {
    "num_leaves huge": (
        r"^num_leaves=\d+$",
        "num_leaves=1000000000",
        "expected 1000000000 values, found ",
        "leaf_value",
    ),
    "num_leaves negative": (r"^num_leaves=\d+$", "num_leaves=-5", "must be >= 1", "num_leaves"),
    "a root that is its own child": (
        r"^left_child=\d+ ",
        "left_child=0 ",
        "node 0: child 0 has another parent",
        "left_child",
    ),
    "a feature the model lacks": (
        r"^split_feature=\d+",
        "split_feature=500",
        "node 0: feature 500 is not in 0..",
        "split_feature",
    ),
}


@pytest.mark.parametrize("edit", list(HOSTILE))
def test_model_texts_that_break_lightgbm_are_refused_naming_the_line(
    model_text: str, edit: str
) -> None:
    pattern, repl, message, field = HOSTILE[edit]
    bad = _sub(model_text, pattern, repl)
    # Without tree_sizes the edit reaches the tree checks, not the size check.
    bad = _sub(bad, r"^tree_sizes=.*\n", "")
    with pytest.raises(ModelError, match=re.escape(message)) as info:
        Gbdt(bad)
    line = _line_of(bad, f"^{field}=")
    assert str(info.value).startswith(f"invalid LightGBM model: line {line} (Tree=0 {field}): ")


def test_an_edited_tree_is_refused_by_its_size(model_text: str) -> None:
    """LightGBM finds trees by tree_sizes: a tree whose size changed is refused."""
    bad = _sub(model_text, r"^num_leaves=(\d+)$", r"num_leaves=0\1")
    with pytest.raises(ModelError, match=r"Tree=0 is \d+ bytes but tree_sizes \(line \d+\) says"):
        Gbdt(bad)


def test_truncated_and_garbage_texts_are_refused(model_text: str) -> None:
    with pytest.raises(ModelError, match="before 'end of trees'"):
        Gbdt(model_text[: len(model_text) // 2])
    with pytest.raises(ModelError, match="not a LightGBM tree model"):
        Gbdt("<html>not a model</html>")
    with pytest.raises(ModelError, match="empty"):
        Gbdt("")
    assert issubclass(ModelError, ValueError)


def _train_text(params: dict[str, Any], **data: Any) -> str:
    x, y = synthetic(2000, 4)
    labels = data.pop("labels", y)
    ds = lightgbm.Dataset(x, label=labels, **data)
    return str(lightgbm.train({**BASE, **params}, ds, num_boost_round=3).model_to_string())


def test_unsupported_models_are_refused_with_the_reason() -> None:
    rng = np.random.default_rng(0)
    multiclass = _train_text(
        {"objective": "multiclass", "num_class": 3}, labels=rng.integers(0, 3, 2000)
    )
    with pytest.raises(ModelError, match="3 classes: only binary and regression"):
        Gbdt(multiclass)
    linear = _train_text({"linear_tree": True})
    with pytest.raises(ModelError, match="linear trees are not supported"):
        Gbdt(linear)
    xentropy = _train_text({"objective": "cross_entropy"})
    with pytest.raises(ModelError, match='objective "cross_entropy" is not supported'):
        Gbdt(xentropy)
    sqrt = _train_text({"objective": "regression", "reg_sqrt": True})
    with pytest.raises(ModelError, match="'sqrt'"):
        Gbdt(sqrt)


def test_a_wrong_matrix_is_an_input_error_naming_the_problem(model_text: str) -> None:
    g = Gbdt(model_text)
    n = g.n_features
    good = np.zeros((3, n), dtype=np.float32)
    cases: list[tuple[Any, str]] = [
        (np.zeros((3, n + 1), dtype=np.float32), f"x has {n + 1} columns, the model has {n}"),
        (
            good.astype(np.float64),
            f"x must be a 2-D float32 array of shape (rows, {n}), got a 2-D float64",
        ),
        (np.zeros(n, dtype=np.float32), "got a 1-D float32 array"),
        (np.asfortranarray(good), "x must be C-contiguous"),
        (good.tolist(), "got list"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            g.predict(bad)
    assert g.predict(np.zeros((0, n), dtype=np.float32)).shape == (0,)


def test_a_model_written_to_disk_and_read_back_scores_the_same(
    trained: dict[str, lightgbm.Booster], tmp_path: Path
) -> None:
    """model.txt as save_model writes it (the file riskserve registers) is the
    same model as model_to_string's."""
    booster = trained["nan_missing"]
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    x, _ = synthetic(500, 8)
    np.testing.assert_array_equal(
        Gbdt(path.read_text()).predict(x), Gbdt(booster.model_to_string()).predict(x)
    )
