"""Rebalancing: from one owner sequence to the next with few moves (pure).

Works on the integer form of :mod:`coordinator.cluster.placement`: ``old[p]`` is the
new index of partition p's owner, or None when that owner left. In order:

1. departed owners' partitions (forced moves) go to nodes below their share,
   by a matching so that no node that fits nowhere else is crowded out;
2. each node still below its share takes whole-share "steals": partitions of
   nodes above theirs, N apart, so it never conflicts with itself;
3. whatever is left moves one partition at a time, least conflict first;
4. :func:`~coordinator.placement.improve` swaps away remaining conflicts.

:func:`align` is the fallback the ring module compares against: a fresh
claim rotated and relabelled to agree with the old ring where it can.

Measured on the tested range (1..8 nodes, Q up to 256): a join moves the
new node's share, at most two more. A leave moves the leaver's share only
when its neighbours leave room: with N consecutive owners distinct, a freed
slot can go only to nodes not already within N of it, and when none is left
(5 -> 4 nodes at N=3: every freed slot sits between all four survivors) the
node-distinct ring is a different pattern, and a fresh claim aligned to the
old ring wins at the price of most partitions moving (48 of 64 there;
8 -> 7 nodes at N=3 moves 13 of 64 for a share of 8).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from coordinator.cluster.placement import improve, near, past, windows, zone_window

#: Alignment of a fresh claim with the old ring tries at most this many rotations.
MAX_ROTATIONS = 512
#: A steal tries at most this many start positions.
MAX_STEAL_STARTS = 256


def targets_for(k: int, q: int, current: Sequence[int]) -> list[int]:
    """Balanced target counts; the extra partitions go to nodes that own most now."""
    base, extra = divmod(q, k)
    ranked = sorted(range(k), key=lambda x: (-current[x], x))
    targets = [base] * k
    for x in ranked[:extra]:
        targets[x] += 1
    return targets


def reassign(
    old: Sequence[int | None], zones: Sequence[int], n: int, zoned: bool,
    deadline: float = math.inf,
) -> list[int]:
    """Move the fewest partitions that restore balance; ``None`` marks a departed owner.

    Departed owners' partitions must move; after that each step moves one
    partition from a node above its target to one below it, choosing the
    pair that adds the fewest conflicts. A final :func:`improve` pass repairs
    what the greedy steps could not avoid, at two moves per swap. Past
    ``deadline`` the steals and swaps stop searching (balance is still met).
    """
    k, q = len(zones), len(old)
    zw = zone_window(zones, n, zoned)
    counts = Counter(o for o in old if o is not None)
    targets = targets_for(k, q, [counts[x] for x in range(k)])
    need = {x: targets[x] - counts[x] for x in range(k) if targets[x] > counts[x]}
    excess = {x: counts[x] - targets[x] for x in range(k) if counts[x] > targets[x]}
    # Owner k stands for a departed node; it maps to -1 in these extended
    # tables, so it conflicts with nobody while its partitions wait for a home.
    ext_zones = [*zones, -1]
    owners = [k if o is None else o for o in old]
    node_w = windows(q, n)
    zone_w = windows(q, zw) if zw > 1 else None
    zo = [ext_zones[o] for o in owners]

    def gain(i: int, x: int) -> tuple[int, int]:
        cur = owners[i]
        dn = near(node_w, owners, i, x) - (0 if cur == k else near(node_w, owners, i, cur))
        dz = near(zone_w, zo, i, zones[x]) - (0 if cur == k else near(zone_w, zo, i, zo[i]))
        return (dn, dz)

    def move(i: int, x: int) -> None:
        # Bookkeeping for both sides: the loser drifts toward (or past) its
        # target, the gainer may overshoot when that is the only clean home.
        cur = owners[i]
        if cur != k:
            if cur in excess:
                excess[cur] -= 1
                if not excess[cur]:
                    del excess[cur]
            else:
                need[cur] = need.get(cur, 0) + 1
        owners[i] = x
        zo[i] = zones[x]
        if x in need:
            need[x] -= 1
            if not need[x]:
                del need[x]
        else:
            excess[x] = excess.get(x, 0) + 1

    def step(pool: list[int]) -> None:
        best = min((gain(i, x), i, x) for i in pool for x in need)
        move(best[1], best[2])

    def clean(i: int, x: int) -> bool:
        return gain(i, x) <= (0, 0) and near(node_w, owners, i, x) == 0

    # Departed owners' partitions are forced moves. Placing them one at a
    # time greedily strands nodes that fit nowhere late in the walk, so first
    # a matching of slots to nodes with room, then any clean home (that node
    # then passes a partition on in the steal phase), then the least bad one.
    free = [i for i in range(q) if owners[i] == k]
    for i, x in _match(free, {i: [x for x in need if clean(i, x)] for i in free}, need).items():
        if clean(i, x):
            move(i, x)
    for i in free:
        if owners[i] == k:
            homes = [x for x in range(k) if clean(i, x)]
            if homes:
                move(i, min(homes, key=lambda x: (-need.get(x, 0), excess.get(x, 0), x)))
    while k in owners:
        step([i for i in range(q) if owners[i] == k])

    # Whole-share steals first: one greedy step at a time would happily pack
    # a joining node's first partitions and leave no room for its last ones.
    for x in sorted(need, key=lambda x: (-need[x], x)):
        picks = _steal(owners, x, need[x], excess, spacing=n, clean=clean,
                       deadline=deadline)
        for i in picks or ():
            move(i, x)
    while need:
        step([i for i in range(q) if owners[i] in excess])
    improve(owners, zones, n, zw, old=old, deadline=deadline)
    return owners


def _match(
    slots: list[int], homes: dict[int, list[int]], capacity: dict[int, int]
) -> dict[int, int]:
    """Most slots matched to homes without exceeding a home's capacity (Kuhn's)."""
    held: dict[int, list[int]] = {}
    match: dict[int, int] = {}

    def place(slot: int, seen: set[int]) -> bool:
        for home in homes[slot]:
            if home in seen:
                continue
            seen.add(home)
            taken = held.setdefault(home, [])
            if len(taken) < capacity.get(home, 0):
                taken.append(slot)
                match[slot] = home
                return True
            for other in list(taken):
                if place(other, seen):
                    taken.remove(other)
                    taken.append(slot)
                    match[slot] = home
                    return True
        return False

    for slot in slots:
        place(slot, set())
    return match


def _steal(
    owners: Sequence[int],
    x: int,
    count: int,
    quotas: dict[int, int],
    *,
    spacing: int,
    clean: Callable[[int, int], bool],
    deadline: float = math.inf,
) -> list[int] | None:
    """``count`` positions for node x, pairwise ``spacing`` apart, taking from each
    owner at most its quota; None if the earliest-fit walk finds none.

    Earliest fit from one start is not enough when the quotas are tight, so
    the walk is retried from up to :data:`MAX_STEAL_STARTS` start positions
    (while ``deadline`` has not passed).
    """
    q = len(owners)
    if count == 0:
        return []
    for start in range(0, q, max(1, q // MAX_STEAL_STARTS)):
        if start and past(deadline):
            return None
        left = dict(quotas)
        picks: list[int] = []
        for off in range(q):
            if picks and off - picks[-1] < spacing:
                continue
            # Cyclic distance from this pick around to the first one.
            if picks and q - off + picks[0] < spacing:
                break
            i = (start + off) % q
            if left.get(owners[i], 0) > 0 and clean(i, x):
                left[owners[i]] -= 1
                picks.append(off)
                if len(picks) == count:
                    return [(start + p) % q for p in picks]
    return None


def align(
    fresh: Sequence[int], old: Sequence[int | None], groups: Sequence[int]
) -> list[int]:
    """Rotate and relabel ``fresh`` to agree with ``old`` on as many partitions as possible.

    Relabelling only within a group (same configured zone, or all unzoned
    nodes) keeps every distinctness property of ``fresh``; rotation keeps
    them too. Matching is greedy by agreement count, which is good enough
    here: the result is only a fallback.
    """
    q, k = len(fresh), len(groups)
    step = max(1, q // MAX_ROTATIONS)
    best: tuple[int, list[int]] | None = None
    for r in range(0, q, step):
        pairs = Counter(
            (fresh[(i + r) % q], o) for i, o in enumerate(old) if o is not None
        )
        label: dict[int, int] = {}
        used: set[int] = set()
        for (a, b), _ in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
            if a not in label and b not in used and groups[a] == groups[b]:
                label[a] = b
                used.add(b)
        for a in range(k):
            if a not in label:
                b = next(x for x in range(k) if x not in used and groups[x] == groups[a])
                label[a] = b
                used.add(b)
        owners = [label[fresh[(i + r) % q]] for i in range(q)]
        moved = sum(1 for a, b in zip(owners, old, strict=True) if a != b)
        if best is None or moved < best[0]:
            best = (moved, owners)
    assert best is not None  # q >= 1, so the loop ran
    return best[1]
