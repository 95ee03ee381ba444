"""A node's status as one typed snapshot (DESIGN §12), and INFO's text.

:class:`StatusSource` holds the parts of the node that keep figures and
reads each of them once per :meth:`StatusSource.snapshot`. INFO
(:func:`info_sections`), Prometheus (``ops.metrics``) and ``ringkv status``
(``ops.admin``) all render a :class:`NodeSnapshot`, so they show the same
numbers under the same field names; a field renamed in one place fails type
checking in the others. Workers' figures come as typed records
(``shardserver.protocol.worker_stats``), polled every ``STATS_INTERVAL_S``
by :class:`WorkerStatsPoller`, and are summed by :func:`storage_totals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.client.server import ClientServer
from coordinator.client.session import REDIS_VERSION, VERSION, ClientStats
from coordinator.cluster.ring import NodeId
from coordinator.cluster.view import ClusterView
from coordinator.config import NodeConfig
from coordinator.data.clock import Clock, ClockStats
from coordinator.data.datapath import DataPath, DataStats
from coordinator.data.hotkeys import HotKey, top_lines
from coordinator.data.router import Router
from coordinator.ops.health import RingHealth, ring_health
from coordinator.ops.host import DiskSpace, cpu_seconds, disk_space, resident_bytes
from coordinator.ops.read_only import ReadOnlySwitch
from coordinator.repair.anti_entropy import AntiEntropy
from coordinator.repair.handoff import Handoff
from coordinator.repair.hints import HintStore
from coordinator.repair.reports import HintBacklog, RepairReport
from shardserver.protocol.errors import ShardError, ShardUnavailable
from shardserver.protocol.worker_stats import WorkerStats

STATS_INTERVAL_S = 2.0
@dataclass(frozen=True, slots=True)
class WorkerUsage:
    worker: int
    pid: int | None
    ready: bool
    inflight: int  # calls sent to it and not yet answered
    cpu_s: float
    resident_bytes: int

# -- storage: the workers' figures summed ------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelTotals:
    files: int = 0
    bytes: int = 0
    entries: int = 0
    over_target: int = 0  # workers whose level is past its target size


@dataclass(frozen=True, slots=True)
class StorageTotals:
    levels: dict[int, LevelTotals]
    table_bytes: int = 0
    wal_bytes: int = 0
    memtable_bytes: int = 0
    memtable_entries: int = 0
    compaction_debt_bytes: int = 0
    stall_s: float = 0.0
    write_stalls: int = 0
    bloom_checks: int = 0
    bloom_negatives: int = 0
    wal_syncs: int = 0
    wal_sync_s: float = 0.0
    read_only: tuple[str, ...] = ()  # why each read-only engine is so

    @property
    def entries(self) -> int:
        """Entries in tables and memtables (versions and tombstones not yet
        compacted away count too)."""
        return sum(lv.entries for lv in self.levels.values()) + self.memtable_entries

    @property
    def l0_files(self) -> int:
        return self.levels[0].files if 0 in self.levels else 0

    @property
    def levels_over_target(self) -> int:
        return sum(lv.over_target for lv in self.levels.values())

    def sstables(self) -> dict[str, int]:
        """SSTables per level, ``{"L0": n, ...}``."""
        return {f"L{n}": lv.files for n, lv in sorted(self.levels.items())}


def storage_totals(workers: Sequence[WorkerStats]) -> StorageTotals:
    levels: dict[int, LevelTotals] = {}
    sums: dict[str, Any] = {}
    read_only = []
    for w in workers:
        e = w.engine
        for lv in e.levels:
            t = levels.get(lv.level, LevelTotals())
            over = lv.target_bytes is not None and lv.bytes > lv.target_bytes
            levels[lv.level] = LevelTotals(t.files + lv.files, t.bytes + lv.bytes,
                                           t.entries + lv.entries, t.over_target + over)
        for name in _SUMMED:
            sums[name] = sums.get(name, 0) + getattr(e, name)
        if e.read_only:
            read_only.append(str(e.error))
    return StorageTotals(levels, read_only=tuple(read_only), **sums)


_SUMMED = tuple(f.name for f in dataclasses.fields(StorageTotals)
                if f.name not in ("levels", "read_only"))


class WorkerStatsPoller:
    """The latest figures of every ready worker, refreshed every
    ``STATS_INTERVAL_S`` (INFO and scrapes read these, never a worker)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.latest: list[WorkerStats] = []

    async def poll(self) -> list[WorkerStats]:
        """Every ready worker's figures, now."""
        out = []
        for i in range(self.router.workers):
            if self.router.worker_ready(i):
                with contextlib.suppress(ShardUnavailable, ShardError):
                    out.append(await self.router.worker_stats(i))
        return out

    async def run(self) -> None:
        while True:
            self.latest = await self.poll()
            await asyncio.sleep(STATS_INTERVAL_S)


