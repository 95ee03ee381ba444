"""The fence between a worker's writes and its partition drops.

A drop deletes a partition's data through a compaction. A fallback drops
its copy once a handoff delivered it, so a write the handoff did not see
must never be dropped with it (issue 13): it may be the only copy of an
acknowledged write. Every write of the store runs inside
:meth:`DropFence.writing`, every drop inside :meth:`DropFence.dropping`,
and both decide under one lock:

* a write to a partition being dropped is refused
  (``PartitionDroppingError``, retryable) before it touches the engine;
* each partition has a *write mark*, a number that changes when a write to
  it completes (and a write counts as in flight from its start until then).
  The handoff reads the mark before each pass over the partition (a scan
  sees every write completed before it started) and passes it to the drop;
  the drop goes ahead only if the mark is unchanged and no write is in
  flight, else it raises ``PartitionChangedError`` and nothing is deleted:
  compare-and-drop;
* an unconditional drop (FLUSHALL) waits for the writes in flight to end
  before its compaction, so none lands after it and survives by chance.

The same lock serves one more purpose. Replica writes are blind merge
operands, which no put may overwrite; the one write that replaces a stored
set instead of merging into it (``ShardStore.repair_set``: anti-entropy
replacing a corrupt copy) reads the key and puts the result, so it runs
*exclusive* to the other writes of its partition: it waits for the writes
in flight to end, and writes arriving meanwhile wait for it (or, asked not
to wait, :class:`FenceBusy` sends them to a thread that may).

Marks are numbers from one counter that starts at a random 62-bit value when
the worker starts, so a mark read before a worker restart does not match a
mark after it (a restarted worker refuses the drop; the handoff runs again).
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from shardserver.errors import PartitionChangedError, PartitionDroppingError

#: How long an unconditional drop or an exclusive write waits for the writes
#: in flight to end (and a write for an exclusive one).
DRAIN_TIMEOUT_S = 30.0


class FenceBusy(Exception):
    """A write asked not to wait found its partition held by an exclusive one."""


class DropFence:
    def __init__(self) -> None:
        self._cv = threading.Condition()  # guards everything below
        self._dropping: set[int] = set()
        self._inflight: Counter[int] = Counter()
        self._start = secrets.randbits(62)
        self._counter = self._start
        self._marks: dict[int, int] = {}
        self._exclusive: set[int] = set()

    def mark(self, partition: int) -> int:
        """The partition's write mark now (see the module docstring)."""
        with self._cv:
            return self._marks.get(partition, self._start)

    def dropping_now(self) -> frozenset[int]:
        with self._cv:
            return frozenset(self._dropping)

    @contextmanager
    def writing(
        self, partitions: Collection[int], *, block: bool = True, exclusive: bool = False
    ) -> Iterator[None]:
        """Around one write (batch) to ``partitions``: refused if one of
        them is being dropped; their marks change when it ends, also when
        it failed (its outcome is unknown). While an exclusive write holds
        one of them, waits (``block``) or raises FenceBusy. ``exclusive``:
        first wait for the writes in flight to end, holding new ones off."""
        with self._cv:
            self._refuse_dropping(partitions)
            if not self._exclusive.isdisjoint(partitions):
                if not block:
                    raise FenceBusy
                self._wait(lambda: self._exclusive.isdisjoint(partitions), partitions)
                self._refuse_dropping(partitions)
            if exclusive:
                self._exclusive.update(partitions)
                try:
                    self._wait(lambda: not any(self._inflight[p] for p in partitions),
                               partitions)
                    self._refuse_dropping(partitions)  # one may have begun meanwhile
                except BaseException:
                    self._exclusive.difference_update(partitions)
                    self._cv.notify_all()
                    raise
            self._inflight.update(partitions)
        try:
            yield
        finally:
            with self._cv:
                self._inflight.subtract(partitions)
                for p in partitions:
                    if self._inflight[p] <= 0:
                        del self._inflight[p]
                    self._counter += 1
                    self._marks[p] = self._counter
                if exclusive:
                    self._exclusive.difference_update(partitions)
                self._cv.notify_all()

    def _refuse_dropping(self, partitions: Collection[int]) -> None:
        busy = self._dropping.intersection(partitions)
        if busy:
            raise PartitionDroppingError(f"partition {min(busy)} is being dropped")

    def _wait(self, done: Callable[[], bool], partitions: Collection[int]) -> None:
        if not self._cv.wait_for(done, DRAIN_TIMEOUT_S):
            raise PartitionDroppingError(
                f"partitions {sorted(partitions)} busy with another write for "
                f"{DRAIN_TIMEOUT_S:.0f} s; retry"
            )

    @contextmanager
    def dropping(self, parts: range, if_mark: int | None = None) -> Iterator[None]:
        """Around the drop of ``parts``; with ``if_mark``, only if that is
        still every one of their marks and no write to them is in flight."""
        with self._cv:
            self._refuse_dropping(parts)
            if if_mark is not None:
                for p in parts:
                    if self._inflight[p] or self._marks.get(p, self._start) != if_mark:
                        raise PartitionChangedError(
                            f"partition {p} took writes since mark {if_mark}; not dropped"
                        )
            self._dropping.update(parts)
            drained = self._cv.wait_for(
                lambda: not any(self._inflight[p] for p in parts), DRAIN_TIMEOUT_S
            )
            if not drained:
                self._dropping.difference_update(parts)
                raise PartitionDroppingError(
                    f"writes to partitions {parts.start}-{parts[-1]} still in flight "
                    f"after {DRAIN_TIMEOUT_S:.0f} s; not dropped"
                )
        try:
            yield
        finally:
            with self._cv:
                self._dropping.difference_update(parts)
