"""Signed model versions (optional): an ed25519 signature over a version's
manifest.json, which holds the sha256 of every file of the version, so one
signature covers them all.

    models/<name>/<version>/manifest.sig   {"format": "riskserve.signature/v1",
                                            "key_id": "<16 hex>", "signature": "<base64>"}

With trusted keys configured (RISKSERVE_TRUSTED_KEYS_FILE: PEM public keys, one
after the other), a version is refused unless its manifest.sig verifies against
one of them; without, signatures are not looked at. `riskserve keygen` makes a
key pair, `riskserve sign` signs a version, `riskserve train --signing-key` signs
what it registers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from riskserve.errors import IntegrityError

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_FORMAT = "riskserve.signature/v1"
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate() -> tuple[bytes, bytes]:
    """A new key pair as (private key PEM, public key PEM)."""
    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an ed25519 private key")
    return key


def sign_version(version_dir: Path, private: Ed25519PrivateKey) -> Path:
    """Writes version_dir/manifest.sig over the manifest as it is on disk."""
    manifest = (version_dir / "manifest.json").read_bytes()
    body = {
        "format": SIGNATURE_FORMAT,
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(manifest)).decode(),
    }
    path = version_dir / SIGNATURE_FILE
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class TrustedKeys:
    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """Every PEM public key in `path`; raises ValueError naming the problem."""
        try:
            text = path.read_bytes()
        except OSError as e:
            raise ValueError(f"trusted keys file {path}: unreadable: {e.strerror or e}") from None
        keys: dict[str, Ed25519PublicKey] = {}
        for i, block in enumerate(_PEM_BLOCK.findall(text)):
            try:
                key = serialization.load_pem_public_key(block)
            except ValueError as e:
                raise ValueError(f"trusted keys file {path}: key #{i + 1}: {e}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"trusted keys file {path}: key #{i + 1} is not ed25519")
            keys[key_id(key)] = key
        if not keys:
            raise ValueError(f"trusted keys file {path}: holds no PEM public key")
        return cls(keys)

    def check(self, version_dir: Path, manifest: bytes) -> str:
        """The id of the trusted key that signed `manifest` (the bytes of
        version_dir/manifest.json); raises IntegrityError otherwise."""
        sig_path = version_dir / SIGNATURE_FILE
        try:
            data = json.loads(sig_path.read_text())
        except FileNotFoundError:
            raise IntegrityError(
                f"{sig_path}: missing: only signed versions are accepted"
            ) from None
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{sig_path}: unreadable: {e}") from None
        if not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT:
            raise IntegrityError(f"{sig_path}: must hold a {SIGNATURE_FORMAT!r} object")
        kid, sig = data.get("key_id"), data.get("signature")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise IntegrityError(f"{sig_path}: signed by key {kid!r}, which is not trusted")
        try:
            key.verify(base64.b64decode(str(sig), validate=True), manifest)
        except (InvalidSignature, ValueError):
            raise IntegrityError(
                f"{sig_path}: the signature does not match manifest.json (key {kid})"
            ) from None
        return str(kid)
