"""The `riskserve` command: datagen, train, retrain, retrain-watch, serve, score,
admin, drift, drift-report, dashboard, labels send and performance.

Each subcommand imports what it needs only when it runs: `score`, `admin` and
`drift` load no server code, and `serve --workers N` starts its supervisor
before gRPC or prometheus_client are imported (they must not exist before it
forks). `serve` has one flag per setting, generated from riskserve.config
(docs/settings.md lists them); a flag overrides its RISKSERVE_* variable."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from riskserve.config import SettingInfo, Settings


def _progress(prefix: str) -> Any:
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{prefix} {time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def cmd_datagen(a: argparse.Namespace) -> int:
    from riskserve.training.datagen import run_datagen

    fp = run_datagen(a.rows, a.seed, Path(a.out), progress=_progress("datagen"))
    print(json.dumps({"out": a.out, "rows": a.rows, "seed": a.seed, "sha256": fp}))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from riskserve.training.train import TrainConfig, train

    cfg = TrainConfig(
        data=Path(a.data),
        target=a.target,
        model=a.model,
        models_dir=Path(a.models),
        spec=Path(a.spec) if a.spec else None,
        seed=a.seed,
        model_format=a.format,
        rounds=a.rounds,
        threshold=a.threshold,
        alert_rate=a.alert_rate,
        target_precision=a.target_precision,
    )
    key = None
    if a.signing_key:
        from riskserve.registry.signing import load_private_key

        key = load_private_key(Path(a.signing_key))  # before training: fail fast
    from riskserve.config import Settings
    from riskserve.errors import RiskserveError
    from riskserve.training.tracking import open_tracker

    tracking = Settings.load(
        {"mlflow_tracking_uri": a.mlflow_uri, "mlflow_experiment": a.mlflow_experiment}
    ).retrain
    try:  # the tracker is checked before anything is read or trained
        tracker = open_tracker(tracking.mlflow_tracking_uri, tracking.mlflow_experiment)
        res = train(cfg, progress=_progress("train"), tracker=tracker)
    except RiskserveError as e:
        print(f"riskserve train: {e.message}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {
        "model": a.model,
        "version": res.ref.version,
        "path": str(res.ref.path),
        "model_sha256": res.model_sha256,
        "operating_point": res.operating_point,
        "metrics": res.metrics,
    }
    if key is not None:
        from riskserve.registry.signing import key_id, sign_version

        sign_version(res.ref.path, key)
        out["signed_by"] = key_id(key.public_key())
    print(json.dumps(out))
    return 0


def cmd_keygen(a: argparse.Namespace) -> int:
    from riskserve.registry.signing import generate, key_id, load_private_key

    private, public = generate()
    key, pub = Path(f"{a.out}.key"), Path(f"{a.out}.pub")
    for p in (key, pub):
        if p.exists():
            raise ValueError(f"{p} exists; not overwriting a key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub.write_bytes(public)
    kid = key_id(load_private_key(key).public_key())
    print(json.dumps({"private_key": str(key), "public_key": str(pub), "key_id": kid}))
    return 0


def cmd_sign(a: argparse.Namespace) -> int:
    from riskserve.registry import ModelRepository
    from riskserve.registry.signing import key_id, load_private_key, sign_version

    private = load_private_key(Path(a.key))
    repo = ModelRepository(Path(a.models))
    ref = repo.version(a.model, a.version) if a.version else repo.versions(a.model)[-1]
    repo.verify(ref)  # sign only what verifies against its own manifest
    path = sign_version(ref.path, private)
    print(json.dumps({"signature": str(path), "key_id": key_id(private.public_key())}))
    return 0


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def serve_settings() -> list[SettingInfo]:
    """The settings `serve` has a flag for: every group but those of `retrain` and
    `retrain-watch` (config.COMMAND_GROUPS), whose flags are on those commands."""
    from riskserve.config import SETTINGS, command_flag

    return [s for s in SETTINGS if command_flag(s)[0] == "serve"]


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per serving setting, in one argument group per settings group. Every
    flag defaults to None (not given), so the environment's value stands."""
    from riskserve.config import COMMAND_GROUPS, GROUPS, SETTINGS

    for group, cls in GROUPS.items():
        if group in COMMAND_GROUPS:
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        flags = parser.add_argument_group(f"{group} settings", doc)
        for s in SETTINGS:
            if s.group == group:
                _add_setting_flag(flags, s, s.flag)


