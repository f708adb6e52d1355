"""The model check (riskserve.runtime.probe), for real: trained models, malformed
copies registered with re-hashed manifests (repo.write_version), and the check
process started for real. A malformed model.txt that aborts LightGBM in a plain
Python child is refused with the reason while this process lives on; a good
version passes once and then loads from its kept verdict (memory, then disk)
without a check process; a kept verdict that is garbage is checked again; one
whose scores differ from this process's is checked again, and a check process
whose scores differ from this process's (the one test double: its report is
altered, as no real model makes two processes disagree on purpose) refuses."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import train_model

from riskserve.errors import IntegrityError
from riskserve.registry import ModelRepository, VersionRef
from riskserve.runtime import ModelCheck, load_version, refusal
from riskserve.runtime.child import ChildResult, run_module
from riskserve.runtime.loaded import read_version
from riskserve.runtime.probe import (
    CHECKED_DIR,
    Verdict,
    disagreement,
    probe_rows,
    verdict_key,
)
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

#: e2e: nearly every test starts a real check process (python -m riskserve.runtime.probe_child).
pytestmark = [pytest.mark.timeout(180), pytest.mark.e2e]

MODEL = "fraud"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: fraud/1 (LightGBM) and fraud_onnx/1 (ONNX), never checked."""
    d = tmp_path_factory.mktemp("probe")
    run_datagen(3000, 5, d / "train.parquet")
    train_model(d / "train.parquet", d / "models", rounds=20, seed=1)
    train_model(
        d / "train.parquet", d / "models", rounds=10, seed=1, model="fraud_onnx",
        model_format="onnx",
    )  # fmt: skip
    return d / "models"


@pytest.fixture
def repo(base: Path, tmp_path: Path) -> ModelRepository:
    """A fresh copy of `base` (no kept verdicts)."""
    shutil.copytree(base, tmp_path / "models")
    return ModelRepository(tmp_path / "models")


def add_version(repo: ModelRepository, model_txt: bytes, name: str = MODEL) -> VersionRef:
    """The next version of `name`: version 1's files with this model.txt, written by
    the registry (so the manifest holds the new file's sha256)."""
    src = repo.version(name, 1)
    manifest = json.loads((src.path / "manifest.json").read_text())
    files = {f: (src.path / f).read_bytes() for f in manifest["files"]}
    key = "model.onnx" if manifest["model_format"] == "onnx" else "model.txt"
    files[key] = model_txt
    meta = {k: v for k, v in manifest.items() if k not in ("files", "version")}
    return repo.write_version(name, files, meta)


def model_txt(repo: ModelRepository) -> str:
    return (repo.version(MODEL, 1).path / "model.txt").read_text()


def _num_leaves(text: str, value: str) -> str:
    out, n = re.subn(r"^num_leaves=\d+$", f"num_leaves={value}", text, count=1, flags=re.M)
    assert n == 1
    return out


