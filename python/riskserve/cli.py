"""The `riskserve` command: datagen, train, serve, score, admin, drift,
drift-report, labels send and performance.

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
    from riskserve.config import Settings


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
    res = train(cfg, progress=_progress("train"))
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


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, in one argument group per settings group. Every
    flag defaults to None (not given), so the environment's value stands."""
    from riskserve.config import GROUPS, SETTINGS

    for group, cls in GROUPS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        flags = parser.add_argument_group(f"{group} settings", doc)
        for s in SETTINGS:
            if s.group != group:
                continue
            help_text = f"{s.meaning} (env {s.env}; default {s.default_text})".replace("%", "%%")
            if s.kind is bool:
                flags.add_argument(s.flag, action=argparse.BooleanOptionalAction, help=help_text)
            elif s.kind in (str, Path):  # a path stays a str in the Namespace (a.models)
                flags.add_argument(s.flag, metavar=s.key.upper(), help=help_text)
            else:
                flags.add_argument(
                    s.flag, type=s.kind, metavar=s.kind.__name__.upper(), help=help_text
                )


def settings_from_args(a: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The Settings `riskserve serve` runs with: defaults, then RISKSERVE_* from
    `env` (default os.environ), then the flags that were given."""
    from riskserve.config import SETTINGS, Settings

    overrides = {s.key: getattr(a, _dest(s.flag)) for s in SETTINGS}
    for s in SETTINGS:
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