def _add_setting_flag(flags: Any, s: SettingInfo, flag: str) -> None:
    """The flag `flag` for setting `s`, defaulting to None (not given)."""
    help_text = f"{s.meaning} (env {s.env}; default {s.default_text})".replace("%", "%%")
    if s.kind is bool:
        flags.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
    elif s.kind in (str, Path):  # a path stays a str in the Namespace (a.models)
        flags.add_argument(flag, metavar=s.key.upper(), help=help_text)
    else:
        flags.add_argument(flag, type=s.kind, metavar=s.kind.__name__.upper(), help=help_text)


def _watch_flags() -> list[tuple[SettingInfo, str]]:
    """`retrain-watch`'s settings and flags: the models folder, the log level, and
    the watch group's, named without their `--retrain-watch-` prefix (`--daily-at`)."""
    from riskserve.config import SETTINGS, command_flag, setting

    own = [(setting(k), setting(k).flag) for k in ("models_dir", "log_level")]
    return own + [(s, command_flag(s)[1]) for s in SETTINGS if s.group == "watch"]


def watch_settings_from_args(
    a: argparse.Namespace, env: Mapping[str, str] | None = None
) -> Settings:
    """The Settings `riskserve retrain-watch` runs with: defaults, RISKSERVE_* from
    `env` (default os.environ), then its flags that were given."""
    from riskserve.config import Settings

    overrides = {s.key: getattr(a, _dest(flag)) for s, flag in _watch_flags()}
    if overrides["models_dir"] is not None:
        overrides["models_dir"] = Path(overrides["models_dir"])
    return Settings.load(overrides, env)


def cmd_retrain_watch(a: argparse.Namespace) -> int:
    from riskserve import logs

    settings = watch_settings_from_args(a)
    logs.configure(settings.server.log_level)
    from riskserve.training.watch import run

    return run(settings.watch, settings.server.models_dir, settings.security)


