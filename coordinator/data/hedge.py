"""Reads that ask R replicas first, and one more when one is slow (issue 15).

With ``[reads] fanout = "all"`` (the default, DESIGN §6) a read asks all N
replicas and the R fastest answers decide: a slow replica costs nothing in
latency, but every read costs N replica reads. ``fanout = "quorum"`` asks
only R of them (this node's own worker first, then plan order, replicas
that turned slow last: :meth:`HedgedReads.order`), and so saves N - R
replica reads per GET (a third at R = 2, N = 3; two thirds at R = 1),
which is what lets one hot key's three workers serve more. Then one slow
replica would set the latency of every read that asks it, so:

* **Failover.** A replica that fails (down, error) is replaced at once by
  the next one not yet asked, so a read fails only when "all" would.
* **Hedging** (``hedge = true``, Cassandra's ``speculative_retry = 95p``;
  with ``hedge = false`` reads ask this node first, then plan order).
  :class:`PeerLatency` keeps each node's replica-read latencies of the last
  few seconds in a small log-scale histogram. A read that has no quorum
  after the p95 of the quickest of its replicas (what a healthy replica
  takes) asks one more replica, if one is left, and counts
  ``hedged_reads``. :class:`HedgeBudget` caps hedges at ``hedge_max_ratio``
  (default 10 %) of the replica reads sent, so a slow cluster is not made
  slower by hedges.

A replica not asked loses its samples after two windows and is asked
again in plan order, so its figures refresh (as Cassandra's dynamic snitch
resets its scores); its first slow answers, or an unanswered call, put it
last again. Read repair covers only the
replicas a read asked; anti-entropy covers the rest.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from coordinator.cluster.ring import NodeId
from coordinator.data.quorum import Tally, Target
from shardserver.protocol.messages import Reply

#: Latency buckets: 50 µs growing by a quarter, up to about 4 s.
EDGES = tuple(50e-6 * 1.25 ** i for i in range(52))
#: A node's p95 is known once it has this many samples in the window.
MIN_SAMPLES = 8
WINDOW_S = 10.0
#: A replica is slow (asked last) when its score is past twice the best
#: one's plus this.
SLOW_MARGIN_S = 0.002
#: A hedge is never sent sooner than this (a p95 of a few µs is noise)...
MIN_HEDGE_S = 0.0005
#: ... and this late when no replica of the read has figures yet (a fresh
#: node, or one whose replicas were idle for a window).
UNKNOWN_HEDGE_S = 0.02


class _Histogram:
    __slots__ = ("counts", "epoch", "prev")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.counts = [0] * (len(EDGES) + 1)
        self.prev = [0] * (len(EDGES) + 1)

    def at(self, epoch: int) -> _Histogram:
        """Rotated to ``epoch`` (the previous epoch kept, older ones gone)."""
        if epoch != self.epoch:
            self.prev = self.counts if epoch == self.epoch + 1 else [0] * (len(EDGES) + 1)
            self.counts = [0] * (len(EDGES) + 1)
            self.epoch = epoch
        return self


class PeerLatency:
    """Replica-read latency per node over the last ``window_s`` (two
    epochs), and its p95, recomputed at most every 50 ms per node."""

    def __init__(self, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch_s = window_s / 2
        self._clock = clock
        self._hists: dict[str, _Histogram] = {}
        self._p95: dict[str, tuple[float, float]] = {}  # node -> (when, p95)

    def _epoch(self) -> int:
        return int(self._clock() / self.epoch_s)

    def observe(self, node: str, seconds: float) -> None:
        epoch = self._epoch()
        hist = self._hists.get(node)
        if hist is None:
            hist = self._hists[node] = _Histogram(epoch)
        hist.at(epoch).counts[bisect.bisect_left(EDGES, seconds)] += 1

    def p95(self, node: str) -> float | None:
        """The node's 95th percentile (the upper edge of its bucket), or None
        with fewer than ``MIN_SAMPLES`` samples in the window."""
        found = self._estimate(node)
        return found[0] if found is not None and found[1] >= MIN_SAMPLES else None

    def score(self, node: str) -> float | None:
        """The p95 as far as the samples go (few samples: about the worst
        of them), or None with none: enough to tell a slow replica from
        its first answers."""
        found = self._estimate(node)
        return None if found is None else found[0]

    def _estimate(self, node: str) -> tuple[float, int] | None:
        """(p95, samples), from the cache for 50 ms once there are
        ``MIN_SAMPLES``; None without samples."""
        now = self._clock()
        cached = self._p95.get(node)
        if cached is not None and now - cached[0] < 0.05:
            return cached[1], MIN_SAMPLES
        hist = self._hists.get(node)
        if hist is None:
            return None
        hist.at(self._epoch())
        counts = [a + b for a, b in zip(hist.counts, hist.prev, strict=True)]
        total = sum(counts)
        if not total:
            return None
        rank, seen, value = 0.95 * total, 0, EDGES[-1]
        for i, c in enumerate(counts):
            seen += c
            if seen >= rank:
                value = EDGES[min(i, len(EDGES) - 1)]
                break
        if total >= MIN_SAMPLES:
            self._p95[node] = (now, value)
        return value, total


class HedgeBudget:
    """At most ``ratio`` extra replica reads per replica read sent: each
    read sent earns ``ratio`` of a token (up to ``burst``), a hedge spends
    one."""

    def __init__(self, ratio: float, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst

    def sent(self, reads: int) -> None:
        self.tokens = min(self.burst, self.tokens + reads * self.ratio)

    def take(self) -> bool:
        if self.tokens >= 1.0 - 1e-9:  # ten sums of 0.1 make 0.999...
            self.tokens -= 1.0
            return True
        return False


Submit = Callable[[Target], "asyncio.Future[Reply]"]
Calls = dict["asyncio.Future[Reply]", Target]


class Round(Protocol):
    """The read's round (``coordinator.data.datapath.Round``)."""

    decided: bool
    tally: Tally
    calls: Calls
    on_short: Callable[[], None] | None

    def add(self, fut: asyncio.Future[Reply], target: Target) -> None: ...


