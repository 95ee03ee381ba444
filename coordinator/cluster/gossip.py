"""The gossip loop: once a second, swap membership state with a random peer.

Push-pull: we send every endpoint we know (and the ring), the peer merges
and answers with everything it knows, we merge that. Small clusters make
the full state cheap; :mod:`coordinator.cluster.endpoints` has the merge rule. A
newer heartbeat of a node (its ``(generation, version)`` went up) feeds
that node's phi-accrual detector, which decides UP/DOWN locally (DESIGN §9).

The peer is picked among every other known node, up or down (a down node
is how we notice it came back), plus seed addresses not yet tied to a node.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from coordinator.cluster import endpoints
from coordinator.cluster.endpoints import Endpoint
from coordinator.cluster.failure_detector import DetectorSettings, PhiAccrualDetector
from coordinator.cluster.ring import NodeId

log = logging.getLogger("ringkv.gossip")

#: ``send(peer_addr, payload) -> payload``; raises on failure.
Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Gossiper:
    def __init__(
        self,
        me: Endpoint,
        seeds: Sequence[str],
        send: Send,
        *,
        interval_s: float = 1.0,
        settings: DetectorSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        extra_out: Callable[[], dict[str, Any]] = dict,
        extra_in: Callable[[dict[str, Any]], None] = lambda payload: None,
        on_restart: Callable[[NodeId], None] = lambda node: None,
        accept: Callable[[Endpoint], bool] = lambda ep: True,
    ) -> None:
        self.me = me.node
        self.members: dict[NodeId, Endpoint] = {me.node: me}
        self.seeds = tuple(s for s in seeds if s != me.peer_addr)
        self.interval_s = interval_s
        self.rounds = 0
        self.failures = 0
        self._send = send
        self._settings = settings or DetectorSettings()
        self._detectors: dict[NodeId, PhiAccrualDetector] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._extra_out = extra_out
        self._extra_in = extra_in
        self._on_restart = on_restart
        self._accept = accept  # False: a peer's entry is ignored (e.g. from the future)
        self._answered: set[str] = set()  # peer addresses that ever answered
        self._wire: dict[NodeId, tuple[Endpoint, list[Any]]] = {}  # see _encoded

    # -- liveness ---------------------------------------------------------
    def is_up(self, node: NodeId) -> bool:
        if node == self.me:
            return True
        det = self._detectors.get(node)
        return det is not None and det.is_available(self._clock())

    def phi(self, node: NodeId) -> float:
        det = self._detectors.get(node)
        return 0.0 if node == self.me or det is None else det.phi(self._clock())

    def heard_from_all_seeds(self) -> bool:
        return not self.unanswered_seeds()

    def unanswered_seeds(self) -> list[str]:
        """Seed addresses that never answered: each gets an extra try per round."""
        return [s for s in self.seeds if s not in self._answered]

    def addr_of(self, node: NodeId) -> str | None:
        ep = self.members.get(node)
        return None if ep is None else ep.peer_addr

    # -- state exchange ---------------------------------------------------
    def payload(self) -> dict[str, Any]:
        out = {"from": self.me, "members": [self._encoded(e) for e in self.members.values()]}
        out.update(self._extra_out())
        return out

    def _encoded(self, ep: Endpoint) -> list[Any]:
        """The wire form of an entry, encoded once per version of it."""
        hit = self._wire.get(ep.node)
        if hit is None or hit[0] is not ep:
            hit = self._wire[ep.node] = (ep, endpoints.encode(ep))
        return hit[1]

    def receive(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Merge a peer's state; return ours (the answer to its gossip)."""
        self._merge(payload)
        return self.payload()

    def _merge(self, payload: dict[str, Any]) -> None:
        raw = payload.get("members")
        if not isinstance(raw, list):
            raise endpoints.MembershipError("gossip without a members list")
        mine = self.members
        theirs = {ep.node: ep
                  for ep in map(endpoints.decode,
                                (r for r in raw if not endpoints.stale(r, mine)))
                  if ep.node != self.me and self._accept(ep)}
        before = self.members
        self.members = endpoints.merge(before, theirs)
        now = self._clock()
        for node in endpoints.changed(before, self.members):
            if node != self.me:
                self._detectors.setdefault(node, PhiAccrualDetector(self._settings)).heartbeat(now)
                old = before.get(node)
                if old is None or old.generation != self.members[node].generation:
                    self._on_restart(node)  # e.g. stop backing off its address
        self._extra_in(payload)

    def beat(self) -> None:
        self.members[self.me] = self.members[self.me].beat()

    def set_me(self, me: Endpoint) -> None:
        self.members[self.me] = me

    def _pick(self) -> str | None:
        mine = self.members[self.me].peer_addr
        addrs = {ep.peer_addr for ep in self.members.values() if ep.peer_addr != mine}
        addrs.update(self.seeds)
        return self._rng.choice(sorted(addrs)) if addrs else None

    # -- one exchange, sans-IO: begin, then answered or unanswered -------
    def begin_round(self, addr: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """Beat, pick the peer (default: a random one) and build what we send
        it; None when there is nobody to gossip with. The caller carries the
        payload and reports back with :meth:`answered` or :meth:`unanswered`
        (the simulator in benchmarks/ drives rounds this way, without sockets)."""
        self.beat()
        addr = addr or self._pick()
        if addr is None:
            return None
        self.rounds += 1
        return addr, self.payload()

    def answered(self, addr: str, answer: dict[str, Any]) -> None:
        """Merge the peer's answer; raises like :meth:`receive` on bad input."""
        self._merge(answer)
        self._answered.add(addr)

    def unanswered(self, addr: str, exc: BaseException) -> None:
        self.failures += 1
        log.debug("gossip with %s failed: %s", addr, exc)

    async def round(self, addr: str | None = None) -> bool:
        """One exchange with ``addr`` (default: a random peer). True if it answered."""
        started = self.begin_round(addr)
        if started is None:
            return False
        addr, payload = started
        try:
            self.answered(addr, await self._send(addr, payload))
        except Exception as exc:  # any failure is "no answer this round"
            self.unanswered(addr, exc)
            return False
        return True

    async def run(self) -> None:
        """Gossip forever (the caller owns and cancels the task)."""
        while True:
            started = self._clock()
            await self.round()
            # Unanswered seeds get an extra try each round while forming.
            for seed in self.unanswered_seeds():
                await self.round(seed)
            await asyncio.sleep(max(0.0, self.interval_s - (self._clock() - started)))