# -- the snapshot ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberView:
    node: str
    up: bool
    phi: float
    client_addr: str  # "?" when gossip has not told it yet
    status: str  # what the node says of itself: up, leaving, removed ("?": unknown)
    peer_protocol: int = 0  # the newest it speaks (gossip, else our handshake); 0: unknown
    release: str = ""  # its software version; "": unknown
    peer_addr: str = ""  # "" when gossip has not told it yet


@dataclass(frozen=True, slots=True)
class ReplicationStatus:
    backlog: dict[str, HintBacklog]
    hints_delivered: int
    hints_expired: int
    handoffs_running: int
    handoffs_completed: int
    handoffs_failed: int
    handoff_keys_sent: int
    handoff_bytes_sent: int
    handoff_partitions_dropped: int
    handoff_drops_refused: int
    handoff_strays_found: int


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    node_id: str
    process_id: int
    run_id: str  # random per process, as Redis's
    used_memory: int  # the coordinator's resident bytes
    tcp_port: int
    uptime_s: int
    connected_clients: int
    max_clients: int
    clients: ClientStats
    data: DataStats
    replication: ReplicationStatus
    ring_epoch: int
    ring_nodes: tuple[str, ...]
    partitions: int
    replicas: int
    incarnation: int
    members: tuple[MemberView, ...]  # gossip's members and the ring's, by id
    max_clock_drift_ms: int
    hlc_ahead_ms: int
    clock: ClockStats
    workers: int
    workers_ready: int
    worker_restarts: int
    storage: StorageTotals
    repair: RepairReport
    last_repair_ms: int  # wall clock of the last partition anti-entropy finished; 0: never
    pending_requests: int  # client requests read and not yet answered
    reply_bytes_in_flight: int
    noquorum: dict[tuple[str, str], int]  # (op, cause) -> NOQUORUM answers
    disk: DiskSpace
    read_only_mode: str | None  # the operator's kill switch: why writes are off, None: on
    peer_protocols: tuple[int, int]  # the range this node offers peers (max_peer_protocol)
    direct_connections: int = 0  # ours to other nodes' workers, up now (peer protocol 5)
    peer_connections_handed: int = 0  # peers' connections handed to our workers since start
    hotkeys: tuple[HotKey, ...] = ()  # the most requested keys, most first


