"""Hinted handoff: give a partition's writes back to their owner (DESIGN §7).

Once a second the task looks at the durable hints (:mod:`coordinator.repair.hints`).
For each hint whose owner gossip shows alive, and while fewer than
``concurrency`` transfers run, it starts a transfer::

    scan our copy of the partition page by page ──▶ ReplicaWriteSet each key
    to the owner (versions merge, so a repeat is harmless) ──▶ again if new
    hinted writes arrived meanwhile ──▶ hint deleted ──▶ our copy dropped
    once no hint for the partition is left and we are not one of its primaries,
    if no write reached it since the last pass began (compare-and-drop)

Transfers are throttled to ``throttle_bytes_per_s`` (per node), never wait
for the partition to go quiet, and back off exponentially when the owner
stops answering.

No copy is dropped while some of its data may exist only here:

* a hint is deleted only once delivered. Past ``max_hint_window_s`` after
  its latest hinted write it is *expired* (parked): counted and reported,
  its failed transfers wait ``PARKED_RETRY_S`` instead of backing off from
  0.5 s, and it is tried again at once when its owner comes back;
* the drop carries the partition's write mark read before the last pass
  (``shardserver.fence``): a write that reached the worker since, hinted or
  not (a coordinator on a stale ring), makes the worker refuse the drop, and
  the copy is hinted again to the partition's primaries;
* every ``sweep_interval_s`` :meth:`Handoff.sweep` looks for copies of
  partitions this node does not replicate and holds no hint for (a write
  that arrived after a drop, a crash between a delivery and its drop) and
  hints them to the partition's primaries: the anti-entropy of fallback
  copies, which have no replica to compare trees with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.cluster import ring as ringmod
from coordinator.cluster.membership import HintCopies, HintEffect, RetargetHints
from coordinator.cluster.ring import NodeId
from coordinator.config import NodeConfig
from coordinator.repair.hints import Hint, HintStore
from coordinator.repair.replicas import LocalReplicas
from coordinator.repair.reports import HintBacklog
from shardserver.protocol import messages as m
from shardserver.protocol.backoff import Backoff
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.versions import decode_siblings

log = logging.getLogger("ringkv.handoff")

PAGE_KEYS = 500
MAX_PASSES = 5
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: An expired hint's failed transfer waits this long (or until its owner
#: comes back), not the short exponential backoff.
PARKED_RETRY_S = 300.0
#: A drop compacts the partition's key range.
DROP_TIMEOUT_S = 60.0


class TransferFailed(Exception):
    pass


@dataclass(slots=True)
class Transfer:
    partition: int
    owner: str
    started: float = field(default_factory=time.time)
    keys_sent: int = 0
    bytes_sent: int = 0
    passes: int = 0


class Handoff:
    def __init__(self, replicas: LocalReplicas, hints: HintStore, config: NodeConfig) -> None:
        self.replicas = replicas
        self.hints = hints
        self.concurrency = max(1, config.concurrency)
        self.throttle = max(1, config.throttle_bytes_per_s)
        self.window_ms = config.max_hint_window_s * 1000
        self.sweep_interval_s = max(1.0, config.aae_interval_s)
        self.running: dict[tuple[int, str], Transfer] = {}
        self.completed = 0
        self.failed = 0
        self.keys_sent = 0
        self.bytes_sent = 0
        self.dropped_partitions = 0
        self.drops_refused = 0  # a write reached the copy after the last pass
        self.strays_found = 0  # copies the sweep found without a hint
        self._tasks: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._changes: set[asyncio.Task[None]] = set()  # hints a ring change makes
        self._retries: dict[tuple[int, str], Backoff] = {}  # failed transfers' next try
        self._was_up: dict[str, bool] = {}
        self._dropping: set[int] = set()
        self._budget_at = time.monotonic()
        self._sweep_at = time.monotonic() + self.sweep_interval_s
        self._wake = asyncio.Event()

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._changes]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def run(self) -> None:
        while True:
            await self.tick()
            if time.monotonic() >= self._sweep_at:
                self._sweep_at = time.monotonic() + self.sweep_interval_s
                try:
                    await self.sweep()
                except Exception:  # the next sweep tries again; handoff goes on
                    log.exception("handoff: the sweep for unhinted copies failed")
            # Once a second, or as soon as a transfer ends and frees a slot.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()

    def owner_back(self, owner: str) -> None:
        """``owner`` came back (up again, or restarted): its hints are tried
        at the next tick, whatever their backoff or parking says."""
        for key in [k for k in self._retries if k[1] == owner]:
            del self._retries[key]
        self._wake.set()

    def ring_changed(self, effects: Sequence[HintEffect]) -> None:
        """A new ring moves copies (``cluster.membership``): our copy of a
        partition goes to its new primaries; hints held for a removed node
        go to the partition's primaries. One write of the hint file for all
        of them."""
        now = int(time.time() * 1000)
        pairs = [(e.partition, owner) for e in effects if isinstance(e, HintCopies)
                 for owner in e.owners]
        if pairs:
            self._spawn(self.hints.add_many(pairs, now), "hint copies of a ring change")
        removed = {n for e in effects if isinstance(e, RetargetHints) for n in e.removed}
        if removed:
            self._spawn(self.retarget([h for h in self.hints.all() if h.owner in removed]),
                        "retarget hints of removed nodes")

    async def retarget(self, hints: Sequence[Hint]) -> None:
        """Writes we hold for removed nodes go to the partitions' primaries
        instead (versions merge: those that have them lose nothing). The
        new records are durable before the old ones go."""
        ring = self.replicas.ring
        assert ring is not None
        now = int(time.time() * 1000)
        await self.hints.add_many([(h.partition, owner) for h in hints
                                   for owner in ringmod.primaries(ring, h.partition)
                                   if owner != self.replicas.id], now)
        await self.hints.moved([(h.partition, h.owner) for h in hints])

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._changes.add(task)
        task.add_done_callback(self._change_done)

    def _change_done(self, task: asyncio.Task[None]) -> None:
        self._changes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s died", task.get_name(), exc_info=task.exception())

    async def tick(self) -> None:
        """Mark expired hints and start the transfers that may start now."""
        hints = self.hints
        for hint in hints.expire(int(time.time() * 1000), self.window_ms):
            log.warning("hint for partition %d of %s expired: no hinted write for %d s and not "
                        "delivered; the copy is kept and handed off when %s is back (or to the "
                        "new primaries if it is removed)", hint.partition, hint.owner,
                        self.window_ms // 1000, hint.owner)
        try:
            await hints.save_touches()
        except OSError as exc:
            log.warning("cannot save hint times: %s", exc)
        ring = self.replicas.ring
        if ring is not None and (stale := [h for h in hints.all() if h.owner in ring.removed
                                           and (h.partition, h.owner) not in self._tasks]):
            await self.retarget(stale)  # e.g. writes hinted on an older ring
        for hint in hints.all():
            key = (hint.partition, hint.owner)
            if key in self._tasks:
                continue
            up = self.replicas.is_up(NodeId(hint.owner))
            if up and not self._was_up.get(hint.owner, True):
                self.owner_back(hint.owner)
            self._was_up[hint.owner] = up
            if len(self._tasks) >= self.concurrency or not up:
                continue
            retry = self._retries.get(key)
            if retry is not None and retry.remaining() > 0:
                continue
            task = asyncio.create_task(self._transfer(hint), name=f"handoff {key}")
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[int, str], task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("handoff task %s crashed", key, exc_info=task.exception())

    async def _transfer(self, hint: Hint) -> None:
        key = (hint.partition, hint.owner)
        t = Transfer(hint.partition, hint.owner)
        self.running[key] = t
        try:
            while True:
                writes_before = hint.writes
                t.passes += 1
                mark = await self._stream(t)
                if await self.hints.remove(
                    hint.partition, hint.owner, outcome="delivered", if_writes=writes_before
                ):
                    break
                if t.passes >= MAX_PASSES:
                    raise TransferFailed(f"partition still taking writes after {t.passes} passes")
            self.completed += 1
            self._retries.pop(key, None)
            log.info("handoff of partition %d to %s done: %d keys, %d bytes",
                     t.partition, t.owner, t.keys_sent, t.bytes_sent)
            await self._maybe_drop(hint.partition, mark)
        except (TransferFailed, ShardUnavailable) as exc:
            self.failed += 1
            retry = self._retries.setdefault(key, Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S))
            if hint.expired:
                retry.hold(PARKED_RETRY_S)
            else:
                retry.failed()
            delay = retry.delay
            log.info("handoff of partition %d to %s paused (%s); retry in %.1f s",
                     t.partition, t.owner, exc, delay)
        finally:
            self.running.pop(key, None)

    async def _stream(self, t: Transfer) -> int:
        """One pass over our copy; returns the partition's write mark read
        before the pass began (every write it counts was sent)."""
        after: bytes | None = None
        owner = NodeId(t.owner)
        mark: int | None = None
        while True:
            reply = await self.replicas.local(m.ScanPartition(t.partition, after, PAGE_KEYS),
                                          self.replicas.timeout_s)
            if not reply.ok:
                raise TransferFailed(f"scan of our copy: {reply.status.name} {reply.message}")
            if mark is None:
                mark = int(reply.payload["mark"])
            items = reply.payload["items"]
            calls = [
                self.replicas.call(owner, m.ReplicaWriteSet(t.partition, k, decode_siblings(s)),
                               self.replicas.timeout_s)
                for k, s in items
            ]
            for r in await asyncio.gather(*calls):
                if not r.ok:
                    raise TransferFailed(f"{t.owner} answered {r.status.name} {r.message}")
            size = sum(len(k) + len(s) for k, s in items)
            t.keys_sent += len(items)
            t.bytes_sent += size
            self.keys_sent += len(items)
            self.bytes_sent += size
            await self._throttle(size)
            after = reply.payload.get("next")
            if after is None:
                return mark

    async def _throttle(self, size: int) -> None:
        """Keep the node's handoff traffic under ``throttle`` bytes/s."""
        self._budget_at = max(self._budget_at, time.monotonic()) + size / self.throttle
        delay = self._budget_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _replicates(self, partition: int) -> bool:
        ring = self.replicas.ring
        return ring is None or self.replicas.id in ringmod.primaries(ring, partition)

    async def _maybe_drop(self, partition: int, mark: int) -> None:
        """Drop our delivered copy if no hint for it is left, we do not
        replicate it, and the worker took no write since ``mark``."""
        if self.hints.for_partition(partition) or self._replicates(partition):
            return
        self._dropping.add(partition)
        try:
            reply = await self.replicas.local(m.DropPartition(partition, 1, mark), DROP_TIMEOUT_S)
        except ShardUnavailable as exc:
            reply = m.Reply.error(m.Status.UNAVAILABLE, exc.reason)
        finally:
            self._dropping.discard(partition)
        if reply.ok:
            self.dropped_partitions += 1
            return
        if reply.status is m.Status.CONFLICT:
            self.drops_refused += 1
            log.info("partition %d took writes after its last handoff pass; kept and hinted "
                     "again", partition)
        else:
            log.warning("dropping handed-off partition %d: %s %s", partition,
                        reply.status.name, reply.message)
        await self._hint_primaries(partition)

    async def _hint_primaries(self, partition: int) -> None:
        """Make sure some hint covers our copy of ``partition``: if none is
        left, one for each of its primaries (versions merge, so a primary
        that has the data loses nothing)."""
        ring = self.replicas.ring
        if ring is None or self.hints.for_partition(partition):
            return
        try:
            await self.hints.add_many([(partition, owner) for owner in
                                       ringmod.primaries(ring, partition)
                                       if owner != self.replicas.id], int(time.time() * 1000))
        except OSError as exc:  # the next sweep tries again
            log.warning("cannot record hints for partition %d: %s", partition, exc)

    async def sweep(self) -> int:
        """Hint every copy this node holds of a partition it does not
        replicate and has no hint, transfer or drop for; returns how many
        it found. Errors are logged: the next sweep tries again."""
        ring = self.replicas.ring
        if ring is None:
            return 0
        busy = {p for p, _ in self._tasks} | self._dropping
        found = 0
        for p in range(ring.q):
            if self._replicates(p) or p in busy or self.hints.for_partition(p):
                continue
            try:
                reply = await self.replicas.local(m.ScanPartition(p, None, 1),
                                                  self.replicas.timeout_s)
            except ShardUnavailable:
                continue
            if not reply.ok or not reply.payload["items"] or self.hints.for_partition(p):
                continue
            found += 1
            log.warning("partition %d: this node holds a copy it does not replicate and no "
                        "hint for it; handing it to the primaries", p)
            await self._hint_primaries(p)
        self.strays_found += found
        return found

    def backlog(self) -> dict[str, HintBacklog]:
        """What this node holds for each target."""
        now_ms = int(time.time() * 1000)
        out: dict[str, HintBacklog] = {}
        for h in self.hints.all():
            b = out.get(h.owner, HintBacklog())
            out[h.owner] = HintBacklog(
                b.partitions + 1, b.expired + h.expired, b.writes + h.writes, b.bytes + h.bytes,
                max(b.oldest_s, (now_ms - h.since_ms) // 1000))
        return out
