"""Operator commands a node answers over the authenticated peer channel.

The admin CLI (``ringkv status``, ``ring``, ``compact``, ``repair``,
``hints``, ``transfers``, ``flush``, ``drain``, ``remove``) connects like a peer, proving
it holds the cluster secret, and sends ``Admin({"cmd": ..., ...})``. A
command with ``"node": id`` for another node is forwarded to that node, so
one address reaches the whole cluster. Replies are plain maps; a bad
argument is a BAD_REQUEST whose message the CLI prints as one line.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from coordinator.cluster import ring as ringmod
from coordinator.errors import RingError, UnavailableError
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardUnavailable

if TYPE_CHECKING:
    from coordinator.node import Node

ADMIN_TIMEOUT_S = 600.0  # compactions and repairs of big partitions take minutes


class AdminError(Exception):
    """A command the node refuses; the message is shown to the operator."""


class Admin:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.started = time.time()

    async def handle(self, payload: dict[str, Any]) -> m.Reply:
        target = payload.get("node")
        try:
            if target is not None and target != self.node.id:
                return await self._forward(str(target), payload)
            cmd = payload.get("cmd")
            handler = getattr(self, f"cmd_{cmd}", None) if isinstance(cmd, str) else None
            if handler is None:
                raise AdminError(f"unknown admin command {cmd!r}")
            result: dict[str, Any] = await handler(payload)
            return m.Reply(m.Status.OK, result)
        except AdminError as exc:
            return m.Reply(m.Status.BAD_REQUEST, str(exc))

    async def _forward(self, target: str, payload: dict[str, Any]) -> m.Reply:
        node = self.node
        ring = node.ring
        if ring is None or target not in ring.node_ids:
            raise AdminError(f"no node {target!r} in the ring")
        if not node.is_up(ringmod.NodeId(target)):
            raise AdminError(f"node {target} is down")
        rest = {k: v for k, v in payload.items() if k != "node"}
        try:
            return await node.call(ringmod.NodeId(target), m.Admin(rest), ADMIN_TIMEOUT_S)
        except ShardUnavailable as exc:
            raise AdminError(f"node {target} unreachable: {exc.reason}") from None

    # -- helpers ----------------------------------------------------------------
    def _partition(self, payload: dict[str, Any]) -> int | None:
        p = payload.get("partition")
        q = self.node.config.partitions
        if p is None:
            return None
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < q:
            raise AdminError(f"partition must be 0..{q - 1}, got {p!r}")
        return p

    async def _worker_stats(self) -> list[dict[str, Any]]:
        node = self.node
        out = []
        for i, client in enumerate(node.local_clients):
            if node.pool.ready(i):
                out.append(await client.stats(timeout=node.timeout_s))
        return out

    # -- commands ---------------------------------------------------------------
    async def cmd_status(self, payload: dict[str, Any]) -> dict[str, Any]:
        """This node's view; with ``cluster``, every up node's own status too."""
        local = self._local_status(await self._worker_stats())
        if not payload.get("cluster"):
            return local
        node = self.node
        nodes: list[dict[str, Any]] = [local]
        others = [n for n in (node.ring.node_ids if node.ring else ()) if n != node.id]

        async def one(n: ringmod.NodeId) -> dict[str, Any]:
            if not node.is_up(n):
                return {"node": n, "state": "down"}
            try:
                reply = await node.call(n, m.Admin({"cmd": "status"}), node.timeout_s * 5)
            except ShardUnavailable as exc:
                return {"node": n, "state": "unreachable", "error": exc.reason}
            if not reply.ok:
                return {"node": n, "state": "error", "error": reply.message}
            result: dict[str, Any] = reply.payload
            return result

        nodes += await asyncio.gather(*map(one, others))
        return {"asked": node.id, "nodes": sorted(nodes, key=lambda d: str(d["node"]))}

    def _local_status(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        node = self.node
        ring = node.ring
        levels: dict[str, int] = {}
        disk = debt = 0
        read_only = []
        for s in stats:
            e = s.get("engine", {})
            for lv in e.get("levels", []):
                levels[f"L{lv['level']}"] = levels.get(f"L{lv['level']}", 0) + lv["files"]
            disk += e.get("table_bytes", 0) + e.get("wal_bytes", 0)
            debt += e.get("compaction_debt_bytes", 0)
            if e.get("read_only"):
                read_only.append(str(e.get("error")))
        primary = ringmod.replicated_partitions(ring, node.id) if ring else ()
        hinted = {h.partition for h in node.hints.all()}
        members = node.gossip.members if node.gossip else {}
        return {
            "node": node.id,
            "state": ("removed" if ring and node.id in ring.removed
                      else "draining" if node.draining else "up"),
            "uptime_s": int(time.time() - self.started),
            "ring_epoch": ring.epoch if ring else 0,
            "peers": {
                str(n): {"state": "up" if node.is_up(n) else "down",
                         "status": ep.status.value,
                         "phi": round(node.gossip.phi(n), 2) if node.gossip else 0.0,
                         "client_addr": ep.client_addr}
                for n, ep in sorted(members.items())
            },
            "partitions_primary": len(primary),
            "partitions_fallback": len(hinted - set(primary)),
            "hint_backlog": node.handoff.backlog(),
            "disk_bytes": disk,
            "sstables": levels,
            "compaction_debt_bytes": debt,
            "read_only": read_only,
            "workers": node.pool.workers,
            "workers_ready": sum(1 for i in range(node.pool.workers) if node.pool.ready(i)),
            "last_repair_ms": node.last_repair_ms(),
        }

    async def cmd_ring(self, payload: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        ring = node.ring
        if ring is None:
            raise AdminError("the ring is not formed yet")
        out: dict[str, Any] = {
            "epoch": ring.epoch, "q": ring.q, "n": ring.n,
            "nodes": [
                {"node": i.node_id, "zone": i.zone,
                 "state": "up" if node.is_up(i.node_id) else "down",
                 "owned": len(ringmod.partitions_of_node(ring, i.node_id)),
                 "replicated": len(ringmod.replicated_partitions(ring, i.node_id))}
                for i in ring.nodes
            ],
            "owners": list(ring.owners),
        }
        key = payload.get("key")
        if key is not None:
            if not isinstance(key, bytes) or not 1 <= len(key) <= m.MAX_KEY_BYTES:
                raise AdminError(f"key must be 1..{m.MAX_KEY_BYTES} bytes")
            p = ring.partition_of(key)
            _, plan = node.plan_for(key)
            out["key"] = {
                "partition": p,
                "primaries": list(ringmod.primaries(ring, p)),
                "fallbacks": list(ringmod.fallbacks(ring, p)),
                "targets": [
                    {"node": t.node, "primary": t.primary, "hint_for": t.hint_for}
                    for t in plan.targets
                ],
            }
        return out

    async def cmd_compact(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Compact one partition, or everything, on this node, now."""
        node = self.node
        p = self._partition(payload)
        worker = payload.get("worker")
        if worker is not None and (not isinstance(worker, int) or isinstance(worker, bool)
                                   or not 0 <= worker < node.pool.workers):
            raise AdminError(f"worker must be 0..{node.pool.workers - 1}, got {worker!r}")
        before = _summary(await self._worker_stats())
        started = time.monotonic()
        if p is not None:
            indices: list[int] | range = [node.pool.worker_for(p)]
        elif worker is not None:
            indices = [worker]
        else:
            indices = range(node.pool.workers)
        for i in indices:
            if not node.pool.ready(i):
                raise AdminError(f"worker {i} is not ready")
            reply = await node.local_clients[i].call(m.Compact(p), ADMIN_TIMEOUT_S)
            if not reply.ok:
                raise AdminError(f"worker {i}: {reply.status.name} {reply.message}")
        after = _summary(await self._worker_stats())
        return {"node": node.id, "partition": p, "seconds": round(time.monotonic() - started, 2),
                "before": before, "after": after}

    async def cmd_flush(self, payload: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        for i, client in enumerate(node.local_clients):
            reply = await client.call(m.Flush(), ADMIN_TIMEOUT_S)
            if not reply.ok:
                raise AdminError(f"worker {i}: {reply.status.name} {reply.message}")
        return {"node": node.id, "flushed_workers": len(node.local_clients)}

    async def cmd_drain(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Stop taking writes (clients get an error naming the node; peers
        route around it as if it were down), then flush every memtable."""
        self.node.start_draining()
        flushed = await self.cmd_flush(payload)
        return {**flushed, "state": "draining"}

    async def cmd_repair(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Anti-entropy now, for ``partitions`` (a list) or ``partition``, or
        every partition this node replicates."""
        node = self.node
        parts = payload.get("partitions")
        if parts is None and payload.get("partition") is not None:
            parts = [self._partition(payload)]
        if parts is not None:
            if not isinstance(parts, list):
                raise AdminError("partitions must be a list")
            parts = [self._partition({"partition": p}) for p in parts]
        report = await node.anti_entropy.repair(parts)
        return {"node": node.id, **report.as_dict()}

    async def cmd_repair_plan(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The partitions ``repair`` would cover (the CLI repairs them one by
        one to show progress)."""
        return {"node": self.node.id, "partitions": self.node.anti_entropy.primary_partitions()}

    async def cmd_hints(self, payload: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        now_ms = int(time.time() * 1000)
        return {
            "node": node.id,
            "backlog": node.handoff.backlog(),
            "hints": [
                {"partition": h.partition, "owner": h.owner, "age_s": (now_ms - h.since_ms) // 1000,
                 "idle_s": (now_ms - h.last_ms) // 1000, "expired": h.expired,
                 "writes": h.writes, "bytes": h.bytes}
                for h in node.hints.all()
            ],
            "delivered": node.hints.delivered,
            "expired": node.hints.expired,
        }

    async def cmd_remove(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Take the node ``remove`` out of the cluster for good; the ring
        change spreads by gossip and handoff moves the data."""
        gone = payload.get("remove")
        if not isinstance(gone, str) or not gone:
            raise AdminError("remove needs the id of the node to take out")
        node = self.node
        was_up = node.is_up(ringmod.NodeId(gone))
        try:
            old, new = node.remove(ringmod.NodeId(gone))
        except (RingError, UnavailableError) as exc:
            raise AdminError(str(exc)) from None
        moving = sum(1 for p in range(new.q)
                     if ringmod.primaries(old, p) != ringmod.primaries(new, p))
        return {"node": node.id, "removed": gone, "already_removed": old is new,
                "was_up": was_up, "epoch_before": old.epoch, "epoch": new.epoch,
                "partitions_changed": moving, "members": list(new.node_ids)}

    async def cmd_transfers(self, payload: dict[str, Any]) -> dict[str, Any]:
        h = self.node.handoff
        return {"node": self.node.id, "running": [t.as_dict() for t in h.running.values()],
                "completed": h.completed, "failed": h.failed}


def _summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    files: dict[str, int] = {}
    size = 0
    over_target = 0
    for s in stats:
        for lv in s.get("engine", {}).get("levels", []):
            files[f"L{lv['level']}"] = files.get(f"L{lv['level']}", 0) + lv["files"]
            size += lv["bytes"]
            target = lv.get("target_bytes")
            if target is not None and lv["bytes"] > target:
                over_target += 1
    l0 = sum(s.get("engine", {}).get("l0_files", 0) for s in stats)
    return {"sstables": files, "bytes": size, "l0_files": l0, "levels_over_target": over_target}