class StatusSource:
    def __init__(self, *, config: NodeConfig, incarnation: int, view: ClusterView, router: Router,
                 data: DataPath, handoff: Handoff, hints: HintStore,
                 anti_entropy: AntiEntropy, clock: Clock, worker_stats: WorkerStatsPoller,
                 clients: ClientServer, read_only: ReadOnlySwitch) -> None:
        self.config = config
        self.read_only = read_only
        self.incarnation = incarnation
        self.view = view
        self.router = router
        self.data = data
        self.handoff = handoff
        self.hints = hints
        self.anti_entropy = anti_entropy
        self.clock = clock
        self.worker_stats = worker_stats
        self.clients = clients
        self.run_id = secrets.token_hex(20)

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: the data path's INFO counters from 0 (the
        client server zeroes its own)."""
        stats = self.data.stats
        for f in dataclasses.fields(stats):
            setattr(stats, f.name, 0)

    def snapshot(self, workers: Sequence[WorkerStats] | None = None) -> NodeSnapshot:
        """Everything at once; ``workers`` defaults to the latest polled."""
        server = self.clients
        ring = self.view.ring
        pool = self.router.pool.status()
        latest = self.worker_stats.latest if workers is None else workers
        return NodeSnapshot(
            node_id=self.config.id,
            process_id=os.getpid(),
            run_id=self.run_id,
            used_memory=resident_bytes(),
            tcp_port=server.port,
            uptime_s=int(time.time() - server.started),
            connected_clients=server.clients,
            max_clients=server.config.max_clients,
            clients=dataclasses.replace(server.stats),
            data=dataclasses.replace(self.data.stats),
            replication=self._replication(),
            ring_epoch=ring.epoch if ring else 0,
            ring_nodes=ring.node_ids if ring else (),
            partitions=self.config.partitions,
            replicas=self.config.n,
            incarnation=self.incarnation,
            members=self._members(),
            max_clock_drift_ms=self.clock.max_drift_ms,
            hlc_ahead_ms=self.clock.lead_ms(),
            # Writes past the bound are refused here (relayed) or by our
            # workers (peers' direct connections): one count for both.
            clock=dataclasses.replace(self.clock.stats, peer_writes_refused=(
                self.clock.stats.peer_writes_refused
                + sum(w.direct.get("writes_refused", 0) for w in latest))),
            workers=len(pool),
            workers_ready=sum(1 for w in pool if w.ready),
            worker_restarts=sum(w.restarts for w in pool),
            storage=storage_totals(latest),
            repair=dataclasses.replace(self.anti_entropy.total,
                                       errors=list(self.anti_entropy.total.errors)),
            last_repair_ms=self.anti_entropy.last_repair_ms,
            pending_requests=server.pending,
            reply_bytes_in_flight=server.reply_bytes_in_flight,
            noquorum=dict(self.data.noquorum),
            disk=disk_space(self.config.data_dir),
            read_only_mode=self.read_only.refusal,
            peer_protocols=(self.router.versions.lo, self.router.versions.hi),
            direct_connections=self.router.direct.connected(),
            peer_connections_handed=self.router.attach.handed,
            hotkeys=tuple(self.data.hotkeys.top(self.config.hotkeys_top)),
        )

    def health(self) -> RingHealth:
        """Each partition's primaries up and losses to quorum loss, at the
        node's current W and R (``ops.health``)."""
        config = self.clients.config
        return ring_health(self.view.ring, self.view.is_up, config.w, config.r)

    def workers_usage(self) -> list[WorkerUsage]:
        """Each worker's queue, CPU and memory (read from /proc, any thread)."""
        inflight = self.router.worker_inflight()
        out = []
        for w in self.router.pool.status():
            pid = w.pid
            out.append(WorkerUsage(
                w.worker, pid, w.ready,
                inflight[w.worker] if w.worker < len(inflight) else 0,
                cpu_seconds(pid) if pid else 0.0, resident_bytes(pid) if pid else 0))
        return out

    def _replication(self) -> ReplicationStatus:
        h = self.handoff
        return ReplicationStatus(
            h.backlog(), self.hints.delivered, self.hints.expired, len(h.running), h.completed,
            h.failed, h.keys_sent, h.bytes_sent, h.dropped_partitions, h.drops_refused,
            h.strays_found)

    def _members(self) -> tuple[MemberView, ...]:
        view, ring = self.view, self.view.ring
        members = view.members
        ids = sorted(set(members) | set(ring.node_ids if ring else ()))
        out = []
        for n in ids:
            ep = members.get(NodeId(n))
            # A protocol-3 node does not gossip its versions: what our own
            # handshake with it heard stands in.
            heard = self.router.negotiated.get(ep.peer_addr) if ep else None
            proto = (ep.peer_protocol if ep else 0) or (heard.theirs.hi if heard else 0)
            release = (ep.release if ep else "") or (heard.release if heard else "")
            out.append(MemberView(n, view.is_up(NodeId(n)), view.phi(NodeId(n)),
                                  ep.client_addr if ep else "?",
                                  ep.status.value if ep else "?", proto, release,
                                  ep.peer_addr if ep else ""))
        return tuple(out)

    def info_text(self, section: str) -> bytes:
        return info_text(self.snapshot(), section)


# -- INFO ---------------------------------------------------------------------


def info_text(snap: NodeSnapshot, section: str) -> bytes:
    """INFO's reply for ``section`` ("default", "all", "everything" or one
    section's name): ``# Section`` then ``name:value`` lines."""
    wanted = section.lower()
    lines: list[str] = []
    for name, fields_ in info_sections(snap).items():
        if wanted not in ("default", "all", "everything", name):
            continue
        lines.append(f"# {name.capitalize()}")
        lines += [f"{k}:{v}" for k, v in fields_.items()]
        lines.append("")
    return "\r\n".join(lines).encode()


_OS = f"{platform.system()} {platform.release()} {platform.machine()}"
_ARCH_BITS = 64 if sys.maxsize > 1 << 32 else 32


