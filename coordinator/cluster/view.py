"""This node's view of the cluster: the ring it holds, who is up, whether it
drains. It feeds gossip to the membership reducer (``cluster.membership``)
and carries out the effects: the ring file is written in a thread, never on
the event loop, the latest ring last; gossip announces our epoch; changes of
which hints we hold go to ``on_hints`` (the handoff).

Placing partitions (a claim, a rebalance for a join, a removal) costs
seconds of CPU at Q = 4,096 and hundreds of nodes, so those events go
through the reducer in a thread (``RingMath``), one at a time, and the
result is taken only if the state it started from is still current (else
the event is decided again on the new state). The event loop keeps
answering gossip meanwhile: the reducer is pure Python, so the two share
the GIL, but the loop gets it back every switch interval (5 ms) instead of
waiting out the whole computation (docs/benchmarks.md, "Partitions per
node").

Liveness is local: a node is up for routing while its phi-accrual detector
trusts it (``cluster.gossip``) and it says ``up`` in gossip; this node
stops being up for others (and for itself) once it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from coordinator import files
from coordinator.cluster import membership as mb
from coordinator.cluster import ring as ringmod
from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.failure_detector import DetectorSettings
from coordinator.cluster.gossip import Gossiper, Send
from coordinator.cluster.ring import NodeId, Ring
from coordinator.config import ConfigError, NodeConfig
from coordinator.errors import UnavailableError

log = logging.getLogger("ringkv.node")

RING_FILE = "ring.msgpack"
_FORMING_POLL_S = 0.05

#: Takes the hint effects of a ring change (``repair.handoff``).
OnHints = Callable[[Sequence[mb.HintEffect]], None]


def load_ring(data_dir: str) -> Ring | None:
    """The ring this node adopted last (``<data_dir>/ring.msgpack``)."""
    doc = files.read_doc(os.path.join(data_dir, RING_FILE))
    return None if doc is None else ringmod.decode_ring(doc.get("ring"))


class RingFile:
    """Writes the ring file in a thread, one write at a time; rings saved
    while a write runs are coalesced into one write of the latest."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, RING_FILE)
        self._pending: Ring | None = None
        self._writer: asyncio.Task[None] | None = None

    def save(self, ring: Ring) -> None:
        self._pending = ring
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="write ring file")

    async def _write(self) -> None:
        while (ring := self._pending) is not None:
            self._pending = None
            try:
                await asyncio.to_thread(files.write_doc, self.path,
                                        {"v": 1, "ring": ringmod.encode_ring(ring)})
            except OSError as exc:  # gossip brings the ring back after a restart
                log.error("cannot save ring epoch %d to %s: %s", ring.epoch, self.path, exc)

    async def flush(self) -> None:
        """Until every ring saved so far is on disk (or failed, logged)."""
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)


#: Attempts to place partitions when the state keeps changing under the
#: computation; gossip brings a dropped join or re-removal again.
_RING_MATH_ATTEMPTS = 3