#: Edits of a real model.txt that make LightGBM's parser abort its process.
MALFORMED: dict[str, Callable[[str], str]] = {
    "num_leaves huge": lambda t: _num_leaves(t, "1000000000"),
    "num_leaves negative": lambda t: _num_leaves(t, "-5"),
    "truncated": lambda t: t[: len(t) // 2],
}


def plain_lightgbm_child(text: str) -> subprocess.CompletedProcess[bytes]:
    """lightgbm.Booster(model_str=text) in a plain Python child."""
    code = "import sys, lightgbm; lightgbm.Booster(model_str=sys.stdin.read())"
    return subprocess.run(
        [sys.executable, "-c", code], input=text.encode(), capture_output=True, timeout=60
    )


def verdict_files(repo: ModelRepository) -> list[Path]:
    d = repo.root / CHECKED_DIR
    return sorted(d.glob("*.json")) if d.is_dir() else []


def key_of(repo: ModelRepository, ref: VersionRef) -> str:
    files = read_version(repo, ref)
    return verdict_key(files, probe_rows(files))


def refused(repo: ModelRepository, ref: VersionRef, check: ModelCheck) -> str:
    with pytest.raises(IntegrityError) as info:
        load_version(repo, ref, drift_slots=0, check=check)
    return info.value.message


# --------------------------------------------------------------------------------------
# malformed files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit", list(MALFORMED))
def test_a_model_txt_that_aborts_lightgbm_is_refused_and_this_process_lives(
    repo: ModelRepository, edit: str
) -> None:
    bad = MALFORMED[edit](model_txt(repo))
    # The edit really kills a process that parses it.
    plain = plain_lightgbm_child(bad)
    assert plain.returncode < 0, (plain.returncode, plain.stderr[-500:])

    ref = add_version(repo, bad.encode())
    assert repo.verify(ref).model_sha256  # the hashes match: only parsing finds it
    check = ModelCheck()
    reason = refused(repo, ref, check)
    assert str(ref.path / "model.txt") in reason
    assert re.search(r"crashed LightGBM's parser in a check process \(SIG(ABRT|SEGV)\)", reason)
    assert check.spawned == 1

    # This process lives on, and serves the good version.
    good = load_version(repo, repo.version(MODEL, 1), drift_slots=0, check=check)
    assert good.score(columns_of(generate(5, 3), [i.name for i in good.inputs])).shape == (5,)

    # The failure is kept: refused again with no check process, here and in a new one.
    assert refused(repo, ref, check) == reason
    assert check.spawned == 2  # the good version's check only
    fresh = ModelCheck()
    assert refused(repo, ref, fresh) == reason
    assert refusal(repo, ref, fresh) == reason
    assert fresh.spawned == 0
    kept = json.loads((repo.root / CHECKED_DIR / f"{key_of(repo, ref)}.json").read_text())
    assert kept["ok"] is False and kept["checked"]["model"] == f"{MODEL}/{ref.version}"


def test_a_tree_that_never_ends_is_killed_at_the_timeout(repo: ModelRepository) -> None:
    """A root whose left child is itself: LightGBM parses it, then loops forever."""
    text, n = re.subn(r"^left_child=\d+ ", "left_child=0 ", model_txt(repo), count=1, flags=re.M)
    assert n == 1
    ref = add_version(repo, text.encode())
    reason = refused(repo, ref, ModelCheck(timeout=8))
    assert str(ref.path / "model.txt") in reason
    assert "did not finish scoring the warm-up row in a check process within 8 s" in reason


def test_a_split_on_a_feature_the_model_does_not_have_is_refused(repo: ModelRepository) -> None:
    """LightGBM parses it and scores by reading past the row: refused before scoring."""
    text = model_txt(repo)
    top = re.search(r"^max_feature_idx=(\d+)$", text, re.M)
    assert top is not None
    n_features = int(top.group(1)) + 1
    bad, n = re.subn(
        r"^split_feature=\d+", f"split_feature={n_features + 5}", text, count=1, flags=re.M
    )
    assert n == 1
    ref = add_version(repo, bad.encode())
    reason = refused(repo, ref, ModelCheck())
    assert f"tree 0 splits on feature {n_features + 5}" in reason, reason


def test_a_model_onnx_that_onnxruntime_refuses_is_refused(repo: ModelRepository) -> None:
    good = repo.version("fraud_onnx", 1)
    body = (good.path / "model.onnx").read_bytes()
    ref = add_version(repo, body[: len(body) // 3], name="fraud_onnx")
    reason = refused(repo, ref, ModelCheck())
    assert str(ref.path) in reason and "model does not load" in reason, reason


# --------------------------------------------------------------------------------------
# good versions and kept verdicts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [MODEL, "fraud_onnx"])
def test_a_good_version_is_checked_once_then_loads_from_its_kept_verdict(
    repo: ModelRepository, name: str
) -> None:
    ref = repo.version(name, 1)
    assert refusal(repo, ref, ModelCheck()) is None  # not checked yet: unknown
    check = ModelCheck()
    first = load_version(repo, ref, drift_slots=0, check=check)
    assert check.spawned == 1
    (path,) = verdict_files(repo)
    assert path.name == f"{key_of(repo, ref)}.json"
    kept = json.loads(path.read_text())
    rows = probe_rows(read_version(repo, ref))
    assert kept["ok"] is True and len(kept["scores"]) == rows.shape[0]
    np.testing.assert_allclose(first.runtime.predict(rows), kept["scores"], atol=1e-6)

    again = load_version(repo, ref, drift_slots=0, check=check)  # memory
    assert check.spawned == 1
    stamp = path.stat().st_mtime_ns
    fresh = ModelCheck()  # another process: the verdict on disk
    third = load_version(repo, ref, drift_slots=0, check=fresh)
    assert fresh.spawned == 0 and path.stat().st_mtime_ns == stamp
    assert refusal(repo, ref, fresh) is None
    cols = columns_of(generate(50, 9), [i.name for i in first.inputs])
    np.testing.assert_array_equal(again.score(cols), first.score(cols))
    np.testing.assert_array_equal(third.score(cols), first.score(cols))


def _garbage(key: str) -> list[bytes]:
    ok = Verdict(True, "", (0.5,)).to_json(key, {})
    return [
        b"",
        b"{not json",
        ok[: len(ok) // 2].encode(),  # torn
        b"[]",
        json.dumps({"format": "riskserve.check/v1", "key": key, "ok": True}).encode(),
        ok.replace(key, "0" * 64).encode(),  # another key
        ok.replace("riskserve.check/v1", "riskserve.check/v0").encode(),
        ok.replace("0.5", "NaN").encode(),
        json.dumps({"format": "riskserve.check/v1", "key": key, "ok": "yes"}).encode(),
        json.dumps({"format": "riskserve.check/v1", "key": key, "ok": False}).encode(),
        ok.replace('"ok": true', '"ok": false').encode(),  # a refusal with no reason
    ]


def test_a_garbage_verdict_file_is_ignored_and_checked_again(repo: ModelRepository) -> None:
    ref = repo.version(MODEL, 1)
    key = key_of(repo, ref)
    path = repo.root / CHECKED_DIR / f"{key}.json"
    path.parent.mkdir()
    for i, body in enumerate(_garbage(key)):
        path.write_bytes(body)
        check = ModelCheck()
        assert check.kept(repo, key) is None, body
        assert refusal(repo, ref, check) is None
        load_version(repo, ref, drift_slots=0, check=check)
        assert check.spawned == 1, (i, body)
        kept = Verdict.from_json(path.read_bytes(), key)  # replaced by a real verdict
        assert kept is not None and kept.ok


def test_a_kept_verdict_whose_scores_differ_is_checked_again(repo: ModelRepository) -> None:
    ref = repo.version(MODEL, 1)
    load_version(repo, ref, drift_slots=0, check=ModelCheck())
    (path,) = verdict_files(repo)
    kept = json.loads(path.read_text())
    kept["scores"] = [s + 1e-3 for s in kept["scores"]]
    path.write_text(json.dumps(kept))

    check = ModelCheck()
    model = load_version(repo, ref, drift_slots=0, check=check)
    assert check.spawned == 1  # checked again, and then it agrees
    repaired = Verdict.from_json(path.read_bytes(), kept["key"])
    assert repaired is not None and repaired.ok
    rows = probe_rows(read_version(repo, ref))
    assert np.max(np.abs(model.runtime.predict(rows) - np.array(repaired.scores))) <= 1e-6


def test_a_check_process_whose_scores_differ_from_this_process_refuses(
    repo: ModelRepository,
) -> None:
    """The test double: the real check process, with its reported scores shifted."""

    def shifted(module: str, args: Sequence[str], timeout: float) -> ChildResult:
        real = run_module(module, args, timeout)
        lines = [json.loads(ln) for ln in real.stdout.splitlines()]
        lines[-1]["scores"] = [s + 1e-3 for s in lines[-1]["scores"]]
        out = "".join(json.dumps(ln) + "\n" for ln in lines).encode()
        return ChildResult(real.returncode, out, real.stderr, real.seconds, timeout)

    ref = repo.version(MODEL, 1)
    reason = refused(repo, ref, ModelCheck(run=shifted))
    assert str(ref.path / "model.txt") in reason
    assert "scores of the probe rows in this process differ from the check process's" in reason


def test_two_processes_agree_on_the_same_scores_and_the_same_failed_rows() -> None:
    assert disagreement([0.1, None, 0.5], [0.1 + 1e-7, None, 0.5]) <= 1e-6
    assert disagreement([0.1, 0.3], [0.1, 0.3 + 1e-3]) == pytest.approx(1e-3)
    assert disagreement([0.1, None], [0.1, 0.2]) == math.inf  # failed here only
    assert disagreement([0.1], [0.1, 0.2]) == math.inf
    assert disagreement([], []) == math.inf


def test_a_check_process_that_fails_on_its_own_is_not_remembered(
    repo: ModelRepository,
) -> None:
    """A check process that dies before it reads the version says nothing about the
    model: refused now, checked again next time."""

    def broken(module: str, args: Sequence[str], timeout: float) -> ChildResult:
        return run_module("riskserve.runtime.no_such_module", args, timeout)

    ref = repo.version(MODEL, 1)
    check = ModelCheck(run=broken)
    reason = refused(repo, ref, check)
    assert "before it read the version" in reason and "No module named" in reason, reason
    assert verdict_files(repo) == [] and refusal(repo, ref, check) is None
    refused(repo, ref, check)
    assert check.spawned == 2


def test_verdicts_stay_in_memory_when_the_folder_cannot_take_them(
    repo: ModelRepository,
) -> None:
    (repo.root / CHECKED_DIR).write_text("a file where the folder would be")
    ref = repo.version(MODEL, 1)
    check = ModelCheck()
    load_version(repo, ref, drift_slots=0, check=check)
    load_version(repo, ref, drift_slots=0, check=check)
    assert check.spawned == 1


def test_a_reason_names_the_version_it_is_read_for(repo: ModelRepository) -> None:
    """The same bad bytes in two versions: one check, each reason names its own folder."""
    bad = MALFORMED["num_leaves huge"](model_txt(repo)).encode()
    one, two = add_version(repo, bad), add_version(repo, bad)
    check = ModelCheck()
    first = refused(repo, one, check)
    second = refused(repo, two, check)
    assert check.spawned == 1
    assert str(one.path) in first and str(two.path) in second
    assert first.replace(str(one.path), "") == second.replace(str(two.path), "")


def test_the_child_result_names_the_signal() -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"
    r = run_module("riskserve.no_such_module", [], 10)
    assert r.returncode == 1 and "No module named" in r.stderr
    aborted = subprocess.run([sys.executable, "-c", code], check=False)
    assert aborted.returncode == -signal.SIGABRT
    res = ChildResult(aborted.returncode, b"", "", 0.1)
    assert res.signal_name == "SIGABRT" and res.how() == "was killed by SIGABRT"
    assert ChildResult(None, b"", "", 2.0, 2.0).how() == "did not finish within 2 s (killed)"
