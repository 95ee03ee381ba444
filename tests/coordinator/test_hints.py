"""Durable hint records (coordinator/hints.py) on real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.files import StateFileError
from coordinator.hints import FILE_NAME, HintStore


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
