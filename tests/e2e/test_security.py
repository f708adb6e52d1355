"""TLS, mTLS, principals with roles, and signed model versions, against a real
server with real clients: certificates made by tests/certs.py, tokens and
certificate names in a principals file, a reloaded certificate and a revoked token
taking effect without a restart."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import CA
from conftest import ServerHandle, run_cli
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.inference import grpc_service_pb2_grpc as igrpc
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.registry.signing import generate, load_private_key, sign_version
from riskserve.transport.principals import FORMAT, token_sha256

pytestmark = pytest.mark.timeout(180)

OPS_TOKEN = "ops-token-0123456789"
READER_TOKEN = "reader-token-0123456789"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CA()
    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.pem").write_bytes(ca.pem())
    server = ca.write(d, "server", server=True)
    ops = ca.write(d, "ops", server=False)
    gateway = ca.write(d, "payments-gateway", server=False)
    stranger = CA("another CA").write(d, "stranger", server=False)
    return {"ca": ca, "dir": d, "server": server, "ops": ops, "gateway": gateway,
            "stranger": stranger}  # fmt: skip


def principals_file(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"format": FORMAT, "principals": list(entries)}))
    return path


def tls_channel(port: int, pki: dict[str, Any], client: str | None) -> grpc.Channel:
    cert = key = None
    if client is not None:
        c, k = pki[client]
        cert, key = c.read_bytes(), k.read_bytes()
    creds = grpc.ssl_channel_credentials(pki["ca"].pem(), key, cert)
    return grpc.secure_channel(f"localhost:{port}", creds)


def server_serial(port: int, pki: dict[str, Any]) -> int:
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    c, k = pki["ops"]
    ctx.load_cert_chain(str(c), str(k))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as t,
    ):
        der = t.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def test_mtls_roles_and_certificate_reload(
    models_dir: Path, start_server: Callable[..., ServerHandle], pki: dict[str, Any], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    cert, key = pki["server"]
    principals = principals_file(
        tmp_path / "principals.json",
        {"name": "ops", "roles": ["admin"], "certificate": {"common_name": "ops"}},
        {"name": "gateway", "roles": ["reader"],
         "certificate": {"common_name": "payments-gateway"}},
    )  # fmt: skip
    env = {
        "RISKSERVE_TLS_CERT_FILE": str(cert),
        "RISKSERVE_TLS_KEY_FILE": str(key),
        "RISKSERVE_TLS_CLIENT_CA_FILE": str(pki["dir"] / "ca.pem"),
        "RISKSERVE_METRICS_TLS": "true",
        "RISKSERVE_PRINCIPALS_FILE": str(principals),
    }
    srv = start_server(models, env=env)
    port = srv.port

    # Plaintext and a certificate from another CA are refused at the handshake.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        code, _ = code_of(lambda: igrpc.GRPCInferenceServiceStub(ch).ServerLive(
            ipb.ServerLiveRequest(), timeout=5))  # fmt: skip
        assert code == grpc.StatusCode.UNAVAILABLE
    for client in (None, "stranger"):
        with tls_channel(port, pki, client) as ch:
            stub = igrpc.GRPCInferenceServiceStub(ch)
            code, _ = code_of(lambda s=stub: s.ServerLive(ipb.ServerLiveRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, client

    # The gateway reads; ops changes, and the history names the certificate's principal.
    with tls_channel(port, pki, "gateway") as ch:
        assert igrpc.GRPCInferenceServiceStub(ch).ServerLive(
            ipb.ServerLiveRequest(), timeout=10).live  # fmt: skip
        admin = agrpc.ModelAdminStub(ch)
        d = admin.GetDeployment(apb.GetDeploymentRequest(model="fraud"), timeout=10)
        assert d.revision >= 1
        code, details = code_of(lambda: admin.Rollback(
            apb.RollbackRequest(model="fraud"), timeout=10))  # fmt: skip
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "principal 'gateway' has roles ['reader']" in details and "'admin'" in details
        # A claimed actor is recorded after the principal, never instead of it.
    with tls_channel(port, pki, "ops") as ch:
        admin = agrpc.ModelAdminStub(ch)
        split = apb.SetTrafficRequest(model="fraud", variants=[apb.Variant(version=1, weight=100)])
        d = admin.SetTraffic(split, metadata=(("x-actor", "canary-guard"),), timeout=10)
        assert d.actor == "ops (as canary-guard)"

    # /metrics over HTTPS, with a client certificate.
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    c, k = pki["ops"]
    ctx.load_cert_chain(str(c), str(k))
    url = f"https://localhost:{srv.metrics_port}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:
        assert b"riskserve_requests_total" in resp.read()
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read()

    # A rotated certificate reaches new connections without a restart.
    before = server_serial(port, pki)
    pki["ca"].write(pki["dir"], "server", server=True)  # same paths, new certificate
    deadline = time.monotonic() + 10
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.3)
        after = server_serial(port, pki)
    assert after != before
    with tls_channel(port, pki, "gateway") as ch:
        assert igrpc.GRPCInferenceServiceStub(ch).ServerLive(
            ipb.ServerLiveRequest(), timeout=10).live  # fmt: skip
    assert srv.events("TLS certificate reloaded")


def test_token_principals_roles_and_revocation(
    models_dir: Path, start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    path = principals_file(
        tmp_path / "principals.json",
        {"name": "ops-oncall", "roles": ["admin"], "token_sha256": token_sha256(OPS_TOKEN)},
        {"name": "dashboards", "roles": ["reader"], "token_sha256": token_sha256(READER_TOKEN)},
    )
    srv = start_server(
        models, env={"RISKSERVE_PRINCIPALS_FILE": str(path), "RISKSERVE_REFLECTION": "false"}
    )
    admin = agrpc.ModelAdminStub(srv.channel)
    refl = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
    ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    code, _ = code_of(lambda: list(refl.ServerReflectionInfo(ask, timeout=10)))
    assert code == grpc.StatusCode.UNIMPLEMENTED  # reflection turned off

    def bearer(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    get = apb.GetDeploymentRequest(model="fraud")
    split = apb.SetTrafficRequest(model="fraud", variants=[apb.Variant(version=1, weight=100)])
    assert admin.GetDeployment(get, metadata=bearer(READER_TOKEN), timeout=10).revision >= 1
    code, details = code_of(lambda: admin.SetTraffic(split, metadata=bearer(READER_TOKEN)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'dashboards'" in details
    code, _ = code_of(lambda: admin.GetDeployment(get, metadata=bearer("wrong"), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: admin.GetDeployment(get, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    d = admin.SetTraffic(split, metadata=bearer(OPS_TOKEN), timeout=10)
    assert d.actor == "ops-oncall"
    history = admin.History(apb.HistoryRequest(model="fraud"), metadata=bearer(OPS_TOKEN))
    assert history.revisions[0].actor == "ops-oncall"

    # Revoke the reader's token: refused within a few seconds, no restart.
    principals_file(
        path,
        {"name": "ops-oncall", "roles": ["admin"], "token_sha256": token_sha256(OPS_TOKEN)},
    )
    deadline = time.monotonic() + 10
    code = grpc.StatusCode.OK
    while code == grpc.StatusCode.OK and time.monotonic() < deadline:
        time.sleep(0.3)
        code, _ = code_of(lambda: admin.GetDeployment(get, metadata=bearer(READER_TOKEN)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A broken file is refused with a reason; the last good one stays in force.
    path.write_text("{not json")
    time.sleep(1.5)
    assert admin.GetDeployment(get, metadata=bearer(OPS_TOKEN), timeout=10).revision >= 1
    assert any("principals file refused" in e.get("event", "") for e in srv.events())


def test_only_signed_versions_are_served(
    models_dir: Path, start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models, ignore=shutil.ignore_patterns("fraud_onnx"))
    private, public = generate()
    (tmp_path / "release.key").write_bytes(private)
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(public)
    sign_version(models / "fraud" / "1", load_private_key(tmp_path / "release.key"))
    shutil.copytree(models / "fraud" / "1", models / "fraud" / "2")  # v2: a copy, unsigned
    m = json.loads((models / "fraud" / "2" / "manifest.json").read_text())
    m["version"] = 2
    (models / "fraud" / "2" / "manifest.json").write_text(json.dumps(m))
    (models / "fraud" / "2" / "manifest.sig").unlink()

    token = "signed-test-token"
    srv = start_server(
        models, env={"RISKSERVE_TRUSTED_KEYS_FILE": str(trusted), "RISKSERVE_ADMIN_TOKEN": token}
    )
    md = igrpc.GRPCInferenceServiceStub(srv.channel).ModelMetadata(
        ipb.ModelMetadataRequest(name="fraud"), timeout=10
    )
    assert list(md.versions) == ["1"]  # the newest, v2, is unsigned: not served
    listing = agrpc.ModelAdminStub(srv.channel).ListModels(
        apb.ListModelsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
    )
    states = {v.version: (v.state, v.reason) for m in listing.models for v in m.versions}
    assert states[1][0] == "LOADED"
    assert states[2][0] == "REFUSED" and "only signed versions are accepted" in states[2][1]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--tls-cert-file", "{bad}", "--tls-key-file", "{bad}"), "not a matching certificate"),
        (("--principals-file", "{bad}"), "unreadable"),
        (("--trusted-keys-file", "{bad}"), "holds no PEM public key"),
    ],
)
def test_a_bad_security_file_stops_the_start_with_its_reason(
    models_dir: Path, tmp_path: Path, flags: tuple[str, ...], needle: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage\n")
    args = [f.format(bad=bad) for f in flags]
    p = run_cli("serve", "--models", str(models_dir), "--port", "0", *args, timeout=60)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("riskserve serve: ") and needle in last and str(bad) in last, last
