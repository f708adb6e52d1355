"""The deployment files in deploy/: every Kubernetes and KServe manifest parses,
and the values that must agree with riskserve itself do (ports and probe services
from riskserve's own settings and gRPC service names, drain time against the
termination grace period, environment variables and CLI flags that riskserve
actually reads), as do the references between manifests (Service and PDB
selectors, HPA target, volumes, Secret, PVC, runtime name). The Dockerfile is
checked as text; no image is built (no Docker engine on the test machines)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from riskserve.cli import build_parser, settings_from_args
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


@pytest.fixture(scope="module")
def deployment(docs: list[Doc]) -> Doc:
    return _one(docs, "Deployment", "apps/v1")


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
