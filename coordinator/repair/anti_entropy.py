"""Merkle anti-entropy between replicas (DESIGN §8; docs/anti-entropy.md).

Every worker keeps a Merkle tree per partition (``shardserver.aae``). This
node repairs a partition it is a primary of against each other live primary
in turn, one pair at a time, this node being one side (``a``)::

    roots ──differ──▶ children of differing roots ──differ──▶ leaves
      ──▶ BucketDigests of the differing leaves, from both sides
      ──▶ keys whose digest differs or is missing on one side
      ──▶ ReplicaRead from both, merge, ReplicaWriteSet to the side(s) lacking

so traffic follows the difference: 16 bytes per tree node compared, the keys
of differing leaf buckets, and the sibling sets of differing keys. When a
later pair brought this node something new, the earlier pairs run once more,
so after one ``repair_partition`` every live primary holds the same sets.

Corruption: two copies of one version identity ``(hlc, actor)`` with
different values cannot both be right (an actor writes one value per HLC).
Merging would keep both as siblings, so such a key is decided by a vote of
every live primary's copy: the value most replicas hold wins and replaces the
other through ``ReplicaRepairSet``; without a strict majority the key is
left alone and reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId
from coordinator.data import votes
from coordinator.repair.replicas import Replicas
from coordinator.repair.reports import RepairReport
from shardserver.protocol import merkle
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.messages import Request
from shardserver.protocol.versions import (
    DEFAULT_SIBLING_CAP,
    SiblingSet,
    decode_siblings,
    encode_siblings,
    merge_sets,
)

log = logging.getLogger("ringkv.aae")

#: Tree levels and bucket digests may wait for a scan of the partition.
TREE_TIMEOUT_S = 60.0
#: Leaf buckets per BucketDigests call, keys per batch of reads and writes:
#: bounds each reply and the calls in flight.
BUCKETS_PER_CALL = 64
KEYS_PER_BATCH = 64

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (partitions done, partitions total)


class _Failed(Exception):
    """A replica call failed; the message says which and why."""


class AntiEntropy:
    def __init__(
        self,
        replicas: Replicas,
        *,
        interval_s: float = 60.0,
        sibling_cap: int = DEFAULT_SIBLING_CAP,
        concurrency: int = 2,
    ) -> None:
        self.replicas = replicas
        self.interval_s = interval_s
        self.sibling_cap = sibling_cap
        self.concurrency = max(1, concurrency)
        self.last_repair_ms = 0  # wall clock of the last finished partition; 0: never
        self.rounds = 0  # background passes over all of this node's partitions
        self.total = RepairReport()  # every repair since start, background or not
        self._next = 0
        self._locks: dict[int, asyncio.Lock] = {}

    # -- entry points ---------------------------------------------------------------
    def primary_partitions(self) -> list[int]:
        ring = self.replicas.ring
        return [] if ring is None else list(ringmod.replicated_partitions(ring, self.replicas.id))

    async def repair(
        self, partitions: Iterable[int] | None = None, progress: Progress | None = None
    ) -> RepairReport:
        """Repair ``partitions`` (None: every partition this node is a primary of)."""
        started = time.monotonic()
        parts = self.primary_partitions() if partitions is None else list(partitions)
        report = RepairReport()
        if self.replicas.ring is None:
            report.error("the ring is not formed yet")
            return report
        gate = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(p: int) -> None:
            nonlocal done
            async with gate:
                report.add(await self.repair_partition(p))
            done += 1
            if progress is not None:
                progress(done, len(parts))

        await asyncio.gather(*(one(p) for p in parts))
        report.seconds = round(time.monotonic() - started, 3)
        return report

    async def run(self) -> None:
        """Forever: one partition every ``interval_s``, round robin over this
        node's primary partitions. Errors are logged, never raised."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._tick()
            except Exception:
                log.exception("anti-entropy: a background repair failed")

    async def _tick(self) -> None:
        parts = self.primary_partitions()
        if not parts:
            return
        p = parts[self._next % len(parts)]
        self._next += 1
        report = await self.repair_partition(p)
        if self._next % len(parts) == 0:
            self.rounds += 1
        if report.keys_repaired or report.error_count:
            log.info("anti-entropy partition %d: %d keys compared, %d repaired (%d corrupt), "
                     "%d errors%s", p, report.keys_compared, report.keys_repaired,
                     report.corrupt_fixed, report.error_count,
                     f", first: {report.errors[0]}" if report.errors else "")

    async def repair_partition(self, partition: int) -> RepairReport:
        """This node against every other live primary of ``partition``."""
        started = time.monotonic()
        report = RepairReport(partitions=1)
        ring, me = self.replicas.ring, self.replicas.id
        if ring is None:
            report.error("the ring is not formed yet")
            return report
        if isinstance(partition, bool) or not isinstance(partition, int) \
                or not 0 <= partition < ring.q:
            report.error(f"partition {partition!r} out of range 0..{ring.q - 1}")
            return report
        primaries = ringmod.primaries(ring, partition)
        if me not in primaries:
            report.error(f"{me} is not a primary of partition {partition}")
            return report
        async with self._locks.setdefault(partition, asyncio.Lock()):
            done: list[NodeId] = []
            again: list[NodeId] = []
            for peer in primaries:
                if peer == me:
                    continue
                if not self.replicas.is_up(peer):
                    report.pairs_skipped += 1
                    continue
                if await self._pair(partition, peer, report):
                    again = list(done)  # they lack what this peer just gave us
                done.append(peer)
            for peer in again:
                if self.replicas.is_up(peer):
                    await self._pair(partition, peer, report)
        report.seconds = round(time.monotonic() - started, 3)
        self.last_repair_ms = int(time.time() * 1000)
        self.total.add(report)
        return report

    # -- one pair -------------------------------------------------------------------
    async def _pair(self, p: int, peer: NodeId, report: RepairReport) -> bool:
        """Exchange with ``peer``; True if this node's copy changed."""
        me = self.replicas.id
        report.pairs += 1
        try:
            buckets = await self._differing_buckets(p, peer, report)
        except _Failed as exc:
            report.error(f"partition {p}, {me} vs {peer}: {exc}")
            return False
        report.buckets_differing += len(buckets)
        changed = False
        for chunk in _batches(buckets, BUCKETS_PER_CALL):
            try:
                da, db = await _both(self._digests(me, p, chunk), self._digests(peer, p, chunk))
            except _Failed as exc:
                report.error(f"partition {p}, {me} vs {peer}: {exc}")
                return changed
            report.bytes_exchanged += sum(len(k) + len(d) for k, d in (*da.items(), *db.items()))
            keys = da.keys() | db.keys()
            report.keys_compared += len(keys)
            differing = sorted(k for k in keys if da.get(k) != db.get(k))
            report.keys_differing += len(differing)
            for batch in _batches(differing, KEYS_PER_BATCH):
                results = await asyncio.gather(
                    *(self._repair_key(p, peer, key, report) for key in batch),
                    return_exceptions=True,
                )
                for key, result in zip(batch, results, strict=True):
                    if isinstance(result, _Failed):
                        report.error(f"partition {p} key {key!r}, {me} vs {peer}: {result}")
                    elif isinstance(result, BaseException):
                        raise result
                    else:
                        changed |= result
        return changed

    async def _differing_buckets(self, p: int, peer: NodeId, report: RepairReport) -> list[int]:
        frontier = [0]
        for depth in range(merkle.DEPTH + 1):
            ours, theirs = await _both(
                self._level(self.replicas.id, p, depth, frontier),
                self._level(peer, p, depth, frontier),
            )
            report.bytes_exchanged += 2 * merkle.NODE_BYTES * len(frontier)
            frontier = merkle.differing(ours, theirs, frontier)
            if not frontier:
                return []
            if depth < merkle.DEPTH:
                frontier = merkle.children(frontier)
        return frontier

    async def _repair_key(self, p: int, peer: NodeId, key: bytes, report: RepairReport) -> bool:
        """Make both sides hold the merge of their sets; True if ours changed."""
        me = self.replicas.id
        ours, theirs = await _both(self._read(me, p, key), self._read(peer, p, key))
        winners: dict[votes.Identity, bytes | None] = {}
        conflicts = votes.conflicts([ours, theirs])
        if conflicts:
            copies = [ours, theirs, *await self._witnesses(p, key, (me, peer))]
            winners, undecided = votes.vote(conflicts, copies)
            if undecided:
                report.error(f"partition {p} key {key!r}: copies of one version differ and "
                             f"no majority of {len(copies)} replicas decides ({me} vs {peer})")
                return False
        clean = [votes.without_losers(s, winners) for s in (ours, theirs)]
        merged = merge_sets(clean[0], clean[1], self.sibling_cap).siblings
        size = len(key) + len(encode_siblings(merged))
        wrote = changed_me = False
        for node, stored, kept in ((me, ours, clean[0]), (peer, theirs, clean[1])):
            if stored == merged:
                continue
            rotten = kept != stored
            request: Request = (m.ReplicaRepairSet(p, key, merged) if rotten
                                else m.ReplicaWriteSet(p, key, merged))
            await self._ok(node, request, self.replicas.timeout_s)
            report.bytes_sent += size
            report.corrupt_fixed += rotten
            wrote = True
            changed_me |= node == me
        report.keys_repaired += wrote
        return changed_me

    async def _witnesses(self, p: int, key: bytes, pair: Sequence[NodeId]) -> list[SiblingSet]:
        """The copies of ``key`` on the other live primaries (the vote's third
        parties); a replica that does not answer does not vote."""
        ring = self.replicas.ring
        others = [n for n in (ringmod.primaries(ring, p) if ring else ())
                  if n not in pair and self.replicas.is_up(n)]
        got = await asyncio.gather(*(self._read(n, p, key) for n in others),
                                   return_exceptions=True)
        return [s for s in got if isinstance(s, tuple)]

    # -- calls ------------------------------------------------------------------------
    async def _ok(self, node: NodeId, request: Request, timeout: float) -> Any:
        try:
            reply = await self.replicas.call(node, request, timeout)
        except ShardUnavailable as exc:
            raise _Failed(f"{node} unreachable: {exc.reason}") from None
        except OSError as exc:
            raise _Failed(f"{node} unreachable: {exc}") from None
        if not reply.ok:
            raise _Failed(f"{m.op_of(request)} on {node}: {reply.status.name} {reply.message}")
        return reply.payload

    def _tree_timeout(self) -> float:
        return max(self.replicas.timeout_s, TREE_TIMEOUT_S)

    async def _level(self, node: NodeId, p: int, depth: int, indices: list[int]) -> list[int]:
        payload = await self._ok(node, m.TreeLevel(p, depth, tuple(indices)), self._tree_timeout())
        return merkle.unpack_nodes(payload)

    async def _digests(self, node: NodeId, p: int, buckets: list[int]) -> dict[bytes, bytes]:
        payload = await self._ok(node, m.BucketDigests(p, tuple(buckets)), self._tree_timeout())
        return {k: d for k, d in payload}

    async def _read(self, node: NodeId, p: int, key: bytes) -> SiblingSet:
        payload = await self._ok(node, m.ReplicaRead(p, key), self.replicas.timeout_s)
        try:
            return () if payload is None else decode_siblings(payload)
        except ValueError as exc:
            raise _Failed(f"unreadable sibling set from {node}: {exc}") from None


# -- pure helpers ------------------------------------------------------------------------


def _batches(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


async def _both(a: Awaitable[T], b: Awaitable[T]) -> tuple[T, T]:
    """Await both (concurrently); the first failure is raised after both ended."""
    ra, rb = await asyncio.gather(a, b, return_exceptions=True)
    if isinstance(ra, BaseException):
        raise ra
    if isinstance(rb, BaseException):
        raise rb
    return ra, rb
