"""Hinted handoff: give a partition's writes back to their owner (DESIGN §7).

Once a second the task looks at the durable hints (:mod:`coordinator.hints`).
For each hint whose owner gossip shows alive, and while fewer than
``concurrency`` transfers run, it starts a transfer::

    scan our copy of the partition page by page ──▶ ReplicaWriteSet each key
    to the owner (versions merge, so a repeat is harmless) ──▶ again if new
    hinted writes arrived meanwhile ──▶ hint deleted ──▶ our copy dropped
    once no hint for the partition is left and we are not one of its primaries

Transfers are throttled to ``throttle_bytes_per_s`` (per node), never wait
for the partition to go quiet, and back off exponentially when the owner
stops answering. Hints older than ``max_hint_window_s`` are dropped and
counted (anti-entropy covers what they held).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator import ring as ringmod
from coordinator.config import NodeConfig
from coordinator.hints import Hint, HintStore
from coordinator.ring import NodeId, Ring
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardUnavailable
from shardserver.protocol.versions import decode_siblings

log = logging.getLogger("ringkv.handoff")

PAGE_KEYS = 500
MAX_PASSES = 5
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


class HandoffHost(Protocol):
    id: NodeId
    hints: HintStore
    ring: Ring | None
    timeout_s: float

    def is_up(self, node: NodeId) -> bool: ...

    async def retarget(self, hint: Hint) -> None: ...

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply: ...

    async def local(self, request: m.Request, timeout: float) -> m.Reply: ...


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition, "owner": self.owner, "keys_sent": self.keys_sent,
            "bytes_sent": self.bytes_sent, "passes": self.passes,
            "running_s": round(time.time() - self.started, 1),
        }


class Handoff:
    def __init__(self, host: HandoffHost, config: NodeConfig) -> None:
        self.host = host
        self.concurrency = max(1, config.concurrency)
        self.throttle = max(1, config.throttle_bytes_per_s)
        self.window_ms = config.max_hint_window_s * 1000
        self.running: dict[tuple[int, str], Transfer] = {}
        self.completed = 0
        self.failed = 0
        self.keys_sent = 0
        self.bytes_sent = 0
        self.dropped_partitions = 0
        self._tasks: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[int, str], tuple[float, float]] = {}  # -> (when, delay)
        self._budget_at = time.monotonic()
        self._wake = asyncio.Event()

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)

    async def run(self) -> None:
        while True:
            await self.tick()
            # Once a second, or as soon as a transfer ends and frees a slot.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()

    async def tick(self) -> None:
        """Expire old hints and start the transfers that may start now."""
        now_ms = int(time.time() * 1000)
        for hint in self.host.hints.all():
            key = (hint.partition, hint.owner)
            if key in self._tasks:
                continue
            ring = self.host.ring
            if ring is not None and hint.owner in ring.removed:
                await self.host.retarget(hint)  # e.g. a write hinted on an older ring
                continue
            if now_ms - hint.since_ms > self.window_ms:
                log.warning("hint for partition %d of %s expired after %d s; repair covers it",
                            hint.partition, hint.owner, (now_ms - hint.since_ms) // 1000)
                await self.host.hints.remove(hint.partition, hint.owner, outcome="expired")
                await self._maybe_drop(hint.partition)
                continue
            if len(self._tasks) >= self.concurrency or not self.host.is_up(NodeId(hint.owner)):
                continue
            when, _ = self._retry_at.get(key, (0.0, 0.0))
            if time.monotonic() < when:
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
                await self._stream(t)
                if await self.host.hints.remove(
                    hint.partition, hint.owner, outcome="delivered", if_writes=writes_before
                ):
                    break
                if t.passes >= MAX_PASSES:
                    raise TransferFailed(f"partition still taking writes after {t.passes} passes")
            self.completed += 1
            self._retry_at.pop(key, None)
            log.info("handoff of partition %d to %s done: %d keys, %d bytes",
                     t.partition, t.owner, t.keys_sent, t.bytes_sent)
            await self._maybe_drop(hint.partition)
        except (TransferFailed, ShardUnavailable) as exc:
            self.failed += 1
            _, delay = self._retry_at.get(key, (0.0, BACKOFF_INITIAL_S / 2))
            delay = min(BACKOFF_MAX_S, delay * 2)
            self._retry_at[key] = (time.monotonic() + delay, delay)
            log.info("handoff of partition %d to %s paused (%s); retry in %.1f s",
                     t.partition, t.owner, exc, delay)
        finally:
            self.running.pop(key, None)

    async def _stream(self, t: Transfer) -> None:
        after: bytes | None = None
        owner = NodeId(t.owner)
        while True:
            reply = await self.host.local(m.ScanPartition(t.partition, after, PAGE_KEYS),
                                          self.host.timeout_s)
            if not reply.ok:
                raise TransferFailed(f"scan of our copy: {reply.status.name} {reply.message}")
            items = reply.payload["items"]
            calls = [
                self.host.call(owner, m.ReplicaWriteSet(t.partition, k, decode_siblings(s)),
                               self.host.timeout_s)
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
                return

    async def _throttle(self, size: int) -> None:
        """Keep the node's handoff traffic under ``throttle`` bytes/s."""
        self._budget_at = max(self._budget_at, time.monotonic()) + size / self.throttle
        delay = self._budget_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _maybe_drop(self, partition: int) -> None:
        ring = self.host.ring
        if self.host.hints.for_partition(partition) or ring is None:
            return
        if self.host.id in ringmod.primaries(ring, partition):
            return
        reply = await self.host.local(m.DropPartition(partition), max(60.0, self.host.timeout_s))
        if reply.ok:
            self.dropped_partitions += 1
        else:
            log.warning("dropping handed-off partition %d: %s %s", partition,
                        reply.status.name, reply.message)

    def backlog(self) -> dict[str, dict[str, Any]]:
        """Per target: partitions, hinted writes, bytes and the oldest hint's age."""
        now_ms = int(time.time() * 1000)
        out: dict[str, dict[str, Any]] = {}
        for h in self.host.hints.all():
            b = out.setdefault(h.owner, {"partitions": 0, "writes": 0, "bytes": 0, "oldest_s": 0})
            b["partitions"] += 1
            b["writes"] += h.writes
            b["bytes"] += h.bytes
            b["oldest_s"] = max(b["oldest_s"], (now_ms - h.since_ms) // 1000)
        return out
