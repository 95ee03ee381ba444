"""What a worker reports of itself: its engine's figures and its store's
counters, as typed records (``Stats`` request; on the wire a msgpack map of
these fields, ``records.to_wire``). The worker builds them once from its
store; coordinators decode them at the boundary (``ShardClient.stats``) and
INFO, Prometheus and ``ringkv status`` all read these fields, so a renamed
field fails type checking instead of reading as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LevelStats:
    level: int
    files: int
    bytes: int
    entries: int
    tombstones: int
    target_bytes: int | None  # None for level 0 (a file count triggers it)


@dataclass(frozen=True, slots=True)
class EngineStats:
    levels: tuple[LevelStats, ...]
    l0_files: int
    table_bytes: int
    memtable_bytes: int
    memtable_entries: int
    immutable_memtables: int
    wal_files: int
    wal_bytes: int
    compaction_debt_bytes: int
    read_only: bool
    error: str | None  # why the engine is read-only
    stall_s: float  # time writes waited on compaction
    write_stalls: int
    write_slowdowns: int
    bloom_checks: int
    bloom_negatives: int  # checks that spared a block read
    wal_syncs: int
    wal_sync_s: float


@dataclass(frozen=True, slots=True)
class WorkerStats:
    partitions: tuple[int, int]  # [start, stop) of the worker's range
    held: tuple[int, ...] | None  # partitions it holds now (None: all of its range)
    tombstone_grace_ms: int
    engine: EngineStats
    store: dict[str, int] = field(default_factory=dict)  # the store's counters
    aae: dict[str, int] = field(default_factory=dict)  # Merkle tree figures
    #: Peer connections the worker serves itself (peer protocol 5):
    #: connections, adopted, requests, writes_refused (``shardserver.direct``).
    direct: dict[str, int] = field(default_factory=dict)
