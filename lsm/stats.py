"""``db.stats()``: one dict of figures for INFO, metrics and tools, read
through the engine's public read-only views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from lsm import compaction as policy
from lsm.cache import BlockCache
from lsm.options import Options
from lsm.table_cache import TableCache
from lsm.wal_set import WalSet
from lsm.write_path import WritePath


def collect(
    *,
    path: str,
    options: Options,
    writes: WritePath,
    wals: WalSet,
    tables: TableCache,
    block_cache: BlockCache,
    counters: Iterable[Counter[str]],
) -> dict[str, Any]:
    mem, imms, version = writes.state
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
    figures: dict[str, int] = {}
    for part in counters:  # each part of the engine counts its own events
        figures.update(part)
    error = writes.error
    bloom_checks, bloom_negatives = tables.bloom_counts()
    return {
        "path": path,
        "levels": levels,
        "l0_files": len(version.levels[0]),
        "table_bytes": version.total_bytes(),
        "memtable_bytes": mem.approx_bytes,
        "memtable_entries": len(mem),
        "immutable_memtables": len(imms),
        "last_seq": writes.last_seq,
        "wal_files": wals.count(),
        "wal_bytes": wals.total_bytes(),
        "compaction_debt_bytes": policy.compaction_debt_bytes(version, options),
        "compaction_scores": [round(s, 3) for s in policy.scores(version, options)],
        "read_only": error is not None,
        "error": None if error is None else str(error),
        "block_cache": block_cache.stats(),
        "stall_s": figures.get("stall_us", 0) / 1e6,
        "write_stalls": figures.get("write_stalls", 0),
        "write_slowdowns": figures.get("write_slowdowns", 0),
        "bloom_checks": bloom_checks,
        "bloom_negatives": bloom_negatives,
        "wal_syncs": figures.get("wal_syncs", 0),
        "wal_sync_s": figures.get("wal_sync_us", 0) / 1e6,
        "counters": figures,
    }
