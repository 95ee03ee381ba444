"""``db.stats()``: one dict of figures for INFO, metrics and tools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsm import compaction as policy

if TYPE_CHECKING:
    from lsm.db import DB


def collect(db: DB) -> dict[str, Any]:
    mem, imms, version = db._state
    options = db.options
    levels = [
        {
            "level": n,
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "entries": sum(f.entries for f in files),
            "tombstones": sum(f.tombstones for f in files),
            "merge_operands": sum(f.merges for f in files),
            "target_bytes": policy.level_target_bytes(options, n) if n else None,
        }
        for n, files in enumerate(version.levels)
    ]
    counters = dict(db.counters)
    wal_bytes = sum(w.size() for w in list(db._wals.values()))
    error = db._error
    bloom_checks, bloom_negatives = db.tables.bloom_counts()
    return {
        "path": db.path,
        "levels": levels,
        "l0_files": len(version.levels[0]),
        "table_bytes": version.total_bytes(),
        "memtable_bytes": mem.approx_bytes,
        "memtable_entries": len(mem),
        "immutable_memtables": len(imms),
        "last_seq": db._last_seq,
        "wal_files": len(db._wals),
        "wal_bytes": wal_bytes,
        "compaction_debt_bytes": policy.compaction_debt_bytes(version, options),
        "compaction_scores": [round(s, 3) for s in policy.scores(version, options)],
        "read_only": error is not None,
        "error": None if error is None else str(error),
        "block_cache": db.block_cache.stats(),
        "stall_s": counters.get("stall_us", 0) / 1e6,
        "write_stalls": counters.get("write_stalls", 0),
        "write_slowdowns": counters.get("write_slowdowns", 0),
        "bloom_checks": bloom_checks,
        "bloom_negatives": bloom_negatives,
        "wal_syncs": counters.get("wal_syncs", 0),
        "wal_sync_s": counters.get("wal_sync_us", 0) / 1e6,
        "counters": counters,
    }
