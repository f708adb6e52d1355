"""`riskserve retrain`: champion/challenger retraining from the labelled prediction log.

    snapshot   the log joined with its labels (riskserve.training.snapshot), or an
               existing snapshot (`--from-snapshot`): its sha256 is the data version
    split      a time split: the most recent RISKSERVE_RETRAIN_HOLDOUT_SHARE of the
               labelled log rows are the holdout; older log rows and the base rows train
    train      the champion's feature spec template refitted on the training rows (its
               statistics and drift reference bins), its hyper-parameters and seed
               (fit_model: the one implementation `train` uses too)
    evaluate   champion and challenger on the same holdout, each scored as served:
               AUC, recall at the champion's false-positive rate, precision and recall
               at its operating threshold, amount-weighted recall
    gate       `gate`, a pure function: the challenger may be worse than the champion
               by at most the configured margins (RetrainSettings)
    register   only when the gate passes (and not --dry-run), with the provenance in
               the manifest's `retrain` block

The champion is the deployment's control version (the composition root, cli.py, reads
deployment.json; this layer cannot import riskserve.deployments) or, without a
deployment, the newest version. The challenger's threshold is chosen on the holdout
by the champion's own rule (the same alert rate, target precision or explicit
threshold), so both flag comparable volumes.

Reproducible: the same snapshot and configuration give a byte-identical model file
(LightGBM deterministic and seeded; the snapshot's row order is canonical; the split
is by time)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from riskserve._native import FeaturePipeline
from riskserve.errors import InvalidInput, NotFound
from riskserve.feedback.store import LOGGED_CHUNK_ROWS, FeedbackStore
from riskserve.registry import Manifest, ModelRepository, VersionRef
from riskserve.training import snapshot as snap
from riskserve.training.datagen import fingerprint
from riskserve.training.train import (
    OperatingTarget,
    TrainResult,
    auc,
    columns_of,
    fit_model,
    manifest_of,
    register,
    served_scores,
)

if TYPE_CHECKING:
    from riskserve.config import RetrainSettings
    from riskserve.training.tracking import TrackedRun, Tracker

Progress = Callable[[str], None]

TRIGGERS = ("manual", "schedule", "drift", "recall")
#: Hyper-parameters of the manifest that are not LightGBM parameters.
_NOT_LIGHTGBM = ("num_boost_round", "holdout")


# --------------------------------------------------------------------------------------
# Evaluation (pure)
# --------------------------------------------------------------------------------------


def recall_at_fpr(y: npt.NDArray[Any], scores: npt.NDArray[np.float64], fpr: float) -> float:
    """The highest recall of a threshold (flagging `score >= t`) whose false-positive
    rate is at most `fpr`; 0 when even the top score alone exceeds it."""
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError("recall at a false-positive rate needs both classes")
    values, inverse = np.unique(scores, return_inverse=True)  # ascending
    tp = np.bincount(inverse, weights=(y == 1).astype(np.float64), minlength=len(values))
    fp = np.bincount(inverse, weights=(y == 0).astype(np.float64), minlength=len(values))
    tpr = np.cumsum(tp[::-1]) / pos
    rates = np.cumsum(fp[::-1]) / neg
    ok = rates <= fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def amount_recall(
    y: npt.NDArray[Any], flagged: npt.NDArray[np.bool_], amount: npt.NDArray[np.float64]
) -> float | None:
    """Amount of the flagged fraud / amount of all fraud, over fraud rows with an
    amount (as `riskserve performance`); None when none has one or the total is 0."""
    with_amount = (y == 1) & np.isfinite(amount)
    total = float(amount[with_amount].sum())
    if not with_amount.any() or total <= 0:
        return None
    return float(amount[with_amount & flagged].sum()) / total


@dataclasses.dataclass(frozen=True)
class Figures:
    """One model on the holdout."""

    auc: float
    #: Recall at the champion's false-positive rate (at its threshold).
    recall_at_fpr: float
    #: At this model's own operating threshold:
    threshold: float
    precision: float
    recall: float
    false_positive_rate: float
    alert_rate: float
    amount_recall: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def figures(
    y: npt.NDArray[Any],
    scores: npt.NDArray[np.float64],
    threshold: float,
    amount: npt.NDArray[np.float64],
    reference_fpr: float,
) -> Figures:
    """A model's gate figures from its holdout scores (as served) and threshold;
    `reference_fpr` is the champion's false-positive rate at its threshold."""
    flagged = scores >= threshold
    pos, neg = y == 1, y == 0
    tp = int((flagged & pos).sum())
    fp = int((flagged & neg).sum())
    return Figures(
        auc=auc(y, scores),
        recall_at_fpr=recall_at_fpr(y, scores, reference_fpr),
        threshold=float(threshold),
        precision=tp / max(1, int(flagged.sum())),
        recall=tp / max(1, int(pos.sum())),
        false_positive_rate=fp / max(1, int(neg.sum())),
        alert_rate=float(flagged.mean()),
        amount_recall=amount_recall(y, flagged, amount),
    )


