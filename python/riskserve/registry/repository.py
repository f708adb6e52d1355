"""models/<name>/<version>/ directories: written once (atomically), verified at
every load against the sha256 of every file in manifest.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from riskserve.errors import IntegrityError, InvalidInput, NotFound
from riskserve.files import fsync_dir, write_synced
from riskserve.registry.signing import TrustedKeys

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "riskserve.manifest/v1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"model name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What produced a model version, and the hash of each of its files."""

    name: str
    version: int
    model_format: str  # "lightgbm" | "onnx"
    files: dict[str, str]
    raw: dict[str, Any]
    #: The operating threshold chosen at training (`operating_point.threshold`);
    #: None for versions trained before thresholds were recorded.
    threshold: float | None = None

    @property
    def model_sha256(self) -> str:
        key = "model.onnx" if self.model_format == "onnx" else "model.txt"
        return self.files[key]

    @classmethod
    def parse(cls, data: Any, where: Path) -> Manifest:
        if not isinstance(data, dict):
            raise IntegrityError(f"{where}: must hold a JSON object, got {type(data).__name__}")

        def bad(field: str, why: str) -> IntegrityError:
            return IntegrityError(f"{where}: field {field!r} {why}")

        if data.get("format") != MANIFEST_FORMAT:
            raise bad("format", f"must be {MANIFEST_FORMAT!r}, got {data.get('format')!r}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise bad("name", "must be a non-empty string")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad("version", f"must be an integer >= 1, got {version!r}")
        fmt = data.get("model_format")
        if fmt not in ("lightgbm", "onnx"):
            raise bad("model_format", f"must be 'lightgbm' or 'onnx', got {fmt!r}")
        files = data.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise bad("files", "must map file names to sha256 strings")
        threshold = None
        if "operating_point" in data:
            point = data["operating_point"]
            if not isinstance(point, dict):
                raise bad("operating_point", f"must be an object, got {type(point).__name__}")
            t = point.get("threshold")
            # NaN and ±inf (which json.loads accepts) fail the range check too.
            if not isinstance(t, int | float) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
                raise bad(
                    "operating_point.threshold", f"must be a finite number in [0, 1], got {t!r}"
                )
            threshold = float(t)
        return cls(
            name=name,
            version=version,
            model_format=fmt,
            files=dict(files),
            raw=data,
            threshold=threshold,
        )


@dataclasses.dataclass(frozen=True)
class VersionRef:
    name: str
    version: int
    path: Path


class ModelRepository:
    """A folder of models: `root/<name>/<version>/`."""

    def __init__(self, root: Path, trusted: TrustedKeys | None = None) -> None:
        self.root = root
        #: When set, only versions whose manifest.sig a trusted key made are accepted.
        self.trusted = trusted

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def versions(self, name: str) -> list[VersionRef]:
        d = self.root / check_model_name(name)
        if not d.is_dir():
            return []
        # Plain ASCII digits without leading zeros: "007" or "²" is not a version.
        refs = [
            VersionRef(name, int(p.name), p)
            for p in d.iterdir()
            if p.name.isascii() and p.name.isdigit() and p.name == str(int(p.name))
        ]
        return sorted(refs, key=lambda r: r.version)

    def version(self, name: str, version: int) -> VersionRef:
        path = self.root / check_model_name(name) / str(version)
        if not path.is_dir():
            raise NotFound(f"model {name!r} has no version {version} in {self.root}")
        return VersionRef(name, version, path)

    def _manifest(self, ref: VersionRef) -> Manifest:
        mpath = ref.path / MANIFEST
        try:
            raw = mpath.read_bytes()
            data = json.loads(raw)
        except FileNotFoundError:
            raise IntegrityError(f"{mpath}: missing") from None
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{mpath}: unreadable: {e}") from None
        if self.trusted is not None:
            self.trusted.check(ref.path, raw)  # before anything in the manifest is believed
        manifest = Manifest.parse(data, mpath)
        if manifest.name != ref.name or manifest.version != ref.version:
            raise IntegrityError(
                f"{mpath}: names {manifest.name}/{manifest.version}, "
                f"but lives at {ref.name}/{ref.version}"
            )
        required = {
            "features.json",
            "model.onnx" if manifest.model_format == "onnx" else "model.txt",
        }
        for need in sorted(required - manifest.files.keys()):
            raise IntegrityError(f"{mpath}: does not list required file {need}")
        for fname in manifest.files:
            if "/" in fname or fname.startswith("."):
                raise IntegrityError(f"{mpath}: bad file name {fname!r}")
        return manifest

    def verify(self, ref: VersionRef) -> Manifest:
        """Checks manifest.json and the sha256 of every file it lists (streamed)."""
        manifest = self._manifest(ref)
        for fname, expected in sorted(manifest.files.items()):
            fpath = ref.path / fname
            if not fpath.is_file():
                raise IntegrityError(f"{fpath}: listed in the manifest but missing")
            _check_hash(fpath, sha256_file(fpath), expected)
        return manifest

    def read_verified(self, ref: VersionRef) -> tuple[Manifest, dict[str, bytes]]:
        """The manifest and the contents of every file it lists, each read once and
        hashed in memory: what is loaded is exactly what was verified."""
        manifest = self._manifest(ref)
        contents: dict[str, bytes] = {}
        for fname, expected in sorted(manifest.files.items()):
            fpath = ref.path / fname
            try:
                body = fpath.read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"{fpath}: listed in the manifest but missing") from None
            except OSError as e:
                raise IntegrityError(f"{fpath}: unreadable: {e}") from None
            _check_hash(fpath, hashlib.sha256(body).hexdigest(), expected)
            contents[fname] = body
        return manifest, contents

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1].version + 1 if versions else 1

    def write_version(
        self, name: str, files: Mapping[str, bytes], manifest: Mapping[str, Any]
    ) -> VersionRef:
        """Writes a new version atomically (temp dir, fsync, rename) and returns it.

        `manifest` gets name, version, format and the sha256 of every file added."""
        check_model_name(name)
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=model_dir))
        try:
            hashes: dict[str, str] = {}
            for fname, content in sorted(files.items()):
                write_synced(tmp / fname, content)
                hashes[fname] = hashlib.sha256(content).hexdigest()
            while True:
                version = self.next_version(name)
                body = {
                    **manifest,
                    # Identity and hashes are the registry's, never the caller's.
                    "format": MANIFEST_FORMAT,
                    "name": name,
                    "version": version,
                    "files": hashes,
                }
                text = json.dumps(body, indent=2, sort_keys=True) + "\n"
                write_synced(tmp / MANIFEST, text.encode())
                try:
                    os.rename(tmp, model_dir / str(version))
                except OSError:
                    if (model_dir / str(version)).exists():
                        continue  # another writer took this number; take the next
                    raise
                fsync_dir(model_dir)
                return VersionRef(name, version, model_dir / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _check_hash(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise IntegrityError(f"{path}: sha256 {actual} does not match the manifest's {expected}")
