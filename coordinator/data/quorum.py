"""Quorum math: who to ask, and when a request has succeeded or failed.

Pure functions and small state machines over node ids (DESIGN §6, §7); the
coordinator's I/O code feeds them replies and asks for a verdict.

Sloppy quorum: a request goes to the first N *healthy* nodes of the
partition's preference list. A primary that is down is replaced by the next
healthy fallback, which holds the write for it (a hint) until it is back.
R and W count answers from any target; PR and PW count primaries only, so
``PW = N`` fails whenever a primary is down, fallbacks or not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coordinator.cluster.ring import NodeId
from coordinator.errors import CommandError, NoQuorumError


@dataclass(frozen=True, slots=True)
class Consistency:
    """Per-request (or per-connection) levels; ``None`` means the default."""

    r: int | None = None
    w: int | None = None
    pr: int | None = None
    pw: int | None = None

    def merged(self, defaults: Consistency) -> Consistency:
        return Consistency(
            r=self.r if self.r is not None else defaults.r,
            w=self.w if self.w is not None else defaults.w,
            pr=self.pr if self.pr is not None else defaults.pr,
            pw=self.pw if self.pw is not None else defaults.pw,
        )


#: No level given (a command without options, a connection without
#: CONSISTENCY): one shared value, so the hot path tells it by identity.
NO_LEVELS = Consistency()


def check_levels(levels: Consistency, n: int) -> None:
    """Reject levels no request could meet, before sending anything."""
    for name, value, low in (
        ("R", levels.r, 1),
        ("W", levels.w, 1),
        ("PR", levels.pr, 0),
        ("PW", levels.pw, 0),
    ):
        if value is not None and not low <= value <= n:
            raise CommandError(f"ERR {name} must be between {low} and N ({n}), got {value}")
    if levels.pr is not None and levels.r is not None and levels.pr > levels.r:
        raise CommandError(f"ERR PR ({levels.pr}) cannot exceed R ({levels.r})")
    if levels.pw is not None and levels.w is not None and levels.pw > levels.w:
        raise CommandError(f"ERR PW ({levels.pw}) cannot exceed W ({levels.w})")


@dataclass(frozen=True, slots=True)
class Target:
    node: NodeId
    primary: bool
    # The down primary this target keeps a hint for: the one a fallback
    # stands in for, or, when no fallback is left, one a live primary covers.
    hint_for: NodeId | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[Target, ...]
    down_primaries: tuple[NodeId, ...]
    #: Counted once: plans are kept per partition and read by every request.
    primaries_up: int = field(init=False, compare=False)
    fallbacks: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        up = sum(1 for t in self.targets if t.primary)
        object.__setattr__(self, "primaries_up", up)
        object.__setattr__(self, "fallbacks", len(self.targets) - up)


def plan(preference: Sequence[NodeId], n: int, is_up: Callable[[NodeId], bool]) -> Plan:
    """The first ``n`` healthy nodes of ``preference``; each down primary is
    paired, in order, with the fallback that takes its place."""
    primaries = list(preference[:n])
    down = [p for p in primaries if not is_up(p)]
    targets = [Target(p, True) for p in primaries if p not in down]
    stand_ins = iter(down)
    for node in preference[n:]:
        if len(targets) >= n:
            break
        if is_up(node):
            targets.append(Target(node, False, next(stand_ins, None)))
    # Down primaries no fallback stands in for (a cluster of N nodes has no
    # fallbacks): a live primary keeps the hint, so handoff still sends the
    # partition to them when they are back (Cassandra keeps such hints on
    # the coordinator; here the data is already on that primary).
    for i, owner in enumerate(list(stand_ins)):
        keepers = [j for j, t in enumerate(targets) if t.primary and t.hint_for is None]
        if i < len(keepers):
            j = keepers[i]
            targets[j] = Target(targets[j].node, True, owner)
    return Plan(tuple(targets), tuple(down))


class Outcome(enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class Tally:
    """Counts answers for one request. ``needed`` answers of which
    ``needed_primaries`` from primaries; fails as soon as that is out of
    reach."""

    plan: Plan
    needed: int
    needed_primaries: int
    what: str = "acks"
    ok: dict[NodeId, bool] = field(default_factory=dict)  # node -> primary
    failed: dict[NodeId, str] = field(default_factory=dict)  # node -> reason

    def ack(self, node: NodeId) -> Outcome:
        target = self._target(node)
        if target is not None and node not in self.failed:
            self.ok[node] = target.primary
        return self.outcome()

    def fail(self, node: NodeId, reason: str) -> Outcome:
        if self._target(node) is not None and node not in self.ok:
            self.failed[node] = reason
        return self.outcome()

    def _target(self, node: NodeId) -> Target | None:
        for t in self.plan.targets:
            if t.node == node:
                return t
        return None

    def _reach(self) -> tuple[int, int, int, int]:
        """(got, got from primaries, could get, could get from primaries).
        One pass over the (few) targets: this runs at every reply."""
        ok, failed = self.ok, self.failed
        got = len(ok)
        got_primaries = sum(ok.values())
        could, could_primaries = got, got_primaries
        for t in self.plan.targets:
            if t.node not in ok and t.node not in failed:
                could += 1
                could_primaries += t.primary
        return got, got_primaries, could, could_primaries

    def outcome(self) -> Outcome:
        got, got_primaries, could, could_primaries = self._reach()
        needed, needed_primaries = self.needed, self.needed_primaries
        if got >= needed and got_primaries >= needed_primaries:
            return Outcome.SUCCEEDED
        if could < needed or could_primaries < needed_primaries:
            return Outcome.FAILED
        return Outcome.PENDING

    def unreachable(self) -> NoQuorumError | None:
        """Before anything is sent: the error if too few targets are up to
        ever succeed (as Cassandra answers Unavailable without writing)."""
        targets = self.plan.targets
        up, primaries_up = len(targets), self.plan.primaries_up
        if up >= self.needed and primaries_up >= self.needed_primaries:
            return None
        if up >= self.needed:
            needed, have, what = self.needed_primaries, primaries_up, f"primary {self.what}"
        else:
            needed, have, what = self.needed, up, self.what
        replicas = [f"{t.node} {_role(t)} up" for t in targets]
        replicas += [f"{p} primary down" for p in self.plan.down_primaries]
        return NoQuorumError(needed, have, replicas, what, before_sending=True)

    def cause(self) -> str:
        """Why the request failed, for the metrics: ``replica_down``,
        ``timeout``, ``read_only`` or ``other``, the most common reason among
        the failed replicas (nothing failed: too few up, nothing sent)."""
        counts = dict.fromkeys(CAUSES, 0)
        for reason in self.failed.values():
            counts[_cause_of(reason)] += 1
        if not self.failed:
            return "replica_down"
        return max(CAUSES, key=lambda c: counts[c])  # ties: the first in CAUSES

    def error(self) -> NoQuorumError:
        """The NOQUORUM error naming every replica and what became of it."""
        got, got_primaries, could, could_primaries = self._reach()
        primaries_short = got_primaries < self.needed_primaries and (
            could_primaries < self.needed_primaries or got >= self.needed
        )
        if primaries_short and could >= self.needed:
            needed, got, what = self.needed_primaries, got_primaries, f"primary {self.what}"
        else:
            needed, what = self.needed, self.what
        replicas = []
        for t in self.plan.targets:
            state = "ok" if t.node in self.ok else self.failed.get(t.node, "no answer")
            replicas.append(f"{t.node} {_role(t)} {state}")
        replicas += [f"{p} primary down" for p in self.plan.down_primaries]
        return NoQuorumError(needed, got, replicas, what)


#: Quorum failure causes (``Tally.cause``), in the order ties are broken.
CAUSES = ("replica_down", "timeout", "read_only", "other")


def _cause_of(reason: str) -> str:
    if reason.startswith("down"):
        return "replica_down"
    if reason.startswith("timeout"):
        return "timeout"
    if reason.startswith("read-only"):
        return "read_only"
    return "other"


def _role(t: Target) -> str:
    return "primary" if t.primary else f"fallback for {t.hint_for or '-'}"


def write_tally(p: Plan, w: int, pw: int) -> Tally:
    return Tally(p, w, pw, "acks")


def read_tally(p: Plan, r: int, pr: int) -> Tally:
    return Tally(p, r, pr, "replies")
