"""The deployment files in deploy/: every Kubernetes and KServe manifest parses
and matches its schema (the Kubernetes JSON schemas bundled with
kubernetes-validate, strict, at pinned Kubernetes versions; KServe's CRD schemas
vendored in deploy/schemas/kserve), and the values that must agree with riskserve
itself do (ports and probe services from riskserve's own settings and gRPC service
names, drain time against the termination grace period, environment variables
and CLI flags that riskserve actually reads), as do the references between
manifests (Service and PDB selectors, HPA target, volumes, Secret, PVC, runtime
name, the retraining CronJob and watcher, what the NetworkPolicies let through).
The Dockerfile is checked as text; no image is built (no Docker engine on the test
machines). The runbook (docs/operations.md) has a section per alert in
deploy/prometheus/rules.yml, and every riskserve command it shows parses."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from riskserve.cli import build_parser, settings_from_args, watch_settings_from_args
from riskserve.config import ENV_PREFIX, SETTINGS, Settings
from riskserve.transport.inference import SERVICE_NAME

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

Doc = dict[str, Any]


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))


def _load(path: Path) -> list[Doc]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


ALL_FILES = _yaml_files(K8S) + _yaml_files(KSERVE)


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    out: list[Doc] = []
    for path in ALL_FILES:
        if path.name == "kustomization.yaml":
            continue
        out.extend(_load(path))
    return out


def _one(docs: list[Doc], kind: str, api_prefix: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind and str(d["apiVersion"]).startswith(api_prefix)]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _all(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in _all(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment(docs: list[Doc]) -> Doc:
    """The serving Deployment (retrain-watch.yaml is another one)."""
    return _named(docs, "Deployment", "riskserve")


@pytest.fixture(scope="module")
def pod(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod: Doc) -> Doc:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def runtime(docs: list[Doc]) -> Doc:
    return _one(docs, "ServingRuntime", "serving.kserve.io/v1alpha1")


@pytest.fixture(scope="module")
def runtime_container(runtime: Doc) -> Doc:
    (c,) = (c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
    return c


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _ports(container: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _serve_args(container: Doc) -> Any:
    """The container's args as `riskserve serve` parses them (the image's
    ENTRYPOINT is `riskserve serve`)."""
    return build_parser().parse_args(["serve", *container.get("args", [])])


def _settings(container: Doc) -> Settings:
    """The settings riskserve would run with in this container (env, then flags)."""
    return settings_from_args(_serve_args(container), env=_env(container))


#: Every environment variable riskserve reads.
READ_ENV = {s.env for s in SETTINGS}


# -- every file ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_document_parses(path: Path) -> None:
    documents = _load(path)
    assert documents, f"{path} holds no YAML document"
    for d in documents:
        assert isinstance(d, dict)
        assert d.get("apiVersion") and d.get("kind"), f"{path}: apiVersion and kind needed"
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"], f"{path}: metadata.name needed"


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = _load(K8S / "kustomization.yaml")
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    others = {p.name for p in _yaml_files(K8S)} - {"kustomization.yaml"}
    assert set(listed) == others


# -- Deployment ------------------------------------------------------------------------


def test_container_ports_are_riskservers_defaults(container: Doc) -> None:
    defaults = Settings().server
    ports = _ports(container)
    assert ports == {"grpc": defaults.port, "metrics": defaults.metrics_port}
    assert sorted(ports.values()) == [8001, 8002]
    # What the container will actually bind (env and args leave the defaults).
    s = _settings(container).server
    assert (s.port, s.metrics_port) == (defaults.port, defaults.metrics_port)


def test_probes_are_grpc_health_checks_on_the_grpc_port(container: Doc) -> None:
    port = Settings().server.port
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, name
        assert probe["grpc"]["port"] == port, name
    # "" is the server's overall health; the inference service turns NOT_SERVING
    # as soon as a drain starts, which is what takes a pod out of the endpoints.
    assert container["livenessProbe"]["grpc"].get("service", "") == ""
    assert container["startupProbe"]["grpc"].get("service", "") == ""
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert SERVICE_NAME == "inference.GRPCInferenceService"


def test_termination_grace_covers_prestop_and_drain(pod: Doc, container: Doc) -> None:
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 0 < pre_stop < grace
    drain = _settings(container).server.grace_seconds
    assert grace > Settings().server.grace_seconds
    assert grace > drain
    assert grace > pre_stop + drain


def test_environment_is_what_riskserve_reads(container: Doc) -> None:
    for name in _env(container):
        assert name.startswith(ENV_PREFIX), name
        assert name in READ_ENV, f"riskserve does not read {name}"
    s = _settings(container)
    assert s.server.models_dir == Path("/models")
    assert not s.admin.token, "the admin token comes from the Secret file, not a literal"


def test_volumes_models_secret_tmp(docs: list[Doc], pod: Doc, container: Doc) -> None:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)

    # Models: a writable ReadWriteMany PVC (deployment.json is written by every replica).
    models = mounts[str(_settings(container).server.models_dir)]
    assert not models.get("readOnly", False)
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in _all(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    # Admin token: RISKSERVE_ADMIN_TOKEN_FILE is a key of the mounted Secret.
    token_file = Path(_env(container)["RISKSERVE_ADMIN_TOKEN_FILE"])
    mount = mounts[str(token_file.parent)]
    assert mount["readOnly"] is True
    secret_volume = volumes[mount["name"]]["secret"]
    paths = {i["path"]: i["key"] for i in secret_volume.get("items", [])}
    key = paths.get(token_file.name, token_file.name)
    secret = next(
        d for d in _all(docs, "Secret") if d["metadata"]["name"] == secret_volume["secretName"]
    )
    assert key in {**secret.get("stringData", {}), **secret.get("data", {})}

    # Read-only root filesystem, with a writable /tmp.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_security_context_is_non_root(pod: Doc, container: Doc) -> None:
    pod_sc = pod["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_prometheus_can_find_the_metrics_port(pod: Doc, container: Doc) -> None:
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == Settings().server.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    # deploy/prometheus/prometheus.yml's Kubernetes job keeps pods labelled
    # app.kubernetes.io/name=riskserve, on the container port named "metrics".
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "riskserve"
    assert "metrics" in _ports(container)
    prometheus = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "app_kubernetes_io_name" in prometheus and "regex: metrics" in prometheus


# -- Service, HPA, PDB -------------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_services_select_the_deployments_pods(
    docs: list[Doc], deployment: Doc, pod: Doc, container: Doc
) -> None:
    labels = pod["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    services = _all(docs, "Service")
    assert services
    ports = _ports(container)
    for svc in services:
        assert _selects(svc["spec"]["selector"], labels), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, p
    (main,) = (s for s in services if s["metadata"]["name"] == deployment["metadata"]["name"])
    assert main["spec"]["type"] == "ClusterIP"
    grpc_port = next(p for p in main["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "grpc"
    defaults = Settings().server
    assert ports[grpc_port["targetPort"]] == defaults.port
    assert any(ports[p["targetPort"]] == defaults.metrics_port for p in main["spec"]["ports"])


def test_hpa_scales_the_deployment(docs: list[Doc], deployment: Doc) -> None:
    hpa = _one(docs, "HorizontalPodAutoscaler", "autoscaling/v2")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    # Utilization is relative to the request, so the container must have one.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]


def test_pdb_covers_the_deployment(docs: list[Doc], deployment: Doc, pod: Doc) -> None:
    pdb = _one(docs, "PodDisruptionBudget", "policy/v1")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    hpa = _one(docs, "HorizontalPodAutoscaler")
    # Evictions must stay possible at the minimum scale.
    assert 0 < pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# -- KServe ----------------------------------------------------------------------------


def test_serving_runtime_speaks_grpc_v2_on_8001(runtime: Doc, runtime_container: Doc) -> None:
    spec = runtime["spec"]
    assert runtime["metadata"]["name"] == "riskserve"
    assert "grpc-v2" in spec["protocolVersions"]
    args = runtime_container["args"]
    i = args.index("--port")
    assert args[i + 1] == "8001"
    a = _serve_args(runtime_container)
    assert a.port == 8001 and a.models == "/mnt/models"
    (port,) = runtime_container["ports"]
    assert (port["containerPort"], port["name"], port["protocol"]) == (8001, "h2c", "TCP")
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["lightgbm"]["autoSelect"] is True
    assert "onnx" in formats
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(Settings().server.metrics_port)
    for name in _env(runtime_container):
        assert name in READ_ENV, f"riskserve does not read {name}"


def test_inference_service_uses_the_runtime(docs: list[Doc], runtime: Doc) -> None:
    isvc = _one(docs, "InferenceService", "serving.kserve.io/v1beta1")
    assert isvc["metadata"]["name"] == "fraud"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    # KServe refuses a runtime that does not list the requested protocol version.
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert re.match(r"^(pvc|s3|gs)://", model["storageUri"])
    # riskserve writes <models>/<name>/deployment.json: /mnt/models must be writable.
    assert isvc["metadata"]["annotations"]["storage.kserve.io/readonly"] == "false"


# -- Dockerfile ------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def test_dockerfile_runs_riskserve_serve() -> None:
    ins = _instructions(DOCKERFILE.read_text())
    starts = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    assert len(starts) == 2, "a builder stage and a runtime stage"
    builder_stage, runtime_stage = ins[starts[0] : starts[1]], ins[starts[1] :]
    assert builder_stage[0][1].endswith("AS builder")

    def last(word: str) -> str:
        values = [rest for w, rest in runtime_stage if w == word]
        assert values, f"no {word} in the runtime stage"
        return values[-1]

    assert json.loads(last("ENTRYPOINT")) == ["riskserve", "serve"]
    cmd = json.loads(last("CMD"))
    a = build_parser().parse_args(["serve", *cmd])
    assert a.models == "/models"
    exposed = {
        int(p.split("/")[0]) for w, rest in runtime_stage if w == "EXPOSE" for p in rest.split()
    }
    defaults = Settings().server
    assert exposed == {defaults.port, defaults.metrics_port} == {8001, 8002}
    env = " ".join(rest for w, rest in runtime_stage if w == "ENV")
    assert "RISKSERVE_MODELS_DIR=/models" in shlex.split(env)
    user = last("USER").split(":")[0]
    assert user not in ("0", "root")
    builds = " ".join(rest for w, rest in builder_stage if w == "RUN")
    assert "maturin build --release" in builds and "--out /wheels" in builds


# -- schemas: every Kubernetes object in deploy/ ---------------------------------------

#: Every manifest is validated against these Kubernetes versions (kubernetes-validate's
#: bundled schemas, strict: an unknown field is refused, as `kubectl apply` refuses
#: it): the oldest the manifests support (native gRPC probes and CronJob timeZone are
#: GA from 1.27) and the newest kubernetes-validate 1.37.0 bundles.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
KSERVE_SCHEMAS = DEPLOY / "schemas" / "kserve"
#: Documents that are not API objects (kubectl never sends them to a server).
NOT_API_OBJECTS = frozenset({("kustomize.config.k8s.io/v1beta1", "Kustomization")})
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

Where = tuple[str | int, ...]


def _api_objects() -> list[tuple[Path, int, Doc]]:
    """Every Kubernetes object under deploy/: a YAML document with a string apiVersion
    and a kind (Prometheus rules and Grafana provisioning files have neither)."""
    out = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        for i, d in enumerate(_load(path)):
            api_object = (
                isinstance(d, dict) and isinstance(d.get("apiVersion"), str) and "kind" in d
            )
            if api_object and (d["apiVersion"], d["kind"]) not in NOT_API_OBJECTS:
                out.append((path, i, d))
    return out


def _dotted(where: Any) -> str:
    """A path into a document as people write it: spec.containers[0].env[2]."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(the document)"


