"""Retraining's pieces, in process: the evaluation figures against scikit-learn, the
gate (a pure function), the champion's template, snapshots (same rows, same sha256;
retried ids; coverage; the schema check), the time split, and whole runs of
`retrain()` on a real SQLite store filled through the store API: provenance in the
manifest, byte-identical models from one snapshot, and every bad input leaving the
registry as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FRAUD_SPEC, train_model
from sklearn.metrics import precision_score, recall_score, roc_auc_score, roc_curve

from riskserve._native import fit_spec, rows_json
from riskserve.config import RetrainSettings
from riskserve.errors import InvalidInput, NotFound
from riskserve.feedback.records import Label, Outcome, PredictionRow
from riskserve.feedback.sqlite import SqliteStore
from riskserve.feedback.store import FeedbackStore
from riskserve.registry import ModelRepository
from riskserve.training import snapshot as snap
from riskserve.training.datagen import fingerprint, generate, run_datagen, write_table
from riskserve.training.retrain import (
    Figures,
    Margins,
    RetrainConfig,
    RetrainResult,
    amount_recall,
    figures,
    gate,
    load_champion,
    recall_at_fpr,
    retrain,
    template_of,
    time_split,
)
from riskserve.training.train import OperatingTarget, columns_of

T0 = 1_790_000_000.0  # 2026-09-21
DAY = 86400.0
NOW = T0 + 40 * DAY
ROUNDS = 20
LOG_ROWS = 5000
#: Small data: a holdout of 1,000 rows has ~15 fraud labels.
SETTINGS = RetrainSettings(min_holdout_fraud=5)
#: Margins that pass any challenger: these runs test the pipeline; the gate's own tests
#: are below (the figures of a 15-fraud holdout are noise).
LENIENT = dataclasses.replace(
    SETTINGS,
    max_auc_drop=1.0,
    max_recall_drop=1.0,
    max_precision_drop=1.0,
    max_amount_recall_drop=1.0,
)
SPEC_INPUTS = [i["name"] for i in json.loads(FRAUD_SPEC.read_text())["inputs"]]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with fraud v1, trained on 4,000 generated payments."""
    work = tmp_path_factory.mktemp("retrain")
    data = work / "train.parquet"
    run_datagen(4000, 1, data)
    models = work / "models"
    train_model(data, models, ROUNDS, 1)
    return models


@pytest.fixture(scope="module")
def traffic() -> pa.Table:
    return generate(LOG_ROWS, 7)