class HedgedReads:
    """Whom a quorum-fanout read asks first, and who else when."""

    def __init__(self, me: NodeId, hedge: bool, max_ratio: float,
                 counted: Callable[[], None]) -> None:
        self.me = me
        self.hedge = hedge
        self.latency = PeerLatency()
        self.budget = HedgeBudget(max_ratio)
        self._counted = counted  # one more hedged read
        self._loop_time = time.monotonic
        self._calls = 0
        # node -> its open calls (call number -> when sent), oldest first
        self._open: dict[str, dict[int, float]] = {}

    def order(self, targets: Sequence[Target]) -> list[Target]:
        """This node's worker first, then plan order (which differs by
        partition, so reads spread over the replicas); slow replicas last,
        the slowest last. A replica is slow when its score is past twice
        the best one's plus ``SLOW_MARGIN_S``; a score is the p95 (from as
        few samples as there are) or, if longer, how long the node's oldest
        open call has waited (a replica that just turned slow has no slow
        answers yet, only calls that do not come back). Ranking by score
        alone sent every coordinator's reads to the same quickest replica,
        which then was not (the dynamic snitch's badness threshold keeps
        Cassandra from that)."""
        if not self.hedge:  # no figures kept: this node first, then plan order
            return sorted(targets, key=lambda t: t.node != self.me)
        now = self._loop_time()
        scores = [max(self.latency.score(t.node) or 0.0, self.waiting_s(t.node, now))
                  for t in targets]
        # A node without figures scores 0, so while there is one the bar is
        # SLOW_MARGIN_S: it is asked first and gets figures (and a node
        # compared with itself alone would never be slow).
        bar = 2 * min(scores) + SLOW_MARGIN_S

        def rank(i: int) -> tuple[float, bool, int]:
            slow = scores[i] > bar
            return (scores[i] if slow else 0.0, targets[i].node != self.me, i)

        return [targets[i] for i in sorted(range(len(targets)), key=rank)]

    def first(self, tally: Tally, ordered: list[Target]) -> tuple[list[Target], list[Target]]:
        """(the R targets to ask now, with PR primaries among them; the rest)."""
        primaries = [t for t in ordered if t.primary][:tally.needed_primaries]
        rest = [t for t in ordered if t not in primaries]
        chosen = primaries + rest[:max(0, tally.needed - len(primaries))]
        return chosen, [t for t in ordered if t not in chosen]

    def timed(self, target: Target, submit: Submit) -> asyncio.Future[Reply]:
        """``submit(target)``, open until it ends, its latency observed
        when it answers (with hedging on)."""
        if not self.hedge:
            return submit(target)
        started = self._loop_time()
        self._calls += 1
        call = self._calls
        self._open.setdefault(target.node, {})[call] = started
        fut = submit(target)
        fut.add_done_callback(functools.partial(self._ended, target.node, call, started))
        return fut

    def _ended(self, node: str, call: int, started: float, fut: asyncio.Future[Reply]) -> None:
        open_ = self._open[node]
        del open_[call]
        if not open_:
            del self._open[node]
        if not fut.cancelled() and fut.exception() is None:
            self.latency.observe(node, self._loop_time() - started)

    def waiting_s(self, node: str, now: float) -> float:
        """How long the node's oldest open call has waited (0: none open)."""
        open_ = self._open.get(node)
        return now - next(iter(open_.values())) if open_ else 0.0

    def send(self, targets: Sequence[Target], tally: Tally, submit: Submit,
             start: Callable[[Calls], Round]) -> None:
        """Ask the quickest R targets (PR primaries among them) in a round
        made by ``start``; the others stand by for failover and the hedge."""
        chosen, spares = self.first(tally, self.order(targets))
        rnd = start({self.timed(t, submit): t for t in chosen})
        self.budget.sent(len(chosen))
        if not spares:
            return
        rnd.on_short = functools.partial(self._refill, rnd, spares, submit)
        if self.hedge:
            asyncio.get_running_loop().call_later(self.delay_s(targets), self._hedge, rnd,
                                                  spares, submit)

    def _ask(self, rnd: Round, spares: list[Target], submit: Submit, short_of_primaries: bool,
             ) -> None:
        pick = spares[0]
        if short_of_primaries:
            pick = next((t for t in spares if t.primary), pick)
        spares.remove(pick)
        rnd.add(self.timed(pick, submit), pick)
        self.budget.sent(1)

    @staticmethod
    def _short(rnd: Round) -> tuple[int, int]:
        """(answers, primary answers) the round still lacks even if every
        open call answers."""
        t = rnd.tally
        open_ = [o for o in rnd.calls.values() if o.node not in t.ok and o.node not in t.failed]
        return (t.needed - len(t.ok) - len(open_),
                t.needed_primaries - sum(t.ok.values()) - sum(1 for o in open_ if o.primary))

    def _refill(self, rnd: Round, spares: list[Target], submit: Submit) -> None:
        """A call ended without an answer: ask spares until the open calls
        could still make the quorum."""
        while spares:
            short, short_primaries = self._short(rnd)
            if short <= 0 and short_primaries <= 0:
                return
            self._ask(rnd, spares, submit, short_primaries > 0)

    def _hedge(self, rnd: Round, spares: list[Target], submit: Submit) -> None:
        """No quorum within the healthy p95: one more replica, if the budget
        allows."""
        if rnd.decided or not spares or not self.budget.take():
            return
        t = rnd.tally
        self._ask(rnd, spares, submit, t.needed_primaries > sum(t.ok.values()))
        self._counted()

    def delay_s(self, targets: Sequence[Target]) -> float:
        """When to hedge: the p95 of the quickest replica with figures."""
        known = [p for t in targets if (p := self.latency.p95(t.node)) is not None]
        return max(min(known), MIN_HEDGE_S) if known else UNKNOWN_HEDGE_S