def _strict_crd_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server applies it under kubectl's strict
    field validation: an object that lists its properties refuses any other field,
    unless it sets additionalProperties or x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, list):
        return [_strict_crd_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict_crd_schema(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = _strict_crd_schema(value)
        else:
            out[key] = value
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: Doc
) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-list-type: the API server refuses a `set` holding an item twice and
    a `map` with two items of the same x-kubernetes-list-map-keys (defaults applied)."""
    if not validator.is_type(instance, "array") or list_type not in ("set", "map"):
        return
    names = schema.get("x-kubernetes-list-map-keys", [])
    props = schema.get("items", {}).get("properties", {})
    seen: dict[str, int] = {}
    for i, item in enumerate(instance):
        if list_type == "map" and isinstance(item, dict):
            key = json.dumps({n: item.get(n, props.get(n, {}).get("default")) for n in names})
        else:
            key = json.dumps(item, sort_keys=True)
        if key in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry {key} (item {seen[key]} has it already)", path=[i]
            )
        seen.setdefault(key, i)


CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
)


def _kubernetes_definitions(version: str) -> Doc:
    """kubernetes-validate's strict definitions for `version` (ObjectMeta and the rest)."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"v{version}-local-strict" / "_definitions.json").read_text()
    definitions: Doc = json.loads(text)
    return definitions


@functools.cache
def _kserve_sources() -> Doc:
    sources: Doc = json.loads((KSERVE_SCHEMAS / "sources.json").read_text())
    return sources


@functools.cache
def _kserve_validators() -> dict[tuple[str, str], Any]:
    """One validator per vendored KServe kind: its CRD schema, strict, with metadata
    checked as the API server checks every object's (Kubernetes' ObjectMeta)."""
    definitions = _kubernetes_definitions(KUBERNETES_VERSIONS[-1])
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        definitions["$id"], referencing.Resource.from_contents(definitions)
    )
    out = {}
    for entry in _kserve_sources()["schemas"]:
        schema = _strict_crd_schema(json.loads((KSERVE_SCHEMAS / entry["file"]).read_text()))
        schema["properties"] |= {
            "apiVersion": {"const": entry["apiVersion"]},
            "kind": {"const": entry["kind"]},
            "metadata": {"$ref": f"{definitions['$id']}#/$defs/{OBJECT_META}"},
        }
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        out[(entry["apiVersion"], entry["kind"])] = CRDValidator(schema, registry=registry)
    return out