def false_positive_rate(y: npt.NDArray[Any], scores: npt.NDArray[np.float64], t: float) -> float:
    neg = y == 0
    return int(((scores >= t) & neg).sum()) / max(1, int(neg.sum()))


# --------------------------------------------------------------------------------------
# The gate (pure)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Margins:
    """How much worse than the champion the challenger may be, per figure."""

    auc: float = 0.005
    recall_at_fpr: float = 0.02
    precision: float = 0.05
    amount_recall: float = 0.05

    @classmethod
    def of(cls, s: RetrainSettings) -> Margins:
        return cls(
            s.max_auc_drop, s.max_recall_drop, s.max_precision_drop, s.max_amount_recall_drop
        )


#: Figure → the setting that bounds its drop.
MARGIN_SETTINGS = {
    "auc": "RISKSERVE_RETRAIN_MAX_AUC_DROP",
    "recall_at_fpr": "RISKSERVE_RETRAIN_MAX_RECALL_DROP",
    "precision": "RISKSERVE_RETRAIN_MAX_PRECISION_DROP",
    "amount_recall": "RISKSERVE_RETRAIN_MAX_AMOUNT_RECALL_DROP",
}


@dataclasses.dataclass(frozen=True)
class Check:
    figure: str
    champion: float | None
    challenger: float | None
    #: champion - challenger (positive: the challenger is worse); None if not compared.
    drop: float | None
    margin: float
    passed: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: tuple[Check, ...]
    champion: Figures
    challenger: Figures
    margins: Margins

    @property
    def failures(self) -> list[str]:
        return [
            f"{c.figure} {c.challenger:.4f} vs the champion's {c.champion:.4f}: a drop of "
            f"{c.drop:.4f} > {c.margin:g} ({MARGIN_SETTINGS[c.figure]})"
            for c in self.checks
            if not c.passed and c.drop is not None and c.champion is not None
            and c.challenger is not None
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "champion": self.champion.to_json(),
            "challenger": self.challenger.to_json(),
            "margins": dataclasses.asdict(self.margins),
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "failures": self.failures,
        }


def gate(champion: Figures, challenger: Figures, margins: Margins) -> GateDecision:
    """Passes when no figure of the challenger is below the champion's by more than its
    margin. A figure either side lacks (amount-weighted recall without amounts) is not
    compared, and says so."""
    checks = []
    for figure in ("auc", "recall_at_fpr", "precision", "amount_recall"):
        a, b = getattr(champion, figure), getattr(challenger, figure)
        margin = getattr(margins, figure)
        if a is None or b is None:
            checks.append(Check(figure, a, b, None, margin, True, "not compared: no amounts"))
            continue
        drop = float(a) - float(b)
        checks.append(Check(figure, a, b, drop, margin, drop <= margin + 1e-12))
    return GateDecision(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        champion=champion,
        challenger=challenger,
        margins=margins,
    )


# --------------------------------------------------------------------------------------
# The champion
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Champion:
    ref: VersionRef
    manifest: Manifest
    files: dict[str, bytes]

    @property
    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.files["features.json"])
        return out

    @property
    def template(self) -> dict[str, Any]:
        """The template it was fitted from (recorded since retraining exists), else
        the fitted spec with every fitted value taken out (`template_of`)."""
        recorded = self.manifest.raw.get("spec_template")
        return copy.deepcopy(recorded) if isinstance(recorded, dict) else template_of(self.spec)

    @property
    def target(self) -> str:
        data = self.manifest.raw.get("data")
        return str(data.get("target", "is_fraud")) if isinstance(data, dict) else "is_fraud"

    @property
    def params_and_rounds(self) -> tuple[dict[str, Any], int]:
        hyper = dict(self.manifest.raw.get("hyperparameters") or {})
        rounds = int(hyper.get("num_boost_round", 300))
        return {k: v for k, v in hyper.items() if k not in _NOT_LIGHTGBM}, rounds

    @property
    def operating_point(self) -> dict[str, Any]:
        point = self.manifest.raw.get("operating_point")
        return dict(point) if isinstance(point, dict) else {}

    @property
    def threshold(self) -> float:
        return 0.5 if self.manifest.threshold is None else self.manifest.threshold

    def scores(self, table: pa.Table) -> npt.NDArray[np.float64]:
        """Its scores of `table`'s rows, as it serves them."""
        pipeline = FeaturePipeline(self.files["features.json"].decode())
        names = [n for n, _ in pipeline.inputs]
        x = pipeline.transform(columns_of(table, names))
        return served_scores(self.files, self.manifest.model_format, x)


