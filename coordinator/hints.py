"""Durable hint records: which partitions this node holds for someone else.

A fallback that accepts a write for a partition it does not own keeps the
data in that partition's storage (a worker writes any partition of its
range) and a hint ``(partition, owner, since)`` saying whom the copy is for
(DESIGN §7). The data is already durable in the worker's WAL; the record
must be too, or a restarted fallback would forget it holds someone's writes.
So :meth:`HintStore.add` persists before the write it announces is sent to
the worker. New records are rare (one per partition and owner while that
owner is down), later writes for the same pair only bump in-memory counters.

File ``<data_dir>/hints.msgpack`` (see :mod:`coordinator.files`): msgpack
``{"v": 1, "hints": [[partition, owner, since_ms], ...]}``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from coordinator import files
from coordinator.files import StateFileError

FILE_NAME = "hints.msgpack"
_FORMAT = 1


@dataclass(slots=True)
class Hint:
    partition: int
    owner: str
    since_ms: int
    writes: int = 0  # hinted writes accepted since this process started
    bytes: int = 0


class HintStore:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE_NAME)
        self._hints: dict[tuple[int, str], Hint] = {}
        self._lock = asyncio.Lock()
        self.expired = 0  # dropped past max_hint_window (anti-entropy covers them)
        self.delivered = 0

    def load(self, since: Callable[[int], int] = lambda ms: ms) -> None:
        """Read the records back; ``since`` checks each ``since_ms`` (a
        record from the future would never age: the node resets those)."""
        doc = files.read_doc(self.path)
        if doc is None:
            return
        if doc.get("v") != _FORMAT or not isinstance(doc.get("hints"), list):
            raise StateFileError(f"hints file {self.path} has an unknown format")
        for rec in doc["hints"]:
            if not (isinstance(rec, list) and len(rec) == 3):
                raise StateFileError(f"hints file {self.path}: bad record {rec!r:.60}")
            p, owner, started = rec
            self._hints[(int(p), str(owner))] = Hint(int(p), str(owner), since(int(started)))

    # -- queries ----------------------------------------------------------
    def all(self) -> list[Hint]:
        return sorted(self._hints.values(), key=lambda h: (h.owner, h.partition))

    def has(self, partition: int, owner: str) -> bool:
        return (partition, owner) in self._hints

    def for_partition(self, partition: int) -> list[Hint]:
        return [h for h in self._hints.values() if h.partition == partition]

    def __len__(self) -> int:
        return len(self._hints)

    # -- changes ----------------------------------------------------------
    def touch(self, partition: int, owner: str, size: int) -> bool:
        """Count a hinted write for an existing hint; False if there is none
        yet (then ``add`` must make one durable first)."""
        hint = self._hints.get((partition, owner))
        if hint is None:
            return False
        hint.writes += 1
        hint.bytes += size
        return True

    async def add(self, partition: int, owner: str, now_ms: int, size: int = 0) -> None:
        """Record that this node holds writes of ``partition`` for ``owner``;
        durable when it returns."""
        key = (partition, owner)
        hint = self._hints.get(key)
        if hint is None:
            async with self._lock:
                hint = self._hints.get(key)
                if hint is None:
                    hint = Hint(partition, owner, now_ms)
                    self._hints[key] = hint
                    try:
                        await self._save()
                    except OSError:
                        del self._hints[key]
                        raise
        hint.writes += 1
        hint.bytes += size

    async def remove(
        self, partition: int, owner: str, *, outcome: Literal["delivered", "expired", "moved"],
        if_writes: int | None = None,
    ) -> bool:
        """Delete a hint that was delivered, expired (counted: repair must
        cover it) or moved to other owners; with ``if_writes``, only if no
        hinted write arrived since the caller read that count (so a handoff
        never drops the record of a write it did not send)."""
        async with self._lock:
            hint = self._hints.get((partition, owner))
            if hint is None or (if_writes is not None and hint.writes != if_writes):
                return False
            del self._hints[(partition, owner)]
            if outcome == "delivered":
                self.delivered += 1
            elif outcome == "expired":
                self.expired += 1
            await self._save()
            return True

    async def _save(self) -> None:
        records = [[h.partition, h.owner, h.since_ms] for h in self.all()]
        await asyncio.to_thread(files.write_doc, self.path, {"v": _FORMAT, "hints": records})
