"""Durable hint records: which partitions this node holds for someone else.

A fallback that accepts a write for a partition it does not own keeps the
data in that partition's storage (a worker writes any partition of its
range) and a hint ``(partition, owner, since, last)`` saying whom the copy
is for (DESIGN §7). The data is already durable in the worker's WAL; the
record must be too, or a restarted fallback would forget it holds someone's
writes. So :meth:`HintStore.add` persists before the write it announces is
sent to the worker. New records are rare (one per partition and owner while
that owner is down); later writes for the same pair only bump in-memory
counters and the time of the latest hinted write, which is saved lazily
(:meth:`HintStore.save_touches`, at most every ``TOUCH_SAVE_INTERVAL_MS``).

A hint is deleted only when its copy was delivered (or moved to other
owners): never because it is old. Past ``max_hint_window_s`` after the
latest hinted write it is *expired* (:meth:`HintStore.expire`): counted and
reported, retried slowly, data kept (docs/architecture.md, Hinted handoff).

File ``<data_dir>/hints.msgpack`` (see :mod:`coordinator.files`): msgpack
``{"v": 2, "hints": [[partition, owner, since_ms, last_ms], ...]}``; a
version 1 file (``[partition, owner, since_ms]``) still loads, with
``last_ms = since_ms``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from coordinator import files
from coordinator.files import StateFileError

FILE_NAME = "hints.msgpack"
_FORMAT = 2
#: The latest hinted write's time reaches the file at most this late (it
#: only decides when a hint counts as expired, never what is deleted).
TOUCH_SAVE_INTERVAL_MS = 5000


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Hint:
    partition: int
    owner: str
    since_ms: int  # first hinted write: how long we have held data for the owner
    last_ms: int  # latest hinted write: max_hint_window counts from here
    expired: bool = False  # past the window: parked (coordinator/handoff.py)
    writes: int = 0  # hinted writes accepted since this process started
    bytes: int = 0
    inflight: int = 0  # hinted writes sent to the worker, not answered yet


class HintStore:
    def __init__(self, data_dir: str, clock_ms: Callable[[], int] = _wall_ms) -> None:
        self.path = os.path.join(data_dir, FILE_NAME)
        self._clock_ms = clock_ms
        self._hints: dict[tuple[int, str], Hint] = {}
        # The same hints by partition: handoff asks per partition, for
        # every partition of the ring in a sweep.
        self._of_partition: dict[int, dict[str, Hint]] = {}
        self._lock = asyncio.Lock()
        # Pairs whose callers wait for the lock to make them durable.
        self._queued: dict[tuple[int, str], int] = {}
        self._touched = False  # a last_ms changed since the file was written
        self._saved_ms = 0
        self.expired = 0  # hints that passed max_hint_window (their data is kept)
        self.delivered = 0

    def load(self, since: Callable[[int], int] = lambda ms: ms) -> None:
        """Read the records back; ``since`` checks each ``since_ms`` (a
        record from the future would never age: the node resets those)."""
        doc = files.read_doc(self.path)
        if doc is None:
            return
        if doc.get("v") not in (1, _FORMAT) or not isinstance(doc.get("hints"), list):
            raise StateFileError(f"hints file {self.path} has an unknown format")
        size = 3 if doc["v"] == 1 else 4
        for rec in doc["hints"]:
            if not (isinstance(rec, list) and len(rec) == size):
                raise StateFileError(f"hints file {self.path}: bad record {rec!r:.60}")
            p, owner, started = rec[:3]
            first = since(int(started))
            last = since(int(rec[3])) if size == 4 and rec[3] != started else first
            self._put(Hint(int(p), str(owner), first, last))

    # -- queries ----------------------------------------------------------
    def all(self) -> list[Hint]:
        return sorted(self._hints.values(), key=lambda h: (h.owner, h.partition))

    def has(self, partition: int, owner: str) -> bool:
        return (partition, owner) in self._hints

    def for_partition(self, partition: int) -> list[Hint]:
        return list(self._of_partition.get(partition, {}).values())

    def __len__(self) -> int:
        return len(self._hints)

    # -- changes ----------------------------------------------------------
    def begin(self, partition: int, owner: str) -> bool:
        """A hinted write goes to the worker: False if no hint exists for it
        (then ``add_many`` must make one durable first). Until ``end`` the
        hint cannot be removed as delivered: a handoff pass may have scanned
        past the write's key before the worker applied it."""
        hint = self._hints.get((partition, owner))
        if hint is None:
            return False
        hint.inflight += 1
        return True

    def end(self, partition: int, owner: str, size: int) -> None:
        """The worker answered a hinted write ``begin`` announced: count it."""
        hint = self._hints.get((partition, owner))
        if hint is not None:
            hint.inflight = max(0, hint.inflight - 1)
            self._count(hint, self._clock_ms(), size)

    def touch(self, partition: int, owner: str, size: int) -> bool:
        """Count a hinted write for an existing hint; False if there is none
        yet (then ``add`` must make one durable first)."""
        hint = self._hints.get((partition, owner))
        if hint is None:
            return False
        self._count(hint, self._clock_ms(), size)
        return True

    def _count(self, hint: Hint, now_ms: int, size: int) -> None:
        hint.writes += 1
        hint.bytes += size
        if now_ms > hint.last_ms:
            hint.last_ms = now_ms
            self._touched = True

    async def add(self, partition: int, owner: str, now_ms: int, size: int = 0) -> None:
        """Record that this node holds writes of ``partition`` for ``owner``;
        durable when it returns."""
        hint = self._hints.get((partition, owner))
        if hint is None:
            await self.add_many([(partition, owner)], now_ms)
            hint = self._hints[(partition, owner)]  # no await since: still there
        self._count(hint, now_ms, size)

    async def add_many(self, pairs: Iterable[tuple[int, str]], now_ms: int) -> None:
        """Records for every ``(partition, owner)`` not held yet, in one
        write of the file (a ring change hints up to every partition at
        once: one write each would cost O(Q^2) bytes); durable when it
        returns.

        Group commit: callers queue their pairs, and whoever gets the lock
        writes every pair queued so far. When a node goes down, the first
        write of each partition needs a new hint at once; one file write
        per pair, one after the other, held the writes of the last
        partitions for the sum of all those fsyncs."""
        wanted = [p for p in dict.fromkeys(pairs) if p not in self._hints]
        if not wanted:
            return
        for pair in wanted:
            self._queued.setdefault(pair, now_ms)
        async with self._lock:
            # Ours may have been written by the caller before us (or lost
            # with its failed write: then we write it again, or fail too).
            batch = {pair: self._queued.get(pair, now_ms) for pair in wanted}
            batch.update(self._queued)
            self._queued.clear()
            new = [Hint(p, owner, ms, ms) for (p, owner), ms in batch.items()
                   if (p, owner) not in self._hints]
            if not new:
                return
            for hint in new:
                self._put(hint)
            try:
                await self._save()
            except OSError:
                for hint in new:
                    self._drop(hint.partition, hint.owner)
                raise

    def _put(self, hint: Hint) -> None:
        self._hints[(hint.partition, hint.owner)] = hint
        self._of_partition.setdefault(hint.partition, {})[hint.owner] = hint

    def _drop(self, partition: int, owner: str) -> None:
        del self._hints[(partition, owner)]
        held = self._of_partition[partition]
        del held[owner]
        if not held:
            del self._of_partition[partition]

    def expire(self, now_ms: int, window_ms: int) -> list[Hint]:
        """Mark the hints whose latest hinted write is older than
        ``window_ms`` as expired (a newer write clears the mark); returns
        those newly expired, which are counted. Nothing is deleted."""
        newly = []
        for hint in self._hints.values():
            old = now_ms - hint.last_ms > window_ms
            if old and not hint.expired:
                newly.append(hint)
                self.expired += 1
            hint.expired = old
        return newly

    async def remove(
        self, partition: int, owner: str, *, outcome: Literal["delivered", "moved"],
        if_writes: int | None = None,
    ) -> bool:
        """Delete a hint whose copy was delivered or moved to other owners;
        with ``if_writes``, only if no hinted write arrived since the caller
        read that count and none is on its way to the worker (so a handoff
        never drops the record of a write it did not send)."""
        async with self._lock:
            hint = self._hints.get((partition, owner))
            if hint is None or (if_writes is not None and (
                    hint.writes != if_writes or hint.inflight)):
                return False
            self._drop(partition, owner)
            if outcome == "delivered":
                self.delivered += 1
            await self._save()
            return True

    async def moved(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Delete the records of copies moved to other owners, in one write."""
        async with self._lock:
            gone = [pair for pair in dict.fromkeys(pairs) if pair in self._hints]
            for p, owner in gone:
                self._drop(p, owner)
            if gone:
                await self._save()

    async def save_touches(self) -> None:
        """Write the times of the latest hinted writes, if they moved and the
        file is older than ``TOUCH_SAVE_INTERVAL_MS``."""
        if not self._touched or self._clock_ms() - self._saved_ms < TOUCH_SAVE_INTERVAL_MS:
            return
        async with self._lock:
            await self._save()

    async def _save(self) -> None:
        self._touched = False
        self._saved_ms = self._clock_ms()
        records = [[h.partition, h.owner, h.since_ms, h.last_ms] for h in self.all()]
        try:
            await asyncio.to_thread(files.write_doc, self.path, {"v": _FORMAT, "hints": records})
        except OSError:
            self._touched = True
            raise