@pytest.fixture
def models(champion_models: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(champion_models, dst)
    return dst


def prediction_rows(
    table: pa.Table, t0: float, step: float, prefix: str = "r", version: int = 1
) -> list[PredictionRow]:
    inputs = rows_json(columns_of(table, SPEC_INPUTS), table.num_rows)
    return [
        PredictionRow(
            id=f"{prefix}{i}", ts=t0 + i * step, model="fraud", version=version,
            variant=f"v{version}", revision=1, key_hash=None, score=0.1, threshold=0.5,
            flagged=False, shadow=False, inputs=inputs[i],
        )
        for i in range(table.num_rows)
    ]  # fmt: skip


def labels_of(
    table: pa.Table, t0: float, step: float, prefix: str = "r", every: int = 1
) -> list[Label]:
    """Each row's is_fraud as its label (amount = the transaction's), a day later;
    only every `every`-th row is labelled."""
    y = table.column("is_fraud").to_numpy()
    amount = table.column("amount").to_numpy()
    return [
        Label(f"L{prefix}{i}", f"{prefix}{i}", Outcome(int(y[i])), t0 + i * step + DAY,
              "chargeback", float(amount[i]))
        for i in range(table.num_rows)
        if i % every == 0
    ]  # fmt: skip


def fill(store: FeedbackStore, table: pa.Table, *, every: int = 1) -> None:
    """The table as a day-and-a-half of logged predictions from T0, labelled."""
    step = 1.5 * DAY / table.num_rows
    store.write_predictions(prediction_rows(table, T0, step))
    store.write_labels(labels_of(table, T0, step, every=every), NOW)


def store_of(models: Path) -> SqliteStore:
    return SqliteStore(models / ".feedback" / "feedback.sqlite")


def config(models: Path, **kw: Any) -> RetrainConfig:
    base: dict[str, Any] = {
        "model": "fraud",
        "models_dir": models,
        "settings": LENIENT,
        "window_seconds": 30 * DAY,
        "maturity_seconds": 14 * DAY,
        "now": NOW,
    }
    return RetrainConfig(**{**base, **kw})


def run(cfg: RetrainConfig) -> RetrainResult:
    return retrain(cfg, lambda: store_of(cfg.models_dir))


def listing(models: Path) -> dict[str, Any]:
    """Every version of fraud and the sha256 of each of its files."""
    repo = ModelRepository(models)
    return {
        str(r.version): {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(r.path.iterdir())
        }
        for r in repo.versions("fraud")
    }


# -- evaluation figures ----------------------------------------------------------------


def test_figures_match_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    y = (rng.random(n) < 0.08).astype(np.int32)
    scores = np.round(rng.random(n) * 0.6 + y * 0.3, 2)  # many ties
    amount = np.where(rng.random(n) < 0.8, rng.lognormal(3, 1, n), np.nan)
    threshold = 0.55
    fpr_curve, tpr_curve, _ = roc_curve(y, scores)
    for fpr in (0.0, 0.01, 0.05, 0.2, 1.0):
        want = float(tpr_curve[fpr_curve <= fpr + 1e-12].max())
        assert recall_at_fpr(y, scores, fpr) == pytest.approx(want, abs=1e-12), fpr
    flagged = scores >= threshold
    ref_fpr = float(((scores >= 0.6) & (y == 0)).sum() / (y == 0).sum())
    f = figures(y, scores, threshold, amount, ref_fpr)
    assert f.auc == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert f.precision == pytest.approx(precision_score(y, flagged), abs=1e-12)
    assert f.recall == pytest.approx(recall_score(y, flagged), abs=1e-12)
    assert f.false_positive_rate == pytest.approx(
        float((flagged & (y == 0)).sum() / (y == 0).sum()), abs=1e-12
    )
    assert f.alert_rate == pytest.approx(flagged.mean())
    assert f.recall_at_fpr == pytest.approx(
        float(tpr_curve[fpr_curve <= ref_fpr + 1e-12].max()), abs=1e-12
    )
    has = np.isfinite(amount)
    weighted = recall_score(y[has], flagged[has], sample_weight=amount[has])
    assert f.amount_recall == pytest.approx(weighted, abs=1e-12)
    assert amount_recall(y, flagged, np.full(n, np.nan)) is None
    with pytest.raises(ValueError, match="both classes"):
        recall_at_fpr(np.zeros(3), np.zeros(3), 0.1)


# -- the gate (pure) -------------------------------------------------------------------

CHAMPION = Figures(
    auc=0.90, recall_at_fpr=0.60, threshold=0.3, precision=0.40, recall=0.60,
    false_positive_rate=0.01, alert_rate=0.02, amount_recall=0.55,
)  # fmt: skip
MARGINS = Margins(auc=0.01, recall_at_fpr=0.02, precision=0.05, amount_recall=0.05)


def test_gate_passes_a_challenger_within_every_margin() -> None:
    chall = dataclasses.replace(
        CHAMPION, auc=0.89, recall_at_fpr=0.58, precision=0.35, amount_recall=0.50
    )  # each exactly at its margin
    d = gate(CHAMPION, chall, MARGINS)
    assert d.passed and d.failures == []
    assert [c.figure for c in d.checks] == ["auc", "recall_at_fpr", "precision", "amount_recall"]
    assert [round(c.drop or 0, 6) for c in d.checks] == [0.01, 0.02, 0.05, 0.05]
    better = dataclasses.replace(CHAMPION, auc=0.95, recall_at_fpr=0.7)
    assert gate(CHAMPION, better, MARGINS).passed


@pytest.mark.parametrize(
    ("figure", "value", "setting"),
    [
        ("auc", 0.8899, "RISKSERVE_RETRAIN_MAX_AUC_DROP"),
        ("recall_at_fpr", 0.5799, "RISKSERVE_RETRAIN_MAX_RECALL_DROP"),
        ("precision", 0.3499, "RISKSERVE_RETRAIN_MAX_PRECISION_DROP"),
        ("amount_recall", 0.4999, "RISKSERVE_RETRAIN_MAX_AMOUNT_RECALL_DROP"),
    ],
)
def test_gate_refuses_a_drop_beyond_one_margin(figure: str, value: float, setting: str) -> None:
    d = gate(CHAMPION, dataclasses.replace(CHAMPION, **{figure: value}), MARGINS)
    assert not d.passed
    assert [c.figure for c in d.checks if not c.passed] == [figure]
    (failure,) = d.failures
    assert failure.startswith(f"{figure} {value:.4f} vs the champion's") and setting in failure
    doc = d.to_json()
    assert doc["passed"] is False and doc["failures"] == [failure]
    assert doc["champion"]["auc"] == 0.90 and doc["margins"]["auc"] == 0.01


def test_gate_does_not_compare_a_figure_one_side_lacks() -> None:
    no_amounts = dataclasses.replace(CHAMPION, amount_recall=None)
    d = gate(no_amounts, dataclasses.replace(no_amounts, auc=0.9), MARGINS)
    assert d.passed
    (amount,) = [c for c in d.checks if c.figure == "amount_recall"]
    assert amount.drop is None and amount.note == "not compared: no amounts"
    assert Margins.of(RetrainSettings(max_auc_drop=0.3)).auc == 0.3


def test_operating_target_follows_the_champions_rule() -> None:
    assert OperatingTarget.like({"chosen_for": "alert_rate", "target": 0.03}) == OperatingTarget(
        alert_rate=0.03
    )
    assert OperatingTarget.like({"chosen_for": "precision", "target": 0.5}) == OperatingTarget(
        target_precision=0.5
    )
    assert OperatingTarget.like({"chosen_for": "explicit", "target": None, "threshold": 0.4}) == (
        OperatingTarget(threshold=0.4)
    )
    assert OperatingTarget.like({}) == OperatingTarget()


# -- the champion's template -----------------------------------------------------------


def test_a_fitted_spec_back_to_its_template_refits_the_same(traffic: pa.Table) -> None:
    """Versions trained before templates were recorded: taking the fitted values out
    and fitting again on the same rows gives the same spec."""
    template = json.loads(FRAUD_SPEC.read_text())
    cols = columns_of(traffic, SPEC_INPUTS)
    fitted = json.loads(fit_spec(json.dumps(template), cols))
    again = json.loads(fit_spec(json.dumps(template_of(fitted)), cols))
    assert again == fitted
    other = json.loads(
        fit_spec(json.dumps(template_of(fitted)), columns_of(generate(500, 9), SPEC_INPUTS))
    )
    assert other != fitted  # refitted, not kept


def test_a_new_version_records_its_template(models: Path) -> None:
    champion = load_champion(models, "fraud", None)
    assert champion.manifest.raw["spec_template"] == json.loads(FRAUD_SPEC.read_text())
    assert champion.template == json.loads(FRAUD_SPEC.read_text())
    assert champion.target == "is_fraud"
    params, rounds = champion.params_and_rounds
    assert rounds == ROUNDS and params["seed"] == 1 and "holdout" not in params


# -- snapshots -------------------------------------------------------------------------


def _schema() -> snap.SnapshotSchema:
    return snap.SnapshotSchema.of_spec(json.loads(FRAUD_SPEC.read_text()), "is_fraud")


WINDOW = snap.Window.ending(NOW, 30 * DAY, 14 * DAY)


def test_same_rows_give_the_same_snapshot_whatever_the_insertion_order(
    tmp_path: Path, traffic: pa.Table
) -> None:
    table = traffic.slice(0, 600)
    step = 100.0
    rows, labels = prediction_rows(table, T0, step), labels_of(table, T0, step, every=2)
    a, b, c = (SqliteStore(tmp_path / f"{n}.sqlite") for n in "abc")
    a.write_predictions(rows)
    a.write_labels(labels, NOW)
    # b: the rows in another order and other batches, the labels first (pending), and a
    # retry of one request logged after it (the earliest row is the one kept).
    b.write_labels(labels[::-1], NOW)
    for part in (rows[400:], rows[:150], rows[150:400]):
        b.write_predictions(part)
    b.write_predictions([dataclasses.replace(rows[10], ts=rows[10].ts + 5000, version=2)])
    # c: one label revised.
    c.write_predictions(rows)
    c.write_labels(labels, NOW)
    flipped = Outcome(1 - int(labels[3].outcome))
    c.write_labels([dataclasses.replace(labels[3], label_id="flip", outcome=flipped)], NOW)

    got = {
        n: snap.collect(s, "fraud", _schema(), WINDOW, chunk_rows=128)
        for n, s in zip("abc", (a, b, c), strict=True)
    }
    digests = {n: hashlib.sha256(snap.to_parquet(g.table)).hexdigest() for n, g in got.items()}
    assert digests["a"] == digests["b"] != digests["c"]
    assert got["b"].retried == 1 and got["a"].retried == 0
    assert got["a"].table.num_rows == 300  # every other row labelled
    assert (got["a"].predictions, got["a"].labelled) == (600, 300)
    assert got["b"].predictions == 600 and got["a"].label_coverage == 0.5
    t = got["a"].table
    assert t.schema == _schema().schema()
    ts = t.column(snap.PREDICTION_TIME).to_numpy()
    assert (np.diff(ts) >= 0).all()
    assert t.column(snap.REQUEST_ID).to_pylist()[:3] == ["r0", "r2", "r4"]
    assert t.column("is_fraud").to_pylist() == [int(lb.outcome) for lb in labels]
    assert t.column(snap.LABEL_AMOUNT).to_pylist() == [lb.amount for lb in labels]
    # The inputs as logged, typed as the spec says (NaN for a missing number).
    for name in ("amount", "merchant_category", "card_present", "txn_count_1h"):
        want = table.column(name).take(pa.array(range(0, 600, 2))).to_pylist()
        assert t.column(name).to_pylist() == want, name
    dist = t.column("distance_from_home_km").to_numpy()
    assert np.isnan(dist).any() and t.column("distance_from_home_km").null_count == 0
    for s in (a, b, c):
        s.close()


def test_unlabelled_predictions_dropped_or_kept_as_legit(tmp_path: Path, traffic: pa.Table) -> None:
    table = traffic.slice(0, 400)
    store = SqliteStore(tmp_path / "f.sqlite")
    store.write_predictions(prediction_rows(table, T0, 60.0))
    store.write_labels(labels_of(table, T0, 60.0, every=4), NOW)
    dropped = snap.collect(store, "fraud", _schema(), WINDOW)
    kept = snap.collect(store, "fraud", _schema(), WINDOW, unlabelled="legit")
    assert (dropped.table.num_rows, dropped.unlabelled_as_legit) == (100, 0)
    assert (kept.table.num_rows, kept.unlabelled_as_legit) == (400, 300)
    assert kept.label_coverage == dropped.label_coverage == 0.25
    y = kept.table.column("is_fraud").to_numpy()
    unlabelled = kept.table.column(snap.LABEL_TIME).is_null().to_numpy(zero_copy_only=False)
    assert (y[unlabelled] == 0).all() and unlabelled.sum() == 300
    with pytest.raises(ValueError, match="unlabelled must be one of drop, legit"):
        snap.collect(store, "fraud", _schema(), WINDOW, unlabelled="fraud")
    store.close()


def test_log_rows_without_an_input_of_the_spec_are_named(tmp_path: Path, traffic: pa.Table) -> None:
    store = SqliteStore(tmp_path / "f.sqlite")
    rows = prediction_rows(traffic.slice(0, 10), T0, 60.0, version=3)
    no_channel = [
        dataclasses.replace(
            r, inputs=json.dumps({k: v for k, v in json.loads(r.inputs).items() if k != "channel"})
        )
        for r in rows
    ]
    store.write_predictions(no_channel)
    store.write_labels(labels_of(traffic.slice(0, 10), T0, 60.0), NOW)
    with pytest.raises(
        InvalidInput,
        match=r"10 labelled predictions in the log have no input 'channel' \(string\).*"
        r"version\(s\) 3",
    ):
        snap.collect(store, "fraud", _schema(), WINDOW)
    store.close()


def test_snapshot_schema_check_names_the_column(tmp_path: Path) -> None:
    schema = _schema()
    good = schema.schema().empty_table()
    schema.check(good.schema, "x")
    with pytest.raises(InvalidInput, match="has no input 'channel'"):
        schema.check(good.drop_columns(["channel"]).schema, "snapshot s")
    bad = good.set_column(0, "amount", pa.array([], pa.string()))
    with pytest.raises(InvalidInput, match="column 'amount' is string, not the spec's float"):
        schema.check(bad.schema, "snapshot s")
    with pytest.raises(InvalidInput, match="has no column 'label_amount'"):
        schema.check(good.drop_columns(["label_amount"]).schema, "snapshot s")
    with pytest.raises(InvalidInput, match="input 'request_id' has the name of a snapshot column"):
        snap.SnapshotSchema.of_spec({"inputs": [{"name": "request_id", "dtype": "string"}]}, "y")
    path = tmp_path / "y.parquet"
    pq.write_table(
        good.set_column(
            good.schema.get_field_index("is_fraud"), "is_fraud", pa.array([], pa.int64())
        ),
        path,
    )
    assert snap.read(path, schema).table.num_rows == 0


def test_time_split_takes_the_most_recent_share(traffic: pa.Table, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.sqlite")
    store.write_predictions(prediction_rows(traffic.slice(0, 100), T0, 60.0))
    store.write_labels(labels_of(traffic.slice(0, 100), T0, 60.0), NOW)
    log = snap.collect(store, "fraud", _schema(), WINDOW).table
    base = snap.read_base(_base_file(tmp_path, traffic.slice(100, 50)), _schema())
    split = time_split(pa.concat_tables([base, log]), 0.2)
    assert split.holdout.num_rows == 20 and split.train.num_rows == 130
    assert split.cut == T0 + 80 * 60.0
    assert split.holdout.column(snap.REQUEST_ID).to_pylist() == [f"r{i}" for i in range(80, 100)]
    assert split.train.column(snap.PREDICTION_TIME).null_count == 50  # every base row trains
    store.close()


def _base_file(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "base.parquet"
    write_table(table, path)
    return path


# -- whole runs ------------------------------------------------------------------------


def test_a_retrain_registers_with_its_provenance(
    models: Path, traffic: pa.Table, tmp_path: Path
) -> None:
    store = store_of(models)
    fill(store, traffic, every=1)
    store.write_predictions(prediction_rows(traffic.slice(0, 50), NOW - DAY, 1.0, prefix="young"))
    store.close()
    base = _base_file(tmp_path, generate(800, 3))
    res = run(config(models, base=base, trigger="drift"))
    assert res.registered and res.version == 2 and res.parent == 1
    manifest = json.loads((models / "fraud" / "2" / "manifest.json").read_text())
    r = manifest["retrain"]
    assert r["parent"] == {
        "version": 1,
        "model_sha256": json.loads((models / "fraud" / "1" / "manifest.json").read_text())["files"][
            "model.txt"
        ],
    }
    s = r["snapshot"]
    assert s["sha256"] == res.snapshot_sha256 == fingerprint(Path(s["path"]))
    assert Path(s["path"]) == models / "fraud" / ".snapshots" / f"{res.snapshot_sha256}.parquet"
    assert (s["rows"], s["log_rows"], s["base_rows"]) == (LOG_ROWS + 800, LOG_ROWS, 800)
    y_log = traffic.column("is_fraud").to_numpy()
    assert s["fraud"] == int(y_log.sum()) + int(
        generate(800, 3).column("is_fraud").to_numpy().sum()
    )
    assert s["fraud"] + s["legit"] == s["rows"]
    assert (s["predictions"], s["labelled"], s["label_coverage"]) == (LOG_ROWS, LOG_ROWS, 1.0)
    assert s["window"]["window_seconds"] == 30 * DAY and s["window"]["maturity_seconds"] == 14 * DAY
    assert s["window"]["until_unix"] == NOW - 14 * DAY  # the young predictions are left out
    assert s["store"] == "sqlite" and s["unlabelled"] == "drop"
    assert s["base"] == {"path": str(base), "sha256": fingerprint(base), "rows": 800}
    assert r["trigger"] == "drift" and r["seed"] == 1
    assert r["holdout"]["rows"] == LOG_ROWS // 5 and r["holdout"]["share"] == 0.2
    assert r["gate"]["passed"] is True
    assert set(r["gate"]["champion"]) == {
        "auc", "recall_at_fpr", "threshold", "precision", "recall", "false_positive_rate",
        "alert_rate", "amount_recall",
    }  # fmt: skip
    assert r["gate"]["challenger"]["threshold"] == manifest["operating_point"]["threshold"]
    assert manifest["hyperparameters"]["seed"] == 1
    assert manifest["hyperparameters"]["num_boost_round"] == ROUNDS
    assert {"lightgbm", "numpy", "pyarrow", "riskserve"} <= set(manifest["libraries"])
    assert manifest["code_revision"]
    assert manifest["data"]["fingerprint_sha256"] == res.snapshot_sha256
    assert manifest["spec_source"] == "champion v1"
    assert manifest["spec_template"] == json.loads(FRAUD_SPEC.read_text())
    assert manifest["files"]["model.txt"] == res.model_sha256
    # Refitted on the new rows: the drift reference and statistics are the snapshot's.
    new_spec = json.loads((models / "fraud" / "2" / "features.json").read_text())
    old_spec = json.loads((models / "fraud" / "1" / "features.json").read_text())
    assert new_spec["reference"] != old_spec["reference"]
    assert new_spec["transforms"][0]["steps"][2] != old_spec["transforms"][0]["steps"][2]
    side = json.loads(Path(s["path"]).with_suffix(".json").read_text())
    assert side["sha256"] == res.snapshot_sha256 and side["label_coverage"] == 1.0
    doc = res.to_json()
    for key in (
        "registered",
        "version",
        "parent",
        "snapshot",
        "snapshot_sha256",
        "model_sha256",
        "gate",
    ):
        assert key in doc
    ModelRepository(models).verify(ModelRepository(models).version("fraud", 2))


def test_the_same_snapshot_gives_a_byte_identical_model(models: Path, traffic: pa.Table) -> None:
    store = store_of(models)
    fill(store, traffic)
    store.close()
    first = run(config(models))
    again = run(config(models, from_snapshot=first.snapshot))
    dry = run(config(models, from_snapshot=first.snapshot, dry_run=True))
    assert (first.version, again.version, dry.version) == (2, 3, None)
    assert first.snapshot_sha256 == again.snapshot_sha256 == dry.snapshot_sha256
    assert first.model_sha256 == again.model_sha256 == dry.model_sha256
    v2, v3 = (models / "fraud" / v for v in ("2", "3"))
    for name in ("model.txt", "features.json"):
        assert (v2 / name).read_bytes() == (v3 / name).read_bytes(), name
    # The snapshot's provenance came from its sidecar.
    m3 = json.loads((v3 / "manifest.json").read_text())
    assert m3["retrain"]["snapshot"]["label_coverage"] == 1.0
    assert m3["retrain"]["parent"]["version"] == 2  # the newest is the champion now
    # Another seed gives another model.
    other = run(config(models, from_snapshot=first.snapshot, dry_run=True, seed=99))
    assert other.model_sha256 != first.model_sha256


def test_the_gate_refuses_a_challenger_trained_on_shuffled_labels(
    models: Path, traffic: pa.Table
) -> None:
    store = store_of(models)
    fill(store, traffic)
    store.close()
    before = listing(models)
    res = run(config(models, settings=SETTINGS, shuffle_training_labels=True))
    assert not res.registered and res.version is None
    assert not res.gate.passed
    assert res.gate.challenger.auc < 0.7 < res.gate.champion.auc
    assert any(f.startswith("auc ") for f in res.gate.failures)
    assert listing(models) == before


def test_bad_input_leaves_the_registry_as_it_was(
    models: Path, traffic: pa.Table, tmp_path: Path
) -> None:
    before = listing(models)
    # No label in the window: nothing read, nothing written.
    store = store_of(models)
    store.write_predictions(prediction_rows(traffic.slice(0, 100), T0, 60.0))
    store.close()
    with pytest.raises(
        InvalidInput,
        match=r"no labelled predictions of 'fraud' from .* \(100 predictions, none with a label\)",
    ):
        run(config(models))
    assert not (models / "fraud" / ".snapshots").exists()
    # A champion missing from the registry.
    with pytest.raises(
        NotFound,
        match=r"the champion fraud v7 \(the deployment's control version\) is not in the "
        r"registry .* \(versions there: v1\)",
    ):
        run(config(models, champion=7))
    with pytest.raises(NotFound, match="model 'other' has no version"):
        run(config(models, model="other"))
    # A snapshot whose schema does not match the spec.
    bad = tmp_path / "bad.parquet"
    schema = _schema().schema()
    pq.write_table(schema.empty_table().drop_columns(["merchant_category"]), bad)
    with pytest.raises(InvalidInput, match="has no input 'merchant_category'"):
        run(config(models, from_snapshot=bad))
    with pytest.raises(InvalidInput, match="no such file"):
        run(config(models, from_snapshot=tmp_path / "none.parquet"))
    # Too few fraud labels to judge on.
    store = store_of(models)
    store.write_labels(labels_of(traffic.slice(0, 100), T0, 60.0), NOW)
    store.close()
    with pytest.raises(
        InvalidInput,
        match=r"has \d fraud labels, fewer than RISKSERVE_RETRAIN_MIN_HOLDOUT_FRAUD=30",
    ):
        run(config(models, settings=RetrainSettings()))
    assert listing(models) == before


def test_config_refuses_bad_combinations(models: Path) -> None:
    with pytest.raises(
        ValueError, match="--trigger must be one of manual, schedule, drift, recall"
    ):
        config(models, trigger="cron")
    with pytest.raises(ValueError, match="--base and --from-snapshot exclude each other"):
        config(models, base=Path("a"), from_snapshot=Path("b"))
    with pytest.raises(ValueError, match="--window must be positive"):
        snap.Window.ending(NOW, 0, 0)
