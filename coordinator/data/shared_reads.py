"""Reads that share work: request coalescing and the hot-key cache (issue 15).

**Coalescing.** A GET (VGET, EXISTS, MGET's keys) of a key that has a quorum
read in flight at this coordinator, with the same levels, waits for that
read's answer instead of starting its own. Guarantee: a read never returns
a value older than a write this coordinator acknowledged before the read
arrived. A write to a key, when it starts and again when it is
acknowledged, takes the key's reads in flight off the table (nothing joins
them any more) and marks them stale (their answer is not cached): a read
that arrives after an acknowledged write either starts a round after that
write's quorum was reached, or joins one that did.

**The hot-key cache** (off unless ``cache_ms`` > 0): the answer of a read of
a *hot* key (read at least ``hot_reads_per_s`` by the sketch) is kept as
its sibling set (values and versions), stamped with the time the read
*started*, and served for ``cache_ms`` from then, never later. Writes
through this coordinator drop the key's entry when they start and when
they are acknowledged. A write through another node is not seen here, so
the bound is: a write acknowledged anywhere at time t is in every GET that
reaches this coordinator after t + ``cache_ms`` (as it would be without the
cache, given R + W > N). Reads with R = N or PR > 0 ask for more than the
cache can promise and bypass it. Entries are per (key, levels), at most
``tracked`` keys, oldest dropped first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.config import NodeConfig
from coordinator.data.hotkeys import HotKeys
from coordinator.data.quorum import Consistency
from shardserver.protocol.versions import SiblingSet

if TYPE_CHECKING:
    from coordinator.data.datapath import DataStats


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """The node's hot-key and read settings (``[hotkeys]``, ``[reads]``)."""

    me: str = ""  # this node's id
    n: int = 3
    tracked: int = 256
    window_s: float = 10.0
    hot_reads_per_s: float = 100.0
    coalesce: bool = True
    cache_ms: int = 0
    fanout: str = "all"
    hedge: bool = True
    hedge_max_ratio: float = 0.1

    @classmethod
    def of(cls, c: NodeConfig) -> ReadOptions:
        return cls(c.id, c.n, c.hotkeys_tracked, c.hotkeys_window_s, c.hot_reads_per_s,
                   c.coalesce_reads, c.cache_ms, c.read_fanout, c.hedge_reads,
                   c.hedge_max_ratio)


class Pending:
    """One quorum read in flight and who waits for its answer."""

    __slots__ = ("fresh", "levels", "started", "waiters")

    def __init__(self, levels: Consistency, started: float,
                 first: asyncio.Future[SiblingSet]) -> None:
        self.levels = levels
        self.started = started
        self.waiters = [first]
        self.fresh = True  # no write to the key started or was acknowledged since


class SharedReads:
    """The reads in flight by key and levels, and the hot-key cache."""

    def __init__(self, options: ReadOptions, hotkeys: HotKeys, stats: DataStats) -> None:
        self.options = options
        self.hotkeys = hotkeys
        self.stats = stats
        self._cache_s = options.cache_ms / 1000
        self._inflight: dict[bytes, dict[Consistency, Pending]] = {}
        self._cache: dict[bytes, dict[Consistency, tuple[SiblingSet, float]]] = {}

    def _cacheable(self, levels: Consistency) -> bool:
        return bool(self._cache_s) and (levels.r or 1) < self.options.n and not levels.pr

    def find(self, key: bytes, levels: Consistency) -> asyncio.Future[SiblingSet] | None:
        """The answer of ``key`` at ``levels`` from the cache or a read in
        flight, or None: the caller starts a read (:meth:`start`)."""
        if self._cacheable(levels):
            entries = self._cache.get(key)
            hit = entries.get(levels) if entries is not None else None
            if entries is not None and hit is not None:
                if time.monotonic() - hit[1] < self._cache_s:
                    self.stats.cache_hits += 1
                    fut: asyncio.Future[SiblingSet] = asyncio.get_running_loop().create_future()
                    fut.set_result(hit[0])
                    return fut
                del entries[levels]  # expired
            if self.hotkeys.is_hot(key, self.options.hot_reads_per_s):
                self.stats.cache_misses += 1
        if self.options.coalesce:
            pending = self._inflight.get(key)
            shared = pending.get(levels) if pending else None
            if shared is not None:
                self.stats.coalesced_reads += 1
                joined: asyncio.Future[SiblingSet] = asyncio.get_running_loop().create_future()
                shared.waiters.append(joined)
                return joined
        return None

    def start(self, key: bytes, levels: Consistency,
              first: asyncio.Future[SiblingSet]) -> Pending:
        """A quorum read of ``key`` starts now; ``first`` waits for it."""
        pending = Pending(levels, time.monotonic(), first)
        self._inflight.setdefault(key, {})[levels] = pending
        return pending

    def _end(self, key: bytes, pending: Pending) -> None:
        entries = self._inflight.get(key)
        if entries is not None and entries.get(pending.levels) is pending:
            del entries[pending.levels]
            if not entries:
                del self._inflight[key]

    def answered(self, key: bytes, pending: Pending, merged: SiblingSet) -> None:
        """The read's quorum answered ``merged``: to every waiter, and to the
        cache if the key is hot and no write came meanwhile."""
        self._end(key, pending)
        for fut in pending.waiters:
            if not fut.done():
                fut.set_result(merged)
        if (pending.fresh and self._cacheable(pending.levels)
                and self.hotkeys.is_hot(key, self.options.hot_reads_per_s)):
            entries = self._cache.pop(key, None) or {}  # re-inserted last: the newest
            entries[pending.levels] = (merged, pending.started)
            self._cache[key] = entries
            if len(self._cache) > self.options.tracked:
                del self._cache[next(iter(self._cache))]

    def failed(self, key: bytes, pending: Pending, error: BaseException) -> None:
        self._end(key, pending)
        for fut in pending.waiters:
            if not fut.done():
                fut.set_exception(error)

    def wrote(self, key: bytes) -> None:
        """A write to ``key`` started or was acknowledged here: reads in
        flight are no longer joined nor cached, the cached answer goes."""
        entries = self._inflight.pop(key, None)
        if entries is not None:
            for pending in entries.values():
                pending.fresh = False
        if self._cache:
            self._cache.pop(key, None)
