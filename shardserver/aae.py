"""A worker's Merkle trees, one per partition, kept current under writes (DESIGN §8).

Each tree is over ``(key, digest of the stored sibling set)`` (see
``shardserver.protocol.merkle``). Trees live in memory only: a tree is built
by a paged scan of its partition the first time a peer asks for it (so
after every restart), then every write updates it incrementally, and it is
forgotten with its partition.

Scans run while writes go on, without stopping them. Every write registers
its keys as *pending* before its engine write and reports ``(old, new)``
after it (``begin_write`` / ``end_write``, both under the striped key locks
of ``ShardStore._apply``). A scan ``s`` keeps a cursor: keys ``<= cursor``
are accounted for in ``s.tree`` and follow every write from then on. One
page of the scan is::

    1. locked:   clear s.observed                 (writes beyond the cursor
                                                    that complete from now on)
    2. unlocked: read the page (cursor, next]     (the engine's view at some
                                                    moment between 1 and 3)
    3. locked:   for every key of the page's range:
                   pending now      -> s.skipped  (its write adds its new value)
                   completed in 1-3 -> its latest value from s.observed
                   else             -> the value the page read
                 cursor := next

A key not pending now and not completed during 1-3 had no write in flight
while the page was read, so the page's value is current. A key skipped in
3 is absent from the tree, so its completion adds the new value instead of
replacing the old. The lock is held for in-memory work only, never for an
engine read, so writers wait microseconds, not a page read.

Bucket rescans (``bucket_digests``, what a peer asks for when a leaf
differs) are the same scan restricted to some buckets. At the end their
leaves replace the tree's: what the engine holds wins over a tree that
drifted (compaction drops old tombstones and not-held partitions without
telling the tree). A failed engine write forgets the partition's tree and
restarts its scans, as its outcome is unknown.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from shardserver.errors import ScanAborted
from shardserver.protocol import versions
from shardserver.protocol.merkle import MerkleTree, bucket_of
from shardserver.protocol.versions import SiblingSet

#: ``scan_raw(partition, after, limit) -> (items, next_after)`` of the store.
ScanPage = Callable[[int, bytes | None, int], tuple[list[tuple[bytes, bytes]], bytes | None]]

DEFAULT_PAGE_KEYS = 500
#: A scan restarts when its partition is dropped or an engine write fails;
#: past this many restarts it gives up (the engine is failing every write).
MAX_RESTARTS = 10
#: After a page that took t seconds, a scan sleeps ``t * ratio`` (at most
#: ``MAX_PAUSE_S``), so a build takes at most 2/3 of one pool thread.
DEFAULT_PAUSE_RATIO = 0.5
MAX_PAUSE_S = 0.05


def stored_digest(raw: bytes) -> bytes:
    """Digest of a stored sibling set. Stored values are canonical
    ``encode_siblings`` output, so this is ``versions.digest`` of the
    decoded set, without decoding it."""
    return hashlib.blake2b(raw, digest_size=versions.DIGEST_BYTES).digest()


def _digest(raw: bytes | None) -> bytes | None:
    return None if raw is None else stored_digest(raw)


def without_conflicts(keep: SiblingSet, other: SiblingSet) -> SiblingSet:
    """``other`` minus its versions that claim the identity ``(hlc, actor)``
    of a version in ``keep`` with another value. An actor writes one value
    per HLC, so such a pair means one copy is corrupt; merging would keep
    both as siblings and spread the bad one (docs/anti-entropy.md)."""
    ids = {(v.hlc, v.actor): v.value for v in keep}
    return tuple(
        v for v in other if (v.hlc, v.actor) not in ids or ids[(v.hlc, v.actor)] == v.value
    )


class _Scan:
    """A tree over one partition (or some of its buckets), filled page by
    page while writes go on; ``done`` once every key is accounted for."""

    __slots__ = ("buckets", "cursor", "done", "keep", "observed", "reset", "skipped", "tree",
                 "values")

    def __init__(self, buckets: frozenset[int] | None, keep: bool) -> None:
        self.buckets = buckets
        self.keep = keep  # remember each key's stored value (bucket rescans answer with them)
        self.clear()

    def clear(self) -> None:
        self.tree = MerkleTree()
        self.cursor: bytes | None = None  # keys <= cursor are accounted for
        self.done = False
        # Keys left out because their write was in flight when their page was
        # read: that write's completion adds its new value.
        self.skipped: set[bytes] = set()
        # Completions beyond the cursor during a page read (latest value).
        self.observed: dict[bytes, bytes | None] = {}
        self.values: dict[bytes, bytes] = {}
        self.reset = False  # partition forgotten meanwhile: start over

    def covers(self, key: bytes) -> bool:
        return self.buckets is None or bucket_of(key) in self.buckets

    def passed(self, key: bytes) -> bool:
        return self.done or (self.cursor is not None and key <= self.cursor)

    def apply(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """A write of ``key`` completed; ``old``/``new`` are stored values."""
        if not self.passed(key):
            self.observed[key] = new  # the scan has yet to read it
            return
        if key in self.skipped:
            self.skipped.discard(key)
            old = None  # the scan left it out of the tree
        elif old == new:
            return
        self.tree.update(key, _digest(old), _digest(new))
        if self.keep:
            if new is None:
                self.values.pop(key, None)
            else:
                self.values[key] = new


class PartitionTrees:
    """The trees of one store; every method is thread-safe."""

    def __init__(
        self,
        scan_page: ScanPage,
        *,
        page_keys: int = DEFAULT_PAGE_KEYS,
        pause_ratio: float = DEFAULT_PAUSE_RATIO,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._scan_page = scan_page
        self.page_keys = page_keys
        self.pause_ratio = pause_ratio
        self._sleep = sleep
        self._lock = threading.Lock()
        self._trees: dict[int, _Scan] = {}  # complete trees
        self._scans: dict[int, list[_Scan]] = {}  # running scans
        self._building: dict[int, threading.Event] = {}
        self._pending: dict[int, Counter[bytes]] = {}
        self.builds = 0
        self.leaf_fixes = 0

    # -- the write path ----------------------------------------------------------
    def begin_write(self, keys: Iterable[tuple[int, bytes]]) -> None:
        with self._lock:
            for p, key in keys:
                self._pending.setdefault(p, Counter())[key] += 1

    def end_write(
        self, changes: Sequence[tuple[int, bytes, bytes | None, bytes | None]], ok: bool = True
    ) -> None:
        """``(partition, key, old, new)`` for every key ``begin_write`` named;
        ``ok=False``: the engine write failed, its effect is unknown."""
        with self._lock:
            for p, key, old, new in changes:
                pending = self._pending[p]
                pending[key] -= 1
                if pending[key] <= 0:
                    del pending[key]
                    if not pending:
                        del self._pending[p]
                if not ok:
                    self._forget(p)
                    continue
                tree = self._trees.get(p)
                if tree is not None:
                    tree.apply(key, old, new)
                for scan in self._scans.get(p, ()):
                    if scan.covers(key):
                        scan.apply(key, old, new)

    @contextmanager
    def writing(
        self, keys: Mapping[bytes, tuple[int, bytes]]
    ) -> Iterator[dict[bytes, tuple[bytes | None, bytes | None]]]:
        """Bracket one engine write of ``keys`` (storage key -> (partition,
        key)); the body records ``(old, new)`` stored values per storage key."""
        self.begin_write(keys.values())
        seen: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        try:
            yield seen
        except BaseException:
            self.end_write([(p, k, None, None) for p, k in keys.values()], ok=False)
            raise
        self.end_write([(p, k, *seen.get(sk, (None, None))) for sk, (p, k) in keys.items()])

    def _forget(self, p: int) -> None:
        self._trees.pop(p, None)
        for scan in self._scans.get(p, ()):
            scan.reset = True

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the trees of dropped partitions (running scans start over)."""
        with self._lock:
            for p in partitions:
                self._forget(p)

    def retain(self, held: frozenset[int]) -> None:
        with self._lock:
            for p in [p for p in self._trees if p not in held]:
                del self._trees[p]

    # -- what peers ask for ----------------------------------------------------------
    def levels(self, partition: int, depth: int, indices: Sequence[int]) -> list[int]:
        """Node values at ``depth``; builds the tree first if there is none."""
        tree = self._tree(partition)
        with self._lock:
            return tree.nodes(depth, indices)

    def bucket_values(self, partition: int, buckets: Iterable[int]) -> list[tuple[bytes, bytes]]:
        """``(key, stored value)`` of every key in ``buckets``, in key order,
        from a rescan that also corrects the tree's leaves of those buckets."""
        scan = _Scan(frozenset(buckets), keep=True)
        self._run(partition, scan, self._patch)
        return sorted(scan.values.items())

    def _tree(self, p: int) -> MerkleTree:
        while True:
            with self._lock:
                done = self._trees.get(p)
                if done is not None:
                    return done.tree
                event = self._building.get(p)
                mine = event is None
                if event is None:
                    event = self._building[p] = threading.Event()
            if not mine:
                event.wait()  # another thread builds it; then look again
                continue
            try:
                self._run(p, _Scan(None, keep=False), self._install)
            finally:
                with self._lock:
                    del self._building[p]
                event.set()

    def _install(self, p: int, scan: _Scan) -> None:
        self._trees[p] = scan
        self.builds += 1

    def _patch(self, p: int, scan: _Scan) -> None:
        """A bucket rescan finished: the tree's leaves of its buckets take
        the rescanned values (and which keys await a completion)."""
        main = self._trees.get(p)
        if main is None or scan.buckets is None:
            return
        for b in scan.buckets:
            if main.tree.levels[-1][b] != scan.tree.levels[-1][b]:
                main.tree.patch_leaf(b, scan.tree.levels[-1][b])
                self.leaf_fixes += 1
        main.skipped = {k for k in main.skipped if not scan.covers(k)} | scan.skipped

    def _run(self, p: int, scan: _Scan, finish: Callable[[int, _Scan], None]) -> None:
        with self._lock:
            self._scans.setdefault(p, []).append(scan)
        restarts = 0
        try:
            while True:
                with self._lock:
                    scan.observed.clear()
                    start = scan.cursor
                began = time.monotonic()
                items, nxt = self._scan_page(p, start, self.page_keys)
                page = [(k, v) for k, v in items if scan.covers(k)]
                with self._lock:
                    if scan.reset:
                        scan.clear()
                        restarts += 1
                        if restarts > MAX_RESTARTS:
                            raise ScanAborted(
                                f"scan of partition {p} restarted {restarts} times "
                                "(partition dropped or engine writes failing)"
                            )
                        continue
                    self._take_page(p, scan, start, nxt, page)
                    if scan.done:
                        finish(p, scan)
                        return
                pause = min((time.monotonic() - began) * self.pause_ratio, MAX_PAUSE_S)
                if pause > 0:
                    self._sleep(pause)
        finally:
            with self._lock:
                self._scans[p].remove(scan)
                if not self._scans[p]:
                    del self._scans[p]

    def _take_page(
        self, p: int, scan: _Scan, start: bytes | None, nxt: bytes | None,
        page: list[tuple[bytes, bytes]],
    ) -> None:
        """Step 3 of the module docstring; the caller holds the lock."""

        def in_range(key: bytes) -> bool:
            return (start is None or key > start) and (nxt is None or key <= nxt)

        latest: dict[bytes, bytes | None] = dict(page)
        latest.update((k, v) for k, v in scan.observed.items() if in_range(k))
        pending = self._pending.get(p, Counter())
        for key in pending:
            if in_range(key) and scan.covers(key):
                scan.skipped.add(key)
        for key, raw in latest.items():
            if raw is None:
                continue
            if scan.keep:
                scan.values[key] = raw  # best effort for a pending key too
            if key not in pending:
                scan.tree.update(key, None, stored_digest(raw))
        scan.observed.clear()
        if nxt is None:
            scan.done = True
        else:
            scan.cursor = nxt

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "trees": len(self._trees),
                "scans_running": sum(len(s) for s in self._scans.values()),
                "tree_builds": self.builds,
                "leaf_fixes": self.leaf_fixes,
            }
