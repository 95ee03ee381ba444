"""Every request this node sends to a replica goes through the Router: to our
own workers over their unix sockets, to other nodes over peer RPC, where
their coordinator hands it to its worker, or straight to their worker
over a connection handed to it (peer protocol 5, ``data.direct``). The
Router owns those clients
(and each peer address's reconnect backoff), the cache of quorum plans, and
the one path of a hinted write::

    data path, handoff, anti-entropy ──▶ Router.submit / call (node, request)
        node is us ──▶ submit_local ──▶ our worker for request.partition
        else       ──▶ that node's peer client ──▶ its Router.from_peer ──▶ its worker

A write that carries ``hint_for`` is a fallback's copy, held for a down
primary: its hint must be durable before the worker applies the write. The
first such write of a (partition, owner) pair waits for the hint's record
to be written; every later one goes straight to the worker. Each is marked
in flight on its hint until the worker answers, then counted: a handoff
pass deletes a hint only when no write is in flight and the count did not
change since the pass began (a write counted before it reached the worker
let a pass report its partition delivered with the write still on its way).

Requests from peers take :meth:`Router.from_peer`: replica reads and writes
go straight to a worker (no task), and a write stamped past this node's
clock bound is refused first (``coordinator.data.clock``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from coordinator.cluster.peer import peer_client, reconnect_backoff
from coordinator.cluster.peer_versions import Negotiated, local_range
from coordinator.cluster.ring import NodeId, Ring
from coordinator.cluster.ring import preference_list as preference_list_of
from coordinator.config import NodeConfig
from coordinator.data import quorum
from coordinator.data.datapath import send_after
from coordinator.data.direct import DirectRoutes, WorkerAttach
from coordinator.data.quorum import Plan
from coordinator.errors import UnavailableError
from shardserver.protocol import messages as m
from shardserver.protocol.backoff import Backoff
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.pool import WORKER_MAX_FRAME_BYTES, WorkerPool
from shardserver.protocol.versions import Version
from shardserver.protocol.worker_stats import WorkerStats

log = logging.getLogger("ringkv.router")

#: Which nodes are up is read again this often for the plan cache:
#: liveness changes at gossip speed (seconds), and phi for every target of
#: every request is not free.
PLAN_TTL_S = 0.2


class ClusterState(Protocol):
    """What routing needs to know of the cluster (``cluster.view.ClusterView``)."""

    @property
    def ring(self) -> Ring | None: ...

    @property
    def draining(self) -> str | None: ...

    def is_up(self, node: NodeId) -> bool: ...

    def addr_of(self, node: NodeId) -> str | None: ...


class HintLog(Protocol):
    """The durable hint records (``repair.hints.HintStore``)."""

    def begin(self, partition: int, owner: str) -> bool: ...

    def end(self, partition: int, owner: str, size: int) -> None: ...

    async def add_many(self, pairs: Iterable[tuple[int, str]], now_ms: int) -> None: ...


class Hinted(NamedTuple):
    """A fallback's write, as its hint counts it."""

    partition: int
    owner: str
    size: int


#: Why a replica write from a peer is refused (its clock runs ahead), or None.
RefuseWrite = Callable[[Version], "str | None"]


def _answered(reply: m.Reply) -> asyncio.Future[m.Reply]:
    fut: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
    fut.set_result(reply)
    return fut


def _after(delay_s: float) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(
        delay_s, lambda: None if fut.done() else fut.set_result(None))
    return fut


