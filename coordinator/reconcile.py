"""From client commands to versions and back (pure).

* A plain ``SET``/``DEL`` becomes a version whose clock is ``{actor: hlc}``
  (no read first); replicas apply it last-writer-wins (DESIGN §4).
* ``VSET``/``VDEL`` with a context become a version whose clock descends
  from that context, so it supersedes exactly what the client saw.
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
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import SiblingSet, Version


def plain_write(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """SET (value) or DEL (None) without a context."""
    return versions.plain_version(actor, hlc, value)


def context_write(context: bytes, actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """VSET (value) or VDEL (None) superseding what ``context`` describes."""
    return versions.new_version_for_context(decode_context(context), actor, hlc, value)


def decode_context(context: bytes) -> VClock:
    try:
        return vclock.decode_context(context)
    except vclock.VersionFormatError as exc:
        raise CommandError(f"ERR invalid context: {exc}") from None


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
