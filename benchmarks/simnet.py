"""A simulated network of ringkv nodes on simulated time (no sockets, no sleeps).

Each :class:`SimNode` is ringkv's real :class:`~coordinator.cluster.view.ClusterView`
(the membership reducer, ring adoption, liveness) with the real
:class:`~coordinator.cluster.gossip.Gossiper` and phi-accrual detectors
attached, clocked by the simulation. Gossip rounds are driven through the
gossiper's sans-IO calls (``begin_round``, then ``answered`` or
``unanswered``); payloads travel as the dicts the peer client would frame,
over a :class:`Network` that delays, drops and partitions them. One
discrete-event loop (:class:`Sim`) runs every node, so a run is a function
of its seed.

A round mirrors ``Gossiper.run``: one exchange with a random peer, then one
with each seed that never answered, one after the other, each bounded by the
peer call's timeout; the next round starts ``interval_s`` after this one
started (or when it ended, if later).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.cluster import membership as mb
from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.ring import NodeId, Ring
from coordinator.cluster.view import ClusterView, RingFile
from coordinator.config import NodeConfig

#: Timeout of one gossip call, as the router's (``Router.gossip``).
CALL_TIMEOUT_S = 1.0


class Sim:
    """A discrete-event loop: callbacks ordered by (simulated time, insertion)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), fn))

    def run_until(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            fn()
        self.now = max(self.now, until)


@dataclass(frozen=True, slots=True)
class NetSettings:
    latency_s: float = 0.0005  # fixed part of one-way delay
    jitter_s: float = 0.002  # mean of the exponential extra delay
    loss: float = 0.01  # probability that one message is dropped


@dataclass
class Network:
    """Delivers messages between node addresses; ``cut`` holds partitioned groups."""

    settings: NetSettings
    rng: random.Random
    cut: list[frozenset[str]] = field(default_factory=list)
    sent: int = 0
    dropped: int = 0

    def reachable(self, a: str, b: str) -> bool:
        return not any((a in g) != (b in g) for g in self.cut)

    def delay(self, a: str, b: str) -> float | None:
        """One-way delay of a message from a to b, or None when it is lost."""
        self.sent += 1
        if not self.reachable(a, b) or self.rng.random() < self.settings.loss:
            self.dropped += 1
            return None
        return self.settings.latency_s + self.rng.expovariate(1.0 / self.settings.jitter_s)


class MemoryRingFile(RingFile):
    """Keeps the adopted rings in memory: counts adoptions instead of writing files."""

    def __init__(self) -> None:
        super().__init__("")
        self.saved = 0

    def save(self, ring: Ring) -> None:
        self.saved += 1

    async def flush(self) -> None:
        return None


class SimNode:
    def __init__(self, cluster: Cluster, name: str, zone: str, *, ring: Ring | None,
                 seeds: Sequence[str], q: int, n: int) -> None:
        self.cluster = cluster
        self.name = NodeId(name)
        self.addr = name  # the simulated network addresses nodes by name
        self.alive = True
        self.ring_file = MemoryRingFile()
        self.hint_effects = 0
        config = NodeConfig(id=name, data_dir="", zone=zone, seeds=tuple(seeds),
                            partitions=q, n=n)
        self.view = ClusterView(config, ring, ring_file=self.ring_file, inline_ring_math=True)
        self.view.on_hints = self._count_hints
        me = Endpoint(self.name, 1, 0, MemberStatus.UP, f"{name}:c", self.addr,
                      ring.epoch if ring else 0, zone)
        self.gossip = self.view.attach_gossip(
            me, _no_send, interval_s=cluster.interval_s, on_restart=lambda node: None,
            accept=lambda ep: True, clock=lambda: cluster.sim.now,
            rng=random.Random(cluster.rng.getrandbits(64)),
        )

    def _count_hints(self, effects: Sequence[mb.HintEffect]) -> None:
        self.hint_effects += sum(1 for e in effects if isinstance(e, mb.HintCopies))

    # -- the gossip loop, on simulated time ----------------------------------------
    def start(self, phase: float) -> None:
        self.cluster.sim.at(self.cluster.sim.now + phase, self._round)

    def _round(self) -> None:
        if not self.alive:
            return
        started = self.cluster.sim.now
        targets: list[str | None] = [None, *self.gossip.unanswered_seeds()]
        self._exchange(targets, started)

    def _exchange(self, targets: list[str | None], started: float) -> None:
        """Exchanges one after the other, as ``Gossiper.run`` awaits them."""
        sim = self.cluster.sim
        if not self.alive:
            return
        if not targets:
            sim.at(max(started + self.cluster.interval_s, sim.now), self._round)
            return
        begun = self.gossip.begin_round(targets[0])
        rest = targets[1:]
        if begun is None:
            self._exchange(rest, started)
            return
        addr, payload = begun
        sent_at = sim.now

        def give_up() -> None:
            self.gossip.unanswered(addr, TimeoutError("no answer (simulated)"))
            self._exchange(rest, started)

        net = self.cluster.net
        there = net.delay(self.addr, addr)
        peer = self.cluster.by_addr.get(addr)
        if there is None or peer is None:
            sim.at(sent_at + CALL_TIMEOUT_S, give_up)
            return

        def arrive() -> None:
            if not peer.alive:
                sim.at(sent_at + CALL_TIMEOUT_S, give_up)
                return
            answer = peer.gossip.receive(payload)
            back = net.delay(addr, self.addr)
            if back is None or sim.now + back - sent_at > CALL_TIMEOUT_S:
                sim.at(sent_at + CALL_TIMEOUT_S, give_up)
                return

            def reply() -> None:
                if self.alive:
                    self.gossip.answered(addr, answer)
                    self._exchange(rest, started)

            sim.at(sim.now + back, reply)

        sim.at(sent_at + there, arrive)


async def _no_send(addr: str, payload: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("simulated nodes gossip through Network, not send()")


class Cluster:
    """The simulated nodes, their network and the event loop."""

    def __init__(self, seed: int, net: NetSettings, interval_s: float = 1.0) -> None:
        self.rng = random.Random(seed)
        self.sim = Sim()
        self.net = Network(net, random.Random(self.rng.getrandbits(64)))
        self.interval_s = interval_s
        self.nodes: list[SimNode] = []
        self.by_addr: dict[str, SimNode] = {}

    def add(self, name: str, zone: str, *, ring: Ring | None, seeds: Sequence[str],
            q: int, n: int) -> SimNode:
        node = SimNode(self, name, zone, ring=ring, seeds=seeds, q=q, n=n)
        self.nodes.append(node)
        self.by_addr[node.addr] = node
        return node

    def live(self) -> list[SimNode]:
        return [x for x in self.nodes if x.alive]

    def run_until(self, done: Callable[[], bool], limit_s: float,
                  tick_s: float = 0.25) -> float | None:
        """Simulated seconds from now until ``done()`` holds (checked every
        ``tick_s``), or None if it does not within ``limit_s``."""
        return self.watch({"done": done}, limit_s, tick_s)["done"]

    def watch(self, conditions: dict[str, Callable[[], bool]], limit_s: float,
              tick_s: float = 0.25) -> dict[str, float | None]:
        """For each condition, simulated seconds from now until it first held
        (checked every ``tick_s``); None for those that did not within ``limit_s``."""
        start = self.sim.now
        first: dict[str, float | None] = dict.fromkeys(conditions)
        while self.sim.now - start < limit_s and any(v is None for v in first.values()):
            self.sim.run_until(self.sim.now + tick_s)
            for name, holds in conditions.items():
                if first[name] is None and holds():
                    first[name] = self.sim.now - start
        return first
