"""Replica traffic straight to a peer's worker (peer protocol 5).

Without it, a replica read or write for node B goes to B's coordinator,
which relays it to the worker serving the partition: two hops on B, and a
good part of the CPU a three-node request costs (docs/benchmarks.md). With
it, this node opens one more peer connection per worker of B, with the
same handshake and seal as every peer connection, and ends its set-up with
``attach {"worker": k}``: B's coordinator hands the socket and the session's
state to worker k (``shardserver.protocol.attach``), which serves it from
then on::

    A ──peer handshake, hello (5), attach k──▶ B's coordinator ──fd──▶ B's worker k
    A ◀═════════ sealed frames, same session, same sequence numbers ═════════▶ worker k

What goes direct (:func:`direct_eligible`): ``read``, ``write_set`` and
``write`` without ``hint_for``. A hinted write needs B's coordinator (the
hint is made durable before the write); everything else (gossip, admin,
drops, scans, anti-entropy) goes to the node, which audits and gates it.
Worker k keeps the checks B's relay made: the clock bound on writes,
readiness, the partition check, drop fences (``shardserver.direct``).

The relay stays the fallback: a request goes direct only over a connection
that is up; while there is none it takes the relay and a connect starts in
the background (with backoff, so a node that refuses attaching costs one
attempt per interval). A direct connection that dies fails the calls on it
with ``ShardUnavailable``, exactly like a dead relay connection: each call
is sent once and counted as a failed replica, never retried, so a write is
acknowledged at most once and only by a worker that applied it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from coordinator.cluster.peer import peer_client
from coordinator.cluster.peer_versions import DIRECT, Negotiated, VersionRange
from coordinator.cluster.ring import NodeId
from coordinator.config import NodeConfig
from shardserver.protocol import messages as m
from shardserver.protocol.attach import AttachError, SessionState, attach_path, hand_over
from shardserver.protocol.backoff import Backoff
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ShardError, ShardUnavailable
from shardserver.protocol.pool import WorkerPool, partition_ranges

log = logging.getLogger("ringkv.router")

#: A refused or failed direct connect is tried again after 0.5 s, doubling
#: to 10 s; a success resets it.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0


def direct_eligible(request: m.Request) -> bool:
    """May ``request`` skip the peer's coordinator?"""
    if isinstance(request, m.ReplicaWrite):
        return not request.hint_for
    return isinstance(request, m.ReplicaRead | m.ReplicaWriteSet)


class DirectRoutes:
    """This node's direct connections to other nodes' workers, by (address,
    node, worker): who may take a request now, and the connects behind it."""

    def __init__(self, config: NodeConfig, versions: VersionRange) -> None:
        self.config = config
        self.enabled = versions.hi >= DIRECT
        self._versions = versions
        self._secret = config.secret.encode()
        self._timeout_s = config.request_timeout_ms / 1000
        self._clients: dict[tuple[str, NodeId, int], ShardClient] = {}
        self._backoffs: dict[tuple[str, NodeId, int], Backoff] = {}
        self._dialing: dict[tuple[str, NodeId, int], asyncio.Task[None]] = {}
        self._splits: dict[int, list[int]] = {}  # worker count -> worker of each partition

    def client_for(self, addr: str, node: NodeId, agreed: Negotiated | None,
                   request: m.Request) -> ShardClient | None:
        """The direct connection to take ``request`` to ``node`` now, or None
        (then the relay takes it, and a connect may start)."""
        if (not self.enabled or agreed is None or agreed.version < DIRECT
                or agreed.workers < 1 or agreed.node != node or not direct_eligible(request)):
            return None
        worker = self._worker_of(getattr(request, "partition", -1), agreed.workers)
        if worker is None:
            return None
        key = (addr, node, worker)
        client = self._clients.get(key)
        if client is not None and client.connected:
            return client
        if client is None:
            client = self._client(key)
        if key not in self._dialing and self._backoffs[key].remaining() <= 0:
            task = asyncio.create_task(self._dial(client), name=f"direct {node}/{worker}")
            self._dialing[key] = task
            task.add_done_callback(lambda _: self._dialing.pop(key, None))
        return None

    def _worker_of(self, partition: int, workers: int) -> int | None:
        split = self._splits.get(workers)
        if split is None:
            split = [0] * self.config.partitions
            for i, r in enumerate(partition_ranges(self.config.partitions, workers)):
                for p in r:
                    split[p] = i
            self._splits[workers] = split
        return split[partition] if 0 <= partition < len(split) else None

    def _client(self, key: tuple[str, NodeId, int]) -> ShardClient:
        addr, node, worker = key
        backoff = self._backoffs[key] = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        client = peer_client(addr, self.config.id, self._secret, timeout_s=self._timeout_s,
                             source=self.config.bind, backoff=backoff, expect=node,
                             versions=self._versions, worker=worker,
                             name=f"worker {worker} of {node} at {addr}")
        self._clients[key] = client
        return client

    async def _dial(self, client: ShardClient) -> None:
        """Connect and attach (the ping's connect does both), off the request path."""
        try:
            await client.ping(self._timeout_s)
        except (ShardUnavailable, ShardError) as e:
            log.info("direct connection to %s not made (replica traffic stays on the relay): "
                     "%s", client.path, e)

    def connected(self) -> int:
        return sum(1 for c in self._clients.values() if c.connected)

    async def close(self) -> None:
        for task in list(self._dialing.values()):
            task.cancel()
        for client in self._clients.values():
            await client.close()


class WorkerAttach:
    """The peer server's ``attach``: hands a peer connection over to one of
    our workers, with the clock bound the relay would apply. Refuses
    (AttachError) while the worker is not ready, and while the test knob
    ``reply_delay_ms`` is set (it slows the relay's replica answers, which a
    worker would not)."""

    def __init__(self, config: NodeConfig, pool: WorkerPool) -> None:
        self.config = config
        self.pool = pool
        self._timeout_s = config.request_timeout_ms / 1000
        self.handed = 0

    async def __call__(self, worker: int, fd: int, state: SessionState) -> None:
        if self.config.reply_delay_ms:
            raise AttachError("reply_delay_ms is set: replica traffic stays on the node")
        if not 0 <= worker < self.pool.workers or not self.pool.ready(worker):
            raise AttachError(f"worker {worker} of {self.config.id} is not ready")
        first = partition_ranges(self.config.partitions, self.pool.workers)[worker].start
        state = replace(state, max_clock_drift_ms=self.config.max_clock_drift_ms,
                        clock_offset_ms=self.config.clock_offset_ms)
        await hand_over(attach_path(self.pool.socket_for(first)), fd, state, self._timeout_s)
        self.handed += 1
