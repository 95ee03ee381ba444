"""What ``ringkv rollout`` decides, as pure functions over the admin API's
records: whether a node may go down now, and whether the signals over a
window after a node came back pass the gates, compared with before."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, NodeInfo, Ring
from coordinator.histogram import quantile
from coordinator.ops import admin_api as api


def ring_of(reply: api.RingReply) -> Ring:
    """The ring a node reported (for preference lists)."""
    return Ring(reply.epoch, reply.q, reply.n, tuple(NodeId(o) for o in reply.owners),
                tuple(NodeInfo(NodeId(m.node), m.zone) for m in reply.nodes))


def unsafe(ring: Ring, node: str, down: Sequence[str]) -> str | None:
    """Why taking ``node`` down now would take two replicas of a partition
    down at once (some node of ``down`` is a primary beside it), or None."""
    target = NodeId(node)
    for other in sorted(set(down) - {node}):
        shared = [p for p in range(ring.q)
                  if {target, NodeId(other)} <= set(ringmod.primaries(ring, p))]
        if shared:
            return (f"refusing to take {node} down: {other} is down and they share "
                    f"{len(shared)} partitions (N={ring.n}), which would have two replicas "
                    f"down at once; bring {other} back first")
    return None


@dataclass(frozen=True, slots=True)
class Figures:
    """The cluster's client-facing signals over one window (all nodes summed)."""

    seconds: float
    commands: int
    errors: int
    quorum_failures: int
    p99_ms: float | None  # None: no command in the window
    under_replicated: dict[str, int]  # per node, at the window's end
    restarted: tuple[str, ...] = ()  # nodes that restarted in the window: counted from their start

    @property
    def error_rate(self) -> float:
        return self.errors / self.commands if self.commands else 0.0

    def line(self) -> str:
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        return (f"{self.commands} commands in {self.seconds:.0f}s, p99 {p99}, errors "
                f"{self.errors} ({100 * self.error_rate:.2f}%), quorum failures "
                f"{self.quorum_failures}, under-replicated "
                f"{max(self.under_replicated.values(), default=0)}"
                + (f" ({', '.join(self.restarted)} restarted in the window: counted from "
                   "its start)" if self.restarted else ""))


def restarted(a: api.LoadReply, b: api.LoadReply) -> bool:
    """Whether the node's process changed between readings ``a`` and ``b``
    (its counters started again from zero)."""
    if a.started_ms != b.started_ms:
        return True
    return b.commands < a.commands or b.errors < a.errors  # a node too old to say


def window(before: Sequence[api.LoadReply], after: Sequence[api.LoadReply]) -> Figures:
    """The figures between two readings of the same nodes. A node that
    restarted in between counts from its start (the later reading alone):
    its counters began again at zero, so a difference would go negative."""
    first = {r.node: r for r in before}
    pairs = [(first[r.node], r) for r in after if r.node in first]
    fresh = tuple(sorted(b.node for a, b in pairs if restarted(a, b)))
    pairs = [(_zero(b) if b.node in fresh else a, b) for a, b in pairs]
    buckets = [sum(b.latency_buckets[i] - a.latency_buckets[i] for a, b in pairs)
               for i in range(len(after[0].latency_buckets))] if pairs else []
    p99 = quantile(0.99, buckets) if buckets else None
    seconds = max((b.at_ms - a.at_ms for a, b in pairs if b.node not in fresh), default=0) / 1000
    return Figures(seconds, sum(b.commands - a.commands for a, b in pairs),
                   sum(b.errors - a.errors for a, b in pairs),
                   sum(b.quorum_failures - a.quorum_failures for a, b in pairs),
                   None if p99 is None else p99 * 1000,
                   {r.node: r.under_replicated for r in after}, fresh)


def _zero(r: api.LoadReply) -> api.LoadReply:
    """A reading of nothing at the start of ``r``'s process."""
    return api.LoadReply(r.node, r.started_ms, 0, 0, 0, (0,) * len(r.latency_buckets), 0,
                         r.started_ms)


@dataclass(frozen=True, slots=True)
class Gates:
    p99_factor: float = 2.0  # p99 may grow to this many times the baseline's ...
    p99_slack_ms: float = 5.0  # ... plus this (histogram buckets are coarse)
    error_rate_slack: float = 0.001  # the error rate may grow by this much (0.1 %)
    max_quorum_failures: int = 0
    max_under_replicated: int = 0

    def text(self) -> str:
        return (f"p99 <= {self.p99_factor:g}x before + {self.p99_slack_ms:g} ms, error rate <= "
                f"before + {100 * self.error_rate_slack:g}%, quorum failures <= "
                f"{self.max_quorum_failures}, under-replicated partitions <= "
                f"{self.max_under_replicated}")


def judge(base: Figures, now: Figures, gates: Gates) -> list[str]:
    """Each failed gate, naming the signal and the figures (empty: passed)."""
    failed = []
    if base.p99_ms is not None and now.p99_ms is not None:
        limit = base.p99_ms * gates.p99_factor + gates.p99_slack_ms
        if now.p99_ms > limit:
            failed.append(f"p99 {now.p99_ms:.1f} ms over the window vs {base.p99_ms:.1f} ms "
                          f"before (limit {limit:.1f} ms)")
    if now.error_rate > base.error_rate + gates.error_rate_slack:
        failed.append(f"error rate {100 * now.error_rate:.2f}% ({now.errors} of "
                      f"{now.commands}) vs {100 * base.error_rate:.2f}% before (limit "
                      f"{100 * (base.error_rate + gates.error_rate_slack):.2f}%)")
    if now.quorum_failures > gates.max_quorum_failures:
        failed.append(f"{now.quorum_failures} quorum failures in the window (limit "
                      f"{gates.max_quorum_failures})")
    worst = max(now.under_replicated.items(), key=lambda kv: kv[1], default=("-", 0))
    if worst[1] > gates.max_under_replicated:
        failed.append(f"{worst[1]} under-replicated partitions as {worst[0]} sees them "
                      f"(limit {gates.max_under_replicated})")
    return failed


def majority(members: Sequence[str]) -> int:
    """Grants a rollout lease needs: a strict majority of the ring's nodes."""
    return len(members) // 2 + 1


def lease_refusal(members: Sequence[str], replies: dict[str, api.LeaseReply | str],
                  now_ms: int) -> str | None:
    """Why the rollout does not hold the lease after asking every ring
    node (``replies``: each node's answer or why it gave none), or None:
    a strict majority granted it."""
    granted = sorted(n for n, r in replies.items() if isinstance(r, api.LeaseReply) and r.granted)
    need = majority(members)
    if len(granted) >= need:
        return None
    held = [r for r in replies.values()
            if isinstance(r, api.LeaseReply) and not r.granted and r.holder]
    if held:
        by: dict[str, list[api.LeaseReply]] = {}
        for r in held:
            by.setdefault(r.holder, []).append(r)
        holder, rs = max(by.items(), key=lambda kv: len(kv[1]))
        until = max(r.expires_ms for r in rs)
        return (f"another rollout is running: {holder} holds the rollout lease on "
                f"{', '.join(sorted(r.node for r in rs))} until {_utc(until)} (in "
                f"{max(0, until - now_ms) / 1000:.0f}s unless it renews it); run one rollout "
                "at a time")
    unanswered = {n: r for n, r in replies.items() if isinstance(r, str)}
    return (f"the rollout lease needs grants from {need} of {len(members)} nodes, got "
            f"{len(granted)}" + "".join(f"; {n}: {why}" for n, why in sorted(unanswered.items())))


def _utc(ms: int) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000))