def settings_from_args(a: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The Settings `riskserve serve` runs with: defaults, then RISKSERVE_* from
    `env` (default os.environ), then the flags that were given."""
    from riskserve.config import Settings

    overrides = {s.key: getattr(a, _dest(s.flag)) for s in serve_settings()}
    for s in serve_settings():
        if s.kind is Path and overrides[s.key] is not None:
            overrides[s.key] = Path(overrides[s.key])
    # --port 0 means "free ports": the metrics port follows unless given.
    if a.port == 0 and a.metrics_port is None:
        overrides["metrics_port"] = 0
    return Settings.load(overrides, env)


def cmd_serve(a: argparse.Namespace) -> int:
    from riskserve import logs

    settings = settings_from_args(a)
    logs.configure(settings.server.log_level)
    if settings.server.workers > 1:
        from riskserve.supervisor import run as run_workers

        return run_workers(settings)
    from riskserve.server import run

    run(settings)
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from riskserve.client import Client, example_row

    if a.json:
        row = json.loads(a.json)
        if not isinstance(row, dict):
            print("--json must be a JSON object of field: value", file=sys.stderr)
            return 2
        if not a.strict:
            example = example_row(a.seed)
            filled = [k for k in example if k not in row]
            if filled:
                print(
                    f"riskserve score: {len(filled)} fields not in --json were taken from "
                    f"example transaction (seed {a.seed}); --strict sends only yours",
                    file=sys.stderr,
                )
            row = {**{k: example[k] for k in filled}, **row}
    else:
        row = example_row(a.seed)
    row = {k: (math.nan if v is None else v) for k, v in row.items()}
    import grpc

    client = Client(a.server, timeout=a.timeout)
    try:
        version, probs = client.score(a.model, row, a.version)
    except grpc.RpcError as e:
        print(f"riskserve score: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps({"model": a.model, "version": version, "probability": probs}))
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    from riskserve.monitoring.report import fetch_metrics, format_table, parse_drift

    rows = parse_drift(fetch_metrics(a.metrics), a.window)
    if a.model:
        rows = [r for r in rows if r.model == a.model]
    if not rows:
        print("no drift metrics found (no model with a drift reference?)", file=sys.stderr)
        return 1
    print(format_table(rows, a.threshold))
    return 0


def cmd_drift_report(a: argparse.Namespace) -> int:
    from riskserve.monitoring.report import draw_report, fetch_metrics, parse_drift

    rows = parse_drift(fetch_metrics(a.metrics), a.window)
    if a.model:
        rows = [r for r in rows if r.model == a.model]
    n = draw_report(rows, Path(a.out), a.top)
    print(json.dumps({"out": a.out, "fields": n}))
    return 0


def cmd_dashboard(a: argparse.Namespace) -> int:
    from riskserve.errors import RiskserveError
    from riskserve.labels_client import parse_duration
    from riskserve.monitoring import dashboard as db

    try:
        seconds = parse_duration(a.range)
    except ValueError:
        print(
            f"riskserve dashboard: --range {a.range!r} is not a duration (90m, 6h, 2d)",
            file=sys.stderr,
        )
        return 2
    try:
        dash = db.load_dashboard(a.dashboard or db.DEFAULT_DASHBOARD)
        prom = db.Prometheus(a.prometheus, timeout=a.timeout)
        if a.scrape_interval == "auto":
            scrape = prom.scrape_interval() or db.GRAFANA_SCRAPE_SECONDS
        else:
            scrape = db.parse_prom_duration(a.scrape_interval)
        window = db.Window.ending(time.time(), seconds, scrape)
        selection = {"model": a.model or [], "variant": a.variant or []}
        for name, chosen in selection.items():
            var = dash.variable(name)
            if var is None or not chosen:
                continue
            offered = db.variable_values(prom, dash, var, selection, window)
            for value in chosen:
                if value not in offered:
                    print(
                        f"riskserve dashboard: warning: no {name} {value!r} in Prometheus "
                        f"over the range (it has {offered})",
                        file=sys.stderr,
                    )
        results = db.evaluate(prom, dash, selection, window)
        drawn = db.render_png(results, a.png, f"{dash.title} · last {a.range}", window)
    except RiskserveError as e:
        print(f"riskserve dashboard: {e.message}", file=sys.stderr)
        return 1
    empty = sorted({r.panel.title for r in results if not any(s.finite for s in r.series)})
    print(json.dumps({"out": str(a.png), "panels": drawn, "no_data": empty}))
    return 0


def _print_deployment(d: Any) -> None:
    shadow = f"v{d.shadow.version} at {d.shadow.sample_percent:g}%" if d.shadow.version else "-"
    print(f"model {d.model}  revision {d.revision}  salt {d.salt!r}  shadow {shadow}")
    print(f"loaded: {', '.join(f'v{v}' for v in d.loaded_versions) or '-'}")
    print(f"{'variant':<10} {'weight':>6}")
    for v in d.variants:
        print(f"{'v' + str(v.version):<10} {v.weight:>5}%")
    thresholds = []
    for t in d.thresholds:
        own = f"{t.manifest_threshold:.6g}" if t.HasField("manifest_threshold") else "?"
        source = f"override; manifest {own}" if t.overridden else "manifest"
        thresholds.append(f"v{t.version} {t.threshold:.6g} ({source})")
    print(f"thresholds: {', '.join(thresholds) or '-'}")
    print(f"updated {d.updated_at} by {d.actor or '-'}: {d.reason or '-'}")


def cmd_admin(a: argparse.Namespace) -> int:
    import os

    import grpc

    from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
    from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc

    token = a.token or os.environ.get("RISKSERVE_ADMIN_TOKEN", "")
    md = [("authorization", f"Bearer {token}"), ("x-actor", os.environ.get("USER", "cli"))]
    channel = grpc.insecure_channel(a.server)
    stub = agrpc.ModelAdminStub(channel)
    kw: dict[str, Any] = {"metadata": md, "timeout": a.timeout}
    try:
        op = a.op
        if op == "models":
            resp = stub.ListModels(apb.ListModelsRequest(), **kw)
            print(f"{'model':<16} {'version':>7} {'state':<10} {'platform':<18} sha256")
            for m in resp.models:
                for v in m.versions:
                    extra = v.sha256[:16] or v.reason
                    print(f"{m.name:<16} {v.version:>7} {v.state:<10} {v.platform:<18} {extra}")
        elif op == "deployment":
            _print_deployment(stub.GetDeployment(apb.GetDeploymentRequest(model=a.model), **kw))
        elif op == "load":
            r = stub.LoadVersion(
                apb.LoadVersionRequest(model=a.model, version=a.version, reason=a.reason), **kw
            )
            _print_deployment(r.deployment)
        elif op == "unload":
            r = stub.UnloadVersion(
                apb.UnloadVersionRequest(model=a.model, version=a.version, reason=a.reason), **kw
            )
            _print_deployment(r.deployment)
        elif op == "set-traffic":
            variants = []
            for item in a.weights:
                v, _, w = item.partition("=")
                if not w:
                    print(f"expected VERSION=WEIGHT, got {item!r}", file=sys.stderr)
                    return 2
                variants.append(apb.Variant(version=int(v.lstrip("v")), weight=int(w)))
            req = apb.SetTrafficRequest(
                model=a.model, variants=variants, salt=a.salt or "", reason=a.reason
            )
            _print_deployment(stub.SetTraffic(req, **kw))
        elif op == "shadow":
            req = apb.SetShadowRequest(
                model=a.model, version=a.version, sample_percent=a.percent, reason=a.reason
            )
            _print_deployment(stub.SetShadow(req, **kw))
        elif op == "promote":
            req = apb.PromoteRequest(model=a.model, version=a.version, reason=a.reason)
            _print_deployment(stub.Promote(req, **kw))
        elif op == "set-threshold":
            if a.clear == (a.threshold is not None):
                print("give THRESHOLD or --clear (not both)", file=sys.stderr)
                return 2
            req = apb.SetThresholdRequest(
                model=a.model,
                version=a.version,
                threshold=a.threshold or 0.0,
                clear=a.clear,
                reason=a.reason,
            )
            _print_deployment(stub.SetThreshold(req, **kw))
        elif op == "rollback":
            _print_deployment(
                stub.Rollback(apb.RollbackRequest(model=a.model, reason=a.reason), **kw)
            )
        elif op == "history":
            h = stub.History(apb.HistoryRequest(model=a.model, limit=a.limit), **kw)
            print(f"{'rev':>4} {'updated':<29} {'actor':<14} {'traffic':<24} reason")
            for d in h.revisions:
                traffic = " ".join(f"v{v.version}={v.weight}" for v in d.variants if v.weight)
                print(f"{d.revision:>4} {d.updated_at:<29} {d.actor:<14} {traffic:<24} {d.reason}")
    except grpc.RpcError as e:
        print(f"riskserve admin {a.op}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


def cmd_labels_send(a: argparse.Namespace) -> int:
    import grpc

    from riskserve.labels_client import FeedbackClient, counts_of, read_label_file

    labels, refused = read_label_file(a.file)
    for r in refused[:20]:
        print(f"{a.file}: row {r.line}: {r.reason}", file=sys.stderr)
    if len(refused) > 20:
        print(f"{a.file}: ... and {len(refused) - 20} more rows refused", file=sys.stderr)
    client = FeedbackClient(a.server, token=a.token, timeout=a.timeout)
    try:
        with _progress_bar(len(labels), "labels committed") as advance:
            replies = client.stream(labels, batch=max(1, a.batch), on_ack=advance)
    except grpc.RpcError as e:
        print(f"riskserve labels send: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    counts = counts_of(replies)
    counts["rejected"] += len(refused)
    for reply in replies:
        for ack in reply.results:
            if ack.reason:
                print(f"rejected: {ack.reason}", file=sys.stderr)
    if a.json:
        print(json.dumps(counts))
    else:
        print(" ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_performance(a: argparse.Namespace) -> int:
    import grpc

    from riskserve.labels_client import FeedbackClient, parse_duration

    maturity = None if a.maturity is None else parse_duration(a.maturity)
    window = 0.0 if a.window is None else parse_duration(a.window)
    client = FeedbackClient(a.server, token=a.token, timeout=a.timeout)
    try:
        resp = client.performance(a.model, maturity, window)
    except grpc.RpcError as e:
        print(f"riskserve performance: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    doc = json.loads(resp.details_json)
    if a.png is not None:
        from riskserve.feedback.chart import draw
        from riskserve.feedback.outcomes import from_json

        draw(from_json(doc), a.png, f"{a.model}: outcomes per variant")
        print(f"wrote {a.png}", file=sys.stderr)
    if a.json:
        print(json.dumps(doc))
        return 0
    print(f"{'variant':<9} {'ver':>4} {'thresh':>7} {'labelled':>9} {'recall':>7} "
          f"{'fpr':>8} {'prec':>6} {'auc':>6}")  # fmt: skip
    for v in doc["variants"]:

        def f(x: Any, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        print(
            f"{v['variant']:<9} {v['version']:>4} {f(v['threshold'], '.4f'):>7} "
            f"{v['labelled']:>9} {f(v['recall'], '.3f'):>7} "
            f"{f(v['false_positive_rate'], '.5f'):>8} {f(v['precision'], '.3f'):>6} "
            f"{f(v['auc'], '.3f'):>6}"
        )
    print(resp.verdict)
    return 0


def _retrain_flags() -> list[tuple[SettingInfo, str]]:
    """`retrain`'s settings and flags: the models folder, the feedback store's DSN, and
    the retrain group's, named without their `--retrain-` prefix (`--max-auc-drop`)."""
    from riskserve.config import SETTINGS, command_flag, setting

    own = [(setting(k), setting(k).flag) for k in ("models_dir", "feedback_dsn")]
    return own + [(s, command_flag(s)[1]) for s in SETTINGS if s.group == "retrain"]


def _champion_of(models: Path, model: str) -> int | None:
    """The deployment's control version (deployment.json), None without a deployment:
    the one "which version is the control" helper, in riskserve.deployments."""
    from riskserve.deployments.store import StateStore

    store = StateStore(models)
    if not store.exists(model):
        return None
    try:
        history, _ = store.read(model)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{store.path(model)} is unreadable ({e}): cannot tell the champion"
        ) from None
    return history[-1].control if history else None


