"""ModelRepository: atomic, numbered, verified model versions on disk."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from riskserve.errors import Code, IntegrityError, InvalidInput, NotFound
from riskserve.registry import Manifest, ModelRepository, VersionRef, sha256_file

pytestmark = pytest.mark.timeout(60)

MODEL_TXT = b"tree\nversion=v4\nnum_class=1\n"
SPEC = b'{"format": "riskserve.features/v1"}'


def _files(tag: str = "") -> dict[str, bytes]:
    return {"model.txt": MODEL_TXT + tag.encode(), "features.json": SPEC}


def _meta(**extra: Any) -> dict[str, Any]:
    return {"model_format": "lightgbm", "created_at": "2024-01-01T00:00:00+00:00", **extra}


def _incoming(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".incoming-")]


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


def _rewrite_manifest(ref: VersionRef, **changes: Any) -> None:
    path = ref.path / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def test_write_version_layout_and_manifest(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta(metrics={"auc": 0.9}))
    assert ref == VersionRef("fraud", 1, repo.root / "fraud" / "1")
    assert sorted(p.name for p in ref.path.iterdir()) == [
        "features.json",
        "manifest.json",
        "model.txt",
    ]
    assert (ref.path / "model.txt").read_bytes() == MODEL_TXT
    assert (ref.path / "features.json").read_bytes() == SPEC
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["format"] == "riskserve.manifest/v1"
    assert manifest["name"] == "fraud"
    assert manifest["version"] == 1
    assert manifest["model_format"] == "lightgbm"
    assert manifest["metrics"] == {"auc": 0.9}
    assert manifest["files"] == {"model.txt": _sha(MODEL_TXT), "features.json": _sha(SPEC)}
    m = repo.verify(ref)
    assert isinstance(m, Manifest)
    assert (m.name, m.version, m.model_format) == ("fraud", 1, "lightgbm")
    assert m.model_sha256 == _sha(MODEL_TXT) == sha256_file(ref.path / "model.txt")
    assert not _incoming(repo.root)


def test_write_version_cannot_override_identity_or_hashes(repo: ModelRepository) -> None:
    ref = repo.write_version(
        "fraud", _files(), _meta(name="other", version=99, files={"model.txt": "0" * 64})
    )
    m = repo.verify(ref)
    assert (m.name, m.version) == ("fraud", 1)
    assert m.files["model.txt"] == _sha(MODEL_TXT)


def test_versions_increase_and_leave_no_temp_dirs(repo: ModelRepository) -> None:
    refs = [repo.write_version("fraud", _files(str(i)), _meta()) for i in range(4)]
    assert [r.version for r in refs] == [1, 2, 3, 4]
    assert [r.version for r in repo.versions("fraud")] == [1, 2, 3, 4]
    other = repo.write_version("other", _files(), _meta())
    assert other.version == 1
    assert repo.models() == ["fraud", "other"]
    assert not _incoming(repo.root)
    for r in refs:
        assert repo.verify(r).version == r.version


def test_failed_write_leaves_nothing_behind(repo: ModelRepository) -> None:
    repo.write_version("fraud", _files(), _meta())
    with pytest.raises(OSError):
        # a file name with a directory part cannot be written into the temp dir
        repo.write_version("fraud", {"sub/model.txt": b"x", **_files()}, _meta())
    assert not _incoming(repo.root)
    assert [r.version for r in repo.versions("fraud")] == [1]
    assert repo.next_version("fraud") == 2


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-lead", ".hidden", "x" * 129, "sp ace"])
def test_write_version_refuses_bad_names(repo: ModelRepository, name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        repo.write_version(name, _files(), _meta())
    assert info.value.code is Code.INVALID_ARGUMENT
    assert not repo.root.exists() or not any(repo.root.rglob("*.txt"))


def test_concurrent_writers_get_distinct_versions(repo: ModelRepository) -> None:
    refs: list[VersionRef] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def writer(t: int) -> None:
        try:
            barrier.wait(10)
            for j in range(3):
                ref = repo.write_version("fraud", _files(f"{t}-{j}"), _meta(writer=t))
                with lock:
                    refs.append(ref)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors, errors
    assert sorted(r.version for r in refs) == list(range(1, 25))
    for r in refs:
        m = repo.verify(r)
        assert m.version == r.version
    # every write landed in its own directory: 24 distinct model.txt contents
    assert len({(r.path / "model.txt").read_bytes() for r in refs}) == 24
    assert not _incoming(repo.root)


# --------------------------------------------------------------------------------------
# next_version, listing
# --------------------------------------------------------------------------------------


def test_next_version(repo: ModelRepository) -> None:
    assert repo.next_version("fraud") == 1
    repo.write_version("fraud", _files(), _meta())
    assert repo.next_version("fraud") == 2
    (repo.root / "fraud" / "7").mkdir()
    (repo.root / "fraud" / "notes").mkdir()
    (repo.root / "fraud" / ".incoming-abc").mkdir()
    (repo.root / "fraud" / "deployment.json").write_text("{}")
    assert repo.next_version("fraud") == 8
    assert [r.version for r in repo.versions("fraud")] == [1, 7]
    assert repo.write_version("fraud", _files(), _meta()).version == 8


def test_version_lookup_and_listing(repo: ModelRepository) -> None:
    assert repo.models() == []
    assert repo.versions("fraud") == []
    repo.write_version("fraud", _files(), _meta())
    (repo.root / ".trash").mkdir()
    (repo.root / "README").write_text("not a model")
    assert repo.models() == ["fraud"]
    assert repo.version("fraud", 1).path == repo.root / "fraud" / "1"
    with pytest.raises(NotFound):
        repo.version("fraud", 2)
    with pytest.raises(NotFound):
        repo.version("nope", 1)


# --------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------


def _integrity(repo: ModelRepository, ref: VersionRef) -> str:
    with pytest.raises(IntegrityError) as info:
        repo.verify(ref)
    assert info.value.code is Code.FAILED_PRECONDITION
    return info.value.message


def test_verify_catches_a_missing_file(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    (ref.path / "model.txt").unlink()
    msg = _integrity(repo, ref)
    assert str(ref.path / "model.txt") in msg
    assert "missing" in msg


def test_verify_catches_a_hash_mismatch(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    path = ref.path / "features.json"
    path.write_bytes(path.read_bytes().replace(b"v1", b"v2"))
    msg = _integrity(repo, ref)
    assert str(path) in msg
    assert sha256_file(path) in msg and _sha(SPEC) in msg


def test_verify_catches_a_one_byte_change(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    path = ref.path / "model.txt"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    assert str(path) in _integrity(repo, ref)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"name": "other"}, "other"),
        ({"version": 2}, "2"),
    ],
)
def test_verify_catches_a_manifest_naming_another_version(
    repo: ModelRepository, changes: dict[str, Any], needle: str
) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    _rewrite_manifest(ref, **changes)
    msg = _integrity(repo, ref)
    assert str(ref.path / "manifest.json") in msg
    assert needle in msg


def test_verify_catches_a_manifest_copied_from_another_version(repo: ModelRepository) -> None:
    v1 = repo.write_version("fraud", _files("a"), _meta())
    v2 = repo.write_version("fraud", _files("b"), _meta())
    (v2.path / "manifest.json").write_bytes((v1.path / "manifest.json").read_bytes())
    msg = _integrity(repo, v2)
    assert "fraud/1" in msg and "fraud/2" in msg


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "unreadable"),
        (b"", "unreadable"),
        (b"\xff\xfe\x00", "unreadable"),
        (b"[]", "manifest"),
        (b'"a string"', "manifest"),
        (b"null", "manifest"),
    ],
)
def test_verify_catches_an_unreadable_manifest(
    repo: ModelRepository, content: bytes, needle: str
) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    (ref.path / "manifest.json").write_bytes(content)
    msg = _integrity(repo, ref)
    assert str(ref.path / "manifest.json") in msg
    assert needle in msg


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"format": "riskserve.manifest/v0"}, "format"),
        ({"format": None}, "format"),
        ({"model_format": "xgboost"}, "model_format"),
        ({"files": None}, "files"),
        ({"files": ["model.txt"]}, "files"),
        ({"version": "one"}, "version"),
        ({"files": {"features.json": _sha(SPEC)}}, "model.txt"),
        ({"model_format": "onnx"}, "model.onnx"),
        ({"files": {"model.txt": _sha(MODEL_TXT), "features.json": _sha(SPEC),
                    "../escape": "0" * 64}}, "../escape"),
        ({"files": {"model.txt": _sha(MODEL_TXT), "features.json": _sha(SPEC),
                    ".hidden": "0" * 64}}, ".hidden"),
        ({"operating_point": None}, "'operating_point' must be an object"),
        ({"operating_point": [0.5]}, "'operating_point' must be an object"),
        ({"operating_point": {}}, "'operating_point.threshold' must be a finite number"),
        ({"operating_point": {"threshold": "0.5"}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": True}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": 1.5}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": -0.001}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": float("nan")}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": float("inf")}}, "'operating_point.threshold'"),
        ({"operating_point": {"threshold": 10**400}}, "'operating_point.threshold'"),
    ],
)  # fmt: skip
def test_verify_catches_a_bad_manifest(
    repo: ModelRepository, changes: dict[str, Any], needle: str
) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    _rewrite_manifest(ref, **changes)
    msg = _integrity(repo, ref)
    assert str(ref.path / "manifest.json") in msg
    assert needle in msg


@pytest.mark.parametrize(("point", "threshold"), [(None, None), (0, 0.0), (1, 1.0), (0.25, 0.25)])
def test_manifest_threshold_is_the_operating_point_s(
    repo: ModelRepository, point: float | None, threshold: float | None
) -> None:
    meta = _meta() if point is None else _meta(operating_point={"threshold": point})
    ref = repo.write_version("fraud", _files(), meta)
    assert repo.verify(ref).threshold == threshold  # None: trained before it was recorded


def test_verify_catches_a_missing_manifest(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    (ref.path / "manifest.json").unlink()
    msg = _integrity(repo, ref)
    assert str(ref.path / "manifest.json") in msg and "missing" in msg


def test_verify_requires_every_dropped_field(repo: ModelRepository) -> None:
    ref = repo.write_version("fraud", _files(), _meta())
    good = json.loads((ref.path / "manifest.json").read_text())
    for key in ("format", "name", "version", "model_format", "files"):
        data = {k: v for k, v in good.items() if k != key}
        (ref.path / "manifest.json").write_text(json.dumps(data))
        msg = _integrity(repo, ref)
        assert key in msg, (key, msg)
    (ref.path / "manifest.json").write_text(json.dumps(good))
    assert repo.verify(ref).version == 1


def test_onnx_version_needs_model_onnx(repo: ModelRepository) -> None:
    files = {"model.onnx": b"onnx-bytes", "model.txt": MODEL_TXT, "features.json": SPEC}
    ref = repo.write_version("fraud_onnx", files, _meta(model_format="onnx"))
    m = repo.verify(ref)
    assert m.model_format == "onnx"
    assert m.model_sha256 == _sha(b"onnx-bytes")
    (ref.path / "model.onnx").write_bytes(b"tampered")
    assert str(ref.path / "model.onnx") in _integrity(repo, ref)


def test_read_verified_returns_exactly_the_hashed_bytes(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    files = {"model.txt": b"tree\n", "features.json": b"{}", "extra.bin": bytes(range(256))}
    ref = repo.write_version("m", files, {"model_format": "lightgbm"})
    manifest, contents = repo.read_verified(ref)
    assert contents == files
    assert manifest.files["extra.bin"] == hashlib.sha256(files["extra.bin"]).hexdigest()
    (ref.path / "extra.bin").write_bytes(b"swapped")
    with pytest.raises(IntegrityError, match=r"extra\.bin: sha256"):
        repo.read_verified(ref)
    (ref.path / "extra.bin").unlink()
    with pytest.raises(IntegrityError, match="listed in the manifest but missing"):
        repo.read_verified(ref)