def info_sections(snap: NodeSnapshot) -> dict[str, dict[str, Any]]:
    """INFO's sections: server, clients, memory, stats, replication (hints
    and handoff), cluster, keyspace, clock, storage, hotkeys; plain
    ``name: value`` maps. The fields Redis tools read (redis_version,
    redis_mode, run_id, used_memory, db0, cluster_enabled, role ...) are
    there under Redis's names, docs/protocol.md says what each means here."""
    return {
        "server": {
            "redis_version": REDIS_VERSION,
            "redis_mode": "standalone",
            "ringkv_version": VERSION,
            "node_id": snap.node_id,
            "peer_protocol": snap.peer_protocols[1],
            "peer_protocol_min": snap.peer_protocols[0],
            "direct_worker_connections": snap.direct_connections,
            "peer_connections_handed": snap.peer_connections_handed,
            "os": _OS,
            "arch_bits": _ARCH_BITS,
            "process_id": snap.process_id,
            "run_id": snap.run_id,
            "tcp_port": snap.tcp_port,
            "uptime_in_seconds": snap.uptime_s,
            "uptime_in_days": snap.uptime_s // 86400,
            "read_only_mode": "off" if snap.read_only_mode is None
                              else f"on: {snap.read_only_mode}",
        },
        "clients": {"connected_clients": snap.connected_clients,
                    "maxclients": snap.max_clients},
        "memory": {"used_memory": snap.used_memory, "used_memory_rss": snap.used_memory,
                   "used_memory_human": _human(snap.used_memory), "maxmemory": 0,
                   "maxmemory_policy": "noeviction"},
        "stats": {**asdict(snap.clients), **asdict(snap.data)},
        "replication": {"role": "master", "connected_slaves": 0,
                        **_replication(snap.replication)},
        "cluster": {"cluster_enabled": 0, **_cluster(snap)},
        # This node's entries (versions and tombstones not yet compacted
        # count): an estimate of its share, not the cluster's key count.
        "keyspace": {"db0": f"keys={snap.storage.entries},expires=0,avg_ttl=0"},
        "clock": {"max_clock_drift_ms": snap.max_clock_drift_ms,
                  "hlc_ahead_ms": snap.hlc_ahead_ms, **asdict(snap.clock)},
        "storage": _storage(snap),
        "hotkeys": dict(top_lines(list(snap.hotkeys))),
    }


def _human(n: int) -> str:
    """Redis's used_memory_human: 1.50M."""
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.2f}{unit}" if unit != "B" else f"{n}B"
        size /= 1024
    return f"{size:.2f}T"


def _replication(r: ReplicationStatus) -> dict[str, Any]:
    backlog = r.backlog.values()
    out: dict[str, Any] = {
        "hint_partitions": sum(b.partitions for b in backlog),
        "hint_writes": sum(b.writes for b in backlog),
        "hint_bytes": sum(b.bytes for b in backlog),
        "hint_oldest_s": max((b.oldest_s for b in backlog), default=0),
        "hint_partitions_expired": sum(b.expired for b in backlog),
        "hints_delivered": r.hints_delivered,
        "hints_expired": r.hints_expired,
        "handoffs_running": r.handoffs_running,
        "handoffs_completed": r.handoffs_completed,
        "handoffs_failed": r.handoffs_failed,
        "handoff_keys_sent": r.handoff_keys_sent,
        "handoff_bytes_sent": r.handoff_bytes_sent,
        "handoff_partitions_dropped": r.handoff_partitions_dropped,
        "handoff_drops_refused": r.handoff_drops_refused,
        "handoff_strays_found": r.handoff_strays_found,
    }
    for owner, b in sorted(r.backlog.items()):
        out[f"hints_for_{owner}"] = (
            f"partitions={b.partitions},expired={b.expired},writes={b.writes},"
            f"bytes={b.bytes},oldest_s={b.oldest_s}"
        )
    return out


def _cluster(snap: NodeSnapshot) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ring_epoch": snap.ring_epoch,
        "partitions": snap.partitions,
        "replicas": snap.replicas,
        "incarnation": snap.incarnation,
        "nodes": len(snap.members),
        "nodes_up": sum(1 for m in snap.members if m.up),
    }
    for m in snap.members:
        out[f"node_{m.node}"] = (f"state={'up' if m.up else 'down'},phi={m.phi:.1f},"
                                 f"addr={m.client_addr},peer_protocol={m.peer_protocol or '?'},"
                                 f"release={m.release or '?'}")
    return out


def _storage(snap: NodeSnapshot) -> dict[str, Any]:
    s = snap.storage
    return {
        "workers": snap.workers,
        "workers_ready": snap.workers_ready,
        "worker_restarts": snap.worker_restarts,
        "table_bytes": s.table_bytes,
        "wal_bytes": s.wal_bytes,
        "memtable_bytes": s.memtable_bytes,
        "compaction_debt_bytes": s.compaction_debt_bytes,
        "sstables_per_level": ",".join(f"{k}={v}" for k, v in s.sstables().items()),
        "read_only": "yes: " + "; ".join(s.read_only) if s.read_only else "no",
        "bloom_checks": s.bloom_checks,
        "bloom_useful": s.bloom_negatives,
        "wal_syncs": s.wal_syncs,
        "wal_sync_ms_avg": round(1000 * s.wal_sync_s / s.wal_syncs, 3) if s.wal_syncs else 0,
    }
