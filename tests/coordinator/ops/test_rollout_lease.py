"""The rollout lease's state file: one holder at a time, renewed by its
holder, free again when it runs out or is released, and kept across a
reopen (the node's own restart)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from coordinator.files import StateFileError
from coordinator.ops.rollout_lease import LEASE_FILE, RolloutLease


def test_one_holder_at_a_time_and_it_survives_a_reopen(tmp_path: Path) -> None:
    lease = RolloutLease(str(tmp_path))
    granted, held = asyncio.run(lease.acquire("a", 30))
    assert granted and held.holder == "a"
    assert held.expires_ms > time.time() * 1000 + 25_000
    granted, other = asyncio.run(lease.acquire("b", 30))
    assert not granted and other == held  # b is told who holds it and until when
    reopened = RolloutLease(str(tmp_path))  # the node restarted
    granted, renewed = asyncio.run(reopened.acquire("a", 30))
    assert granted and renewed.expires_ms >= held.expires_ms
    assert asyncio.run(reopened.release("b")) == renewed  # not b's to give back
    assert asyncio.run(reopened.release("a")) is None
    assert RolloutLease(str(tmp_path)).current(int(time.time() * 1000)) is None
    assert asyncio.run(reopened.acquire("b", 30))[0]


def test_an_expired_lease_is_free(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_bytes(msgpack.packb(
        {"v": 1, "holder": "gone", "expires_ms": int(time.time() * 1000) - 1}))
    granted, held = asyncio.run(RolloutLease(str(tmp_path)).acquire("b", 30))
    assert granted and held.holder == "b"


def test_a_bad_file_is_named(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_bytes(msgpack.packb({"v": 1, "holder": "a",
                                                       "expires_ms": "soon"}))
    with pytest.raises(StateFileError, match=LEASE_FILE):
        asyncio.run(RolloutLease(str(tmp_path)).acquire("b", 30))
