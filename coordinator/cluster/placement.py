"""Partition placement as pure combinatorics over small integers.

Nodes are ``0..k-1`` (their index in the sorted member list) and each has a
zone number; an owner sequence is a list of node numbers of length Q. The
ring module turns these into :class:`~coordinator.ring.Ring` values; keeping
the search here, free of ids and dataclasses, makes it easy to test
exhaustively. Fresh placement is here; moving from one ring to the next is in
:mod:`coordinator.cluster.reassign`.

Goals, in order of priority (compared lexicographically as a :data:`Cost`):

1. node-distinct windows: any N consecutive partitions (wrapping) have N
   distinct owners, so the N primaries of a partition are its N owners;
2. zone-distinct windows: any ``min(N, #zones)`` consecutive partitions have
   distinct zones (only when some zone is configured);
3. for a rebalance, as few moved partitions as possible.

Balance (every node owns floor or ceil of Q/k) is a hard constraint.

When (1) is achievable
----------------------
With balance, the node with ceil(Q/k) = M partitions needs N-1 others between
consecutive ones, so ``k >= N and M*N <= Q`` is necessary. It is also
sufficient, by construction (:func:`balanced_sequence`): write M rounds of the
node order 0..k-1, then delete D = M*k - Q nodes, spread over the rounds as
evenly as possible (each round loses at most k - N), each node deleted at most
once, taking descending arcs: round 0 loses the top d0 nodes, round 1 the d1
below those, and so on. A node kept in rounds i and i+1 then has at least N-1
others between its two occurrences, including across the wrap from the last
round to the first (checked exhaustively for k < 40, Q < 150 and powers of
two up to 1024 while designing it; the tests re-check the supported range).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from operator import itemgetter

#: (node conflicts, zone conflicts, moved partitions); smaller is better.
Cost = tuple[int, int, int]

#: Bounds the local search so a pathological input costs seconds, not hours.
DEFAULT_BUDGET = 400_000
#: ... and by time: the optional searches (swaps, steal retries, the fresh
#: claim a rebalance compares with) stop this many seconds after a ring
#: computation began, keeping what they have (issue 18.4: a leave at 100
#: nodes and Q = 4,096 searched for 26 s).
TIME_BUDGET_S = 2.0


def deadline_in(seconds: float | None) -> float:
    """A ``time.monotonic`` deadline; ``None``: no time bound."""
    return math.inf if seconds is None else time.monotonic() + seconds


def past(deadline: float) -> bool:
    return deadline != math.inf and time.monotonic() > deadline


def achievable(q: int, k: int, n: int) -> bool:
    """Whether a balanced, node-distinct placement of Q partitions on k nodes exists."""
    return k >= n and -(-q // k) * n <= q


def zone_window(zones: Sequence[int], n: int, zoned: bool) -> int:
    """Width of the zone-distinct window; 0 when no zone is configured."""
    return min(n, len(set(zones))) if zoned else 0


def balanced_sequence(q: int, k: int, n: int) -> list[int]:
    """Balanced owners over symbols 0..k-1, node-distinct whenever :func:`achievable`.

    Symbols 0..r-1 (in order) get the extra partition when k does not divide Q.
    """
    rounds = -(-q // k)
    deletions = rounds * k - q
    seq: list[int] = []
    top = k
    for i in range(rounds):
        d = deletions // rounds + (1 if i < deletions % rounds else 0)
        # Descending arcs: see the module docstring for why this order
        # keeps every wrap between rounds node-distinct.
        seq.extend(s for s in range(k) if not top - d <= s < top)
        top -= d
    return seq


def interleave(zones: Sequence[int]) -> list[int]:
    """A node order in which consecutive nodes are in different zones where possible.

    Always takes a node of the zone with the most nodes left that differs
    from the previous pick, the classic arrangement that separates equal
    items whenever it can be done.
    """
    left: dict[int, list[int]] = {}
    for node, zone in enumerate(zones):
        left.setdefault(zone, []).append(node)
    order: list[int] = []
    prev: int | None = None
    for _ in range(len(zones)):
        ranked = sorted((z for z in left if left[z]), key=lambda z: (-len(left[z]), z))
        pick = next((z for z in ranked if z != prev), ranked[0])
        order.append(left[pick].pop(0))
        prev = pick
    return order


Getter = Callable[[Sequence[int]], tuple[int, ...]]


def windows(q: int, window: int) -> list[Getter] | None:
    """Per position, a getter for the values within ``window - 1`` on either side.

    ``itemgetter`` does the gathering in C; the search calls these millions
    of times. None when the window is 1 (nothing to compare with).
    """
    reach = min(window - 1, q - 1)
    if reach < 1:
        return None
    offsets = [d for d in range(-reach, reach + 1) if d]
    # At least two offsets, so each getter returns a tuple, never a scalar.
    return [itemgetter(*[(i + d) % q for d in offsets]) for i in range(q)]


def near(getters: list[Getter] | None, values: Sequence[int], i: int, value: int) -> int:
    return 0 if getters is None else getters[i](values).count(value)


def cost(
    owners: Sequence[int],
    zones: Sequence[int],
    n: int,
    zw: int,
    old: Sequence[int | None] | None = None,
) -> Cost:
    """The :data:`Cost` of a placement (each conflicting pair counted once)."""
    q = len(owners)
    node_w = windows(q, n)
    node = sum(near(node_w, owners, i, owners[i]) for i in range(q)) // 2
    zone = 0
    if zw > 1:
        zone_w = windows(q, zw)
        zo = [zones[o] for o in owners]
        zone = sum(near(zone_w, zo, i, zo[i]) for i in range(q)) // 2
    moved = 0 if old is None else sum(1 for a, b in zip(owners, old, strict=True) if a != b)
    return (node, zone, moved)


def improve(
    owners: list[int],
    zones: Sequence[int],
    n: int,
    zw: int,
    *,
    old: Sequence[int | None] | None = None,
    budget: int = DEFAULT_BUDGET,
    deadline: float = math.inf,
) -> None:
    """Swap owners of partition pairs, in place, while a swap lowers the cost.

    Swaps keep every node's count, so balance survives. First improvement,
    in passes over the conflicting positions, bounded by ``budget`` swap
    evaluations: best effort, which is why callers compare the result with
    other candidates. Conflicts that no placement avoids (unequal zones)
    would otherwise keep it searching for ever. Also stops past
    ``deadline`` (``time.monotonic``).
    """
    q = len(owners)
    node_w = windows(q, n)
    zone_w = windows(q, zw) if zw > 1 else None
    zo = [zones[o] for o in owners]

    def local(i: int) -> Cost:
        v = owners[i]
        moved = 0 if old is None or old[i] == v else 1
        return (near(node_w, owners, i, v), near(zone_w, zo, i, zo[i]), moved)

    def swap(i: int, j: int) -> None:
        owners[i], owners[j] = owners[j], owners[i]
        zo[i], zo[j] = zo[j], zo[i]

    spent = 0
    improved = True
    while improved and spent < budget:
        improved = False
        for i in range(q):
            if past(deadline):
                return
            li = local(i)
            if li[:2] == (0, 0):
                continue
            for j in range(q):
                if owners[j] == owners[i]:
                    continue
                spent += 1
                lj = local(j)
                swap(i, j)
                ai, aj = local(i), local(j)
                after = (ai[0] + aj[0], ai[1] + aj[1], ai[2] + aj[2])
                if after < (li[0] + lj[0], li[1] + lj[1], li[2] + lj[2]):
                    improved = True
                    break
                swap(i, j)
            if spent >= budget:
                return


def claim_sequence(zones: Sequence[int], q: int, n: int, zoned: bool,
                   deadline: float = math.inf) -> list[int]:
    """A fresh placement for nodes ``0..k-1`` with the given zone numbers.

    Two constructions compete and the cheaper wins: node-level (zone-
    interleaved node order, then local search), and, for equal-sized zones,
    zone-level first (which makes zone windows distinct by construction)
    with each zone's partitions dealt round-robin to its nodes.
    """
    zw = zone_window(zones, n, zoned)
    order = interleave(zones)
    candidates = [[order[s] for s in balanced_sequence(q, len(zones), n)]]
    if zoned:
        two_level = _zone_first(zones, q, zw)
        if two_level is not None:
            candidates.append(two_level)
    for owners in candidates:
        improve(owners, zones, n, zw, deadline=deadline)
    return min(candidates, key=lambda owners: cost(owners, zones, n, zw))


def _zone_first(zones: Sequence[int], q: int, zw: int) -> list[int] | None:
    members: dict[int, list[int]] = {}
    for node, zone in enumerate(zones):
        members.setdefault(zone, []).append(node)
    sizes = {len(m) for m in members.values()}
    if len(sizes) != 1 or zw < 1:
        # Unequal zones cannot be both node-balanced and zone-balanced.
        return None
    groups = [members[z] for z in sorted(members)]
    dealt = [0] * len(groups)
    owners: list[int] = []
    for g in balanced_sequence(q, len(groups), zw):
        group = groups[g]
        owners.append(group[dealt[g] % len(group)])
        dealt[g] += 1
    return owners
