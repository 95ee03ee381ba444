"""Durable hint records (coordinator/hints.py) on real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator import files
from coordinator.files import StateFileError
from coordinator.repair.hints import FILE_NAME, TOUCH_SAVE_INTERVAL_MS, HintStore


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_a_hint_survives_a_restart_and_counts_stay_in_memory(tmp_path: Path) -> None:
    async def go() -> None:
        store = HintStore(str(tmp_path))
        await store.add(5, "n2", 1000, size=10)
        assert store.touch(5, "n2", 20) and not store.touch(6, "n2", 1)
        again = HintStore(str(tmp_path))
        again.load()
        [hint] = again.all()
        assert (hint.partition, hint.owner, hint.since_ms) == (5, "n2", 1000)
        assert hint.writes == 0  # counters are not persisted
        assert store.all()[0].writes == 2 and store.all()[0].bytes == 30

    asyncio.run(go())


def test_a_hint_with_a_write_on_its_way_is_not_delivered(tmp_path: Path) -> None:
    """A handoff pass that began after a hinted write was sent, but scanned
    before the worker applied it, must not delete the hint (the returning
    owner would lack the write while the node reports it delivered)."""
    async def go() -> None:
        store = HintStore(str(tmp_path))
        await store.add_many([(4, "n2")], 1000)
        assert store.begin(4, "n2") and not store.begin(5, "n2")
        seen = store.all()[0].writes  # the pass begins: the write is in flight
        assert not await store.remove(4, "n2", outcome="delivered", if_writes=seen)
        store.end(4, "n2", 30)  # the worker applied it
        assert not await store.remove(4, "n2", outcome="delivered", if_writes=seen)
        assert store.all()[0].writes == seen + 1 and store.all()[0].bytes == 30
        assert await store.remove(4, "n2", outcome="delivered", if_writes=seen + 1)

    asyncio.run(go())


def test_remove_if_writes_keeps_a_hint_that_got_new_writes(tmp_path: Path) -> None:
    async def go() -> None:
        store = HintStore(str(tmp_path))
        await store.add(1, "n3", 1)
        seen = store.all()[0].writes
        store.touch(1, "n3", 5)  # a hinted write arrives during the transfer
        assert not await store.remove(1, "n3", outcome="delivered", if_writes=seen)
        assert store.has(1, "n3")
        assert await store.remove(1, "n3", outcome="delivered", if_writes=seen + 1)
        assert not store.has(1, "n3") and store.delivered == 1
        fresh = HintStore(str(tmp_path))
        fresh.load()
        assert fresh.all() == []

    asyncio.run(go())


def test_a_corrupt_hints_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"\xc1 not msgpack")
    with pytest.raises(StateFileError, match=FILE_NAME):
        HintStore(str(tmp_path)).load()


def test_the_window_counts_from_the_latest_hinted_write_and_expiry_deletes_nothing(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        clock = Clock(0)
        store = HintStore(str(tmp_path), clock)
        await store.add(3, "n2", 0)
        clock.now = 5_000
        assert store.touch(3, "n2", 10)  # a hinted write 5 s after the first
        assert store.expire(8_000, 4_000) == []  # 3 s after the latest: not expired
        [hint] = store.expire(9_001, 4_000)
        assert hint.expired and store.expired == 1
        assert store.expire(20_000, 4_000) == [] and store.expired == 1  # counted once
        assert store.has(3, "n2")  # expired, still held
        clock.now = 21_000
        store.touch(3, "n2", 10)  # a new write: the window starts again
        assert store.expire(22_000, 4_000) == [] and not store.all()[0].expired

    asyncio.run(go())


def test_the_latest_write_time_is_saved_lazily_and_survives_a_restart(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock(1_000)
        store = HintStore(str(tmp_path), clock)
        await store.add(7, "n4", 1_000)
        clock.now = 2_000
        store.touch(7, "n4", 1)
        await store.save_touches()  # the file is younger than the interval: not yet
        assert _records(tmp_path) == [[7, "n4", 1_000, 1_000]]
        clock.now = 1_000 + TOUCH_SAVE_INTERVAL_MS
        await store.save_touches()
        assert _records(tmp_path) == [[7, "n4", 1_000, 2_000]]
        again = HintStore(str(tmp_path))
        again.load()
        assert again.all()[0].last_ms == 2_000

    asyncio.run(go())


def test_a_version_1_hints_file_still_loads(tmp_path: Path) -> None:
    files.write_doc(str(tmp_path / FILE_NAME), {"v": 1, "hints": [[2, "n3", 500]]})
    store = HintStore(str(tmp_path))
    store.load()
    [hint] = store.all()
    assert (hint.partition, hint.owner, hint.since_ms, hint.last_ms) == (2, "n3", 500, 500)


def _records(path: Path) -> list[list[object]]:
    doc = files.read_doc(str(path / FILE_NAME))
    assert doc is not None and doc["v"] == 2
    return list(doc["hints"])


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The hint count of each write of the file, from now on."""
    writes: list[int] = []
    real = files.write_doc

    def counting(path: str, doc: dict) -> None:  # type: ignore[type-arg]
        writes.append(len(doc["hints"]))
        real(path, doc)

    monkeypatch.setattr(files, "write_doc", counting)
    return writes