def template_of(spec: dict[str, Any]) -> dict[str, Any]:
    """A fitted spec back to a template: the values fitting fills in taken out (fill
    values of fitted strategies, quantile clip bounds, standardize statistics,
    quantile edges, vocabularies, the drift reference). A template's explicit values
    that fitting would also have filled (a fixed mean, a fixed vocabulary) cannot be
    told apart and are refitted: versions trained since retraining exists record their
    template in the manifest instead (`spec_template`)."""
    t = copy.deepcopy(spec)
    t.pop("reference", None)
    for inp in t.get("inputs", []):
        inp.pop("vocabulary", None)
    for tr in t.get("transforms", []):
        if tr.get("type") in ("one_hot", "ordinal"):
            tr.pop("vocabulary", None)
            continue
        missing = tr.get("missing")
        if isinstance(missing, dict) and missing.get("strategy", "median") != "constant":
            missing.pop("value", None)
        for step in tr.get("steps", []) or []:
            op = step.get("op")
            if op == "clip":
                for bound in ("min", "max"):
                    if f"{bound}_quantile" in step:
                        step.pop(bound, None)
            elif op == "standardize":
                step.pop("mean", None)
                step.pop("std", None)
            elif op == "bucketize" and "quantiles" in step:
                step.pop("edges", None)
    return t


def load_champion(models_dir: Path, model: str, version: int | None) -> Champion:
    """The champion's verified files: `version` (the deployment's control) or, when
    None, the newest version; NotFound naming what is missing."""
    repo = ModelRepository(models_dir)
    versions = repo.versions(model)
    if version is None:
        if not versions:
            raise NotFound(
                f"model {model!r} has no version in {models_dir}: train one first "
                "(riskserve train), retrain starts from a champion"
            )
        ref = versions[-1]
    else:
        have = [r.version for r in versions]
        if version not in have:
            listed = ", ".join(f"v{v}" for v in have) or "none"
            raise NotFound(
                f"the champion {model} v{version} (the deployment's control version) is not "
                f"in the registry at {models_dir / model} (versions there: {listed})"
            )
        ref = repo.version(model, version)
    manifest, files = repo.read_verified(ref)
    return Champion(ref, manifest, files)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    model: str
    models_dir: Path
    settings: RetrainSettings
    #: The window of prediction times, ending `maturity_seconds` before now.
    window_seconds: float
    maturity_seconds: float
    #: The champion's version; None: the newest in the registry.
    champion: int | None = None
    base: Path | None = None
    from_snapshot: Path | None = None
    trigger: str = "manual"
    #: None: the champion's seed.
    seed: int | None = None
    dry_run: bool = False
    #: A negative control: the training rows' labels shuffled (the holdout keeps its
    #: own), so the challenger learns nothing and the gate must refuse it.
    shuffle_training_labels: bool = False
    #: "Now" (Unix seconds) for the window; None: the clock.
    now: float | None = None
    chunk_rows: int = LOGGED_CHUNK_ROWS

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(
                f"--trigger must be one of {', '.join(TRIGGERS)}, not {self.trigger!r}"
            )
        if self.base is not None and self.from_snapshot is not None:
            raise ValueError(
                "--base and --from-snapshot exclude each other (a snapshot has its base)"
            )


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    registered: bool
    #: The new version (None unless registered).
    version: int | None
    parent: int
    snapshot: Path
    snapshot_sha256: str
    #: The challenger's model file sha256 (registered or not).
    model_sha256: str
    gate: GateDecision
    trigger: str
    dry_run: bool
    #: The manifest's `retrain` block (provenance), as registered or as it would be.
    provenance: dict[str, Any]
    ref: VersionRef | None = None
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "registered": self.registered,
            "version": self.version,
            "parent": self.parent,
            "snapshot": str(self.snapshot),
            "snapshot_sha256": self.snapshot_sha256,
            "model_sha256": self.model_sha256,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "gate": self.gate.to_json(),
            "rows": self.provenance["snapshot"]["rows"],
            "label_coverage": self.provenance["snapshot"].get("label_coverage"),
            "mlflow_run_id": self.mlflow_run_id,
            "mlflow_model_version": self.mlflow_model_version,
        }


