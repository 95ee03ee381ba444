"""Engine options. Defaults suit a shard worker holding a few GiB."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol

from lsm.errors import InvalidArgumentError
from lsm.fs import FileSystem, OsFileSystem

FsyncMode = Literal["always", "interval", "never"]

MAX_MERGE_OPERATOR_NAME = 200


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Decision:
    """What a compaction filter says of one entry (RocksDB's CompactionFilter)."""

    KEEP = 0
    DROP = 1
    REPLACE = 2


#: ``filter(key, value) -> (decision, new_value)``; called for the newest
#: visible value of each key during compaction. Tombstones are not offered.
CompactionFilter = Callable[[bytes, bytes], tuple[int, bytes | None]]


class MergeOperator(Protocol):
    """How merge operands combine (RocksDB's MergeOperator), for
    ``DB.merge``. See lsm.merging for where each method is called.

    ``full_merge(key, base, operands)`` is the value of ``key`` when
    ``operands`` (oldest first, at least one) apply on top of ``base``, the
    value below them, or ``None`` when the key was deleted or never written.
    ``partial_merge(key, older, newer)`` combines two adjacent operands into
    one that has the same effect; it must be associative, because operands
    are combined in whatever groups meet (in the memtable, in each
    compaction). Both must be deterministic and must accept every operand
    the caller passes to ``merge``: an exception raised while a compaction
    runs stops compactions until the database is reopened with a fixed
    operator.

    ``name`` is recorded in the manifest and in tables holding operands; a
    database holding operands does not open without an operator of that name.
    Instances are pickled to reach compactions in a child process, so define
    the class at module level of an importable module (otherwise those
    compactions run on the compaction thread).
    """

    @property
    def name(self) -> str: ...

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes: ...

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes: ...


#: Knobs the engine reads afresh at each use, which ``DB.set_options`` may
#: change while the database is open. The others are fixed at open.
RUNTIME_OPTIONS = frozenset({
    "memtable_bytes", "max_immutable_memtables", "wal_bytes_per_sync",
    "l0_compaction_trigger", "l0_slowdown_trigger", "l0_stop_trigger", "slowdown_sleep_s",
    "level1_bytes", "level_fanout", "target_file_bytes", "compaction_filter",
    "compaction_nice", "compaction_child_min_entries",
})


@dataclass(frozen=True, slots=True)
class Options:
    """Frozen: an open database changes its run-time knobs through
    ``DB.set_options``, which validates a changed copy."""

    fs: FileSystem = field(default_factory=OsFileSystem)
    create_if_missing: bool = True

    # Durability: "always" acks after fsync (group commit); "interval" acks once
    # the write reached the OS and fsyncs every ``fsync_interval_ms``; "never"
    # leaves syncing to the OS (benchmarks and tests only).
    fsync: FsyncMode = "interval"
    fsync_interval_ms: int = 1000
    # "interval": also sync the current WAL in the background once this many
    # bytes of it are unsynced (RocksDB's wal_bytes_per_sync), so that the
    # sync a memtable switch needs (lsm.db) covers little; 0: timer only.
    wal_bytes_per_sync: int = 1 << 20

    memtable_bytes: int = 8 << 20
    block_bytes: int = 16 << 10
    block_cache_bytes: int = 64 << 20
    compression_level: int = 1
    bloom_error_rate: float = 0.01
    max_open_tables: int = 512

    # Leveled compaction (RocksDB's names and meanings).
    l0_compaction_trigger: int = 4
    l0_slowdown_trigger: int = 12
    l0_stop_trigger: int = 20
    level1_bytes: int = 64 << 20
    level_fanout: int = 10
    num_levels: int = 7
    target_file_bytes: int = 8 << 20
    max_immutable_memtables: int = 2
    slowdown_sleep_s: float = 0.001

    # Engine tombstones are dropped when they reach the bottom level; the shard
    # layer's own tombstones (with their grace period) go through this filter.
    compaction_filter: CompactionFilter | None = None
    # Needed to write merge operands (``DB.merge``) and to open a database
    # that holds some; set it before ``DB.open``.
    merge_operator: MergeOperator | None = None

    background_threads: bool = True
    # Run compactions in a child process when the file system is the real one
    # (see lsm.table_writer); off: on the compaction thread.
    compaction_in_process: bool = True
    # The child runs at this niceness (os.nice; 0..19): on a busy machine the
    # processes serving requests get the CPU first and a compaction takes
    # what is left, so a compaction slows down rather than the requests.
    compaction_nice: int = 10
    # The flush and compaction threads lower their own priority (Linux
    # niceness is per thread) to flush_nice and compaction_nice: a memtable
    # flush or a small in-process compaction burns CPU for tenths of a
    # second, and at the same priority it took the core from the event loops
    # of this and the other processes, which showed as 30-90 ms p99s at half
    # of a 3-node cluster's peak on 2 cores (docs/benchmarks.md). The flush
    # gets the milder one: writes stall if it falls behind.
    flush_nice: int = 5
    # Compactions of fewer input entries run on the compaction thread even
    # then: a child's start-up (interpreter, imports) costs ~0.2 s of CPU,
    # the merge ~10 µs an entry, so a small one is cheaper in-process.
    compaction_child_min_entries: int = 4096

    # Stamps ``created_ms`` in table properties; fixtures inject a fixed clock
    # so that the files they build are byte-for-byte reproducible.
    clock_ms: Callable[[], int] = wall_clock_ms

    def changed(self, **changes: Any) -> Options:
        """A validated copy with some of :data:`RUNTIME_OPTIONS` changed."""
        for name, value in changes.items():
            if name not in RUNTIME_OPTIONS:
                known = name in {f.name for f in fields(self)}
                raise InvalidArgumentError(
                    f"{name} cannot change while the database is open"
                    if known else f"unknown option {name!r}"
                )
            _check_type(name, value, getattr(self, name))
        new = replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        if self.fsync not in ("always", "interval", "never"):
            raise InvalidArgumentError(
                f"fsync must be always, interval or never, not {self.fsync!r}"
            )
        if self.wal_bytes_per_sync < 0:
            raise InvalidArgumentError("wal_bytes_per_sync must be >= 0")
        if self.memtable_bytes < 4096:
            raise InvalidArgumentError("memtable_bytes must be at least 4096")
        if not 1e-9 <= self.bloom_error_rate < 1:
            raise InvalidArgumentError("bloom_error_rate must be in [1e-9, 1)")
        if not (0 < self.l0_compaction_trigger <= self.l0_slowdown_trigger <= self.l0_stop_trigger):
            raise InvalidArgumentError(
                "need 0 < l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger"
            )
        if self.num_levels < 2 or self.level_fanout < 2:
            raise InvalidArgumentError("need num_levels >= 2 and level_fanout >= 2")
        if min(self.level1_bytes, self.target_file_bytes, self.max_immutable_memtables) < 1:
            raise InvalidArgumentError(
                "level1_bytes, target_file_bytes and max_immutable_memtables must be >= 1"
            )
        if self.compaction_child_min_entries < 0:
            raise InvalidArgumentError("compaction_child_min_entries must be >= 0")
        if not 0 <= self.compaction_nice <= 19:
            raise InvalidArgumentError("compaction_nice must be 0..19")
        if not 0 <= self.flush_nice <= 19:
            raise InvalidArgumentError("flush_nice must be 0..19")
        if self.slowdown_sleep_s < 0:
            raise InvalidArgumentError("slowdown_sleep_s must be >= 0")
        op = self.merge_operator
        if op is not None:
            name = getattr(op, "name", None)
            if not isinstance(name, str) or not 0 < len(name) <= MAX_MERGE_OPERATOR_NAME:
                raise InvalidArgumentError(
                    f"merge_operator.name must be a string of 1..{MAX_MERGE_OPERATOR_NAME} "
                    f"characters, not {name!r:.80}"
                )
            for method in ("full_merge", "partial_merge"):
                if not callable(getattr(op, method, None)):
                    raise InvalidArgumentError(f"merge_operator {name!r} has no {method} method")


def _check_type(name: str, value: object, current: object) -> None:
    if name == "compaction_filter":
        ok, wanted = value is None or callable(value), "a callable or None"
    elif isinstance(current, float):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an int"
    if not ok:
        raise InvalidArgumentError(f"{name} must be {wanted}, not {value!r:.80}")