def schema_errors(doc: Doc, kubernetes_version: str) -> list[str]:
    """What the API server's schema check would refuse in `doc`, each as
    "path: message": KServe kinds against the vendored CRD schemas, every other kind
    against Kubernetes' own at `kubernetes_version`. A kind without a schema is an
    error too, never a silent pass."""
    api_version, kind = str(doc.get("apiVersion")), str(doc.get("kind"))
    crd = _kserve_validators().get((api_version, kind))
    if crd is not None:
        errors = sorted(crd.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        return [f"{_dotted(e.absolute_path)}: {e.message}" for e in errors]
    if api_version.startswith("serving.kserve.io/"):
        return [f"no vendored KServe schema for {kind} {api_version} (deploy/schemas/kserve)"]
    try:
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{_dotted(e.absolute_path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [str(e.message)]
    return []


def _schema_cases() -> Iterator[Any]:
    for path, i, d in _api_objects():
        name = f"{path.relative_to(DEPLOY)}:{d['kind']}/{d.get('metadata', {}).get('name')}"
        if str(d["apiVersion"]).startswith("serving.kserve.io/"):
            release = _kserve_sources()["release"]
            yield pytest.param(path, i, KUBERNETES_VERSIONS[-1], id=f"{name}@kserve-{release}")
        else:
            for v in KUBERNETES_VERSIONS:
                yield pytest.param(path, i, v, id=f"{name}@k8s-{v}")


@pytest.mark.parametrize(("path", "index", "version"), list(_schema_cases()))
def test_manifest_matches_its_schema(path: Path, index: int, version: str) -> None:
    doc = _load(path)[index]
    errors = schema_errors(doc, version)
    assert not errors, f"{path.relative_to(ROOT)} ({doc['kind']}):\n" + "\n".join(errors)


def test_every_manifest_kind_is_validated() -> None:
    """What the schema test covers: every file the kustomization lists and both KServe
    manifests (a file of no recognised kind would otherwise pass unchecked)."""
    objects = _api_objects()
    files = {p for p, _, _ in objects}
    (kust,) = _load(K8S / "kustomization.yaml")
    assert {K8S / name for name in kust["resources"]} <= files
    assert set(_yaml_files(KSERVE)) <= files
    kinds = {(d["apiVersion"], d["kind"]) for _, _, d in objects}
    assert {
        ("apps/v1", "Deployment"),
        ("batch/v1", "CronJob"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    } <= kinds


def _changed(path: Path, where: Where, value: Any, index: int = 0) -> Doc:
    """A copy of document `index` of `path` with the value at `where` replaced (or, one
    past the end of a list, appended)."""
    doc = _load(path)[index]
    node: Any = doc
    for part in where[:-1]:
        node = node[part]
    last = where[-1]
    if isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value
    return doc


CONTAINER: Where = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    ("file", "where", "value", "refused_at", "because"),
    [
        # A wrong type.
        (
            "k8s/deployment.yaml",
            (*CONTAINER, "ports", 0, "containerPort"),
            "8001",
            "spec.template.spec.containers[0].ports[0].containerPort",
            "'8001' is not of type 'integer'",
        ),
        # A misspelt field: strict validation refuses it (a lax one would drop it).
        (
            "k8s/deployment.yaml",
            (*CONTAINER, "imagePulPolicy"),
            "Always",
            "spec.template.spec.containers[0]",
            "'imagePulPolicy' was unexpected",
        ),
        (
            "k8s/cronjob-retrain.yaml",
            ("spec", "jobTemplate", "spec", "template", "spec", "containers", 0, "args"),
            "retrain --model fraud",
            "spec.jobTemplate.spec.template.spec.containers[0].args",
            "is not of type 'array'",
        ),
        (
            "k8s/networkpolicy.yaml",
            ("spec", "ingress", 0, "ports", 0, "protocol"),
            6,
            "spec.ingress[0].ports[0].protocol",
            "6 is not of type 'string'",
        ),
        (
            "kserve/servingruntime.yaml",
            ("spec", "protocolVersions"),
            "grpc-v2",
            "spec.protocolVersions",
            "'grpc-v2' is not of type 'array'",
        ),
        # The same variable twice in a list-map keyed by name.
        (
            "kserve/servingruntime.yaml",
            ("spec", "containers", 0, "env", 4),
            {"name": "RISKSERVE_WORKERS", "value": "1"},
            "spec.containers[0].env[4]",
            "duplicate entry",
        ),
        (
            "kserve/inferenceservice.yaml",
            ("spec", "predictor", "minReplicas"),
            "three",
            "spec.predictor.minReplicas",
            "'three' is not of type 'integer'",
        ),
        (
            "kserve/inferenceservice.yaml",
            ("spec", "predictor", "model", "protocolVersio"),
            "grpc-v2",
            "spec.predictor.model",
            "'protocolVersio' was unexpected",
        ),
        # An unquoted YAML boolean where Kubernetes wants a string.
        (
            "kserve/inferenceservice.yaml",
            ("metadata", "annotations", "storage.kserve.io/readonly"),
            False,
            'metadata.annotations["storage.kserve.io/readonly"]',
            "False is not of type 'string'",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".yaml") else None,
)
def test_a_broken_manifest_is_refused_naming_the_path(
    file: str, where: Where, value: Any, refused_at: str, because: str
) -> None:
    path = DEPLOY / file
    doc = _load(path)[0]
    assert all(not schema_errors(doc, v) for v in KUBERNETES_VERSIONS), "the original is valid"
    broken = _changed(path, where, value)
    for version in KUBERNETES_VERSIONS:
        errors = schema_errors(broken, version)
        assert any(e.startswith(f"{refused_at}: ") and because in e for e in errors), errors


def test_a_kind_without_a_schema_is_refused() -> None:
    typo = _changed(K8S / "cronjob-retrain.yaml", ("kind",), "CronJb")
    (error,) = schema_errors(typo, KUBERNETES_VERSIONS[-1])
    assert "Couldn't find schema for kind CronJb" in error
    newer = _changed(KSERVE / "inferenceservice.yaml", ("apiVersion",), "serving.kserve.io/v2")
    (error,) = schema_errors(newer, KUBERNETES_VERSIONS[-1])
    assert "no vendored KServe schema for InferenceService serving.kserve.io/v2" in error


def test_vendored_kserve_schemas_are_the_extracted_release_files() -> None:
    sources = _kserve_sources()
    readme = (DEPLOY / "schemas" / "README.md").read_text()
    assert sources["release"] in readme and sources["commit"] in readme
    assert sources["repository"] == "https://github.com/kserve/kserve"
    vendored = {p.name for p in KSERVE_SCHEMAS.glob("*.json")} - {"sources.json"}
    assert vendored == {e["file"] for e in sources["schemas"]}
    for e in sources["schemas"]:
        digest = hashlib.sha256((KSERVE_SCHEMAS / e["file"]).read_bytes()).hexdigest()
        assert digest == e["sha256"], f"{e['file']} differs from what extract.py wrote"
        assert e["crd_sha256"] in readme, f"README.md: the sha256 of {e['crd']}"
    kserve_kinds = {(d["apiVersion"], d["kind"]) for p in _yaml_files(KSERVE) for d in _load(p)}
    assert kserve_kinds <= set(_kserve_validators())


# -- retraining: the CronJob and the watcher -------------------------------------------

_QUANTITY = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10}
_QUANTITY |= {"Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _quantity(q: str | int) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m is not None and m[2] in _QUANTITY, f"not a quantity: {q!r}"
    return float(m[1]) * _QUANTITY[m[2]]


@pytest.fixture(scope="module")
def cronjob(docs: list[Doc]) -> Doc:
    return _named(docs, "CronJob", "riskserve-retrain")


@pytest.fixture(scope="module")
def watcher(docs: list[Doc]) -> Doc:
    return _named(docs, "Deployment", "riskserve-retrain-watch")


def _job_pod(cronjob: Doc) -> Doc:
    pod: Doc = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def _only_container(pod: Doc) -> Doc:
    (c,) = pod["spec"]["containers"]
    return dict(c)


def _cli(container: Doc) -> Any:
    """The container's command line as riskserve's own parser reads it (the image's
    ENTRYPOINT is `riskserve serve`, so these containers replace it)."""
    assert container["command"] == ["riskserve"]
    argv = [str(a) for a in container["args"]]
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`riskserve {shlex.join(argv)}` does not parse (exit {e.code})")


def _env_from_secrets(container: Doc) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def _check_retrain_pod(docs: list[Doc], pod: Doc, serving: Doc, models_arg: str) -> None:
    """What the CronJob's and the watcher's pods share: riskserve's environment, the
    serving pods' models volume, store and admin token, and a budget that leaves the
    serving pods theirs."""
    container = _only_container(pod)
    serving_container = _only_container(serving["spec"]["template"])
    for name in _env(container) | _env_from_secrets(container):
        assert name in READ_ENV, f"riskserve does not read {name}"

    # The models folder: the serving pods' ReadWriteMany PVC, where --models points.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    serving_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in serving["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    claim = volumes[mounts[models_arg]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in serving_claims
    pvc = _named(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not mounts[models_arg].get("readOnly", False)

    # The prediction log and labels: the store the serving pods write.
    store = _env_from_secrets(container)["RISKSERVE_FEEDBACK_DSN"]
    assert store == _env_from_secrets(serving_container)["RISKSERVE_FEEDBACK_DSN"]
    secret = _named(docs, "Secret", store[0])
    assert store[1] in secret["stringData"]

    # The admin token (the canary is started through the admin API), from the same
    # Secret key the serving pods check it against.
    token_file = Path(_env(container)["RISKSERVE_ADMIN_TOKEN_FILE"])
    mount = mounts[str(token_file.parent)]
    assert mount["readOnly"] is True
    secret_volume = volumes[mount["name"]]["secret"]
    keys = {i["path"]: i["key"] for i in secret_volume.get("items", [])}
    assert keys == {token_file.name: "token"}, "the admin token only, not the feedback token"
    serving_env = _env(serving_container)
    serving_token = Path(serving_env["RISKSERVE_ADMIN_TOKEN_FILE"])
    (serving_secret,) = (
        v["secret"]
        for v in serving["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
        and any(
            m["name"] == v["name"] and m["mountPath"] == str(serving_token.parent)
            for m in serving_container["volumeMounts"]
        )
    )
    assert secret_volume["secretName"] == serving_secret["secretName"]
    serving_keys = {i["path"]: i["key"] for i in serving_secret["items"]}
    assert keys[token_file.name] == serving_keys[serving_token.name]

    # Non-root, read-only root filesystem with a writable /tmp.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    # Not starving serving: it asks for less CPU than a serving pod (CPU shares follow
    # requests), has limits, runs at a priority below the default that never preempts,
    # and prefers nodes without serving pods.
    res, serving_res = container["resources"], serving_container["resources"]
    assert _quantity(res["requests"]["cpu"]) < _quantity(serving_res["requests"]["cpu"])
    assert {"cpu", "memory"} <= set(res["limits"])
    assert _quantity(res["requests"]["memory"]) <= _quantity(res["limits"]["memory"])
    priority = _named(docs, "PriorityClass", pod["spec"]["priorityClassName"])
    assert priority["value"] < 0 and priority["preemptionPolicy"] == "Never"
    assert not priority.get("globalDefault", False)
    (avoid,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    serving_labels = serving["spec"]["template"]["metadata"]["labels"]
    assert _selects(avoid["podAffinityTerm"]["labelSelector"]["matchLabels"], serving_labels)

    # No Service sends inference calls to it.
    labels = pod["metadata"]["labels"]
    for svc in _all(docs, "Service"):
        assert not _selects(svc["spec"]["selector"], labels), svc["metadata"]["name"]


def _service_port(docs: list[Doc], target: str, port_name: str) -> None:
    """`host:port` names a Service of ours and that Service's port `port_name`."""
    host, _, port = target.rpartition(":")
    svc = _named(docs, "Service", host)
    by_port = {p["port"]: p for p in svc["spec"]["ports"]}
    assert by_port[int(port)]["name"] == port_name, target


def test_retrain_cronjob_runs_daily_one_at_a_time(docs: list[Doc], cronjob: Doc) -> None:
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    minute, hour, *every = spec["schedule"].split()
    assert every == ["*", "*", "*"] and minute.isdigit() and hour.isdigit(), "once a day"
    assert spec["timeZone"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] <= 1
    assert job["activeDeadlineSeconds"] > 0
    # No retry after `riskserve retrain` itself decided: every non-zero exit code its
    # help documents (a refused gate, bad input, a version registered whose canary did
    # not start: a retry would register it twice) fails the Job at once.
    (sub,) = (a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    documented = sub.choices["retrain"].description.partition("Exit ")[2]
    codes = {int(c) for c in re.findall(r"\b(\d+): ", documented)} - {0}
    assert codes >= {1, 2, 3}, documented
    (fail_job,) = (r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    on_exit = fail_job["onExitCodes"]
    assert on_exit["operator"] == "In" and set(on_exit["values"]) == codes
    assert on_exit["containerName"] == _only_container(_job_pod(cronjob))["name"]


def test_retrain_cronjob_runs_the_retrain_command(
    docs: list[Doc], cronjob: Doc, deployment: Doc
) -> None:
    pod = _job_pod(cronjob)
    a = _cli(_only_container(pod))
    assert a.command == "retrain"
    assert a.model == "fraud"
    assert float(a.canary) == 10
    assert a.trigger == "schedule"
    assert a.json is True
    _service_port(docs, a.server, "grpc")
    _check_retrain_pod(docs, pod, deployment, a.models)


def test_retrain_watcher_is_one_scraped_process(
    docs: list[Doc], watcher: Doc, deployment: Doc
) -> None:
    assert watcher["spec"]["replicas"] == 1
    assert watcher["spec"]["strategy"]["type"] == "Recreate", "never two watchers at once"
    pod = watcher["spec"]["template"]
    assert _selects(watcher["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    container = _only_container(pod)
    a = _cli(container)
    assert a.command == "retrain-watch"
    # What it runs with: its flags over its environment (as `retrain-watch` reads them).
    s = watch_settings_from_args(a, env=_env(container))
    assert s.watch.model == "fraud"
    assert s.watch.daily_at == "", "the CronJob is the schedule: no second daily run"
    assert (s.watch.start, s.watch.percent) == ("canary", 10)
    _service_port(docs, s.watch.server, "grpc")
    _check_retrain_pod(docs, pod, deployment, str(s.server.models_dir))
    # A stop lets a running retrain stop in its turn (SIGTERM, then stop_seconds).
    assert pod["spec"]["terminationGracePeriodSeconds"] > s.watch.stop_seconds
    # It reads the serving pods' /metrics through the Service.
    url = urllib.parse.urlsplit(s.watch.metrics_url)
    assert url.path == "/metrics"
    _service_port(docs, str(url.netloc), "metrics")
    # Its own metrics: the port it binds, declared as "metrics" and annotated.
    assert _ports(container)["metrics"] == s.watch.metrics_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == s.watch.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


# -- NetworkPolicy ---------------------------------------------------------------------


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector ({} selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ns(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}


def _admitted(
    policies: list[Doc],
    *,
    namespace: str,
    target: Doc,
    port: int,
    source_namespace: str,
    source_labels: Mapping[str, str],
) -> bool:
    """Whether ingress from a pod (namespace, labels) to `target`'s pods on TCP `port`
    is allowed, with `policies` applied in `namespace` (NetworkPolicy semantics: a pod
    no policy selects for Ingress admits everything; otherwise some rule of some
    policy selecting it must admit the source and the port)."""
    pod = target["spec"]["template"]
    labels = pod["metadata"]["labels"]
    names = {
        p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
    }
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"]
        and _selector_matches(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return True

    def peer_ok(peer: Doc) -> bool:
        assert "ipBlock" not in peer
        if "namespaceSelector" in peer:
            in_ns = _selector_matches(peer["namespaceSelector"], _ns(source_namespace))
        else:
            in_ns = source_namespace == namespace
        return in_ns and _selector_matches(peer.get("podSelector", {}), source_labels)

    def port_ok(p: Doc) -> bool:
        assert p.get("protocol", "TCP") == "TCP"
        return names.get(p["port"], p["port"]) == port

    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if "from" in rule and not any(peer_ok(peer) for peer in rule["from"]):
                continue
            if "ports" in rule and not any(port_ok(p) for p in rule["ports"]):
                continue
            return True
    return False


@pytest.mark.parametrize("namespace", ["payments", "fraud-scoring"])
def test_network_policy_admits_only_payments_prometheus_and_retraining(
    docs: list[Doc], deployment: Doc, watcher: Doc, cronjob: Doc, namespace: str
) -> None:
    """riskserve in the payments namespace (deploy/README.md) and in a namespace of
    its own: the retraining pods' rule must not depend on the payments rule."""
    policies = _all(docs, "NetworkPolicy")
    grpc_port, metrics_port = Settings().server.port, Settings().server.metrics_port
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    grafana = ("monitoring", {"app.kubernetes.io/name": "grafana"})
    payment_api = ("payments", {"app": "checkout"})
    shop = ("shop", {"app": "checkout"})
    retrain_job = (namespace, _job_pod(cronjob)["metadata"]["labels"])
    retrain_watch = (namespace, watcher["spec"]["template"]["metadata"]["labels"])
    neighbour = (namespace, {"app": "something-else"})
    watcher_metrics = _ports(_only_container(watcher["spec"]["template"]))["metrics"]

    def admitted(source: tuple[str, Mapping[str, str]], target: Doc, port: int) -> bool:
        return _admitted(
            policies,
            namespace=namespace,
            target=target,
            port=port,
            source_namespace=source[0],
            source_labels=source[1],
        )

    # The scoring port: the payment namespace and the retraining pods, nobody else.
    assert admitted(payment_api, deployment, grpc_port)
    assert admitted(retrain_job, deployment, grpc_port)
    assert admitted(retrain_watch, deployment, grpc_port)
    for source in (shop, prometheus, grafana):
        assert not admitted(source, deployment, grpc_port), source
    if namespace != "payments":
        assert not admitted(neighbour, deployment, grpc_port)

    # The metrics port: Prometheus and the watcher (it reads drift and recall there).
    assert admitted(prometheus, deployment, metrics_port)
    assert admitted(retrain_watch, deployment, metrics_port)
    for source in (payment_api, shop, grafana, retrain_job, neighbour):
        assert not admitted(source, deployment, metrics_port), source

    # The watcher's own metrics: Prometheus only. The Job's pods: nothing.
    assert admitted(prometheus, watcher, watcher_metrics)
    for source in (payment_api, shop, grafana, neighbour):
        assert not admitted(source, watcher, watcher_metrics), source
    job = {"spec": {"template": _job_pod(cronjob)}}
    for source in (prometheus, payment_api, neighbour, retrain_watch):
        assert not admitted(source, job, 8080), source


# -- docs/operations.md: the runbook and the commands it shows ----------------------------

OPERATIONS = ROOT / "docs" / "operations.md"
RULES = DEPLOY / "prometheus" / "rules.yml"
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(text: str, *languages: str) -> list[str]:
    return [m[2] for m in FENCE.finditer(text) if m[1] in languages]


def _headings(text: str) -> list[tuple[int, str]]:
    prose = FENCE.sub("", text)
    return [(len(m[1]), m[2].strip()) for m in re.finditer(r"^(#{1,6}) (.+)$", prose, re.MULTILINE)]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _alerts() -> list[Doc]:
    rules = yaml.safe_load(RULES.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_its_runbook_entry() -> None:
    text = OPERATIONS.read_text()
    headings = _headings(text)
    start = headings.index((2, "Runbook"))
    end = next((i for i, (level, _) in enumerate(headings) if i > start and level <= 2), None)
    entries = [h for level, h in headings[start + 1 : end] if level == 3]
    alerts = [a["alert"] for a in _alerts()]
    assert alerts, "no alert in rules.yml"
    assert sorted(entries) == sorted(alerts), "one runbook section per alert, no other"
    anchors = {_slug(h) for _, h in headings}
    for a in _alerts():
        url = a["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == OPERATIONS.resolve(), url
        assert anchor == _slug(a["alert"]) and anchor in anchors, url


def test_links_within_the_guide_resolve() -> None:
    text = OPERATIONS.read_text()
    anchors = {_slug(h) for _, h in _headings(text)}
    links = re.findall(r"\]\(#([^)]+)\)", FENCE.sub("", text))
    assert links
    assert set(links) <= anchors, set(links) - anchors
    for target in re.findall(r"\]\((\.\./[^)#]+|[a-z-]+\.md)\)", FENCE.sub("", text)):
        assert (OPERATIONS.parent / target).exists(), target


def _riskserve_commands(text: str) -> list[list[str]]:
    """Every `riskserve ...` command line in the shell blocks: the words after it, up to a
    shell operator. A command position is the start of a line, after an operator, after
    VAR=value words, or after `--` / `exec` (kubectl exec ... -- riskserve ...)."""
    out = []
    for block in _blocks(text, "bash", "sh", "shell"):
        for line in block.replace("\\\n", " ").splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            words = list(lex)

            def operator(w: str) -> bool:
                return bool(w) and set(w) <= set("();<>|&")

            at_command = True
            for i, w in enumerate(words):
                if operator(w):
                    at_command = True
                elif at_command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w):
                    continue
                elif at_command and (w == "riskserve" or w.endswith("/bin/riskserve")):
                    end = next(
                        (j for j in range(i + 1, len(words)) if operator(words[j])), len(words)
                    )
                    out.append(words[i + 1 : end])
                    at_command = False
                else:
                    at_command = w in ("--", "exec")
    return out


def test_every_riskserve_command_in_the_guide_parses() -> None:
    commands = _riskserve_commands(OPERATIONS.read_text())
    subcommands = {c[0] for c in commands if c}
    # The extraction finds what the guide shows (a broken extractor finds nothing).
    assert {"admin", "drift", "drift-report", "performance", "labels", "retrain"} <= subcommands
    assert {"dashboard"} <= subcommands
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"docs/operations.md: `riskserve {shlex.join(argv)}` does not parse ({e})")


def test_the_command_extraction_sees_a_wrong_command() -> None:
    text = (
        "```bash\nkubectl get hpa riskserve   # a name, not a command\n"
        "X=1 riskserve admin --server h:1 rollback fraud && riskserve drift --metrics u\n```\n"
    )
    assert _riskserve_commands(text) == [
        ["admin", "--server", "h:1", "rollback", "fraud"],
        ["drift", "--metrics", "u"],
    ]
    (bad,) = _riskserve_commands("```bash\nriskserve admin rollbak fraud\n```\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(bad)


@pytest.mark.tools
def test_every_promql_query_in_the_guide_is_valid(tmp_path: Path) -> None:
    """promtool checks each query of the guide's promql blocks as a recording rule (a
    continuation line starts with whitespace)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make tools`", pytrace=False)
    queries: list[str] = []
    for block in _blocks(OPERATIONS.read_text(), "promql"):
        for line in block.splitlines():
            if line.strip() and line[:1].isspace() and queries:
                queries[-1] += "\n" + line
            elif line.strip():
                queries.append(line)
    assert len(queries) >= 10
    rules = {
        "groups": [
            {
                "name": "docs",
                "rules": [{"record": f"docs:query:{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "docs_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout
