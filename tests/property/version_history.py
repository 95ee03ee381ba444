"""Realistic write histories of one key, for the tests of every merge path
(issue 19.2): ``tests/property/test_version_histories.py`` (the pure merge)
and ``tests/property/test_blind_writes.py`` (a real ShardStore).

Three coordinators with skewed clocks (the real ``coordinator.data.clock.Clock``,
within ``max_clock_drift_ms``) write one key on three replicas: plain
SET/DEL (``reconcile.plain_write``), and VSET/VDEL whose context comes from a
read of some replicas' current, partial states (``reconcile.reconcile``,
``vget_reply`` sealed by ``Clock.issue``, then ``Clock.context`` and ``reconcile.context_write``, as
the data path does). Replicas receive each write in their own order (a
coordinator's context writes in dot order, as the data path sends them;
plain writes in any order) and exchange their sets (anti-entropy, read
repair) in between.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import strategies as st

from coordinator.data import reconcile
from coordinator.data.clock import Clock
from shardserver.protocol.vclock import ActorId, make_actor
from shardserver.protocol.versions import SiblingSet, Version, merge, merge_sets

BIG_CAP = 1000  # never binds: the cap is the one thing that is not order-free
NOW_MS = 1_700_000_000_000
DRIFT_MS = 60_000
ACTORS = [make_actor(f"n{i}", 1) for i in (1, 2, 3)]
REPLICAS = 3
KEY = b"k"  # the one key of every history


class Wall:
    """One wall clock for every node (their skews are HLC offsets)."""

    def __init__(self) -> None:
        self.ms = NOW_MS

    def __call__(self) -> float:
        return self.ms / 1000


@dataclass
class History:
    wall: Wall
    clocks: dict[ActorId, Clock]
    replicas: list[SiblingSet] = field(default_factory=lambda: [()] * REPLICAS)
    inbox: list[list[Version]] = field(default_factory=lambda: [[] for _ in range(REPLICAS)])
    versions: list[Version] = field(default_factory=list)
    plain: set[Version] = field(default_factory=set)
    #: context write -> the versions its client's read returned
    saw: dict[Version, SiblingSet] = field(default_factory=dict)
    #: every version a write's client saw, directly or through what it saw
    history: dict[Version, frozenset[Version]] = field(default_factory=dict)

    def _sent(self, v: Version, seen: SiblingSet) -> None:
        self.versions.append(v)
        self.history[v] = frozenset(seen).union(*(self.history[s] for s in seen))
        for box in self.inbox:
            box.append(v)

    def plain_write(self, actor: ActorId, value: bytes | None) -> None:
        v = reconcile.plain_write(actor, self.clocks[actor].now(), value)
        self.plain.add(v)
        self._sent(v, ())

    def context_write(self, actor: ActorId, read_from: list[int], value: bytes | None) -> None:
        answers = {f"r{r}": self.replicas[r] or None for r in read_from}
        merged = reconcile.reconcile(answers, BIG_CAP).merged
        clock = self.clocks[actor]
        if merged:  # the data path adopts the newest HLC a read returned
            clock.saw(max(s.hlc for s in merged))
        context = clock.issue(KEY, reconcile.vget_reply(merged)[0])  # as VGET hands it out
        ctx = clock.context(KEY, context)
        v = reconcile.context_write(ctx, actor, clock.now(), value)
        self.saw[v] = merged
        self._sent(v, merged)

    def deliverable(self, r: int) -> list[int]:
        """Inbox positions replica ``r`` may apply next: plain writes any
        time, a context write once the same coordinator's earlier context
        writes are in (the data path orders those calls per replica)."""
        out = []
        ahead: set[ActorId] = set()
        for i, v in enumerate(self.inbox[r]):
            if v in self.plain:
                out.append(i)
            elif v.actor not in ahead:
                out.append(i)
                ahead.add(v.actor)
        return out

    def deliver(self, r: int, pick: int) -> None:
        choices = self.deliverable(r)
        if choices:
            v = self.inbox[r].pop(choices[pick % len(choices)])
            self.replicas[r] = merge(self.replicas[r], v, BIG_CAP).siblings

    def exchange(self, a: int, b: int) -> None:
        merged = merge_sets(self.replicas[a], self.replicas[b], BIG_CAP).siblings
        self.replicas[a] = self.replicas[b] = merged


step_st = st.one_of(
    st.tuples(st.just("plain"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("vset"), st.integers(0, 2), st.booleans(),
              st.lists(st.integers(0, REPLICAS - 1), min_size=1, max_size=REPLICAS, unique=True)),
    st.tuples(st.just("deliver"), st.integers(0, REPLICAS - 1), st.integers(0, 50)),
    st.tuples(st.just("exchange"), st.integers(0, REPLICAS - 1), st.integers(0, REPLICAS - 1)),
)


def run(steps: list[tuple[object, ...]], skews: list[int], advances: list[int],
        picks: list[int]) -> History:
    wall = Wall()
    h = History(wall, {a: Clock(DRIFT_MS, offset_ms=s, wall=wall)
                       for a, s in zip(ACTORS, skews, strict=True)})
    for n, (step, advance) in enumerate(zip(steps, itertools.cycle(advances), strict=False)):
        wall.ms += advance
        value = b"w%d" % n
        match step:
            case ("plain", int(a), bool(tomb)):
                h.plain_write(ACTORS[a], None if tomb else value)
            case ("vset", int(a), bool(tomb), list(read_from)):
                h.context_write(ACTORS[a], read_from, None if tomb else value)
            case ("deliver", int(r), int(pick)):
                h.deliver(r, pick)
            case ("exchange", int(a), int(b)):
                h.exchange(a, b)
    # Everything arrives everywhere (in an order drawn too), then one round
    # of anti-entropy: the replicas must agree.
    for r in range(REPLICAS):
        for pick in itertools.cycle(picks):
            if not h.inbox[r]:
                break
            h.deliver(r, pick)
    for a, b in ((0, 1), (1, 2), (0, 1)):
        h.exchange(a, b)
    return h


def fold(versions: list[Version] | SiblingSet) -> SiblingSet:
    out: SiblingSet = ()
    for v in versions:
        out = merge(out, v, BIG_CAP).siblings
    return out


def histories() -> st.SearchStrategy[History]:
    """Histories of up to 30 steps (writes, deliveries, exchanges)."""
    return st.builds(
        run,
        st.lists(step_st, min_size=1, max_size=30),
        st.lists(st.integers(-DRIFT_MS // 4, DRIFT_MS // 4), min_size=3, max_size=3),
        st.lists(st.integers(0, 3), min_size=1, max_size=8),
        st.lists(st.integers(0, 50), min_size=1, max_size=8),
    )
