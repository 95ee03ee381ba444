"""One worker's replicas: sibling sets of many partitions in one LSM engine.

Keys and values are laid out as ``shardserver.layout`` says.

Writes are read-merge-write: the stored set is read, the incoming version is
merged (``versions.merge``, one rule for plain and context writes) and the
result written back. Striped locks serialize writers of one key while
writers of different keys proceed together, so that with ``fsync="always"``
their syncs can share one group commit. Every write also keeps the
partition's Merkle tree current (``shardserver.aae``, anti-entropy).

Deletion is compaction's job (``ShardCompactionFilter``): sibling sets that
are only tombstones older than ``tombstone_grace`` vanish, and so do entries
of partitions this worker no longer holds. The filter is pickled into the
compaction child process, so it carries plain data (held set, grace, now)
and is rebuilt (``refresh_filter``) to move its clock forward. A drop of a
partition is fenced against its writes (``shardserver.fence``): a write
never lands in a partition while it is being dropped, and a conditional
drop (the handoff's) refuses if a write reached the partition since its
caller's last scan.
"""

from __future__ import annotations

import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any, Literal

from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.options import Options
from shardserver.aae import PartitionTrees, stored_digest, without_conflicts
from shardserver.errors import BadRequestError, PartitionNotServedError
from shardserver.fence import DropFence
from shardserver.layout import (
    DEFAULT_TOMBSTONE_GRACE_MS,
    MAX_PARTITIONS,
    PARTITION_BYTES,
    ShardCompactionFilter,
    partition_range,
    storage_key,
    wall_ms,
)
from shardserver.protocol import versions
from shardserver.protocol.messages import MAX_KEY_BYTES
from shardserver.protocol.versions import SiblingSet, Version

WriteMode = Literal["merge", "lww"]

_LOCK_STRIPES = 256


@dataclass(frozen=True, slots=True)
class WriteOp:
    partition: int
    key: bytes
    version: Version
    mode: WriteMode = "lww"


@dataclass(frozen=True, slots=True)
class WriteResult:
    siblings: SiblingSet
    changed: bool
    dropped_by_cap: int = 0


@dataclass(frozen=True, slots=True)
class ScanPage:
    items: list[tuple[bytes, SiblingSet]]
    #: Pass as ``after`` to get the next page; None when the partition is done.
    next_after: bytes | None


