"""One worker's replicas: sibling sets of many partitions in one LSM engine.

Keys and values are laid out as ``shardserver.layout`` says.

Replica writes are blind: ``write_many`` stores each version as an engine
merge operand (the one-version set, ``shardserver.join.operand``) without
reading the key, and the engine joins operands and stored sets wherever two
copies of a key meet, with the store's merge operator
(``shardserver.join.SiblingSetJoin``: ``versions.merge_sets``, one rule for
plain and context writes). ``try_write_many`` is the same for a caller on an
event loop: it applies the writes only if the engine can take them without
waiting. ``write_set`` (handoff, read repair, anti-entropy) reads the key
first, to leave out copies that conflict with a stored version
(``aae.without_conflicts``), then merges the rest the same way;
``repair_set`` replaces a corrupt stored copy, so it puts the result and
runs exclusive to its partition's other writes (``shardserver.fence``).
Every write counts itself in its partition's Merkle tree bookkeeping
(``shardserver.aae``), which rebuilds a tree by a scan when it is next
consulted.

Deletion is compaction's job (``ShardCompactionFilter``): sibling sets that
are only tombstones older than ``tombstone_grace`` vanish, and so do entries
of partitions this worker no longer holds; the engine hands the filter
resolved values only. The filter is pickled into the compaction child
process, so it carries plain data (held set, grace, now) and is rebuilt
(``refresh_filter``) to move its clock forward; so is the merge operator. A
drop of a partition is fenced against its writes (``shardserver.fence``): a
write never lands in a partition while it is being dropped, and a
conditional drop (the handoff's) refuses if a write reached the partition
since its caller's last scan.
"""

from __future__ import annotations