@dataclasses.dataclass(frozen=True)
class Split:
    train: pa.Table
    holdout: pa.Table
    #: Prediction time the holdout starts at (inclusive).
    cut: float


def time_split(table: pa.Table, share: float) -> Split:
    """The most recent `share` of the labelled log rows (ties at the cut time go with
    them) are the holdout; the older log rows and every base row train."""
    t = table.column(snap.PREDICTION_TIME).to_numpy(zero_copy_only=False)
    log = ~np.isnan(t.astype(np.float64))
    labelled = log & ~np.isnan(
        table.column(snap.LABEL_TIME).to_numpy(zero_copy_only=False).astype(np.float64)
    )
    times = np.sort(t[labelled])
    if len(times) == 0:
        raise InvalidInput("the snapshot has no labelled log rows: there is no holdout to judge on")
    k = min(len(times) - 1, max(0, math.floor(len(times) * (1.0 - share))))
    cut = float(times[k])
    recent = log & (t >= cut)
    # Unlabelled rows kept as legit (RISKSERVE_RETRAIN_UNLABELLED=legit) may train but
    # are never judged on: the holdout holds labelled rows only.
    hold = recent & labelled
    train = ~recent
    return Split(train=table.filter(pa.array(train)), holdout=table.filter(pa.array(hold)), cut=cut)


def _target(table: pa.Table, target: str) -> npt.NDArray[np.int32]:
    return np.asarray(table.column(target).to_numpy(zero_copy_only=False), dtype=np.int32)


def _check_classes(split: Split, target: str, min_holdout_fraud: int, sha: str) -> None:
    y_train, y_hold = _target(split.train, target), _target(split.holdout, target)
    where = f"snapshot {sha[:16]}…"
    sizes = f"{len(y_train)} training, {len(y_hold)} holdout rows"
    if len(y_train) == 0 or y_train.min() == y_train.max():
        have = (
            "no rows" if len(y_train) == 0 else f"only {'fraud' if y_train[0] else 'legit'} labels"
        )
        raise InvalidInput(
            f"{where}: the training rows have {have} ({sizes}): widen --window, add --base, "
            "or wait for labels"
        )
    fraud = int(y_hold.sum())
    if fraud < min_holdout_fraud:
        raise InvalidInput(
            f"{where}: the holdout (the most recent labelled predictions, {sizes}) has {fraud} "
            f"fraud labels, fewer than RISKSERVE_RETRAIN_MIN_HOLDOUT_FRAUD={min_holdout_fraud}: "
            "the gate's figures would be noise; widen --window or wait for labels"
        )
    if fraud == len(y_hold):
        raise InvalidInput(f"{where}: the holdout has only fraud labels ({sizes})")


def take_snapshot(
    cfg: RetrainConfig,
    schema: snap.SnapshotSchema,
    open_store: Callable[[], FeedbackStore],
    progress: Progress,
    advance: Callable[[int], None] = lambda _n: None,
) -> snap.Snapshot:
    """The snapshot of `cfg` (read from the log, or `--from-snapshot`), written to
    its folder. InvalidInput when the window holds no label: nothing is written."""
    if cfg.from_snapshot is not None:
        progress(f"reading snapshot {cfg.from_snapshot}")
        return snap.read(cfg.from_snapshot, schema)
    now = time.time() if cfg.now is None else cfg.now
    window = snap.Window.ending(now, cfg.window_seconds, cfg.maturity_seconds)
    since, until = snap.iso_time(window.since), snap.iso_time(window.until)
    progress(
        f"snapshot of {cfg.model}: predictions from {since} to {until} "
        f"(maturity {cfg.maturity_seconds:g} s)"
    )
    store = open_store()
    try:
        collected = snap.collect(
            store,
            cfg.model,
            schema,
            window,
            unlabelled=cfg.settings.unlabelled,
            chunk_rows=cfg.chunk_rows,
            progress=progress,
            advance=advance,
        )
        backend = store.backend
    finally:
        store.close()
    if collected.labelled == 0:
        raise InvalidInput(
            f"no labelled predictions of {cfg.model!r} from {since} to {until} "
            f"({collected.predictions} predictions, none with a label): widen --window, "
            "shorten --maturity, or send labels first"
        )
    parts = [collected.table]
    base: dict[str, Any] | None = None
    if cfg.base is not None:
        base_table = snap.read_base(cfg.base, schema)
        parts.insert(0, base_table)
        base = {"path": str(cfg.base), "sha256": fingerprint(cfg.base), "rows": base_table.num_rows}
    table = pa.concat_tables(parts)
    provenance = {
        "model": cfg.model,
        "store": backend,
        "window": window.to_json(),
        "unlabelled": cfg.settings.unlabelled,
        "predictions": collected.predictions,
        "labelled": collected.labelled,
        "label_coverage": collected.label_coverage,
        "unlabelled_as_legit": collected.unlabelled_as_legit,
        "retried_rows_dropped": collected.retried,
        "base": base,
    }
    folder = (
        Path(cfg.settings.snapshot_dir)
        if cfg.settings.snapshot_dir
        else cfg.models_dir / cfg.model / ".snapshots"
    )
    progress(f"writing the snapshot ({table.num_rows} rows) to {folder}")
    path, sha = snap.write(table, folder, provenance)
    progress(f"snapshot {path} (sha256 {sha})")
    return snap.Snapshot(path=path, sha256=sha, table=table, provenance=provenance)


