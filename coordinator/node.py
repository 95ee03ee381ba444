"""One ringkv node: the coordinator that ties ring, workers, peers and clients.

Startup -> serve -> shutdown::

    identity + ring + hints from data_dir ─▶ workers ready ─▶ peer server
      ─▶ gossip (form the ring with the seeds if there is none yet)
      ─▶ handoff + stats tasks ─▶ client server

Routing: a request for node X goes to our own worker for the partition when
X is us, else over peer RPC to X's coordinator, which hands it to its
worker (:meth:`Node.call`). A write that carries ``hint_for`` is a fallback
copy: its hint is made durable before the worker applies the write.

The ring: a new cluster claims partitions once every seed answered (or the
formation timeout passed); the ring is saved in ``<data_dir>/ring.msgpack``
and travels in gossip, where the higher (epoch, members) wins and equal
ones are broken by the owner list, so all nodes settle on one ring. A
member seen in gossip but missing from the ring joins by ``rebalance``; the
partitions a node stops replicating become hints for their new primaries,
so handoff moves the data (Riak's ownership handoff, through the same code).

``ringkv remove`` takes a node out for good (:meth:`Node.remove`): the next
ring lists it as removed, so it never joins again. Its partitions go to new
primaries; the replicas that stay hint them too (a dead node cannot hand
anything over), hints held for it go to its replacements, and a removed
node that still runs hands its copies off and says ``removed`` in gossip.
A removal lost to a concurrent ring change is applied again: removed ids
only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from coordinator import files
from coordinator.client.commands import CommandSpec
from coordinator.client.server import ClientServer
from coordinator.cluster import ring as ringmod
from coordinator.cluster.endpoints import Endpoint
from coordinator.cluster.endpoints import Status as MemberStatus
from coordinator.cluster.gossip import Gossiper
from coordinator.cluster.peer import Backoff, peer_client
from coordinator.cluster.peer_server import PeerServer
from coordinator.cluster.ring import NodeId, Ring
from coordinator.config import NodeConfig
from coordinator.data import quorum
from coordinator.data.clock import Clock
from coordinator.data.datapath import DataPath
from coordinator.data.quorum import Consistency, Plan
from coordinator.errors import (
    CommandError,
    CoordinatorError,
    RingError,
    UnavailableError,
)
from coordinator.ops import status as report
from coordinator.ops.admin import ADMIN_TIMEOUT_S, Admin
from coordinator.ops.metrics import Metrics
from coordinator.repair.anti_entropy import AntiEntropy
from coordinator.repair.handoff import Handoff
from coordinator.repair.hints import Hint, HintStore
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardClient, ShardError, ShardUnavailable
from shardserver.protocol.pool import WorkerPool
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import DEFAULT_SIBLING_CAP, Context

log = logging.getLogger("ringkv.node")

IDENTITY_FILE = "node.msgpack"
RING_FILE = "ring.msgpack"
STATS_INTERVAL_S = 2.0
PLAN_TTL_S = 0.2
WORKER_FRAME_BYTES = 16 << 20  # shardserver.worker's DEFAULT_MAX_FRAME_BYTES


class Node:
    def __init__(
        self,
        config: NodeConfig,
        pool: WorkerPool,
        *,
        formation_timeout_s: float = 30.0,
        gossip_interval_s: float = 1.0,
        insecure_no_secret: bool = False,
    ) -> None:
        self.config = config
        self.pool = pool
        self.id = NodeId(config.id)
        self.secret = config.secret.encode()
        self.clock = Clock(config.max_clock_drift_ms, offset_ms=config.clock_offset_ms)
        self.sibling_cap = DEFAULT_SIBLING_CAP
        self.hinted_handoff = config.handoff_enabled
        self.actor = make_actor(config.id, 0)  # replaced by start() from the identity file
        self.incarnation = 0
        self.hints = HintStore(config.data_dir)
        self.ring: Ring | None = None
        self.timeout_s = config.request_timeout_ms / 1000
        self.data = DataPath(self, self.timeout_s, max_reply_bytes=config.max_reply_bytes)
        self.handoff = Handoff(self, config)
        self.anti_entropy = AntiEntropy(
            self, interval_s=config.aae_interval_s, sibling_cap=self.sibling_cap
        )
        self.client_server = ClientServer(config, self, self.info_text, self._observe)
        self.peer_server = PeerServer(
            config.id, self.secret, self._on_peer, bind=config.bind, port=config.peer_port,
            fast=self._peer_fast, allow_empty_secret=insecure_no_secret,
        )
        self.gossip: Gossiper | None = None
        self.admin = Admin(self)
        self.metrics = Metrics(self)
        self._draining = False
        self.local_stats: list[dict[str, Any]] = []
        self._formation_timeout_s = formation_timeout_s
        self._gossip_interval_s = gossip_interval_s
        self.local_clients: list[ShardClient] = []  # one per worker
        self._peers: dict[str, ShardClient] = {}
        self._backoffs: dict[str, Backoff] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._plans: dict[int, Plan] = {}
        self._plans_at = 0.0
        self._plans_ring: Ring | None = None

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        files.private_dir(self.config.data_dir)
        self._load_identity()
        self.hints.load(self.clock.hint_since)
        doc = files.read_doc(os.path.join(self.config.data_dir, RING_FILE))
        if doc is not None:
            self.ring = ringmod.decode_ring(doc.get("ring"))
        await self.pool.start()
        await self.pool.wait_ready(120)
        # Frames from workers are held to the workers' own 16 MiB frame limit
        # (they split bigger replies), not the 64 MiB default.
        self.local_clients = [
            ShardClient(self.pool.socket_for(p), timeout_s=self.timeout_s,
                        max_recv_frame=WORKER_FRAME_BYTES)
            for p in self._first_partitions()
        ]
        await self.peer_server.start()
        me = Endpoint(
            self.id, int(time.time() * 1000), 0, MemberStatus.UP,
            f"{self.config.bind}:{self.config.client_port}",
            f"{self.config.bind}:{self.peer_server.port}",
            self.ring.epoch if self.ring else 0,
            self.config.zone,
        )
        self.gossip = Gossiper(
            me, self.config.seeds, self._gossip_send, interval_s=self._gossip_interval_s,
            extra_out=self._ring_out, extra_in=self._ring_in, on_restart=self._peer_restarted,
            accept=self.clock.endpoint_ok,
        )
        self._own(self.gossip.run(), "gossip")
        if self.ring is None:
            await self._form()
        self._own(self.handoff.run(), "handoff")
        self._own(self.anti_entropy.run(), "anti-entropy")
        self._own(self._stats_loop(), "stats")
        if self.config.metrics_port:
            self.metrics.serve(self.config.bind, self.config.metrics_port)
        await self.client_server.start()
        log.info("node %s ready: clients on %s:%d, peers on %s:%d, ring epoch %d",
                 self.id, self.config.bind, self.client_server.port, self.config.bind,
                 self.peer_server.port, self.ring.epoch if self.ring else 0)

    async def stop(self) -> None:
        await self.client_server.stop()
        await self.data.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.handoff.close()
        await self.peer_server.stop()
        for client in [*self.local_clients, *self._peers.values()]:
            await client.close()
        await self.pool.stop()

    def _own(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s died", task.get_name(), exc_info=task.exception())

    def _load_identity(self) -> None:
        path = os.path.join(self.config.data_dir, IDENTITY_FILE)
        doc = files.read_doc(path)
        if doc is None:
            # A new data directory gets a new incarnation, so a wiped node
            # never reuses clock entries of its former self (DESIGN §4).
            doc = {"v": 1, "id": self.config.id, "incarnation": time.time_ns() // 1_000_000}
            files.write_doc(path, doc)
        if doc.get("id") != self.config.id:
            raise CoordinatorError(
                f"data directory {self.config.data_dir} belongs to node {doc.get('id')!r}, "
                f"not {self.config.id!r}"
            )
        self.incarnation = int(doc["incarnation"])
        self.actor = make_actor(self.config.id, self.incarnation)

    def _first_partitions(self) -> list[int]:
        """One partition per worker, to find each worker's socket."""
        seen: dict[int, int] = {}
        for p in range(self.config.partitions):
            seen.setdefault(self.pool.worker_for(p), p)
        return [seen[i] for i in range(self.pool.workers)]

    # -- ring ---------------------------------------------------------------
    async def _form(self) -> None:
        assert self.gossip is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._formation_timeout_s
        while self.ring is None and loop.time() < deadline:
            if self.gossip.heard_from_all_seeds():
                break
            await asyncio.sleep(0.05)
        if self.ring is None:
            log.info("forming a new ring with %s", ", ".join(sorted(self.gossip.members)))
            self._adopt(ringmod.claim(self._specs(), self.config.partitions, self.config.n))

    def _specs(self) -> list[tuple[NodeId, str | None]]:
        """Every member known (gossip and ring) with its zone, for placement;
        never a removed one."""
        assert self.gossip is not None
        zones: dict[NodeId, str | None] = dict(self.ring.zones()) if self.ring else {}
        removed = self.ring.removed if self.ring else frozenset()
        for node, ep in self.gossip.members.items():
            if node not in removed:
                zones[node] = ep.zone or None
        return sorted(zones.items())

    def _ring_out(self) -> dict[str, Any]:
        return {"ring": ringmod.encode_ring(self.ring)} if self.ring else {}

    def _ring_in(self, payload: dict[str, Any]) -> None:
        raw = payload.get("ring")
        gone = self.ring.removed if self.ring else frozenset()
        if raw is not None:
            theirs = ringmod.decode_ring(raw)
            gone |= theirs.removed
            if self.ring is None or _better(theirs, self.ring):
                self._adopt(theirs)
        assert self.gossip is not None
        if self.ring is None:
            return
        if lost := gone - self.ring.removed:
            # A concurrent ring change won over a removal: apply it again.
            try:
                self._adopt(ringmod.remove_nodes(self.ring, lost, self._specs()))
            except RingError as exc:
                log.error("cannot apply the removal of %s again: %s", sorted(lost), exc)
        if not set(self.gossip.members) - self.ring.removed <= set(self.ring.node_ids):
            self._adopt(ringmod.rebalance(self.ring, self._specs()))

    def remove(self, node: NodeId) -> tuple[Ring, Ring]:
        """Take ``node`` out of the cluster for good (``ringkv remove``):
        the next ring without it; (old ring, new ring). Raises RingError when
        it is not a member or fewer than N nodes would be left."""
        old = self.ring
        if old is None:
            raise UnavailableError("the ring is not formed yet")
        if node in old.removed:
            return old, old
        if node not in old.node_ids:
            raise RingError(f"{node} is not a member of the ring "
                            f"(members: {', '.join(old.node_ids)})")
        self._adopt(ringmod.remove_nodes(old, {node}, self._specs()))
        assert self.ring is not None
        return old, self.ring

    def _adopt(self, new: Ring) -> None:
        if new.q != self.config.partitions:
            log.error("ignoring a ring with Q=%d (ours is %d)", new.q, self.config.partitions)
            return
        old, self.ring = self.ring, new
        files.write_doc(os.path.join(self.config.data_dir, RING_FILE),
                        {"v": 1, "ring": ringmod.encode_ring(new)})
        if self.gossip is not None:
            me = self.gossip.members[self.id]
            status = MemberStatus.REMOVED if self.id in new.removed else me.status
            self.gossip.set_me(dataclasses.replace(me, ring_epoch=new.epoch, status=status))
        if old is None:
            return
        log.info("ring epoch %d -> %d", old.epoch, new.epoch)
        now = int(time.time() * 1000)
        departed = set(old.node_ids) - set(new.node_ids)
        for p in range(new.q):
            before, after = ringmod.primaries(old, p), ringmod.primaries(new, p)
            gained = [owner for owner in after if owner not in before]
            # We stop replicating p, or a replica of p left (a dead node hands
            # nothing over): our copy goes to the new primaries.
            if gained and self.id in before and (self.id not in after or departed & set(before)):
                for owner in gained:
                    self._own(self.hints.add(p, owner, now), f"hint {p}")
        for hint in self.hints.all():
            if hint.owner in new.removed:
                self._own(self.retarget(hint), f"retarget hint {hint.partition}")

    async def retarget(self, hint: Hint) -> None:
        """Writes we hold for a removed node go to the partition's primaries
        instead (versions merge: those that have them lose nothing)."""
        assert self.ring is not None
        now = int(time.time() * 1000)
        for owner in ringmod.primaries(self.ring, hint.partition):
            if owner != self.id:
                await self.hints.add(hint.partition, owner, now)
        await self.hints.remove(hint.partition, hint.owner, outcome="moved")

    def plan_for(self, key: bytes) -> tuple[int, Plan]:
        ring = self.ring
        if ring is None:
            raise UnavailableError("the ring is not formed yet")
        p = ring.partition_of(key)
        # Plans are cached for PLAN_TTL_S: liveness changes at gossip speed
        # (seconds), and phi for every target of every request is not free.
        now = time.monotonic()
        if now - self._plans_at > PLAN_TTL_S or self._plans_ring is not ring:
            self._plans.clear()
            self._plans_at, self._plans_ring = now, ring
        plan = self._plans.get(p)
        if plan is None:
            plan = quorum.plan(ringmod.preference_list(ring, p), ring.n, self.is_up)
            self._plans[p] = plan
        return p, plan

    def is_up(self, node: NodeId) -> bool:
        """Routable: the failure detector trusts it and it is not draining."""
        if self.gossip is None:
            return False
        ep = self.gossip.members.get(node)
        if ep is not None and ep.status is not MemberStatus.UP:
            return False
        return self.gossip.is_up(node)

    def start_draining(self) -> None:
        """Refuse client writes and tell peers (through gossip) to route
        around this node; reads are still served."""
        self._draining = True
        if self.gossip is not None:
            me = self.gossip.members[self.id]
            self.gossip.set_me(dataclasses.replace(me, status=MemberStatus.LEAVING))
        self._plans.clear()

    def last_repair_ms(self) -> int:
        return self.anti_entropy.last_repair_ms

    def repair_figures(self) -> dict[str, int]:
        """Counters of every repair since start (background and on demand)."""
        t = self.anti_entropy.total
        return {"partitions": t.partitions, "keys_compared": t.keys_compared,
                "keys_repaired": t.keys_repaired, "bytes_sent": t.bytes_sent,
                "corrupt_fixed": t.corrupt_fixed, "errors": t.error_count}

    def next_hlc(self) -> int:
        return self.clock.now()

    def saw_hlc(self, hlc: int) -> None:
        self.clock.saw(hlc)

    def context_clock(self, context: bytes) -> Context:
        return self.clock.context(context)

    # -- routing ------------------------------------------------------------
    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        if node == self.id:
            return await self.local(request, timeout)
        assert self.gossip is not None
        addr = self.gossip.addr_of(node)
        if addr is None:
            raise ShardUnavailable(f"peer {node}", "address unknown")
        return await self._peer(addr).call(request, timeout)

    def submit(self, node: NodeId, request: m.Request) -> asyncio.Future[m.Reply]:
        """``call`` for the hot path: the reply's future, no task where none
        is needed; the caller bounds the wait and cancels to give up."""
        if node != self.id:
            assert self.gossip is not None
            addr = self.gossip.addr_of(node)
            if addr is not None:
                return self._peer(addr).submit(request)
        else:
            fut = self._local_fast(request)
            if fut is not None:
                return fut
        return asyncio.ensure_future(self.call(node, request, self.timeout_s))

    def _local_fast(self, request: m.Request) -> asyncio.Future[m.Reply] | None:
        """A replica read or write straight to our worker, if nothing needs
        an await first: a hinted write whose hint is already durable only
        bumps its counters; the first one of a (partition, owner) pair takes
        the slow path that makes the hint durable."""
        if not isinstance(request, m.ReplicaRead | m.ReplicaWriteSet | m.ReplicaWrite):
            return None
        partition = request.partition
        if not 0 <= partition < self.config.partitions:
            return None
        index = self.pool.worker_for(partition)
        if not self.pool.ready(index):
            return None
        if isinstance(request, m.ReplicaWrite) and request.hint_for:
            size = len(request.key) + len(request.version.value or b"")
            if not self.hints.touch(partition, request.hint_for, size):
                return None
        return self.local_clients[index].submit(request)

    def _peer_fast(self, request: m.Request) -> asyncio.Future[m.Reply] | None:
        """Replica reads and writes from peers go straight to the worker;
        a write stamped past our clock's bound is refused (coordinator/clock.py)."""
        if isinstance(request, m.ReplicaWrite) and (
            why := self.clock.refuse_write(request.version)
        ) is not None:
            refused = asyncio.get_running_loop().create_future()
            refused.set_result(m.Reply.error(m.Status.BAD_REQUEST, why))
            return refused
        return self._local_fast(request)

    def _peer_restarted(self, node: NodeId) -> None:
        """Gossip brought a new generation of ``node``: dial it again now,
        whatever the reconnect backoff of its failed connects says, and hand
        it its hints now."""
        assert self.gossip is not None
        addr = self.gossip.addr_of(node)
        if addr is not None and addr in self._backoffs:
            self._backoffs[addr].reset()
        self.handoff.owner_back(node)

    def _peer(self, addr: str) -> ShardClient:
        client = self._peers.get(addr)
        if client is None:
            backoff = self._backoffs.setdefault(addr, Backoff())
            # Connect from our bind address: with one loopback address per
            # node, a peer (and a fault test's firewall rule) sees who it is.
            client = peer_client(addr, self.config.id, self.secret, timeout_s=self.timeout_s,
                                 source=self.config.bind, backoff=backoff)
            self._peers[addr] = client
        return client

    async def local(self, request: m.Request, timeout: float) -> m.Reply:
        partition = getattr(request, "partition", None)
        if not isinstance(partition, int):
            return m.Reply.error(m.Status.BAD_REQUEST, f"{m.op_of(request)} has no partition")
        try:
            index = self.pool.worker_for(partition)
        except ValueError as exc:
            return m.Reply.error(m.Status.BAD_REQUEST, str(exc))
        if not self.pool.ready(index):
            return m.Reply.error(m.Status.UNAVAILABLE, f"worker {index} of {self.id} is not ready")
        if isinstance(request, m.ReplicaWrite) and request.hint_for:
            size = len(request.key) + len(request.version.value or b"")
            if not self.hints.touch(partition, request.hint_for, size):
                try:
                    await self.hints.add(partition, request.hint_for, int(time.time() * 1000),
                                         size)
                except OSError as exc:
                    return m.Reply.error(m.Status.READ_ONLY, f"cannot record hint: {exc}")
        return await self.local_clients[index].call(request, timeout)

    async def _gossip_send(self, addr: str, payload: dict[str, Any]) -> dict[str, Any]:
        reply = await self._peer(addr).call(m.Gossip(payload), timeout=1.0)
        if not reply.ok or not isinstance(reply.payload, dict):
            raise ConnectionError(f"gossip to {addr}: {reply.status.name} {reply.message}")
        return reply.payload

    async def _on_peer(self, peer: str, request: m.Request) -> m.Reply:
        if isinstance(request, m.Gossip):
            assert self.gossip is not None
            return m.Reply(m.Status.OK, self.gossip.receive(request.payload))
        if isinstance(request, m.Ping):
            return m.Reply(m.Status.OK, {"ready": True, "node": self.config.id})
        if isinstance(request, m.Stats):
            return m.Reply(m.Status.OK, {"workers": self.local_stats})
        if isinstance(request, m.Admin):
            return await self.admin.handle(request.payload)
        if isinstance(request, m.DropPartition) and not self.config.enable_flush:
            # Only FLUSHALL drops partitions over the wire (handoff and
            # removal drop ours through local()): each node decides for itself.
            return m.Reply.error(m.Status.BAD_REQUEST, f"{self.id} refuses to drop partitions "
                                 "for a peer: FLUSHALL is disabled here (enable_flush = false)")
        # Disk work, not requests: drops, compactions, and anti-entropy tree
        # requests that may scan a whole partition.
        slow = isinstance(
            request, m.DropPartition | m.Compact | m.Flush | m.TreeLevel | m.BucketDigests
        )
        return await self.local(request, ADMIN_TIMEOUT_S if slow else self.timeout_s)

    # -- cluster-wide commands (client.data_commands.Backend) ---------------
    @property
    def draining(self) -> str | None:
        return f"node {self.id} is draining; send writes to another node" if self._draining \
            else None

    def _observe(self, spec: CommandSpec, levels: Consistency, outcome: str,
                 seconds: float) -> None:
        self.metrics.observe(spec, levels, outcome, seconds)

    async def _all_nodes_stats(self) -> list[dict[str, Any]]:
        assert self.ring is not None
        out = list(self.local_stats)
        for node in self.ring.node_ids:
            if node != self.id and self.is_up(node):
                with contextlib.suppress(ShardUnavailable):
                    reply = await self.call(node, m.Stats(), self.timeout_s)
                    if reply.ok:
                        out += reply.payload.get("workers", [])
        return out

    async def dbsize(self) -> int:
        """Estimate: entries in every engine of the cluster over N (it counts
        overwritten versions and tombstones not yet compacted away)."""
        if self.ring is None:
            raise UnavailableError("the ring is not formed yet")
        total = sum(_entries(s) for s in await self._all_nodes_stats())
        return total // self.ring.n

    async def flushall(self) -> None:
        if not self.config.enable_flush:
            raise CommandError(
                "ERR FLUSHALL is disabled on this cluster (set enable_flush = true in [security])"
            )
        if self.ring is None:
            raise UnavailableError("the ring is not formed yet")
        down = [n for n in self.ring.node_ids if not self.is_up(n)]
        if down:
            raise UnavailableError(f"FLUSHALL needs every node up; down: {', '.join(down)}")
        ring = self.ring

        async def drop_range(node: NodeId, parts: range) -> str | None:
            try:
                reply = await self.call(
                    node, m.DropPartition(parts.start, len(parts)), ADMIN_TIMEOUT_S
                )
            except ShardUnavailable as exc:
                return f"{node}: {exc.reason}"
            ok = reply.ok
            return None if ok else f"{node} partitions {parts.start}-{parts[-1]}: {reply.message}"

        # Workers own contiguous ranges of the same size on every node; one
        # drop (one compaction) per worker.
        w = self.pool.workers
        ranges = [range(i * ring.q // w, (i + 1) * ring.q // w) for i in range(w)]
        drops = [drop_range(node, r) for node in ring.node_ids for r in ranges]
        failures = [f for f in await asyncio.gather(*drops) if f is not None]
        if failures:
            raise UnavailableError(
                f"FLUSHALL incomplete, {len(failures)} failures, first: {failures[0]}"
            )

    # -- observability --------------------------------------------------------
    async def _stats_loop(self) -> None:
        while True:
            stats = []
            for i, client in enumerate(self.local_clients):
                if self.pool.ready(i):
                    with contextlib.suppress(ShardUnavailable, ShardError):
                        s = await client.stats(timeout=self.timeout_s)
                        stats.append(s)
            self.local_stats = stats
            await asyncio.sleep(STATS_INTERVAL_S)

    def info_text(self, section: str) -> bytes:
        return report.info_text(self, section)


def _entries(stats: dict[str, Any]) -> int:
    engine = stats.get("engine", {})
    levels = sum(int(level.get("entries", 0)) for level in engine.get("levels", []))
    return levels + int(engine.get("memtable_entries", 0))


def _better(a: Ring, b: Ring) -> bool:
    """Which of two rings every node should settle on (a total order)."""
    ka, kb = (a.epoch, len(a.nodes)), (b.epoch, len(b.nodes))
    if ka != kb:
        return ka > kb
    return a.owners < b.owners