def _start_version(a: argparse.Namespace, settings: Settings, parent: int, version: int) -> Any:
    """Starts the new version as a canary (`--canary PCT`: the control keeps the rest)
    or a shadow (`--shadow PCT`) through the admin API: load, then split or shadow."""
    import grpc

    from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
    from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
    from riskserve.transport.auth import load_token

    token = a.token or (load_token(settings.admin.token, settings.admin.token_file) or b"").decode()
    md = [("authorization", f"Bearer {token}"), ("x-actor", "riskserve retrain")]
    reason = f"retrain ({a.trigger}): v{version} from parent v{parent}"
    kw: dict[str, Any] = {"metadata": md, "timeout": a.timeout}
    with grpc.insecure_channel(a.server) as channel:
        stub = agrpc.ModelAdminStub(channel)
        try:
            stub.LoadVersion(
                apb.LoadVersionRequest(model=a.model, version=version, reason=reason), **kw
            )
            if a.canary is not None:
                variants = [
                    apb.Variant(version=parent, weight=100 - int(a.canary)),
                    apb.Variant(version=version, weight=int(a.canary)),
                ]
                d = stub.SetTraffic(
                    apb.SetTrafficRequest(model=a.model, variants=variants, reason=reason), **kw
                )
            else:
                d = stub.SetShadow(
                    apb.SetShadowRequest(
                        model=a.model, version=version, sample_percent=a.shadow, reason=reason
                    ),
                    **kw,
                )
        except grpc.RpcError as e:
            raise ConnectionError(
                f"v{version} is registered, but starting it on {a.server} failed: "
                f"{e.code().name}: {e.details()}"
            ) from None
    return {
        "revision": d.revision,
        "variants": {str(v.version): v.weight for v in d.variants},
        "shadow": {"version": d.shadow.version, "percent": d.shadow.sample_percent}
        if d.shadow.version
        else None,
    }