def retrain(
    cfg: RetrainConfig,
    open_store: Callable[[], FeedbackStore],
    *,
    tracker: Tracker | None = None,
    progress: Progress = lambda _m: None,
    advance: Callable[[int], None] = lambda _n: None,
) -> RetrainResult:
    """One retraining run (the module docstring). Raises InvalidInput / NotFound /
    TrackingError naming the problem; the registry is then as it was."""
    champion = load_champion(cfg.models_dir, cfg.model, cfg.champion)
    progress(
        f"champion {cfg.model} v{champion.ref.version} (model sha256 "
        f"{champion.manifest.model_sha256[:16]}…)"
    )
    template = champion.template
    schema = snap.SnapshotSchema.of_spec(template, champion.target)
    if tracker is None:
        return _retrain(cfg, champion, template, schema, open_store, None, progress, advance)
    tags = {"riskserve.command": "retrain", "riskserve.trigger": cfg.trigger}
    with tracker.run(f"retrain {cfg.model} from v{champion.ref.version}", tags) as run:
        return _retrain(cfg, champion, template, schema, open_store, run, progress, advance)


def _retrain(
    cfg: RetrainConfig,
    champion: Champion,
    template: dict[str, Any],
    schema: snap.SnapshotSchema,
    open_store: Callable[[], FeedbackStore],
    run: TrackedRun | None,
    progress: Progress,
    advance: Callable[[int], None],
) -> RetrainResult:
    s = cfg.settings
    snapshot = take_snapshot(cfg, schema, open_store, progress, advance)
    split = time_split(snapshot.table, s.holdout_share)
    _check_classes(split, schema.target, s.min_holdout_fraud, snapshot.sha256)
    y_train, y_hold = _target(split.train, schema.target), _target(split.holdout, schema.target)
    if cfg.shuffle_training_labels:
        progress("negative control: the training rows' labels are shuffled")
        y_train = np.random.default_rng(0).permutation(y_train)
    progress(
        f"time split at {snap.iso_time(split.cut)}: "
        f"{split.train.num_rows} training rows, {split.holdout.num_rows} holdout rows "
        f"({int(y_hold.sum())} fraud)"
    )

    params, rounds = champion.params_and_rounds
    seed = int(params.get("seed", 0)) if cfg.seed is None else cfg.seed
    params = {**params, "seed": seed}
    rounds = s.rounds or rounds
    point = champion.operating_point
    stats = snapshot.stats(schema.target)
    snapshot_json = {
        "path": str(snapshot.path),
        "sha256": snapshot.sha256,
        **stats,
        **{k: v for k, v in snapshot.provenance.items() if k != "model"},
    }
    for key in ("window", "predictions", "labelled", "label_coverage", "base"):
        snapshot_json.setdefault(key, None)  # a snapshot without its sidecar: unknown
    if run is not None:
        run.log_params(
            {**params, "num_boost_round": rounds, "holdout_share": s.holdout_share,
             "parent_version": champion.ref.version, "trigger": cfg.trigger,
             "model_format": champion.manifest.model_format,
             "shuffle_training_labels": cfg.shuffle_training_labels}
        )  # fmt: skip
        run.log_dataset(
            name=snapshot.path.name, sha256=snapshot.sha256, source=str(snapshot.path),
            rows=stats["rows"], context="training", fraud=stats["fraud"],
            label_coverage=snapshot.provenance.get("label_coverage"),
        )  # fmt: skip

    fitted = fit_model(
        template,
        split.train,
        y_train,
        split.holdout,
        y_hold,
        params=params,
        rounds=rounds,
        model_format=champion.manifest.model_format,
        target=OperatingTarget.like(point),
        spec_source=f"champion v{champion.ref.version}",
        progress=progress,
    )

    progress(f"scoring the holdout with the champion v{champion.ref.version}")
    champion_scores = champion.scores(split.holdout)
    amount = np.asarray(
        split.holdout.column(snap.LABEL_AMOUNT).to_numpy(zero_copy_only=False), dtype=np.float64
    )
    ref_fpr = false_positive_rate(y_hold, champion_scores, champion.threshold)
    champ = figures(y_hold, champion_scores, champion.threshold, amount, ref_fpr)
    chall = figures(
        y_hold, fitted.holdout_scores, fitted.operating_point["threshold"], amount, ref_fpr
    )
    decision = gate(champ, chall, Margins.of(s))
    for c in decision.checks:
        shown = "-" if c.drop is None else f"{-c.drop:+.4f}"
        progress(
            f"gate {c.figure}: champion {_fmt(c.champion)}, challenger {_fmt(c.challenger)} "
            f"({shown}, margin {c.margin:g}) {'ok' if c.passed else 'FAILED'} {c.note}".rstrip()
        )

    provenance = {
        "parent": {
            "version": champion.ref.version,
            "model_sha256": champion.manifest.model_sha256,
        },
        "snapshot": snapshot_json,
        "holdout": {
            "share": s.holdout_share,
            "since_unix": split.cut,
            "rows": split.holdout.num_rows,
            "fraud": int(y_hold.sum()),
        },
        "trigger": cfg.trigger,
        "gate": decision.to_json(),
        "seed": seed,
        "shuffled_training_labels": cfg.shuffle_training_labels,
    }
    if run is not None:
        run.log_metrics(dataclasses.asdict(champ), prefix="champion_")
        run.log_metrics(dataclasses.asdict(chall), prefix="challenger_")
        run.log_metrics({"gate_passed": decision.passed, **fitted.metrics})
        run.set_tags({"riskserve.gate": "passed" if decision.passed else "failed"})

    result = RetrainResult(
        registered=False,
        version=None,
        parent=champion.ref.version,
        snapshot=snapshot.path,
        snapshot_sha256=snapshot.sha256,
        model_sha256=fitted.model_sha256,
        gate=decision,
        trigger=cfg.trigger,
        dry_run=cfg.dry_run,
        provenance=provenance,
        mlflow_run_id=None if run is None else run.run_id,
    )
    if not decision.passed:
        progress("the gate refused the challenger: nothing registered")
        return result
    if cfg.dry_run:
        progress("--dry-run: the gate passed; nothing registered")
        return result

    if run is not None:
        run.log_model_files(fitted.files)  # before registering: a broken tracker stops here
    data = {
        "path": str(snapshot.path),
        "fingerprint_sha256": snapshot.sha256,
        "rows": snapshot.table.num_rows,
        "train_rows": split.train.num_rows,
        "holdout_rows": split.holdout.num_rows,
        "target": schema.target,
        "positive_rate": float(np.mean(np.concatenate([y_train, y_hold]))),
    }
    manifest = manifest_of(
        fitted,
        data=data,
        template=template,
        spec_source=f"champion v{champion.ref.version}",
        holdout="time split, most recent share " + str(s.holdout_share),
        extra={"retrain": provenance},
    )
    registered: TrainResult = register(cfg.models_dir, cfg.model, fitted, manifest, progress)
    mlflow_version = None
    if run is not None:
        run.registered(cfg.model, registered.ref.version, progress)
        mlflow_version = run.model_version
    return dataclasses.replace(
        result,
        registered=True,
        version=registered.ref.version,
        ref=registered.ref,
        model_sha256=registered.model_sha256,
        mlflow_model_version=mlflow_version,
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


__all__ = [
    "MARGIN_SETTINGS",
    "TRIGGERS",
    "Champion",
    "Check",
    "Figures",
    "GateDecision",
    "Margins",
    "RetrainConfig",
    "RetrainResult",
    "Split",
    "amount_recall",
    "figures",
    "gate",
    "load_champion",
    "recall_at_fpr",
    "retrain",
    "take_snapshot",
    "template_of",
    "time_split",
]
