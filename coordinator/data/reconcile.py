"""From client commands to versions and back (pure).

* A plain ``SET``/``DEL`` becomes a version with no context whose floor is
  its own ``(hlc, actor)`` (no read first): it supersedes every version
  with a smaller ``(hlc, actor)`` at every replica (DESIGN §4).
* ``VSET``/``VDEL`` with a context become a version carrying that context
  (clock and floor), so it supersedes what the client saw. The context
  comes from the client, so it is checked in full first, its counters and
  floor against this node's clock too (``decode_context``), and the dot is
  minted after it.
* Reads: the sibling sets from R replicas are merged; ``GET`` shows the
  last-writer-wins value, ``VGET`` every live sibling plus the context.
* Read repair: a replica whose answer differs from the merged set (or that
  had nothing) gets the merged set back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coordinator.data import votes
from coordinator.errors import CommandError
from shardserver.protocol import vclock, versions
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.hlc import hlc_wall_ms
from shardserver.protocol.vclock import ActorId
from shardserver.protocol.versions import Context, SiblingSet, Version


def plain_write(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """SET (value) or DEL (None) without a context."""
    return versions.plain_version(actor, hlc, value)


def context_write(context: Context, actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """VSET (value) or VDEL (None) superseding what ``context`` describes
    (a client's context, checked by ``decode_context``; ``hlc`` taken after
    the node's clock adopted it, ``Clock.context``)."""
    try:
        return versions.new_version_for_context(context, actor, hlc, value)
    except VersionFormatError as exc:
        raise CommandError(f"ERR invalid context: {exc}") from None


def decode_context(context: bytes, physical_ms: int, max_drift_ms: int) -> Context:
    """A client's context, checked in full: it is bytes the client controls.

    Its form (types, sizes, entry count, counter range) is checked by
    ``versions.decode_context``; every actor, the floor's too, must read
    ``<node>#<incarnation>`` (the only ids ringkv makes); and no counter,
    nor the floor's HLC, may lie more than ``max_drift_ms`` ahead of
    ``physical_ms``, this node's clock: they are HLC timestamps, and one
    from the future would make the version win over every later plain
    write, and drag the clocks of nodes that read it.
    """
    try:
        ctx = versions.decode_context(context)
        for actor, _ in ctx.clock.entries:
            vclock.parse_actor(actor)
        if ctx.floor is not None:
            vclock.parse_actor(ctx.floor[1])
    except VersionFormatError as exc:
        raise CommandError(f"ERR invalid context: {exc}") from None
    stamps = [(f"counter for {_show(a)}", c) for a, c in ctx.clock.entries]
    if ctx.floor is not None:
        stamps.append((f"floor of {_show(ctx.floor[1])}", ctx.floor[0]))
    for what, stamp in stamps:
        ahead = hlc_wall_ms(stamp) - physical_ms
        if ahead > max_drift_ms:
            raise ContextAheadError(
                f"ERR invalid context: {what} is {ahead} ms ahead of "
                f"this node's clock (max_clock_drift_ms = {max_drift_ms})", ahead)
    return ctx


class ContextAheadError(CommandError):
    """A context's timestamp lies past the drift bound, by ``ahead_ms``."""

    def __init__(self, message: str, ahead_ms: int) -> None:
        super().__init__(message)
        self.ahead_ms = ahead_ms


def _show(actor: bytes) -> str:
    text = actor.decode("utf-8", "replace")
    return text if text.isprintable() else repr(actor)


@dataclass(frozen=True, slots=True)
class ReadResult:
    merged: SiblingSet
    dropped_by_cap: int
    # Replicas whose answer lacked something the merged set has.
    stale: tuple[str, ...]


def reconcile(answers: Mapping[str, SiblingSet | None], cap: int) -> ReadResult:
    """Merge replica answers (``None``: the replica has no version).

    Copies of one version (same HLC and actor) with different values mean a
    replica's copy rotted: the value most answering replicas hold wins, so a
    GET does not hand out a rotten value the others contradict (a tie keeps
    both, as siblings, until anti-entropy decides)."""
    sets = [s for s in answers.values() if s]
    bad = votes.conflicts(sets)
    if bad:
        winners, _ = votes.vote(bad, sets)
        sets = [votes.without_losers(s, winners) for s in sets]
    merged: SiblingSet = ()
    dropped = 0
    for siblings in sets:
        if siblings:
            result = versions.merge_sets(merged, siblings, cap)
            merged, dropped = result.siblings, dropped + result.dropped_by_cap
    stale = tuple(
        sorted(node for node, siblings in answers.items() if merged and siblings != merged)
    )
    return ReadResult(merged, dropped, stale)


def unanimous(payloads: Iterable[bytes | None], cap: int) -> SiblingSet | None:
    """The common read, cheaply: when every replica answered the very same
    bytes (``None``: nothing stored) and that set is already what merging
    makes of it, the merged set, decoded once; else None (then
    :func:`reconcile` the decoded answers). Where it answers, it agrees with
    ``reconcile``: the same merged set and no stale replica."""
    distinct = set(payloads)
    if len(distinct) != 1:
        return None
    (payload,) = distinct
    if payload is None:
        return ()
    siblings = versions.decode_siblings(payload)
    if votes.conflicts([siblings]):
        return None
    merged = versions.merge_sets((), siblings, cap).siblings
    return merged if merged == siblings else None


def get_reply(siblings: SiblingSet) -> bytes | None:
    """What plain GET returns: the last writer's value, or nil."""
    return versions.visible_value(siblings)


def vget_reply(siblings: SiblingSet) -> list[bytes]:
    """``[context, value...]``: the context covers every sibling (tombstones
    included, so a VSET with it supersedes them); values are the live
    siblings, oldest first by (HLC, actor)."""
    context = versions.encode_context(versions.context_of(siblings))
    values = [v.value for v in siblings if v.value is not None]
    return [context, *values]
