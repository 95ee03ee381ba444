"""From client commands to versions and back (pure).

* A plain ``SET``/``DEL`` becomes a version whose clock is ``{actor: hlc}``
  (no read first); replicas apply it last-writer-wins (DESIGN §4).
* ``VSET``/``VDEL`` with a context become a version whose clock descends
  from that context, so it supersedes exactly what the client saw. The
  context comes from the client, so it is checked in full first, its
  counters against this node's clock too (``decode_context``).
* Reads: the sibling sets from R replicas are merged; ``GET`` shows the
  last-writer-wins value, ``VGET`` every live sibling plus the context.
* Read repair: a replica whose answer differs from the merged set (or that
  had nothing) gets the merged set back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coordinator import votes
from coordinator.errors import CommandError
from shardserver.protocol import vclock, versions
from shardserver.protocol.hlc import hlc_wall_ms
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import SiblingSet, Version


def plain_write(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """SET (value) or DEL (None) without a context."""
    return versions.plain_version(actor, hlc, value)


def context_write(context: VClock, actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """VSET (value) or VDEL (None) superseding what ``context`` describes
    (a client's context, checked by ``decode_context``)."""
    try:
        return versions.new_version_for_context(context, actor, hlc, value)
    except vclock.VersionFormatError as exc:
        raise CommandError(f"ERR invalid context: {exc}") from None


def decode_context(context: bytes, physical_ms: int, max_drift_ms: int) -> VClock:
    """A client's context, checked in full: it is bytes the client controls.

    Its form (types, sizes, entry count, counter range) is checked by
    ``vclock.decode_context``; every actor must read ``<node>#<incarnation>``
    (the only ids ringkv makes); and no counter may lie more than
    ``max_drift_ms`` ahead of ``physical_ms``, this node's clock: counters
    are HLC timestamps, and one from the future would make the version win
    over every later plain write, and drag the clocks of nodes that read it.
    """
    try:
        clock = vclock.decode_context(context)
        for actor, _ in clock.entries:
            vclock.parse_actor(actor)
    except vclock.VersionFormatError as exc:
        raise CommandError(f"ERR invalid context: {exc}") from None
    for actor, counter in clock.entries:
        ahead = hlc_wall_ms(counter) - physical_ms
        if ahead > max_drift_ms:
            raise CommandError(
                f"ERR invalid context: counter for {_show(actor)} is {ahead} ms ahead of "
                f"this node's clock (max_clock_drift_ms = {max_drift_ms})")
    return clock


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


def get_reply(siblings: SiblingSet) -> bytes | None:
    """What plain GET returns: the last writer's value, or nil."""
    return versions.visible_value(siblings)


def vget_reply(siblings: SiblingSet) -> list[bytes]:
    """``[context, value...]``: the context covers every sibling (tombstones
    included, so a VSET with it supersedes them); values are the live
    siblings, oldest first by (HLC, actor)."""
    context = vclock.encode_context(versions.context_of(siblings))
    values = [v.value for v in siblings if v.value is not None]
    return [context, *values]
