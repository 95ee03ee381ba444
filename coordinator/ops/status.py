"""INFO sections of a node: stats, replication (hints and handoff), cluster,
clock, storage (DESIGN §12). Plain ``name: value`` maps; the server renders them
Redis-style (``# Section`` then ``name:value`` lines)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from coordinator.client.session import VERSION

if TYPE_CHECKING:
    from coordinator.node import Node


def info_text(node: Node, section: str) -> bytes:
    """INFO's reply for ``section`` ("default", "all", "everything" or one
    section's name): ``# Section`` then ``name:value`` lines."""
    sections = info_sections(node)
    wanted = section.lower()
    lines: list[str] = []
    for name, fields_ in sections.items():
        if wanted not in ("default", "all", "everything", name):
            continue
        lines.append(f"# {name.capitalize()}")
        lines += [f"{k}:{v}" for k, v in fields_.items()]
        lines.append("")
    return "\r\n".join(lines).encode()


def info_sections(node: Node) -> dict[str, dict[str, Any]]:
    server = node.client_server
    return {
        "server": {
            "ringkv_version": VERSION,
            "node_id": node.config.id,
            "tcp_port": server.port,
            "uptime_in_seconds": int(time.time() - server.started),
        },
        "clients": {"connected_clients": server.clients, "maxclients": node.config.max_clients},
        "stats": _stats(node),
        "replication": _replication(node),
        "cluster": _cluster(node),
        "clock": _clock(node),
        "storage": _storage(node),
    }


def _stats(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = asdict(node.client_server.stats)
    out.update(asdict(node.data.stats))
    return out


def _replication(node: Node) -> dict[str, Any]:
    h = node.handoff
    backlog = h.backlog()
    out: dict[str, Any] = {
        "hint_partitions": sum(b["partitions"] for b in backlog.values()),
        "hint_writes": sum(b["writes"] for b in backlog.values()),
        "hint_bytes": sum(b["bytes"] for b in backlog.values()),
        "hint_oldest_s": max((b["oldest_s"] for b in backlog.values()), default=0),
        "hint_partitions_expired": sum(b["expired"] for b in backlog.values()),
        "hints_delivered": node.hints.delivered,
        "hints_expired": node.hints.expired,
        "handoffs_running": len(h.running),
        "handoffs_completed": h.completed,
        "handoffs_failed": h.failed,
        "handoff_keys_sent": h.keys_sent,
        "handoff_bytes_sent": h.bytes_sent,
        "handoff_partitions_dropped": h.dropped_partitions,
        "handoff_drops_refused": h.drops_refused,
        "handoff_strays_found": h.strays_found,
    }
    for owner, b in sorted(backlog.items()):
        out[f"hints_for_{owner}"] = (
            f"partitions={b['partitions']},expired={b['expired']},writes={b['writes']},"
            f"bytes={b['bytes']},oldest_s={b['oldest_s']}"
        )
    return out


def _cluster(node: Node) -> dict[str, Any]:
    ring = node.ring
    out: dict[str, Any] = {
        "ring_epoch": ring.epoch if ring else 0,
        "partitions": node.config.partitions,
        "replicas": node.config.n,
        "incarnation": node.incarnation,
    }
    members = node.gossip.members if node.gossip else {}
    ids = sorted(set(members) | set(ring.node_ids if ring else ()))
    up = [n for n in ids if node.is_up(n)]
    out["nodes"] = len(ids)
    out["nodes_up"] = len(up)
    for n in ids:
        ep = members.get(n)
        phi = node.gossip.phi(n) if node.gossip else 0.0
        state = "up" if n in up else "down"
        addr = ep.client_addr if ep else "?"
        out[f"node_{n}"] = f"state={state},phi={phi:.1f},addr={addr}"
    return out


def _clock(node: Node) -> dict[str, Any]:
    """The drift bound, how far our HLC runs ahead of our wall clock, and
    the timestamps refused or ignored for lying past the bound."""
    out: dict[str, Any] = {
        "max_clock_drift_ms": node.clock.max_drift_ms,
        "hlc_ahead_ms": node.clock.lead_ms(),
    }
    out.update(asdict(node.clock.stats))
    return out


def _storage(node: Node) -> dict[str, Any]:
    workers = node.pool.status()
    out: dict[str, Any] = {
        "workers": len(workers),
        "workers_ready": sum(1 for w in workers if w.get("ready")),
        "worker_restarts": sum(int(str(w.get("restarts") or 0)) for w in workers),
    }
    levels: dict[int, int] = {}
    table_bytes = wal_bytes = debt = memtable = 0
    bloom_checks = bloom_useful = wal_syncs = 0
    wal_sync_s = 0.0
    read_only = []
    for s in node.local_stats:
        e = s.get("engine", {})
        for lv in e.get("levels", []):
            levels[lv["level"]] = levels.get(lv["level"], 0) + lv["files"]
        table_bytes += e.get("table_bytes", 0)
        wal_bytes += e.get("wal_bytes", 0)
        debt += e.get("compaction_debt_bytes", 0)
        memtable += e.get("memtable_bytes", 0)
        bloom_checks += e.get("bloom_checks", 0)
        bloom_useful += e.get("bloom_negatives", 0)
        wal_syncs += e.get("wal_syncs", 0)
        wal_sync_s += e.get("wal_sync_s", 0.0)
        if e.get("read_only"):
            read_only.append(str(e.get("error")))
    out.update({
        "table_bytes": table_bytes, "wal_bytes": wal_bytes, "memtable_bytes": memtable,
        "compaction_debt_bytes": debt,
        "sstables_per_level": ",".join(f"L{k}={v}" for k, v in sorted(levels.items())),
        "read_only": "yes: " + "; ".join(read_only) if read_only else "no",
        "bloom_checks": bloom_checks,
        "bloom_useful": bloom_useful,
        "wal_syncs": wal_syncs,
        "wal_sync_ms_avg": round(1000 * wal_sync_s / wal_syncs, 3) if wal_syncs else 0,
    })
    return out