class _Steps:
    """Step lines on stderr, and a rich bar on stderr while prediction rows are read."""

    def __init__(self, prefix: str, what: str) -> None:
        self._say = _progress(prefix)
        self._what = what
        self._bar: Any = None
        self._task: Any = None

    def say(self, msg: str) -> None:
        self.close()
        self._say(msg)

    def advance(self, n: int) -> None:
        if self._bar is None:
            from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

            self._bar = Progress(
                SpinnerColumn(),
                "[progress.description]{task.description}",
                "{task.completed:,}",
                TimeElapsedColumn(),
                console=_stderr_console(),
            )
            self._bar.start()
            self._task = self._bar.add_task(self._what, total=None)
        self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def cmd_retrain(a: argparse.Namespace) -> int:
    from riskserve.config import Settings
    from riskserve.errors import RiskserveError
    from riskserve.feedback.backends import open_store
    from riskserve.labels_client import parse_duration
    from riskserve.training.retrain import RetrainConfig, retrain
    from riskserve.training.tracking import open_tracker

    def fail(message: str, code: int, **extra: Any) -> int:
        print(f"riskserve retrain: {message}", file=sys.stderr)
        if a.json:
            print(json.dumps({"registered": False, "version": None, **extra, "error": message}))
        return code

    steps = _Steps("retrain", "prediction rows read")
    try:
        overrides = {s.key: getattr(a, _dest(flag)) for s, flag in _retrain_flags()}
        if overrides["models_dir"] is not None:
            overrides["models_dir"] = Path(overrides["models_dir"])
        settings = Settings.load(overrides)
        models = settings.server.models_dir
        fb = settings.feedback
        window = fb.window_seconds if a.window is None else parse_duration(a.window)
        maturity = fb.maturity_seconds if a.maturity is None else parse_duration(a.maturity)
        if a.canary is not None and not (1 <= a.canary <= 99 and float(a.canary).is_integer()):
            raise ValueError(
                f"--canary must be a whole percentage in 1..99 (traffic weights are whole "
                f"percents), got {a.canary:g}"
            )
        if a.shadow is not None and not 0 < a.shadow <= 100:
            raise ValueError(f"--shadow must be a percentage in (0, 100], got {a.shadow:g}")
        if a.dry_run and (a.canary is not None or a.shadow is not None):
            raise ValueError("--dry-run registers nothing: it cannot start a canary or shadow")
        cfg = RetrainConfig(
            model=a.model,
            models_dir=models,
            settings=settings.retrain,
            window_seconds=window,
            maturity_seconds=maturity,
            champion=_champion_of(models, a.model),
            base=None if a.base is None else Path(a.base),
            from_snapshot=None if a.from_snapshot is None else Path(a.from_snapshot),
            trigger=a.trigger,
            seed=a.seed,
            dry_run=a.dry_run,
            shuffle_training_labels=a.shuffle_training_labels,
        )
        r = settings.retrain
        tracker = open_tracker(r.mlflow_tracking_uri, r.mlflow_experiment)  # before anything
        result = retrain(
            cfg,
            lambda: open_store(fb.dsn, models),
            tracker=tracker,
            progress=steps.say,
            advance=steps.advance,
        )
    except (RiskserveError, ValueError, OSError) as e:
        return fail(str(e), 2)
    finally:
        steps.close()
    doc = result.to_json()
    code = 0 if result.registered or (result.dry_run and result.gate.passed) else 3
    if result.registered and result.version is not None and (a.canary or a.shadow):
        try:
            doc["deployment"] = _start_version(a, settings, result.parent, result.version)
            what = f"canary at {a.canary:g}%" if a.canary else f"shadow at {a.shadow:g}%"
            steps.say(f"v{result.version} started as a {what} (control v{result.parent})")
            if tracker is not None:
                doc["mlflow_aliases"] = tracker.set_aliases(
                    a.model, {"champion": result.parent, "challenger": result.version}
                )
        except (ConnectionError, RiskserveError) as e:
            print(f"riskserve retrain: {e}", file=sys.stderr)
            doc["deployment"] = {"error": str(e)}
            code = 1
    if not result.gate.passed:
        for failure in result.gate.failures:
            print(f"riskserve retrain: gate: {failure}", file=sys.stderr)
    if a.json:
        print(json.dumps(doc))
    else:
        verdict = "passed" if result.gate.passed else "FAILED"
        print(f"{'figure':<14} {'champion':>9} {'challenger':>10} {'margin':>7}")
        for c in result.gate.checks:

            def f(x: float | None) -> str:
                return "-" if x is None else f"{x:.4f}"

            print(f"{c.figure:<14} {f(c.champion):>9} {f(c.challenger):>10} {c.margin:>7g}")
        done = f"registered v{result.version}" if result.registered else "nothing registered"
        print(f"gate {verdict}: {done} (parent v{result.parent}, snapshot {result.snapshot})")
    return code


