"""Ring figures for the cluster simulator: balance, zone spread, moves on a
join or a leave, and what one zone of three going down costs. Everything
here calls ringmod's real claim / rebalance / remove_nodes.

:func:`shared_ring_math` lets the simulated nodes share those pure results:
every real node would compute the same ring from the same input, and at
1,000 nodes and Q = 4,096 one rebalance costs seconds, so the simulator
computes each distinct input once and counts how many nodes asked (the CPU
the real cluster would spend, reported as the "ring computations" figure).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring

ZONES = 3


def node_name(i: int) -> str:
    return f"n{i:04d}"


def zone_of(i: int) -> str:
    """Zones are assigned round-robin: node i is in zone i mod 3."""
    return f"z{i % ZONES}"


def members(k: int) -> list[tuple[str, str | None]]:
    return [(node_name(i), zone_of(i)) for i in range(k)]


# -- shared pure results -----------------------------------------------------------


def _key(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_key(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return value


@dataclass
class RingMath:
    """Per distinct input: its result, how many callers asked, and its cost."""

    results: dict[Any, Ring] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    distinct: Counter[str] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)  # one computation of each kind, summed

    def wrap(self, name: str, fn: Callable[..., Ring]) -> Callable[..., Ring]:
        def shared(*args: Any, **kwargs: Any) -> Ring:
            key = (name, _key(args), _key(sorted(kwargs.items())))
            self.calls[name] += 1
            hit = self.results.get(key)
            if hit is None:
                t0 = time.process_time()
                hit = self.results[key] = fn(*args, **kwargs)
                self.distinct[name] += 1
                self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - t0
            return hit

        return shared

    def snapshot(self) -> dict[str, int]:
        return dict(self.calls)


@contextlib.contextmanager
def shared_ring_math() -> Iterator[RingMath]:
    """Within the block, ringmod's claim/rebalance/remove_nodes are memoized."""
    math = RingMath()
    names = ("claim", "rebalance", "remove_nodes")
    saved = {name: getattr(ringmod, name) for name in names}
    try:
        for name in names:
            setattr(ringmod, name, math.wrap(name, saved[name]))
        yield math
    finally:
        for name, fn in saved.items():
            setattr(ringmod, name, fn)


# -- static figures ----------------------------------------------------------------


def _balance(ring: Ring) -> dict[str, Any]:
    owned = Counter(ring.owners)
    counts = [owned.get(x, 0) for x in ring.node_ids]
    replicas = Counter(x for p in range(ring.q) for x in ringmod.primaries(ring, p))
    rep = [replicas.get(x, 0) for x in ring.node_ids]
    k, q = len(ring.nodes), ring.q
    return {
        "owned_max": max(counts), "owned_min": min(counts), "owned_mean": q / k,
        "owned_within_one": max(counts) - min(counts) <= 1,
        "replicas_max": max(rep), "replicas_min": min(rep),
        "replicas_mean": statistics.fmean(rep),
        "owning_nodes": sum(1 for c in counts if c),
    }


def _zones(ring: Ring) -> dict[str, Any]:
    zone = ring.zones()
    spread = Counter(len({zone[x] for x in ringmod.primaries(ring, p)}) for p in range(ring.q))
    node_conf, zone_conf = ringmod.conflicts(ring)
    down = "z0"
    lost_all = lost_quorum = 0
    quorum = ring.n // 2 + 1
    for p in range(ring.q):
        prim = ringmod.primaries(ring, p)
        gone = sum(1 for x in prim if zone[x] == down)
        lost_all += gone == len(prim)
        lost_quorum += len(prim) - gone < quorum
    return {
        "zone_spread": {str(z): c for z, c in sorted(spread.items())},
        "node_conflicts": node_conf, "zone_conflicts": zone_conf,
        "zone_down": down, "lost_all_replicas": lost_all, "lost_quorum": lost_quorum,
    }


def replica_moves(old: Ring, new: Ring) -> int:
    """(partition, replica) pairs a ring change creates: the copies to stream."""
    return sum(len(set(ringmod.primaries(new, p)) - set(ringmod.primaries(old, p)))
               for p in range(old.q))


def _change(old: Ring, new: Ring, cpu_s: float, share: int) -> dict[str, Any]:
    k = len(new.nodes)
    return {
        "owners_moved": len(ringmod.moved_partitions(old, new)),
        "owners_min": old.q / max(k, len(old.nodes)),
        "replicas_moved": replica_moves(old, new),
        "replicas_min": share,
        "conflicts_after": list(ringmod.conflicts(new)),
        "balance_after": _balance(new)["owned_within_one"],
        "cpu_s": round(cpu_s, 3),
    }


def ring_figures(k: int, q: int, n: int = 3) -> dict[str, Any]:
    """Balance and zones of a fresh claim, then one join and one leave."""
    t0 = time.process_time()
    ring = ringmod.claim(members(k), q, n)
    claim_s = time.process_time() - t0
    out: dict[str, Any] = {"nodes": k, "q": q, "n": n, "claim_cpu_s": round(claim_s, 3)}
    out.update(_balance(ring))
    out.update(_zones(ring))
    # Join: the minimum is the newcomer's share of the N*Q replicas.
    t0 = time.process_time()
    joined = ringmod.rebalance(ring, [*members(k), (node_name(k), zone_of(k))])
    join_s = time.process_time() - t0
    out["join"] = _change(ring, joined, join_s, round(q * n / (k + 1)))
    # Leave (``ringkv remove``): the minimum is the replicas the leaver held.
    victim = NodeId(node_name(k // 2))
    held = len(ringmod.replicated_partitions(ring, victim))
    t0 = time.process_time()
    left = ringmod.remove_nodes(ring, {victim}, members(k))
    leave_s = time.process_time() - t0
    out["leave"] = _change(ring, left, leave_s, held)
    return out


def claimed(k: int, q: int, n: int = 3) -> Ring:
    return ringmod.claim(members(k), q, n)