def test_a_ring_change_hints_every_partition_with_one_write_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: one write per new record made a ring change at Q = 4,096
    write O(Q^2) bytes."""
    writes = _count_writes(monkeypatch)

    async def go() -> None:
        store = HintStore(str(tmp_path))
        await store.add(0, "n2", 1000)
        pairs = [(p, owner) for p in range(4096) for owner in ("n2", "n3")]
        await store.add_many(pairs, 2000)
        assert writes == [1, 2 * 4096]
        assert len(store) == 2 * 4096 and store.all()[0].since_ms == 1000  # kept, not remade
        assert sorted(h.owner for h in store.for_partition(7)) == ["n2", "n3"]
        await store.add_many(pairs[:10], 3000)  # nothing new: no write
        await store.moved([(p, "n3") for p in range(4096)])
        assert writes == [1, 2 * 4096, 4096]
        assert [h.owner for h in store.for_partition(7)] == ["n2"]
        again = HintStore(str(tmp_path))
        again.load()
        assert len(again) == 4096 and [h.owner for h in again.for_partition(4095)] == ["n2"]

    asyncio.run(go())


def test_add_many_that_cannot_write_the_file_keeps_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: str, doc: dict) -> None:  # type: ignore[type-arg]
        raise OSError(28, "No space left on device")

    async def go() -> None:
        store = HintStore(str(tmp_path))
        await store.add(1, "n2", 1000)
        monkeypatch.setattr(files, "write_doc", full)
        with pytest.raises(OSError):
            await store.add_many([(1, "n2"), (2, "n2"), (2, "n3")], 2000)
        assert [(h.partition, h.owner) for h in store.all()] == [(1, "n2")]
        assert store.for_partition(2) == []

    asyncio.run(go())


def test_concurrent_new_hints_share_file_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 19.6): when a node went down, the first write of each
    of its partitions made its own hint durable, one file write after the
    other, so the writes of the last partitions waited for all those fsyncs.
    Adds that queue while a write is in progress go out together in the next."""
    writes = _count_writes(monkeypatch)

    async def go() -> None:
        store = HintStore(str(tmp_path))
        await asyncio.gather(*(store.add(p, "n3", 1000 + p, size=10) for p in range(64)))
        assert writes == [1, 64]  # the first alone, then everyone queued behind it
        assert len(store) == 64 and all(h.writes == 1 for h in store.all())
        again = HintStore(str(tmp_path))
        again.load()
        assert sorted(h.partition for h in again.all()) == list(range(64))
        assert again.for_partition(5)[0].since_ms == 1005

    asyncio.run(go())


def test_a_failed_group_write_leaves_each_waiter_to_write_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = files.write_doc
    failures = [OSError(28, "No space left on device")]

    def once_full(path: str, doc: dict) -> None:  # type: ignore[type-arg]
        if failures:
            raise failures.pop()
        real(path, doc)

    monkeypatch.setattr(files, "write_doc", once_full)

    async def go() -> None:
        store = HintStore(str(tmp_path))
        results = await asyncio.gather(*(store.add(p, "n3", 1000) for p in range(3)),
                                       return_exceptions=True)
        assert isinstance(results[0], OSError)  # its write failed
        assert results[1:] == [None, None]  # written again by the next waiter
        assert sorted(h.partition for h in store.all()) == [1, 2]
        again = HintStore(str(tmp_path))
        again.load()
        assert sorted(h.partition for h in again.all()) == [1, 2]

    asyncio.run(go())
