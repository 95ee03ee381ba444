"""A worker's Merkle trees, one per partition (DESIGN §8): a cache of a scan.

Each tree is over ``(key, digest of the stored sibling set)`` (see
``shardserver.protocol.merkle``). Trees live in memory only: a tree is
built by a paged, throttled scan of its partition when a peer asks for it,
and forgotten with its partition.

Replica writes are blind (``ShardStore.write_many`` stores merge operands),
so a write does not know the value it replaces and cannot move a tree by
``H(key, old) ^ H(key, new)``. Instead each partition has a *write count*:
every write adds one once its engine write has ended (also when it failed:
its outcome is unknown), and each tree records the count its build started
at. A build reads the count first and the engine after, so the tree holds
every write counted before it started, and a key no write touched since
holds its stored digest exactly.

When trees are rebuilt: a request for a tree's *root* (the first request
of every exchange, ``coordinator.repair.anti_entropy``) rebuilds it if a
write was counted since its build started; requests that arrive while a
build runs wait for it if it started after they were made, else build
again. So the root a peer gets reflects every write completed before it
asked. The deeper levels of the same exchange are answered from that tree
(a tree is never rebuilt for them), so each side compares one snapshot
with itself. A partition without writes keeps its tree between exchanges.

Bucket rescans (``bucket_values``, what a peer asks for when a leaf
differs) scan the partition for the keys of some buckets; at the end their
leaves replace the tree's, since what the engine holds wins over a tree
that drifted (compaction drops old tombstones and not-held partitions
without a write).

Cost: a partition written since its last exchange costs one scan per
exchange for the root (docs/anti-entropy.md has figures), where trees kept
by every write cost a read of the old value on every write.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from shardserver.protocol import versions
from shardserver.protocol.merkle import MerkleTree, bucket_of
from shardserver.protocol.versions import SiblingSet

#: ``scan_raw(partition, after, limit) -> (items, next_after)`` of the store.
ScanPage = Callable[[int, bytes | None, int], tuple[list[tuple[bytes, bytes]], bytes | None]]

DEFAULT_PAGE_KEYS = 500
#: After a page that took t seconds, a scan sleeps ``t * ratio`` (at most
#: ``MAX_PAUSE_S``), so a build takes at most 2/3 of one pool thread.
DEFAULT_PAUSE_RATIO = 0.5
MAX_PAUSE_S = 0.05


def stored_digest(raw: bytes) -> bytes:
    """Digest of a stored sibling set. Stored values are canonical
    ``encode_siblings`` output, so this is ``versions.digest`` of the
    decoded set, without decoding it."""
    return hashlib.blake2b(raw, digest_size=versions.DIGEST_BYTES).digest()


def without_conflicts(keep: SiblingSet, other: SiblingSet) -> SiblingSet:
    """``other`` minus its versions that claim the identity ``(hlc, actor)``
    of a version in ``keep`` with another value. An actor writes one value
    per HLC, so such a pair means one copy is corrupt; merging would keep
    both as siblings and spread the bad one (docs/anti-entropy.md)."""
    ids = {(v.hlc, v.actor): v.value for v in keep}
    return tuple(
        v for v in other if (v.hlc, v.actor) not in ids or ids[(v.hlc, v.actor)] == v.value
    )


@dataclass(frozen=True, slots=True)
class _Built:
    tree: MerkleTree
    at: int  # the partition's write count when the build started


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
        self._lock = threading.Lock()  # guards everything below; never held for I/O
        self._writes: Counter[int] = Counter()
        #: Bumped when a partition's tree is forgotten: a build that started
        #: before does not install its tree.
        self._epochs: Counter[int] = Counter()
        self._trees: dict[int, _Built] = {}
        self._building: dict[int, threading.Event] = {}
        self._scans = 0
        self.builds = 0
        self.leaf_fixes = 0

    # -- the write path ----------------------------------------------------------
    def wrote(self, partitions: Iterable[int]) -> None:
        """A write to ``partitions`` ended (its engine write is done, or
        failed): their trees are stale for the next root request."""
        with self._lock:
            self._writes.update(partitions)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the trees of dropped partitions (builds running for them
        do not install theirs)."""
        with self._lock:
            for p in partitions:
                self._trees.pop(p, None)
                self._epochs[p] += 1
                self._writes[p] += 1

    def retain(self, held: frozenset[int]) -> None:
        with self._lock:
            for p in [p for p in self._trees if p not in held]:
                del self._trees[p]
                self._epochs[p] += 1

    # -- what peers ask for ----------------------------------------------------------
    def levels(self, partition: int, depth: int, indices: Sequence[int]) -> list[int]:
        """Node values at ``depth``. For the root (``depth`` 0), the tree is
        rebuilt first if a write was counted since its build started; for
        deeper levels any tree will do (module docstring)."""
        with self._lock:
            need = self._writes[partition] if depth == 0 else 0
        tree = self._tree(partition, need)
        with self._lock:
            return tree.nodes(depth, indices)

    def bucket_values(self, partition: int, buckets: Iterable[int]) -> list[tuple[bytes, bytes]]:
        """``(key, stored value)`` of every key in ``buckets``, in key order,
        from a rescan that also corrects the tree's leaves of those buckets."""
        wanted = frozenset(buckets)
        tree, values = self._scan(partition, wanted)
        with self._lock:
            main = self._trees.get(partition)
            if main is not None:
                for b in wanted:
                    if main.tree.levels[-1][b] != tree.levels[-1][b]:
                        main.tree.patch_leaf(b, tree.levels[-1][b])
                        self.leaf_fixes += 1
        return sorted(values.items())

    def _tree(self, p: int, need: int) -> MerkleTree:
        """A tree of ``p`` whose build started at write count ``need`` or later."""
        while True:
            with self._lock:
                built = self._trees.get(p)
                if built is not None and built.at >= need:
                    return built.tree
                event = self._building.get(p)
                mine = event is None
                if event is None:
                    event = self._building[p] = threading.Event()
            if not mine:
                event.wait()  # another thread builds it; then look again
                continue
            try:
                with self._lock:
                    at, epoch = self._writes[p], self._epochs[p]
                tree, _ = self._scan(p, None)
                with self._lock:
                    self.builds += 1
                    current = self._trees.get(p)
                    if self._epochs[p] == epoch and (current is None or current.at < at):
                        self._trees[p] = _Built(tree, at)
                return tree  # at >= need: this build started after the request
            finally:
                with self._lock:
                    del self._building[p]
                event.set()

    def _scan(
        self, p: int, buckets: frozenset[int] | None
    ) -> tuple[MerkleTree, dict[bytes, bytes]]:
        """A tree over ``p`` (only the keys of ``buckets``, with their stored
        values, if given), read page by page with a pause after each."""
        tree = MerkleTree()
        values: dict[bytes, bytes] = {}
        after: bytes | None = None
        with self._lock:
            self._scans += 1
        try:
            while True:
                began = time.monotonic()
                items, after = self._scan_page(p, after, self.page_keys)
                for key, raw in items:
                    if buckets is None or bucket_of(key) in buckets:
                        tree.update(key, None, stored_digest(raw))
                        if buckets is not None:
                            values[key] = raw
                if after is None:
                    return tree, values
                pause = min((time.monotonic() - began) * self.pause_ratio, MAX_PAUSE_S)
                if pause > 0:
                    self._sleep(pause)
        finally:
            with self._lock:
                self._scans -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "trees": len(self._trees),
                "scans_running": self._scans,
                "tree_builds": self.builds,
                "leaf_fixes": self.leaf_fixes,
            }