@contextlib.contextmanager
def _progress_bar(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (rich) while a long transfer runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_stderr_console(),
        transient=False,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="riskserve",
        description="riskserve: train payment fraud models and serve them over gRPC "
        "(Open Inference Protocol).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datagen", help="generate synthetic card payments (CSV or Parquet)")
    d.add_argument("--rows", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, help="path ending in .csv or .parquet")
    d.set_defaults(fn=cmd_datagen)

    t = sub.add_parser("train", help="fit a feature spec, train LightGBM, register a version")
    t.add_argument("--data", required=True)
    t.add_argument("--target", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--models", required=True, help="models folder (the registry)")
    t.add_argument("--spec", help="feature spec template; inferred from the data if absent")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--format", choices=("lightgbm", "onnx"), default="lightgbm")
    t.add_argument("--rounds", type=int, default=300)
    # One operating point at most (TrainConfig checks the ranges); none given: the
    # alert rate twice the training rows' positive rate, within [0.001, 0.2].
    point = t.add_mutually_exclusive_group()
    point.add_argument(
        "--threshold", type=float, help="operating threshold in [0, 1] (flagged: score >= it)"
    )
    point.add_argument(
        "--alert-rate",
        type=float,
        help="choose the threshold flagging this share of the holdout, in (0, 1) (default: "
        "twice the training positive rate, within [0.001, 0.2])",
    )
    point.add_argument(
        "--target-precision",
        type=float,
        help="choose the lowest threshold whose holdout precision reaches this, in (0, 1]",
    )
    t.add_argument("--signing-key", help="ed25519 private key (PEM): sign the new version")
    from riskserve.config import setting

    for key in ("mlflow_tracking_uri", "mlflow_experiment"):
        _add_setting_flag(t, setting(key), setting(key).flag)
    t.set_defaults(fn=cmd_train)

    k = sub.add_parser("keygen", help="make an ed25519 key pair for signing model versions")
    k.add_argument("--out", required=True, help="writes OUT.key (mode 0600) and OUT.pub")
    k.set_defaults(fn=cmd_keygen)

    g = sub.add_parser("sign", help="sign a model version's manifest (manifest.sig)")
    g.add_argument("--models", required=True, help="models folder (the registry)")
    g.add_argument("--model", required=True)
    g.add_argument("--version", type=int, default=0, help="default: the newest")
    g.add_argument("--key", required=True, help="ed25519 private key (PEM)")
    g.set_defaults(fn=cmd_sign)

    s = sub.add_parser(
        "serve",
        help="serve every model in the folder over gRPC (V2)",
        description="Serve every model in the models folder over gRPC (Open Inference "
        "Protocol). Every flag overrides its RISKSERVE_* variable (docs/settings.md).",
    )
    add_setting_flags(s)
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("score", help="score a transaction against a running server")
    c.add_argument("--server", default="localhost:8001")
    c.add_argument("--model", default="fraud")
    c.add_argument("--version", default="")
    c.add_argument("--json", help="one transaction as a JSON object, e.g. '{\"amount\": 12.5}'")
    c.add_argument(
        "--seed", type=int, default=7, help="the generated example (fills fields --json omits)"
    )
    c.add_argument("--strict", action="store_true", help="send only the fields in --json")
    c.add_argument("--timeout", type=float, default=10.0)
    c.set_defaults(fn=cmd_score)

    ad = sub.add_parser("admin", help="deployments: load, split, shadow, promote, rollback")
    ad.add_argument("--server", default="localhost:8001")
    ad.add_argument("--token", help="default: $RISKSERVE_ADMIN_TOKEN")
    ad.add_argument("--timeout", type=float, default=60.0)
    ad.add_argument("--reason", default="", help="recorded in the history")
    ops = ad.add_subparsers(dest="op", required=True)
    ops.add_parser("models", help="models, versions, state, sha256")
    for op in ("deployment", "rollback", "history"):
        o = ops.add_parser(op)
        o.add_argument("model")
        if op == "history":
            o.add_argument("--limit", type=int, default=20)
    for op in ("load", "unload", "promote"):
        o = ops.add_parser(op)
        o.add_argument("model")
        o.add_argument("version", type=int)
    o = ops.add_parser("set-traffic", help="e.g. set-traffic fraud 1=90 2=10")
    o.add_argument("model")
    o.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    o.add_argument("--salt")
    o = ops.add_parser("shadow", help="shadow MODEL VERSION PERCENT (0 0 removes it)")
    o.add_argument("model")
    o.add_argument("version", type=int)
    o.add_argument("percent", type=float)
    o = ops.add_parser(
        "set-threshold",
        help="set-threshold MODEL VERSION THRESHOLD overrides the version's operating "
        "threshold in this deployment; --clear restores its manifest's",
    )
    o.add_argument("model")
    o.add_argument("version", type=int)
    o.add_argument("threshold", type=float, nargs="?")
    o.add_argument("--clear", action="store_true", help="remove the override")
    ad.set_defaults(fn=cmd_admin)

    for name, fn, helptext in (
        ("drift", cmd_drift, "print PSI per field from a server's /metrics, worst first"),
        ("drift-report", cmd_drift_report, "draw reference vs live shares to a PNG"),
    ):
        dr = sub.add_parser(name, help=helptext)
        dr.add_argument("--metrics", required=True, help="e.g. http://localhost:8002/metrics")
        dr.add_argument("--model")
        dr.add_argument("--window", choices=("sliding", "cumulative"), default="sliding")
        dr.add_argument("--threshold", type=float, default=0.25)
        if name == "drift-report":
            dr.add_argument("--out", required=True, help="PNG path")
            dr.add_argument("--top", type=int, default=6)
        dr.set_defaults(fn=fn)

    dash = sub.add_parser(
        "dashboard",
        help="draw the Grafana dashboard's time-series panels to a PNG from Prometheus",
    )
    dash.add_argument("--prometheus", required=True, help="e.g. http://localhost:9090")
    dash.add_argument("--model", action="append", help="the $model variable (repeat; default All)")
    dash.add_argument("--variant", action="append", help="the $variant variable (default All)")
    dash.add_argument("--range", default="1h", help="time range ending now (90m, 6h, 2d)")
    dash.add_argument("--png", required=True, type=Path)
    dash.add_argument(
        "--scrape-interval",
        default="auto",
        help="for $__rate_interval, as Grafana's data source timeInterval; auto: "
        "Prometheus' global scrape_interval",
    )
    dash.add_argument(
        "--dashboard", type=Path, default=None, help="default: deploy/grafana/riskserve.json"
    )
    dash.add_argument("--timeout", type=float, default=30.0)
    dash.set_defaults(fn=cmd_dashboard)

    rw = sub.add_parser(
        "retrain-watch",
        help="retrain a model on a schedule, on held drift or on falling recall",
        description="Watch a serving fleet's /metrics and run `riskserve retrain` (a niced "
        "child process, one at a time) when the daily schedule, a held drift alert or a "
        "falling recall says so. Every flag overrides its RISKSERVE_* variable "
        "(docs/settings.md, settings.watch).",
    )
    rw_flags = rw.add_argument_group("watch settings")
    for setting_info, flag in _watch_flags():
        _add_setting_flag(rw_flags, setting_info, flag)
    rw.set_defaults(fn=cmd_retrain_watch)

    rt = sub.add_parser(
        "retrain",
        help="retrain a model from its labelled prediction log (champion/challenger gate)",
        description="Snapshot the labelled prediction log (predictions older than --maturity "
        "within --window, optionally after --base), train a challenger with the champion's "
        "spec and hyper-parameters, judge both on the most recent labelled predictions, and "
        "register the challenger only if the gate passes; optionally start it as a canary or "
        "shadow. Exit 0: registered (or --dry-run passed); 3: the gate refused; 2: bad input; "
        "1: registered but the canary/shadow could not be started. Settings flags override "
        "their RISKSERVE_* variables (docs/settings.md, settings.retrain).",
    )
    rt.add_argument("--model", required=True)
    rt.add_argument(
        "--trigger", choices=("manual", "schedule", "drift", "recall"), default="manual",
        help="why this run happens (recorded in the manifest and MLflow)",
    )  # fmt: skip
    rt.add_argument(
        "--window", help="prediction times before the maturity to take (30d); default "
        "RISKSERVE_OUTCOME_WINDOW_SECONDS",
    )  # fmt: skip
    rt.add_argument(
        "--maturity", help="leave out predictions younger than this (14d, 0d); default "
        "RISKSERVE_OUTCOME_MATURITY_SECONDS",
    )  # fmt: skip
    rt.add_argument("--base", help="a base dataset (CSV/Parquet as datagen writes) to train on too")
    rt.add_argument("--from-snapshot", help="retrain from this snapshot instead of the log")
    start = rt.add_mutually_exclusive_group()
    start.add_argument("--canary", type=float, metavar="PCT", help="start it at PCT%% of traffic")
    start.add_argument("--shadow", type=float, metavar="PCT", help="shadow PCT%% of requests")
    rt.add_argument("--server", default="localhost:8001", help="admin API for --canary/--shadow")
    rt.add_argument("--token", default="", help="default: $RISKSERVE_ADMIN_TOKEN(_FILE)")
    rt.add_argument("--timeout", type=float, default=60.0, help="admin calls, seconds")
    rt.add_argument("--seed", type=int, help="default: the champion's")
    rt.add_argument("--dry-run", action="store_true", help="stop after the gate")
    rt.add_argument(
        "--shuffle-training-labels", action="store_true",
        help="negative control: shuffle the training rows' labels; the gate must refuse",
    )  # fmt: skip
    rt.add_argument("--json", action="store_true", help="last line: the result as JSON")
    rt_flags = rt.add_argument_group("retrain settings")
    for setting_info, flag in _retrain_flags():
        _add_setting_flag(rt_flags, setting_info, flag)
    rt.set_defaults(fn=cmd_retrain)

    lb = sub.add_parser("labels", help="ground-truth labels: send a file of them")
    lops = lb.add_subparsers(dest="op", required=True)
    ls = lops.add_parser(
        "send",
        help="send a CSV or Parquet file of labels (columns request_id, outcome; optional "
        "label_time, source, amount, label_id); each batch is acknowledged once committed",
    )
    ls.add_argument("--server", default="localhost:8001")
    ls.add_argument("--file", required=True, type=Path)
    ls.add_argument("--token", default="", help="default: $RISKSERVE_FEEDBACK_TOKEN(_FILE)")
    ls.add_argument("--batch", type=int, default=1000, help="labels per stream message")
    ls.add_argument("--timeout", type=float, default=600.0)
    ls.add_argument("--json", action="store_true", help="last line: counts by result")
    ls.set_defaults(fn=cmd_labels_send)

    pf = sub.add_parser("performance", help="outcomes per variant and the A/B verdict")
    pf.add_argument("--server", default="localhost:8001")
    pf.add_argument("model")
    pf.add_argument(
        "--maturity",
        default=None,
        help="judge predictions older than this (14d, 36h, 0d = all); default: the server's",
    )
    pf.add_argument("--window", default=None, help="how far back before the maturity (30d)")
    pf.add_argument("--token", default="", help="default: $RISKSERVE_FEEDBACK_TOKEN(_FILE)")
    pf.add_argument("--timeout", type=float, default=60.0)
    pf.add_argument("--json", action="store_true", help="last line: the whole document")
    pf.add_argument("--png", type=Path, help="draw recall and FPR per variant over time")
    pf.set_defaults(fn=cmd_performance)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, OSError) as e:
        print(f"riskserve {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
