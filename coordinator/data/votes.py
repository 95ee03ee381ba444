"""Silent corruption among replicas: the same version with different values.

Two copies with the same (HLC, actor) come from one write, so their values
must be equal; when they are not, one copy rotted (docs/anti-entropy.md).
The replicas that hold a copy vote; the value most of them hold wins, a tie
stays undecided. Used by anti-entropy (to repair) and by reads (so a plain
GET does not return a rotten value that a majority contradicts). Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from shardserver.protocol.versions import SiblingSet

Identity = tuple[int, bytes]  # (hlc, actor) of a version


def conflicts(sets: Iterable[SiblingSet]) -> set[Identity]:
    """Identities held with more than one value across ``sets``."""
    values: dict[Identity, set[bytes | None]] = {}
    for s in sets:
        for v in s:
            values.setdefault((v.hlc, v.actor), set()).add(v.value)
    return {ident for ident, vals in values.items() if len(vals) > 1}


def vote(
    conflicts: Iterable[Identity], copies: Sequence[SiblingSet]
) -> tuple[dict[Identity, bytes | None], list[Identity]]:
    """Per conflicting identity, the value most replicas hold (each replica
    votes once for each value it holds); ties are undecided."""
    winners: dict[Identity, bytes | None] = {}
    undecided: list[Identity] = []
    for ident in conflicts:
        votes: Counter[bytes | None] = Counter()
        for s in copies:
            votes.update({v.value for v in s if (v.hlc, v.actor) == ident})
        ranked = votes.most_common(2)
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            undecided.append(ident)
        else:
            winners[ident] = ranked[0][0]
    return winners, undecided


def without_losers(s: SiblingSet, winners: dict[Identity, bytes | None]) -> SiblingSet:
    return tuple(
        v for v in s if (v.hlc, v.actor) not in winners or winners[(v.hlc, v.actor)] == v.value
    )