class Router:
    def __init__(self, config: NodeConfig, pool: WorkerPool, cluster: ClusterState,
                 hints: HintLog, refuse_write: RefuseWrite) -> None:
        self.config = config
        self.id = NodeId(config.id)
        self.timeout_s = config.request_timeout_ms / 1000
        self.pool = pool
        self.cluster = cluster
        self._hints = hints
        self._refuse_write = refuse_write
        self._secret = config.secret.encode()
        self._workers: list[ShardClient] = []  # one per worker, by index
        # Replica traffic dials a node (its connection refuses another node
        # at that address); gossip dials an address and learns who answers.
        self._peers: dict[tuple[str, NodeId | None], ShardClient] = {}
        self._backoffs: dict[str, Backoff] = {}
        self.versions = local_range(config.max_peer_protocol)
        #: What the last handshake with each peer address agreed.
        self.negotiated: dict[str, Negotiated] = {}
        self.direct = DirectRoutes(config, self.versions)
        #: Hands peers' connections to our workers (the peer server's attach).
        self.attach = WorkerAttach(config, pool)
        self._plans: dict[int, Plan] = {}
        self._plans_at = 0.0
        # (ring, draining, nodes up) the cached plans were made for
        self._plans_of: tuple[Ring | None, str | None, frozenset[NodeId]] = (
            None, None, frozenset())
        self._reply_delay_s = config.reply_delay_ms / 1000

    async def connect_workers(self) -> None:
        """One client per worker (once the pool is ready). Frames from workers
        are held to the workers' own 16 MiB limit (they split bigger
        replies), not the 64 MiB default."""
        self._workers = [
            ShardClient(self.pool.socket_for(p), timeout_s=self.timeout_s,
                        max_recv_frame=WORKER_MAX_FRAME_BYTES)
            for p in self._first_partitions()
        ]

    def _first_partitions(self) -> list[int]:
        """One partition per worker, to find each worker's socket."""
        seen: dict[int, int] = {}
        for p in range(self.config.partitions):
            seen.setdefault(self.pool.worker_for(p), p)
        return [seen[i] for i in range(self.pool.workers)]

    async def close(self) -> None:
        await self.direct.close()
        for client in [*self._workers, *self._peers.values()]:
            await client.close()

    # -- the cluster as routing sees it ----------------------------------------
    @property
    def ring(self) -> Ring | None:
        return self.cluster.ring

    def is_up(self, node: NodeId) -> bool:
        return self.cluster.is_up(node)

    def plan_for(self, key: bytes) -> tuple[int, Plan]:
        """The key's partition and whom to ask for it now. Plans are kept
        while the ring, the draining state and the set of nodes up stay the
        same; which nodes are up is read again every ``PLAN_TTL_S``. (Kept
        only for ``PLAN_TTL_S`` before, at Q = 4,096 nearly every request
        made its partition's plan again.)"""
        ring = self.cluster.ring
        if ring is None:
            raise UnavailableError("the ring is not formed yet")
        p = ring.partition_of(key)
        now = time.monotonic()
        draining = self.cluster.draining
        held, was_draining, was_up = self._plans_of
        moved = held is not ring or was_draining != draining
        if moved or now - self._plans_at > PLAN_TTL_S:
            up = frozenset(node for node in ring.node_ids if self.cluster.is_up(node))
            if moved or up != was_up:
                self._plans.clear()
            self._plans_at, self._plans_of = now, (ring, draining, up)
        plan = self._plans.get(p)
        if plan is None:
            up = self._plans_of[2]
            plan = quorum.plan(preference_list_of(ring, p), ring.n, up.__contains__)
            self._plans[p] = plan
        return p, plan

    # -- any node ----------------------------------------------------------------
    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        """``request`` answered by ``node`` within ``timeout`` (a TIMEOUT
        reply past it); ShardUnavailable when the node cannot be reached."""
        if node == self.id:
            return await self.local(request, timeout)
        return await self._peer_of(node, request).call(request, timeout)

    def submit(self, node: NodeId, request: m.Request) -> asyncio.Future[m.Reply]:
        """``call`` for the hot path: the reply's future, no task where none
        is needed; the caller bounds the wait and cancels to give up."""
        if node == self.id:
            return self.submit_local(request)
        try:
            peer = self._peer_of(node, request)
        except ShardUnavailable as exc:
            fut: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut
        return peer.submit(request)

    def _peer_of(self, node: NodeId, request: m.Request) -> ShardClient:
        """The connection to take ``request`` to ``node``: straight to its
        worker where that is up (``data.direct``), else its coordinator."""
        addr = self.cluster.addr_of(node)
        if addr is None:
            raise ShardUnavailable(f"peer {node}", "address unknown")
        direct = self.direct.client_for(addr, node, self.negotiated.get(addr), request)
        return direct if direct is not None else self._peer_at(addr, node)

    def _peer_at(self, addr: str, expect: NodeId | None = None) -> ShardClient:
        client = self._peers.get((addr, expect))
        if client is None:
            backoff = self._backoffs.get(addr) or reconnect_backoff()
            self._backoffs[addr] = backoff

            def heard(agreed: Negotiated) -> None:
                self.negotiated[addr] = agreed

            # Connect from our bind address: with one loopback address per
            # node, a peer (and a fault test's firewall rule) sees who it is.
            client = peer_client(addr, self.config.id, self._secret, timeout_s=self.timeout_s,
                                 source=self.config.bind, backoff=backoff, expect=expect,
                                 versions=self.versions, on_hello=heard,
                                 name=f"peer {expect} at {addr}" if expect else None)
            self._peers[(addr, expect)] = client
        return client

    def protocol_of(self, addr: str) -> int:
        """The peer protocol our last connection to ``addr`` agreed on (3,
        which every sealed release reads, until one did)."""
        agreed = self.negotiated.get(addr)
        return agreed.version if agreed is not None else self.versions.lo

    def peer_restarted(self, node: NodeId) -> None:
        """Gossip brought a new generation of ``node``: dial it again now,
        whatever the backoff of its failed connects says."""
        addr = self.cluster.addr_of(node)
        if addr is not None and addr in self._backoffs:
            self._backoffs[addr].reset()

    async def gossip(self, addr: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One gossip exchange with the peer at ``addr`` (``Gossiper``'s send)."""
        reply = await self._peer_at(addr).call(m.Gossip(payload), timeout=1.0)
        if not reply.ok or not isinstance(reply.payload, dict):
            raise ConnectionError(f"gossip to {addr}: {reply.status.name} {reply.message}")
        return reply.payload

    # -- our own workers ---------------------------------------------------------
    @property
    def workers(self) -> int:
        return self.pool.workers

    def worker_inflight(self) -> list[int]:
        """Calls sent to each worker and not yet answered, by worker index."""
        return [client.inflight for client in list(self._workers)]

    def worker_ready(self, index: int) -> bool:
        return self.pool.ready(index)

    def worker_partitions(self, index: int) -> range:
        """The partitions worker ``index`` serves (a contiguous range)."""
        mine = [p for p in range(self.config.partitions) if self.pool.worker_for(p) == index]
        return range(mine[0], mine[-1] + 1)

    async def worker_call(self, index: int, request: m.Request, timeout: float) -> m.Reply:
        """``request`` for worker ``index`` as a whole (flush, compact, stats)."""
        return await self._workers[index].call(request, timeout)

    async def worker_stats(self, index: int) -> WorkerStats:
        """Worker ``index``'s figures (ShardUnavailable, ShardError)."""
        return await self._workers[index].stats(self.timeout_s)

    def _worker_of(self, request: m.Request) -> int | m.Reply:
        """Index of the ready worker serving the request's partition, or the
        reply that says why there is none."""
        partition = getattr(request, "partition", None)
        if not isinstance(partition, int):
            return m.Reply.error(m.Status.BAD_REQUEST, f"{m.op_of(request)} has no partition")
        try:
            index = self.pool.worker_for(partition)
        except ValueError as exc:
            return m.Reply.error(m.Status.BAD_REQUEST, str(exc))
        if not self.pool.ready(index):
            return m.Reply.error(m.Status.UNAVAILABLE, f"worker {index} of {self.id} is not ready")
        return index

    def _hinted(self, request: m.Request) -> Hinted | None:
        """A fallback's write (``hint_for`` set): its partition, owner and size."""
        if not isinstance(request, m.ReplicaWrite) or not request.hint_for:
            return None
        return Hinted(request.partition, request.hint_for,
                      len(request.key) + len(request.version.value or b""))

    def _counted(self, hinted: Hinted, _: object) -> None:
        self._hints.end(hinted.partition, hinted.owner, hinted.size)

    async def _hint_then_call(self, index: int, request: m.ReplicaWrite, hinted: Hinted,
                              timeout: float) -> m.Reply:
        try:
            await self._hints.add_many([(hinted.partition, hinted.owner)],
                                       int(time.time() * 1000))
        except OSError as exc:
            return m.Reply.error(m.Status.READ_ONLY, f"cannot record hint: {exc}")
        # False only if delivered and removed while we waited for the file:
        # then this copy is a stray, which the drop fence or the sweep hints again.
        announced = self._hints.begin(hinted.partition, hinted.owner)
        try:
            return await self._workers[index].call(request, timeout)
        finally:
            if announced:
                self._counted(hinted, None)

    def submit_local(self, request: m.Request) -> asyncio.Future[m.Reply]:
        """``request`` to our worker for its partition, as a future: no task
        unless a new hint must be made durable first. With the test-only
        fault knob ``reply_delay_ms`` every replica read and write (ours and
        our peers') waits that long before it goes to the worker: a slow
        replica."""
        if self._reply_delay_s and isinstance(request, m.ReplicaRead | m.ReplicaWrite):
            return send_after(_after(self._reply_delay_s),
                              functools.partial(self._submit_local, request))
        return self._submit_local(request)

    def _submit_local(self, request: m.Request) -> asyncio.Future[m.Reply]:
        index = self._worker_of(request)
        if isinstance(index, m.Reply):
            return _answered(index)
        hinted = self._hinted(request)
        if hinted is None:
            return self._workers[index].submit(request)
        assert isinstance(request, m.ReplicaWrite)
        if not self._hints.begin(hinted.partition, hinted.owner):
            # The first write of its (partition, owner): the hint is made
            # durable before the write goes out.
            return asyncio.ensure_future(
                self._hint_then_call(index, request, hinted, self.timeout_s))
        future = self._workers[index].submit(request)
        future.add_done_callback(functools.partial(self._counted, hinted))
        return future

    async def local(self, request: m.Request, timeout: float) -> m.Reply:
        """``request`` answered by our worker within ``timeout``."""
        index = self._worker_of(request)
        if isinstance(index, m.Reply):
            return index
        hinted = self._hinted(request)
        if hinted is None:
            return await self._workers[index].call(request, timeout)
        assert isinstance(request, m.ReplicaWrite)
        if not self._hints.begin(hinted.partition, hinted.owner):
            return await self._hint_then_call(index, request, hinted, timeout)
        try:
            return await self._workers[index].call(request, timeout)
        finally:
            self._counted(hinted, None)

    def from_peer(self, request: m.Request) -> asyncio.Future[m.Reply] | None:
        """A peer's replica read or write, straight to our worker (None for
        other requests: the node answers those); a write stamped past our
        clock's bound is refused."""
        if isinstance(request, m.ReplicaWrite) and (
            why := self._refuse_write(request.version)
        ) is not None:
            return _answered(m.Reply.error(m.Status.BAD_REQUEST, why))
        if isinstance(request, m.ReplicaRead | m.ReplicaWriteSet | m.ReplicaWrite):
            return self.submit_local(request)
        return None