import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lsm import NOT_CACHED, NotCached
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.options import Options
from shardserver.aae import PartitionTrees, stored_digest, without_conflicts
from shardserver.errors import BadRequestError, PartitionNotServedError
from shardserver.fence import DropFence, FenceBusy
from shardserver.join import SiblingSetJoin, check_version, operand
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
from shardserver.protocol.errors import VersionFormatError
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
        join = db.options.merge_operator
        if not isinstance(join, SiblingSetJoin) or join.cap != sibling_cap:
            raise ValueError("a ShardStore needs its engine opened with the sibling-set merge "
                             "operator and its cap: use ShardStore.open")
        self.db = db
        self.join = join
        self.partitions = partitions
        self.grace_ms = tombstone_grace_ms
        self.sibling_cap = sibling_cap
        self._clock_ms = clock_ms
        #: Serialize the read-then-write of ``write_set``/``repair_set`` per
        #: key, so two copies of one identity cannot both pass the check.
        self._stripes = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._meta = threading.Lock()  # guards _held
        self._held: frozenset[int] | None = None
        #: Writes against drops (shardserver.fence); never held with _meta.
        self._fence = DropFence()
        self._counters = _Counters()
        #: Merkle trees for anti-entropy; every write counts itself there.
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
        """Open (recover) the engine at ``path``; blocks until it is ready.
        ``options`` with ``merge_operator`` set to the store's join of sibling sets."""
        join = SiblingSetJoin(kwargs.get("sibling_cap", versions.DEFAULT_SIBLING_CAP))
        options = replace(options or Options(), merge_operator=join)
        return cls(DB.open(path, options), partitions, **kwargs)

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

    def _claim_for_write(self, partitions: set[int]) -> None:
        # A write re-claims a partition that was given up: data is only ever
        # deleted by an explicit decision, never by a late write's race.
        with self._meta:
            held = self._held
            if held is None or partitions <= held:
                return
            self._held = held | partitions
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

    def read_cached(self, partition: int, key: bytes) -> bytes | NotCached | None:
        """``read_raw`` for a caller on an event loop: ``lsm.NOT_CACHED``
        when the answer needs a file read (then call ``read_raw`` in a thread)."""
        self._check(partition, key)
        raw = self.db.get_cached(storage_key(partition, key))
        if raw is not NOT_CACHED:
            self._counters.add("reads")
            self._counters.add("reads_inline")
        return raw

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
    ) -> None:
        self.write_many([WriteOp(partition, key, version, mode)])

    def write_many(self, ops: Sequence[WriteOp]) -> None:
        """Apply several versions as one engine batch of merge operands (one
        WAL record, one sync), without reading the keys."""
        batch, partitions = self._operands(ops)
        try:
            with self._fence.writing(partitions):
                self._claim_for_write(partitions)
                self.db.write(batch)
        finally:
            self.trees.wrote(partitions)
        self._counted_writes(len(ops))

    def try_write_many(self, ops: Sequence[WriteOp]) -> bool:
        """``write_many`` for a caller on an event loop: True when applied;
        False, with nothing applied, when that would wait (on the engine,
        see ``DB.try_write``, or on an exclusive write of the partition);
        then call ``write_many`` in a thread. Bad input raises as there."""
        batch, partitions = self._operands(ops)
        try:
            with self._fence.writing(partitions, block=False):
                self._claim_for_write(partitions)
                applied = self.db.try_write(batch)
        except FenceBusy:
            return False
        if applied:
            self.trees.wrote(partitions)
            self._counted_writes(len(ops))
            self._counters.add("writes_inline", len(ops))
        return applied

    def _operands(self, ops: Sequence[WriteOp]) -> tuple[WriteBatch, set[int]]:
        batch = WriteBatch()
        partitions = set()
        for op in ops:
            self._check(op.partition, op.key)
            if op.mode not in ("merge", "lww"):
                raise BadRequestError(f"write mode must be merge or lww, not {op.mode!r}")
            # "lww" only says the version is a plain write (floor = its id).
            v = versions.as_plain(op.version) if op.mode == "lww" else op.version
            try:
                batch.merge(storage_key(op.partition, op.key), operand(v))
            except VersionFormatError as exc:
                raise BadRequestError(f"bad version for key {op.key[:64]!r}: {exc}") from None
            partitions.add(op.partition)
        return batch, partitions

    def _counted_writes(self, n: int) -> None:
        self._counters.add("writes", n)

    def write_set(self, partition: int, key: bytes, siblings: SiblingSet) -> WriteResult:
        """Merge a whole sibling set (handoff, read repair, anti-entropy). A
        version with the identity ``(hlc, actor)`` of a stored one but another
        value is refused: one copy is corrupt, and keeping both as siblings
        would spread it (docs/anti-entropy.md)."""
        return self._merge_set(partition, key, siblings, stored_wins=True)

    def repair_set(self, partition: int, key: bytes, siblings: SiblingSet) -> WriteResult:
        """Like ``write_set``, but on such a conflict the incoming copy wins:
        anti-entropy found the stored one corrupt by a vote of the replicas.
        The stored set is replaced, so this runs exclusive to the other
        writes of the partition (a blind write meanwhile would be lost)."""
        return self._merge_set(partition, key, siblings, stored_wins=False)

    def _merge_set(
        self, partition: int, key: bytes, siblings: SiblingSet, stored_wins: bool
    ) -> WriteResult:
        self._check(partition, key)
        for v in siblings:
            try:
                check_version(v)
            except VersionFormatError as exc:
                raise BadRequestError(f"bad version for key {key[:64]!r}: {exc}") from None
        skey = storage_key(partition, key)
        try:
            with self._fence.writing({partition}, exclusive=not stored_wins), \
                    self._stripes[zlib.crc32(skey) % _LOCK_STRIPES]:
                self._claim_for_write({partition})
                return self._merge_locked(skey, siblings, stored_wins)
        finally:
            self.trees.wrote((partition,))

    def _merge_locked(self, skey: bytes, siblings: SiblingSet, stored_wins: bool) -> WriteResult:
        raw = self.db.get(skey)
        cur = () if raw is None else versions.decode_siblings(raw)
        if stored_wins:
            kept, incoming = cur, without_conflicts(cur, siblings)
        else:
            kept, incoming = without_conflicts(siblings, cur), siblings
        conflicts = len(cur) + len(siblings) - len(kept) - len(incoming)
        if conflicts:
            self._counters.add("identity_conflicts", conflicts)
        merged = versions.merge_sets(kept, incoming, self.sibling_cap)
        changed = merged.siblings != cur
        self._counted_writes(1)
        self._counters.add("siblings_dropped_by_cap", merged.dropped_by_cap)
        if not changed:
            self._counters.add("writes_unchanged")
            if self.db.options.fsync == "always":
                # Nothing new to write, but what we found may be another
                # writer's record that is not yet fsynced: make it durable
                # before acknowledging.
                self.db.sync()
        elif stored_wins:
            # A merge operand: blind writes that land meanwhile join it.
            self.db.merge(skey, versions.encode_siblings(incoming))
        else:
            # The corrupt copy must go, which a join cannot do: a put, safe
            # because the fence holds the partition's other writes off.
            self.db.put(skey, versions.encode_siblings(merged.siblings))
        return WriteResult(merged.siblings, changed, merged.dropped_by_cap)

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
            "store": {**self._counters.values, **self.join.counters},
            "aae": self.trees.stats(),
            "engine": self.db.stats(),
        }