@dataclass(slots=True)
class _Counters:
    values: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class ShardStore:
    """Replicas of the partitions in ``partitions`` (this worker's range)."""

    def __init__(
        self,
        db: DB,
        partitions: range,
        *,
        tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS,
        sibling_cap: int = versions.DEFAULT_SIBLING_CAP,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        if partitions.step != 1 or partitions.start < 0 or partitions.stop > MAX_PARTITIONS:
            raise BadRequestError(f"bad partition range {partitions}")
        self.db = db
        self.partitions = partitions
        self.grace_ms = tombstone_grace_ms
        self.sibling_cap = sibling_cap
        self._clock_ms = clock_ms
        self._stripes = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._meta = threading.Lock()  # guards _held
        self._held: frozenset[int] | None = None
        #: Writes against drops (shardserver.fence); never held with _meta.
        self._fence = DropFence()
        self._counters = _Counters()
        #: Merkle trees for anti-entropy, kept current by ``_apply``.
        self.trees = PartitionTrees(self.scan_raw)
        self.refresh_filter()

    @classmethod
    def open(
        cls,
        path: str,
        partitions: range,
        options: Options | None = None,
        **kwargs: Any,
    ) -> ShardStore:
        """Open (recover) the engine at ``path``; blocks until it is ready."""
        return cls(DB.open(path, options or Options()), partitions, **kwargs)

    def close(self) -> None:
        self.db.close()

    # -- partitions ------------------------------------------------------------
    def _check(self, partition: int, key: bytes | None = None) -> None:
        if type(partition) is not int or partition not in self.partitions:
            raise PartitionNotServedError(
                f"partition {partition!r} is not served here "
                f"(range {self.partitions.start}-{self.partitions.stop - 1})"
            )
        if key is not None and (type(key) is not bytes or not 1 <= len(key) <= MAX_KEY_BYTES):
            raise BadRequestError(f"key must be 1..{MAX_KEY_BYTES} bytes")

    def held(self) -> frozenset[int] | None:
        with self._meta:
            return self._held

    def set_partitions(self, held: Iterable[int] | None) -> None:
        """Declare which partitions this worker holds (None: all of its range).
        Data of the others is dropped lazily by later compactions."""
        new = None if held is None else frozenset(held)
        if new is not None:
            for p in new:
                self._check(p)
        with self._meta:
            self._held = new
        if new is not None:
            self.trees.retain(new)
        self.refresh_filter()

    def _claim_for_write(self, partition: int) -> None:
        # A write re-claims a partition that was given up: data is only ever
        # deleted by an explicit decision, never by a late write's race.
        with self._meta:
            if self._held is not None and partition not in self._held:
                self._held = self._held | {partition}
                changed = True
            else:
                changed = False
        if changed:
            self.refresh_filter()

    def refresh_filter(self) -> None:
        """Install a filter with the current held set and clock; the engine
        reads ``options.compaction_filter`` at the start of each compaction."""
        dropping = self._fence.dropping_now()
        with self._meta:
            held = self._held
            if held is not None and dropping:
                held = held - dropping
        self.db.set_options(
            compaction_filter=ShardCompactionFilter(held, self.grace_ms, self._clock_ms())
        )

    def drop_partition(self, partition: int, if_mark: int | None = None) -> None:
        self.drop_partitions(range(partition, partition + 1), if_mark)

    def write_mark(self, partition: int) -> int:
        """A number that changes whenever a write to ``partition`` completes
        (``shardserver.fence``); read it before a scan, pass it to a drop."""
        self._check(partition)
        return self._fence.mark(partition)

    def drop_partitions(self, parts: range, if_mark: int | None = None) -> None:
        """Delete every replica of the partitions in ``parts`` now, through one
        compaction of their key range with a filter that no longer holds them.
        Writes to them are refused (PartitionDroppingError) until the drop
        finished. With ``if_mark`` (one partition), nothing is dropped if a
        write to it completed since that mark was read or is in flight
        (PartitionChangedError): compare-and-drop."""
        if not parts:
            raise BadRequestError("no partition to drop")
        if if_mark is not None and len(parts) != 1:
            raise BadRequestError("a conditional drop names one partition")
        for p in (parts.start, parts[-1]):
            self._check(p)
        with self._fence.dropping(parts, if_mark):
            with self._meta:
                base = frozenset(self.partitions) if self._held is None else self._held
                self._held = base - set(parts)
            try:
                start, _ = partition_range(parts.start)
                _, end = partition_range(parts[-1])
                self._compact_filtered(start, end)
                self._counters.add("partitions_dropped", len(parts))
            finally:
                self.trees.drop(parts)

    # -- reads -------------------------------------------------------------------
    def read(self, partition: int, key: bytes) -> SiblingSet:
        raw = self.read_raw(partition, key)
        return () if raw is None else versions.decode_siblings(raw)

    def read_raw(self, partition: int, key: bytes) -> bytes | None:
        """The stored sibling set still encoded (None when absent)."""
        self._check(partition, key)
        self._counters.add("reads")
        return self.db.get(storage_key(partition, key))

    def scan(self, partition: int, after: bytes | None = None, limit: int = 1000) -> ScanPage:
        """Up to ``limit`` keys of ``partition`` greater than ``after``, in order."""
        page, next_after = self.scan_raw(partition, after, limit)
        items = [(k, versions.decode_siblings(v)) for k, v in page]
        return ScanPage(items, next_after)

    def scan_raw(
        self, partition: int, after: bytes | None = None, limit: int = 1000
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """``scan`` with values still encoded (for handoff and repair streams)."""
        self._check(partition)
        if limit < 1:
            raise BadRequestError("scan limit must be >= 1")
        start, end = partition_range(partition)
        if after is not None:
            start = storage_key(partition, after + b"\x00")  # smallest key > after
        items: list[tuple[bytes, bytes]] = []
        more = False
        with closing(self.db.scan(start, end)) as it:  # type: ignore[type-var]
            for skey, value in it:
                if len(items) == limit:
                    more = True
                    break
                items.append((skey[PARTITION_BYTES:], value))
        self._counters.add("scanned_keys", len(items))
        return items, (items[-1][0] if more else None)

    # -- writes -------------------------------------------------------------------
    def write(
        self, partition: int, key: bytes, version: Version, mode: WriteMode = "lww"
    ) -> WriteResult:
        return self.write_many([WriteOp(partition, key, version, mode)])[0]

    def write_set(self, partition: int, key: bytes, siblings: SiblingSet) -> WriteResult:
        """Merge a whole sibling set (handoff, read repair, anti-entropy). A
        version with the identity ``(hlc, actor)`` of a stored one but another
        value is refused: one copy is corrupt, and keeping both as siblings
        would spread it (docs/anti-entropy.md)."""
        return self._merge_set(partition, key, siblings, stored_wins=True)

    def repair_set(self, partition: int, key: bytes, siblings: SiblingSet) -> WriteResult:
        """Like ``write_set``, but on such a conflict the incoming copy wins:
        anti-entropy found the stored one corrupt by a vote of the replicas."""
        return self._merge_set(partition, key, siblings, stored_wins=False)

    def _merge_set(
        self, partition: int, key: bytes, siblings: SiblingSet, stored_wins: bool
    ) -> WriteResult:
        def merge(cur: SiblingSet) -> versions.MergeResult:
            if stored_wins:
                kept, incoming = cur, without_conflicts(cur, siblings)
            else:
                kept, incoming = without_conflicts(siblings, cur), siblings
            dropped = len(cur) + len(siblings) - len(kept) - len(incoming)
            if dropped:
                self._counters.add("identity_conflicts", dropped)
            return versions.merge_sets(kept, incoming, self.sibling_cap)

        return self._apply([(partition, key, merge)])[0]

    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Apply several versions as one engine batch (one WAL record, one
        sync); each result is what that key holds after its op."""
        steps: list[tuple[int, bytes, Callable[[SiblingSet], versions.MergeResult]]] = []
        for op in ops:
            if op.mode not in ("merge", "lww"):
                raise BadRequestError(f"write mode must be merge or lww, not {op.mode!r}")
            # "lww" only says the version is a plain write (floor = its id).
            v = versions.as_plain(op.version) if op.mode == "lww" else op.version
            steps.append((op.partition, op.key, self._merger(v)))
        return self._apply(steps)

    def _merger(self, v: Version) -> Callable[[SiblingSet], versions.MergeResult]:
        return lambda cur: versions.merge(cur, v, self.sibling_cap)

    def _apply(
        self, steps: Sequence[tuple[int, bytes, Callable[[SiblingSet], versions.MergeResult]]]
    ) -> list[WriteResult]:
        for partition, key, _ in steps:
            self._check(partition, key)
        partitions = {p for p, _, _ in steps}
        with self._fence.writing(partitions):
            for partition in partitions:
                self._claim_for_write(partition)
            return self._apply_fenced(steps)

    def _apply_fenced(
        self, steps: Sequence[tuple[int, bytes, Callable[[SiblingSet], versions.MergeResult]]]
    ) -> list[WriteResult]:
        keys = {storage_key(p, k): (p, k) for p, k, _ in steps}
        stripes = sorted({zlib.crc32(k) % _LOCK_STRIPES for k in keys})  # fixed order: no deadlock
        results: list[WriteResult] = []
        with ExitStack() as stack:
            for i in stripes:
                stack.enter_context(self._stripes[i])
            # Still under the key locks: the trees learn which keys are in
            # flight before the engine write and their (old, new) after it.
            seen = stack.enter_context(self.trees.writing(keys))
            current: dict[bytes, SiblingSet] = {}
            batch = WriteBatch()
            dirty: dict[bytes, SiblingSet] = {}
            for p, key, fn in steps:
                skey = storage_key(p, key)
                if skey not in current:
                    raw = self.db.get(skey)
                    seen[skey] = (raw, raw)
                    current[skey] = () if raw is None else versions.decode_siblings(raw)
                before = current[skey]
                merged = fn(before)
                changed = merged.siblings != before
                if changed:
                    current[skey] = merged.siblings
                    dirty[skey] = merged.siblings
                results.append(WriteResult(merged.siblings, changed, merged.dropped_by_cap))
            for skey, siblings in dirty.items():
                new = versions.encode_siblings(siblings)
                seen[skey] = (seen[skey][0], new)
                batch.put(skey, new)
            if len(batch):
                self.db.write(batch)
            elif self.db.options.fsync == "always":
                # Nothing new to write, but what we found may be another
                # writer's record that is not yet fsynced: make it durable
                # before acknowledging.
                self.db.sync()
        self._counters.add("writes", len(steps))
        self._counters.add("writes_unchanged", sum(1 for r in results if not r.changed))
        self._counters.add("siblings_dropped_by_cap", sum(r.dropped_by_cap for r in results))
        return results

    # -- anti-entropy ------------------------------------------------------------
    def tree_level(self, partition: int, depth: int, indices: Sequence[int]) -> list[int]:
        """Merkle node values of ``partition`` (built by a scan if missing)."""
        self._check(partition)
        return self.trees.levels(partition, depth, indices)

    def bucket_digests(self, partition: int, buckets: Sequence[int]) -> list[tuple[bytes, bytes]]:
        """``(key, digest)`` of the keys in those leaf buckets, except sets of
        tombstones past their grace: compaction is about to drop them, and
        pushing them to a replica that already did would bring them back."""
        self._check(partition)
        now = self._clock_ms()
        return [
            (key, stored_digest(raw))
            for key, raw in self.trees.bucket_values(partition, buckets)
            if versions.gc_tombstones(versions.decode_siblings(raw), now, self.grace_ms)
        ]

    # -- maintenance -------------------------------------------------------------
    def flush(self) -> None:
        self.db.flush()

    def compact(self, partition: int | None = None) -> None:
        """Compact one partition's range, or everything; applies the filter."""
        if partition is None:
            self._compact_filtered(None, None)
        else:
            self._check(partition)
            self._compact_filtered(*partition_range(partition))

    def _compact_filtered(self, start: bytes | None, end: bytes | None) -> None:
        # bottommost: also rewrite the files already at the bottom level, so
        # the filter sees them and drops old tombstones and partitions not held.
        self.refresh_filter()
        self.db.compact_range(start, end, bottommost=True)

    def stats(self) -> dict[str, Any]:
        held = self.held()
        return {
            "partitions": [self.partitions.start, self.partitions.stop],
            "held": None if held is None else sorted(held),
            "tombstone_grace_ms": self.grace_ms,
            "store": dict(self._counters.values),
            "aae": self.trees.stats(),
            "engine": self.db.stats(),
        }