class ClusterView:
    def __init__(self, config: NodeConfig, ring: Ring | None, *,
                 ring_file: RingFile | None = None, inline_ring_math: bool = False) -> None:
        self.config = config
        self.id = NodeId(config.id)
        if ring is not None and ring.q != config.partitions:
            # Keys live in the partition of their hash under the ring's Q,
            # on the worker that range maps to: a new Q would strand them.
            raise ConfigError(
                f"{config.data_dir} holds a ring with partitions = {ring.q}, but the config "
                f"says {config.partitions}: the partition count is fixed when a cluster is "
                f"created; set partitions = {ring.q}")
        self._state = mb.MembershipState(self.id, config.partitions, config.n, ring)
        # The simulator (benchmarks/simulate.py) passes one that keeps rings in
        # memory, and places partitions inline: it has no event loop to spare.
        self._ring_file = ring_file or RingFile(config.data_dir)
        self._inline = inline_ring_math
        self._deferred: dict[type, mb.Event] = {}  # the latest heavy gossip event per kind
        self._math: asyncio.Task[None] | None = None
        self._draining = False
        self._encoded: tuple[Ring, dict[str, Any]] | None = None  # the ring as gossip sends it
        self.gossip: Gossiper | None = None
        self.on_hints: OnHints = lambda effects: None

    # -- what the rest of the node asks -------------------------------------------
    @property
    def ring(self) -> Ring | None:
        return self._state.ring

    @property
    def draining(self) -> str | None:
        """Why this node refuses client writes now, or None."""
        if self._draining:
            return f"node {self.id} is draining; send writes to another node"
        return None

    @property
    def members(self) -> dict[NodeId, Endpoint]:
        return self.gossip.members if self.gossip else {}

    def is_up(self, node: NodeId) -> bool:
        """Routable: the failure detector trusts it and it is not draining."""
        if self.gossip is None:
            return False
        ep = self.gossip.members.get(node)
        if ep is not None and ep.status is not MemberStatus.UP:
            return False
        return self.gossip.is_up(node)

    def phi(self, node: NodeId) -> float:
        return self.gossip.phi(node) if self.gossip else 0.0

    def addr_of(self, node: NodeId) -> str | None:
        return self.gossip.addr_of(node) if self.gossip else None

    # -- life cycle ---------------------------------------------------------------
    def start_gossip(self, me: Endpoint, send: Send, *, interval_s: float,
                     on_restart: Callable[[NodeId], None],
                     accept: Callable[[Endpoint], bool],
                     protocol_of: Callable[[str], int] = lambda addr: 3,
                     ) -> Coroutine[Any, Any, None]:
        """Make the gossiper; returns its loop for the caller to own."""
        return self.attach_gossip(me, send, interval_s=interval_s, on_restart=on_restart,
                                  accept=accept, protocol_of=protocol_of).run()

    def attach_gossip(self, me: Endpoint, send: Send, *, interval_s: float,
                      on_restart: Callable[[NodeId], None],
                      accept: Callable[[Endpoint], bool],
                      clock: Callable[[], float] = time.monotonic,
                      rng: random.Random | None = None,
                      settings: DetectorSettings | None = None,
                      protocol_of: Callable[[str], int] = lambda addr: 3) -> Gossiper:
        """Make the gossiper without running it (the simulator drives its
        rounds on simulated time with ``clock`` and a seeded ``rng``)."""
        self.gossip = Gossiper(
            me, self.config.seeds, send, interval_s=interval_s, extra_out=self._ring_out,
            extra_in=self._ring_in, on_restart=on_restart, accept=accept, clock=clock,
            rng=rng, settings=settings, protocol_of=protocol_of,
        )
        return self.gossip

    async def form(self, timeout_s: float) -> None:
        """Without a ring: wait until every seed answered (at most
        ``timeout_s``), then claim one from the members known."""
        assert self.gossip is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.ring is None and loop.time() < deadline:
            if self.gossip.heard_from_all_seeds():
                break
            await asyncio.sleep(_FORMING_POLL_S)
        await self._apply_placing(mb.Form(self._members()))
        await self._ring_file.flush()

    async def close(self) -> None:
        if self._math is not None:
            self._math.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._math
        await self._ring_file.flush()

    # -- changes ------------------------------------------------------------------
    async def remove(self, node: NodeId) -> tuple[Ring, Ring]:
        """Take ``node`` out of the cluster for good (``ringkv remove``):
        (old ring, new ring), the same ring twice when it was removed already.
        Raises RingError when it is not a member or fewer than N nodes would
        be left, UnavailableError without a ring or when the ring kept
        changing under the computation."""
        old = self.ring
        if not await self._apply_placing(mb.Remove(node, self._members())):
            raise UnavailableError("the ring kept changing while the removal was computed; "
                                   "try again")
        assert old is not None and self.ring is not None
        return old, self.ring

    def start_draining(self) -> None:
        """Refuse client writes and tell peers (through gossip) to route
        around this node; reads are still served."""
        self._draining = True
        if self.gossip is not None:
            me = self.gossip.members[self.id]
            self.gossip.set_me(dataclasses.replace(me, status=MemberStatus.LEAVING))

    def stop_draining(self) -> None:
        """Undo :meth:`start_draining`: take client writes, peers route here again."""
        self._draining = False
        if self.gossip is not None:
            me = self.gossip.members[self.id]
            self.gossip.set_me(dataclasses.replace(me, status=MemberStatus.UP))

    def _members(self) -> mb.Members:
        return {node: ep.zone for node, ep in self.members.items()}

    def _ring_out(self) -> dict[str, Any]:
        encoded = self._encoded_ring()
        return {} if encoded is None else {"ring": encoded}

    def _encoded_ring(self) -> dict[str, Any] | None:
        """Our ring's gossip form, encoded once per ring rather than per message."""
        ring = self.ring
        if ring is None:
            return None
        if self._encoded is None or self._encoded[0] is not ring:
            self._encoded = (ring, ringmod.encode_ring(ring))
        return self._encoded[1]

    def _ring_in(self, payload: dict[str, Any]) -> None:
        raw = payload.get("ring")
        # Most gossip carries the ring we hold already: equal encodings mean
        # an equal ring, which changes nothing, so skip the O(Q) decode.
        same = raw is None or raw == self._encoded_ring()
        theirs = None if same else ringmod.decode_ring(raw)
        members = self._members()
        for event in (mb.RingReceived(theirs, members), mb.MembersSeen(members)):
            if self._inline or not mb.needs_ring_math(self._state, event):
                self._apply(event)
            else:
                self._deferred[type(event)] = event
                if self._math is None or self._math.done():
                    self._math = asyncio.create_task(self._run_deferred(), name="ring math")

    async def _run_deferred(self) -> None:
        while self._deferred:
            event = self._deferred.pop(next(iter(self._deferred)))
            try:
                await self._apply_placing(event)
            except Exception:  # gossip brings the event again
                log.exception("placing partitions for %s failed", type(event).__name__)

    async def _apply_placing(self, event: mb.Event) -> bool:
        """``event`` through the reducer, in a thread when it places
        partitions; False if the state changed under every attempt."""
        for _ in range(_RING_MATH_ATTEMPTS):
            before = self._state
            if self._inline or not mb.needs_ring_math(before, event):
                self._apply(event)
                return True
            state, effects = await asyncio.to_thread(mb.apply, before, event)
            if self._state is before:
                self._commit(state, effects)
                return True
        log.warning("ring changed during %d placements for %s; left to the next gossip",
                    _RING_MATH_ATTEMPTS, type(event).__name__)
        return False

    def _apply(self, event: mb.Event) -> None:
        self._commit(*mb.apply(self._state, event))

    def _commit(self, state: mb.MembershipState, effects: list[mb.Effect]) -> None:
        self._state = state
        hints: list[mb.HintEffect] = []
        for effect in effects:
            match effect:
                case mb.PersistRing(ring):
                    self._ring_file.save(ring)
                case mb.Announce(epoch, removed):
                    self._announce(epoch, removed)
                case mb.Note(level, text):
                    log.log(level, "%s", text)
                case mb.HintCopies() | mb.RetargetHints():
                    hints.append(effect)
        if hints:
            self.on_hints(hints)

    def _announce(self, epoch: int, removed: bool) -> None:
        if self.gossip is not None:
            me = self.gossip.members[self.id]
            status = MemberStatus.REMOVED if removed else me.status
            self.gossip.set_me(dataclasses.replace(me, ring_epoch=epoch, status=status))
