"""Engine keys of a shard worker and its compaction filter.

Storage layout (DESIGN §2, §4)::

    engine key   = uint16 big-endian partition | user key (1..1024 bytes)
    engine value = versions.encode_siblings(sibling set)

so one partition is one contiguous engine key range ``[p, p+1)``, and a
partition scan, compaction or drop is a range operation. Keys shorter than
two bytes never hold data (user keys are never empty).

The compaction filter is pickled into the engine's compaction child process,
so it is a module-level dataclass of plain fields (held set, grace, now); the
store rebuilds it to move its clock forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lsm.options import Decision
from shardserver.protocol import versions
from shardserver.protocol.errors import VersionFormatError

PARTITION_BYTES = 2
MAX_PARTITIONS = 1 << (8 * PARTITION_BYTES)
DEFAULT_TOMBSTONE_GRACE_MS = 24 * 3600 * 1000
_NIL = b"\xc0"  # msgpack nil: every tombstone record contains this byte


def wall_ms() -> int:
    return int(time.time() * 1000)


def partition_prefix(partition: int) -> bytes:
    return partition.to_bytes(PARTITION_BYTES, "big")


def storage_key(partition: int, key: bytes) -> bytes:
    return partition_prefix(partition) + key


def split_storage_key(skey: bytes) -> tuple[int, bytes]:
    return int.from_bytes(skey[:PARTITION_BYTES], "big"), skey[PARTITION_BYTES:]


def partition_range(partition: int) -> tuple[bytes, bytes | None]:
    """Engine key range ``[start, end)`` of one partition (end None: to the end)."""
    end = None if partition + 1 >= MAX_PARTITIONS else partition_prefix(partition + 1)
    return partition_prefix(partition), end


@dataclass(frozen=True, slots=True)
class ShardCompactionFilter:
    """Compaction filter of a shard worker; picklable (plain fields only).

    ``held`` None means "keep every partition"; otherwise entries of other
    partitions are dropped. Sibling sets made only of tombstones at least
    ``grace_ms`` old at ``now_ms`` are dropped. Anything undecodable is kept:
    the filter never destroys what it cannot read.
    """

    held: frozenset[int] | None
    grace_ms: int
    now_ms: int

    def __call__(self, key: bytes, value: bytes) -> tuple[int, bytes | None]:
        if len(key) < PARTITION_BYTES:
            return Decision.KEEP, None
        if self.held is not None and int.from_bytes(key[:PARTITION_BYTES], "big") not in self.held:
            return Decision.DROP, None
        if _NIL not in value:
            return Decision.KEEP, None  # fast path: no record can be a tombstone
        try:
            siblings = versions.decode_siblings(value)
        except VersionFormatError:
            return Decision.KEEP, None
        if not versions.gc_tombstones(siblings, self.now_ms, self.grace_ms):
            return Decision.DROP, None
        return Decision.KEEP, None
