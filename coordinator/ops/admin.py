"""Operator commands a node answers over the authenticated peer channel.

The admin CLI (``ringkv status``, ``ring``, ``compact``, ``repair``,
``hints``, ``transfers``, ``flush``, ``drain``, ``remove``, ``readonly``,
``rollout``, whose lease is ``ops.rollout_lease``) connects like a
peer, proving it holds the cluster secret, and sends ``Admin(payload)``: a
request of the admin API (``ops.admin_api``), decoded here into its record.
A request with ``"node": id`` for another node is forwarded to that node, so
one address reaches the whole cluster. Replies are the API's records; a
request the node refuses is a BAD_REQUEST whose message the CLI prints as
one line.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from coordinator.cluster import ring as ringmod
from coordinator.cluster.peer_versions import RELEASE
from coordinator.cluster.ring import NodeId, Ring
from coordinator.cluster.view import ClusterView
from coordinator.config import NodeConfig
from coordinator.data.router import Router
from coordinator.errors import CoordinatorError, RingError, UnavailableError
from coordinator.ops import admin_api as api
from coordinator.ops.admin_api import AdminError
from coordinator.ops.read_only import ReadOnlySwitch, reason_problem
from coordinator.ops.rollout_lease import MAX_HOLDER, MAX_TTL_S, RolloutLease
from coordinator.ops.status import StatusSource, StorageTotals, storage_totals
from coordinator.repair.anti_entropy import AntiEntropy
from coordinator.repair.handoff import Handoff
from coordinator.repair.hints import HintStore
from shardserver.protocol import messages as m
from shardserver.protocol import records
from shardserver.protocol.errors import ProtocolError, ShardUnavailable
from shardserver.protocol.worker_stats import WorkerStats

R = TypeVar("R")
ADMIN_TIMEOUT_S = 600.0  # compactions and repairs of big partitions take minutes
#: ``() -> (commands, errors, cumulative latency buckets)`` (``metrics.RequestCounts.totals``).
RequestTotals = Callable[[], tuple[int, int, tuple[int, ...]]]
#: Why the node would not start again as it was started (its config file
#: re-read and checked as ``ringkv serve`` does), or None: asked before a restart.
RestartCheck = Callable[[], str | None]


class AdminHandler:
    def __init__(self, config: NodeConfig, *, view: ClusterView, router: Router, handoff: Handoff,
                 hints: HintStore, anti_entropy: AntiEntropy, status: StatusSource,
                 read_only: ReadOnlySwitch, restart: Callable[[], None],
                 requests: RequestTotals, restart_check: RestartCheck = lambda: None) -> None:
        self.config = config
        self._restart = restart
        self._restart_check = restart_check
        self._started_ms = int(time.time() * 1000)  # this process's start: LoadReply's counters
        self.lease = RolloutLease(config.data_dir)
        self._requests = requests
        self.read_only = read_only
        self.id = NodeId(config.id)
        self.view = view
        self.router = router
        self.handoff = handoff
        self.hints = hints
        self.anti_entropy = anti_entropy
        self.status = status

    async def handle(self, payload: object) -> m.Reply:
        target = payload.get("node") if isinstance(payload, dict) else None
        try:
            if target is not None and target != self.id:
                return await self._forward(str(target), payload)
            reply = await self._answer(api.decode_request(payload))
            return m.Reply(m.Status.OK, records.to_wire(reply))
        except AdminError as exc:
            return m.Reply(m.Status.BAD_REQUEST, str(exc))

    async def _answer(self, request: api.AdminRequest) -> api.AdminReply:
        match request:
            case api.StatusRequest(cluster=False):
                return await self.node_status()
            case api.StatusRequest(cluster=True):
                return await self.cluster_status()
            case api.RingRequest(key):
                return self.ring(key)
            case api.CompactRequest(partition, worker):
                return await self.compact(partition, worker)
            case api.FlushRequest():
                return await self.flush()
            case api.DrainRequest(off):
                return await self.undrain() if off else await self.drain()
            case api.RepairRequest(partitions, partition):
                return await self.repair(partitions, partition)
            case api.RepairPlanRequest():
                return api.RepairPlanReply(self.id, tuple(self.anti_entropy.primary_partitions()))
            case api.HintsRequest():
                return self.hint_list()
            case api.RemoveRequest(gone):
                return await self.remove(gone)
            case api.TransfersRequest():
                return self.transfers()
            case api.ReadOnlyRequest(on, reason):
                return await self.set_read_only(on, reason)
            case api.RestartRequest():
                return await self.restart()
            case api.LoadRequest():
                return self.load()
            case api.HotKeysRequest(cluster):
                return await self.hot_keys(cluster)
            case api.LeaseRequest(holder, ttl_s, release):
                return await self.rollout_lease(holder, ttl_s, release)
        raise AdminError(f"unexpected admin request {request!r}")

    async def _forward(self, target: str, payload: object) -> m.Reply:
        ring = self.view.ring
        if ring is None or target not in ring.node_ids:
            raise AdminError(f"no node {target!r} in the ring")
        if not self.view.is_up(NodeId(target)):
            raise AdminError(f"node {target} is down")
        assert isinstance(payload, dict)
        rest = {k: v for k, v in payload.items() if k != "node"}
        try:
            return await self.router.call(NodeId(target), m.Admin(rest), ADMIN_TIMEOUT_S)
        except ShardUnavailable as exc:
            raise AdminError(f"node {target} unreachable: {exc.reason}") from None

    # -- helpers ----------------------------------------------------------------
    def _partition(self, p: int) -> int:
        q = self.config.partitions
        if not 0 <= p < q:
            raise AdminError(f"partition must be 0..{q - 1}, got {p!r}")
        return p

    async def _worker_stats(self) -> list[WorkerStats]:
        """Every ready worker's figures, now."""
        return [await self.router.worker_stats(i) for i in range(self.router.workers)
                if self.router.worker_ready(i)]

    def _ring(self) -> Ring:
        ring = self.view.ring
        if ring is None:
            raise AdminError("the ring is not formed yet")
        return ring

    # -- commands ---------------------------------------------------------------
    async def node_status(self) -> api.NodeStatus:
        snap = self.status.snapshot(await self._worker_stats())
        ring, view = self.view.ring, self.view
        primary = ringmod.replicated_partitions(ring, self.id) if ring else ()
        hinted = {h.partition for h in self.hints.all()}
        s = snap.storage
        return api.NodeStatus(
            node=self.id,
            state=("removed" if ring and self.id in ring.removed
                   else "draining" if view.draining else "up"),
            uptime_s=snap.uptime_s,
            ring_epoch=snap.ring_epoch,
            peers={
                mv.node: api.PeerView("up" if mv.up else "down", mv.status, round(mv.phi, 2),
                                      mv.client_addr, mv.peer_protocol, mv.release,
                                      mv.peer_addr)
                for mv in snap.members if mv.node in view.members
            },
            partitions_primary=len(primary),
            partitions_fallback=len(hinted - set(primary)),
            hint_backlog=snap.replication.backlog,
            disk_bytes=s.table_bytes + s.wal_bytes,
            sstables=s.sstables(),
            compaction_debt_bytes=s.compaction_debt_bytes,
            read_only=s.read_only,
            workers=self.router.workers,
            workers_ready=sum(1 for i in range(self.router.workers)
                              if self.router.worker_ready(i)),
            last_repair_ms=self.anti_entropy.last_repair_ms,
            read_only_mode=snap.read_only_mode,
            peer_protocols=snap.peer_protocols,
            release=RELEASE,
        )

    async def cluster_status(self) -> api.ClusterStatus:
        """This node's status and every other up node's own."""
        ring = self.view.ring
        others = [n for n in (ring.node_ids if ring else ()) if n != self.id]

        def one(n: NodeId) -> Awaitable[api.NodeStatus | api.NodeUnreachable]:
            return self._ask(n, api.StatusRequest(), api.NodeStatus)

        nodes = [await self.node_status(), *await asyncio.gather(*map(one, others))]
        return api.ClusterStatus(self.id, tuple(sorted(nodes, key=lambda s: s.node)))

    async def _ask(self, n: NodeId, request: api.AdminRequest,
                   reply_type: type[R]) -> R | api.NodeUnreachable:
        """``request`` answered by the other node ``n``, or why it was not."""
        if not self.view.is_up(n):
            return api.NodeUnreachable(n, "down")
        payload = api.encode_request(request)
        try:
            reply = await self.router.call(n, m.Admin(payload), self.router.timeout_s * 5)
        except ShardUnavailable as exc:
            return api.NodeUnreachable(n, "unreachable", exc.reason)
        if not reply.ok:
            return api.NodeUnreachable(n, "error", reply.message)
        try:
            return records.from_wire(reply_type, reply.payload, f"{payload['cmd']} of {n}")
        except ProtocolError as exc:
            return api.NodeUnreachable(n, "error", str(exc))

    async def hot_keys(self, cluster: bool) -> api.HotKeysReply | api.ClusterHotKeys:
        """The sketch's top keys here; with ``cluster``, every node's own."""
        mine = api.HotKeysReply(self.id, self.config.hotkeys_window_s,
                                tuple(self.status.data.hotkeys.top(self.config.hotkeys_top)))
        if not cluster:
            return mine
        ring = self.view.ring
        others = [n for n in (ring.node_ids if ring else ()) if n != self.id]
        nodes = [mine, *await asyncio.gather(
            *(self._ask(n, api.HotKeysRequest(), api.HotKeysReply) for n in others))]
        return api.ClusterHotKeys(self.id, tuple(sorted(nodes, key=lambda s: s.node)))

    def ring(self, key: bytes | None) -> api.RingReply:
        ring = self._ring()
        placement = None
        if key is not None:
            if not 1 <= len(key) <= m.MAX_KEY_BYTES:
                raise AdminError(f"key must be 1..{m.MAX_KEY_BYTES} bytes")
            p = ring.partition_of(key)
            _, plan = self.router.plan_for(key)
            placement = api.KeyPlacement(
                p, ringmod.primaries(ring, p), ringmod.fallbacks(ring, p),
                tuple(api.TargetView(t.node, t.primary, t.hint_for) for t in plan.targets))
        return api.RingReply(
            ring.epoch, ring.q, ring.n,
            tuple(api.RingMember(i.node_id, i.zone,
                                 "up" if self.view.is_up(i.node_id) else "down",
                                 len(ringmod.partitions_of_node(ring, i.node_id)),
                                 len(ringmod.replicated_partitions(ring, i.node_id)))
                  for i in ring.nodes),
            ring.owners, placement)

    async def compact(self, partition: int | None, worker: int | None) -> api.CompactReply:
        """Compact one partition, one worker, or everything, on this node, now."""
        p = None if partition is None else self._partition(partition)
        workers = self.router.workers
        if worker is not None and not 0 <= worker < workers:
            raise AdminError(f"worker must be 0..{workers - 1}, got {worker!r}")
        before = _brief(storage_totals(await self._worker_stats()))
        started = time.monotonic()
        if p is not None:
            indices: list[int] | range = [self.router.pool.worker_for(p)]
        elif worker is not None:
            indices = [worker]
        else:
            indices = range(workers)
        for i in indices:
            if not self.router.worker_ready(i):
                raise AdminError(f"worker {i} is not ready")
            reply = await self.router.worker_call(i, m.Compact(p), ADMIN_TIMEOUT_S)
            if not reply.ok:
                raise AdminError(f"worker {i}: {reply.status.name} {reply.message}")
        after = _brief(storage_totals(await self._worker_stats()))
        return api.CompactReply(self.id, p, round(time.monotonic() - started, 2), before, after)

    async def flush(self) -> api.FlushReply:
        for i in range(self.router.workers):
            reply = await self.router.worker_call(i, m.Flush(), ADMIN_TIMEOUT_S)
            if not reply.ok:
                raise AdminError(f"worker {i}: {reply.status.name} {reply.message}")
        return api.FlushReply(self.id, self.router.workers)

    async def drain(self) -> api.DrainReply:
        """Stop taking writes (clients get an error naming the node; peers
        route around it as if it were down), then flush every memtable."""
        self.view.start_draining()
        flushed = await self.flush()
        return api.DrainReply(self.id, flushed.flushed_workers, "draining")

    async def undrain(self) -> api.DrainReply:
        """Take client writes again and tell peers to route to this node
        (a drain undone: a rollout stopped before the restart)."""
        self.view.stop_draining()
        return api.DrainReply(self.id, 0, "up")

    async def restart(self) -> api.RestartReply:
        """Stop, then execute the same command line, once the config it
        will read checks out (a node that could not start again would
        just be gone)."""
        problem = await asyncio.to_thread(self._restart_check)
        if problem is not None:
            raise AdminError(f"not restarting {self.id}: it would not start again: {problem}")
        # After this reply has left: the node stops, then executes itself.
        asyncio.get_running_loop().call_soon(self._restart)
        return api.RestartReply(self.id, os.getpid())

    async def rollout_lease(self, holder: str, ttl_s: float, release: bool) -> api.LeaseReply:
        if not holder or len(holder) > MAX_HOLDER:
            raise AdminError(f"the lease holder is 1..{MAX_HOLDER} characters")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise AdminError(f"the lease TTL must be in (0, {MAX_TTL_S:g}] seconds")
        try:
            if release:
                held = await self.lease.release(holder)
                granted = False
            else:
                granted, held = await self.lease.acquire(holder, ttl_s)
        except (OSError, CoordinatorError) as exc:
            raise AdminError(f"cannot keep the rollout lease in {self.lease.path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        return api.LeaseReply(self.id, granted, held.holder if held else "",
                              held.expires_ms if held else 0)

    async def repair(self, partitions: tuple[int, ...] | None,
                     partition: int | None) -> api.RepairReply:
        """Anti-entropy now, for ``partitions`` or ``partition``, or every
        partition this node replicates."""
        if partitions is None and partition is not None:
            partitions = (partition,)
        parts = None if partitions is None else [self._partition(p) for p in partitions]
        report = await self.anti_entropy.repair(parts)
        return api.RepairReply(**{f: getattr(report, f) for f in _REPORT_FIELDS}, node=self.id)

    def hint_list(self) -> api.HintsReply:
        now_ms = int(time.time() * 1000)
        return api.HintsReply(
            self.id, self.handoff.backlog(),
            tuple(api.HintView(h.partition, h.owner, (now_ms - h.since_ms) // 1000,
                               (now_ms - h.last_ms) // 1000, h.expired, h.writes, h.bytes)
                  for h in self.hints.all()),
            self.hints.delivered, self.hints.expired)

    async def remove(self, gone: str) -> api.RemoveReply:
        """Take the node ``gone`` out of the cluster for good; the ring
        change spreads by gossip and handoff moves the data."""
        if not gone:
            raise AdminError("remove needs the id of the node to take out")
        was_up = self.view.is_up(NodeId(gone))
        try:
            old, new = await self.view.remove(NodeId(gone))
        except (RingError, UnavailableError) as exc:
            raise AdminError(str(exc)) from None
        moving = sum(1 for p in range(new.q)
                     if ringmod.primaries(old, p) != ringmod.primaries(new, p))
        return api.RemoveReply(self.id, gone, old is new, was_up, old.epoch, new.epoch, moving,
                               new.node_ids)

    async def set_read_only(self, on: bool, reason: str) -> api.ReadOnlyReply:
        """The kill switch: client writes refused (on) or taken again (off),
        durably in the data directory before the reply."""
        if (problem := reason_problem(reason)) is not None:
            raise AdminError(problem)
        try:
            changed = await self.read_only.set(on, reason)
        except (OSError, CoordinatorError) as exc:
            raise AdminError(f"cannot save the read-only mode in {self.read_only.path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        state = self.read_only.state
        return api.ReadOnlyReply(self.id, state is not None, changed,
                                 state.reason if state else "", state.since_ms if state else 0)

    def load(self) -> api.LoadReply:
        commands, errors, buckets = self._requests()
        return api.LoadReply(self.id, int(time.time() * 1000), commands, errors,
                             sum(self.status.data.noquorum.values()), buckets,
                             self.status.health().under_replicated, self._started_ms)

    def transfers(self) -> api.TransfersReply:
        h = self.handoff
        now = time.time()
        return api.TransfersReply(
            self.id,
            tuple(api.TransferView(t.partition, t.owner, t.keys_sent, t.bytes_sent, t.passes,
                                   round(now - t.started, 1)) for t in h.running.values()),
            h.completed, h.failed)


_REPORT_FIELDS = tuple(f for f in api.RepairReply.__dataclass_fields__ if f != "node")


def _brief(s: StorageTotals) -> api.StorageBrief:
    return api.StorageBrief(s.sstables(), sum(lv.bytes for lv in s.levels.values()), s.l0_files,
                            s.levels_over_target)
