"""The dynamic batcher with a real trained model: replies reach the right
callers, batches respect max_batch_size, bad input stays with its request, an
idle batcher never waits, and queued requests past their deadline are not run."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import train_model

from riskserve.client import pack_bytes
from riskserve.config import BatchingSettings
from riskserve.errors import DeadlineExceeded, InvalidInput
from riskserve.registry import ModelRepository
from riskserve.runtime import LoadedModel, load_version
from riskserve.runtime.batcher import Batcher, merge_columns, unpack_bytes
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of


def batching(**kw: Any) -> BatchingSettings:
    """Batching settings for these tests: every batch goes to the pool unless a
    test sets inline_rows."""
    return BatchingSettings(**{"inline_rows": 0, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, Any]:
    d = tmp_path_factory.mktemp("batcher")
    run_datagen(3000, 3, d / "train.parquet")
    res = train_model(d / "train.parquet", d / "models", rounds=15)
    return ModelRepository(d / "models"), res.ref


@pytest.fixture(scope="module")
def model(trained: tuple[ModelRepository, Any]) -> LoadedModel:
    repo, ref = trained
    return load_version(repo, ref, drift_slots=0)


def test_a_released_version_is_freed_despite_its_batcher(
    trained: tuple[ModelRepository, Any],
) -> None:
    """The data plane keys batchers weakly by model; the batcher must not keep
    its model alive, or every unloaded version would stay in memory."""
    repo, ref = trained
    held = [load_version(repo, ref, drift_slots=0)]
    row = _rows(held[0], 1, 3)[0]
    batchers: weakref.WeakKeyDictionary[LoadedModel, Batcher] = weakref.WeakKeyDictionary()

    async def use() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = batchers[held[0]] = Batcher(held[0], pool, _score, batching(max_batch_size=8))
            await b.submit(row, 1)

    asyncio.run(use())
    alive = weakref.ref(held[0])
    held.clear()  # the version is unloaded: nothing but the batcher map refers to it
    gc.collect()
    assert alive() is None
    assert len(batchers) == 0


def _score(model: LoadedModel, columns: Mapping[str, Any]) -> np.ndarray:
    from riskserve._native import InputError

    try:
        return model.score(columns)
    except InputError as e:
        raise InvalidInput(str(e)) from None


def _rows(model: LoadedModel, n: int, seed: int) -> list[dict[str, Any]]:
    cols = columns_of(generate(n, seed), [i.name for i in model.inputs])
    out = []
    for i in range(n):
        row: dict[str, Any] = {}
        for k, v in cols.items():
            row[k] = pack_bytes(v[i : i + 1]) if isinstance(v, list) else v[i : i + 1]
        out.append(row)
    return out


def test_replies_reach_their_callers_and_batches_respect_the_cap(model: LoadedModel) -> None:
    rows = _rows(model, 300, 21)
    want = [model.score(dict(r))[0] for r in rows]

    async def main() -> tuple[list[np.ndarray], Batcher]:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(model, pool, _score, batching(max_batch_size=16))
            got = await asyncio.gather(*(b.submit(r, 1) for r in rows))
            return got, b

    got, b = asyncio.run(main())
    for i, g in enumerate(got):
        assert g.shape == (1,)
        assert abs(float(g[0]) - float(want[i])) <= 1e-6, i
    assert max(b.batch_rows) == 16  # all 300 queued before the first batch ran
    assert all(r <= 16 for r in b.batch_rows)
    assert sum(b.batch_rows) == 300


def test_multi_row_requests_are_split_back_exactly(model: LoadedModel) -> None:
    cols = columns_of(generate(200, 5), [i.name for i in model.inputs])
    sizes = [1, 7, 3, 30, 2, 9, 64, 1, 5, 40, 38]
    parts, start = [], 0
    for n in sizes:
        parts.append({k: v[start : start + n] for k, v in cols.items()})
        start += n

    async def main() -> tuple[list[np.ndarray], Batcher]:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(model, pool, _score, batching(max_batch_size=32))
            got = await asyncio.gather(*(b.submit(p, n) for p, n in zip(parts, sizes, strict=True)))
            return got, b

    got, b = asyncio.run(main())
    for p, n, g in zip(parts, sizes, got, strict=True):
        assert g.shape == (n,)
        np.testing.assert_allclose(g, model.score(dict(p)), rtol=0, atol=1e-6)
    # Greedy in arrival order, never splitting a request: a batch exceeds the cap
    # only when one request alone is larger than it (64, 40, 38).
    assert list(b.batch_rows) == [11, 32, 9, 64, 6, 40, 38]


def test_bad_input_fails_only_its_own_request(model: LoadedModel) -> None:
    rows = _rows(model, 40, 8)
    bad = dict(rows[17])
    string_input = next(i.name for i in model.inputs if i.dtype == "string")
    bad[string_input] = pack_bytes([b"\xff\xfe"])  # not UTF-8
    rows[17] = bad

    async def main() -> list[Any]:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(model, pool, _score, batching(max_batch_size=64))
            return await asyncio.gather(*(b.submit(r, 1) for r in rows), return_exceptions=True)

    got = asyncio.run(main())
    for i, g in enumerate(got):
        if i == 17:
            assert isinstance(g, InvalidInput) and string_input in str(g)
        else:
            assert isinstance(g, np.ndarray) and g.shape == (1,), (i, g)


def test_an_idle_batcher_never_waits_for_max_delay(model: LoadedModel) -> None:
    row = _rows(model, 1, 2)[0]

    async def main() -> float:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, pool, _score, batching(max_batch_size=64, max_batch_delay=5.0))
            t = time.monotonic()
            await b.submit(row, 1)
            return time.monotonic() - t

    assert asyncio.run(main()) < 2.5  # far below max_delay: no waiting when idle


def test_a_request_whose_deadline_passed_in_the_queue_is_not_run(model: LoadedModel) -> None:
    rows = _rows(model, 2, 4)

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, pool, _score, batching(max_batch_size=1))
            return await asyncio.gather(
                b.submit(rows[0], 1), b.submit(rows[1], 1, time_remaining=0.0),
                return_exceptions=True,
            )  # fmt: skip

    first, second = asyncio.run(main())
    assert isinstance(first, np.ndarray)
    assert isinstance(second, DeadlineExceeded) and "queued" in str(second)


def test_merge_columns_mixes_packed_and_listed_bytes() -> None:
    a = {"x": np.array([1.0, 2.0]), "s": pack_bytes(["a", "bc"])}
    b = {"x": np.array([[3.0]]), "s": [b"d"]}
    c = {"x": np.array([4.0]), "s": pack_bytes([""])}
    m = merge_columns([a, b, c])
    np.testing.assert_array_equal(m["x"], [1.0, 2.0, 3.0, 4.0])
    assert m["s"] == [b"a", b"bc", b"d", b""]
    both_packed = merge_columns([a, c])
    assert unpack_bytes(both_packed["s"]) == [b"a", b"bc", b""]


def test_small_batches_run_inline_and_larger_ones_in_the_pool(model: LoadedModel) -> None:
    rows = _rows(model, 12, 5)
    threads: list[str] = []

    def score(m: LoadedModel, columns: Mapping[str, Any]) -> np.ndarray:
        import threading

        threads.append(threading.current_thread().name)
        return _score(m, columns)

    async def main() -> tuple[list[Any], list[Any]]:
        with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
            b = Batcher(model, pool, score, batching(max_batch_size=64, inline_rows=4))
            lone = [await b.submit(rows[0], 1)]  # 1 row: inline
            many = await asyncio.gather(*(b.submit(r, 1) for r in rows))  # 12 rows: pool
            return lone, many

    lone, many = asyncio.run(main())
    assert threads == ["MainThread", "pool_0"]
    expected = [_score(model, r) for r in rows]
    assert lone[0] == pytest.approx(expected[0])
    for got, want in zip(many, expected, strict=True):
        assert got == pytest.approx(want)


def test_expired_requests_are_never_scored_and_their_wait_is_reported(
    model: LoadedModel,
) -> None:
    """A queued request whose deadline passed while an earlier batch ran is failed at
    dequeue without reaching the model; every dequeue reports its smallest wait
    (expired requests included), and 0.0 once the queue has drained."""
    rows = _rows(model, 6, 9)
    scored: list[int] = []
    seen: list[tuple[float, float]] = []

    def slow(m: LoadedModel, columns: Mapping[str, Any]) -> np.ndarray:
        time.sleep(0.05)
        out = _score(m, columns)
        scored.append(len(out))
        return out

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(
                model, pool, slow, batching(max_batch_size=1), on_dequeue=lambda *a: seen.append(a)
            )
            first = asyncio.ensure_future(b.submit(rows[0], 1))
            await asyncio.sleep(0)  # the first batch is taken and runs 50 ms
            late = [b.submit(r, 1, time_remaining=0.02) for r in rows[1:5]]
            fine = b.submit(rows[5], 1, time_remaining=30.0)
            return await asyncio.gather(first, *late, fine, return_exceptions=True)

    got = asyncio.run(main())
    assert isinstance(got[0], np.ndarray) and isinstance(got[5], np.ndarray)
    assert all(isinstance(g, DeadlineExceeded) for g in got[1:5]), got
    assert scored == [1, 1]  # the four expired requests never reached the model
    # Dequeues: the first request (no wait), then the four expired ones and the last
    # together (max_batch_size counts only requests that will be scored), then the
    # drained queue.
    delays = [d for _, d in seen]
    assert len(delays) == 3, seen
    assert delays[0] < 0.04
    assert delays[1] >= 0.04  # queued behind a 50 ms batch
    assert delays[2] == 0.0
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)
