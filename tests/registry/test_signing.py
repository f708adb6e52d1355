"""Signed versions: with trusted keys configured, only a version whose manifest.sig
verifies against one of them is accepted, and the reason for a refusal is named."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from riskserve.errors import IntegrityError
from riskserve.registry import ModelRepository, VersionRef
from riskserve.registry.signing import (
    SIGNATURE_FILE,
    TrustedKeys,
    generate,
    key_id,
    load_private_key,
    sign_version,
)

FILES = {"model.txt": b"tree\nversion=v4\n", "features.json": b'{"format": "x"}'}
META = {"model_format": "lightgbm", "created_at": "2026-01-01T00:00:00+00:00"}


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    private, public = generate()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.key").write_bytes(private)
    (folder / f"{name}.pub").write_bytes(public)
    return folder / f"{name}.key", folder / f"{name}.pub"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ModelRepository, VersionRef, Path, Path]:
    key, pub = keypair(tmp_path / "keys", "release")
    ref = ModelRepository(tmp_path / "models").write_version("fraud", FILES, META)
    trusted = TrustedKeys.load(pub)
    return ModelRepository(tmp_path / "models", trusted), ref, key, pub


def refused(repo: ModelRepository, ref: VersionRef) -> str:
    with pytest.raises(IntegrityError) as info:
        repo.read_verified(ref)
    with pytest.raises(IntegrityError):
        repo.verify(ref)
    return info.value.message


def test_a_signed_version_is_accepted(
    setup: tuple[ModelRepository, VersionRef, Path, Path],
) -> None:
    repo, ref, key, _ = setup
    sign_version(ref.path, load_private_key(key))
    manifest, contents = repo.read_verified(ref)
    assert manifest.version == 1 and contents["model.txt"] == FILES["model.txt"]
    assert repo.verify(ref).version == 1


def test_an_unsigned_version_is_refused(
    setup: tuple[ModelRepository, VersionRef, Path, Path],
) -> None:
    repo, ref, _, _ = setup
    assert "manifest.sig: missing: only signed versions are accepted" in refused(repo, ref)
    # Without trusted keys nothing is asked for.
    assert ModelRepository(repo.root).read_verified(ref)[0].version == 1


def test_a_version_signed_by_another_key_is_refused(
    tmp_path: Path, setup: tuple[ModelRepository, VersionRef, Path, Path]
) -> None:
    repo, ref, _, _ = setup
    other, _ = keypair(tmp_path / "keys", "other")
    sign_version(ref.path, load_private_key(other))
    kid = key_id(load_private_key(other).public_key())
    assert f"signed by key {kid!r}, which is not trusted" in refused(repo, ref)


def test_a_manifest_changed_after_signing_is_refused(
    setup: tuple[ModelRepository, VersionRef, Path, Path],
) -> None:
    repo, ref, key, _ = setup
    sign_version(ref.path, load_private_key(key))
    m = ref.path / "manifest.json"
    data = json.loads(m.read_text())
    data["metrics"] = {"auc": 0.99}  # hashes still right: only the signature can tell
    m.write_text(json.dumps(data))
    assert "the signature does not match manifest.json" in refused(repo, ref)


def test_a_model_file_changed_after_signing_is_refused(
    setup: tuple[ModelRepository, VersionRef, Path, Path],
) -> None:
    repo, ref, key, _ = setup
    sign_version(ref.path, load_private_key(key))
    (ref.path / "model.txt").write_bytes(b"tree\nversion=v4\nnum_leaves=7\n")
    assert "does not match the manifest" in refused(repo, ref)


@pytest.mark.parametrize(
    "body,why",
    [
        ("not json", "unreadable"),
        ('{"format": "other"}', "must hold a 'riskserve.signature/v1' object"),
        ("[]", "must hold a"),
        ('{"format": "riskserve.signature/v1", "key_id": 7, "signature": "x"}', "not trusted"),
    ],
)
def test_a_garbage_signature_file_is_refused(
    setup: tuple[ModelRepository, VersionRef, Path, Path], body: str, why: str
) -> None:
    repo, ref, _, _ = setup
    (ref.path / SIGNATURE_FILE).write_text(body)
    assert why in refused(repo, ref)


def test_a_signature_that_is_not_base64_or_too_short_is_refused(
    setup: tuple[ModelRepository, VersionRef, Path, Path],
) -> None:
    repo, ref, key, _ = setup
    path = sign_version(ref.path, load_private_key(key))
    data = json.loads(path.read_text())
    for sig in ("%%%", base64.b64encode(b"short").decode()):
        data["signature"] = sig
        path.write_text(json.dumps(data))
        assert "the signature does not match" in refused(repo, ref)


def test_trusted_keys_file_errors_name_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="holds no PEM public key"):
        TrustedKeys.load(empty)
    with pytest.raises(ValueError, match="unreadable"):
        TrustedKeys.load(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="key #1"):
        TrustedKeys.load(bad)
    _, a = keypair(tmp_path, "a")
    _, b = keypair(tmp_path, "b")
    both = tmp_path / "both.pem"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    assert len(TrustedKeys.load(both).keys) == 2


@pytest.mark.e2e  # CLI subprocesses
def test_cli_keygen_sign_and_train_sign(tmp_path: Path, train_data: Path) -> None:
    def cli(*args: str) -> dict[str, str]:
        p = subprocess.run(
            [sys.executable, "-m", "riskserve.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        out: dict[str, str] = json.loads(p.stdout.splitlines()[-1])
        return out

    made = cli("keygen", "--out", str(tmp_path / "release"))
    assert (Path(made["private_key"]).stat().st_mode & 0o777) == 0o600
    models = tmp_path / "models"
    ref = ModelRepository(models).write_version("fraud", FILES, META)
    signed = cli("sign", "--models", str(models), "--model", "fraud", "--key", made["private_key"])
    assert signed["key_id"] == made["key_id"]
    trusted = ModelRepository(models, TrustedKeys.load(Path(made["public_key"])))
    assert trusted.verify(ref).version == 1
    spec = Path(__file__).resolve().parents[2] / "python/riskserve/training/specs/fraud.json"
    out = cli(
        "train", "--data", str(train_data), "--target", "is_fraud", "--model", "fraud",
        "--models", str(models), "--spec", str(spec), "--rounds", "5",
        "--signing-key", made["private_key"],
    )  # fmt: skip
    assert out["signed_by"] == made["key_id"] and out["version"] == 2
    assert trusted.verify(trusted.version("fraud", 2)).version == 2
