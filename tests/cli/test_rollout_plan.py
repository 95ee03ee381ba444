"""``ringkv rollout``'s decisions (pure): which node may go down, and the
gates over a window compared with the baseline."""

from __future__ import annotations

from cli.rollout.plan import Figures, Gates, judge, lease_refusal, ring_of, unsafe, window
from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, NodeInfo
from coordinator.histogram import BUCKETS
from coordinator.ops import admin_api as api


def _ring(nodes: int, n: int) -> api.RingReply:
    ring = ringmod.claim([NodeInfo(NodeId(f"n{i}")) for i in range(1, nodes + 1)], 64, n)
    return api.RingReply(1, ring.q, ring.n,
                         tuple(api.RingMember(i.node_id, None, "up", 0, 0) for i in ring.nodes),
                         ring.owners)


def test_a_node_may_go_down_only_if_no_down_node_shares_a_partition() -> None:
    three = ring_of(_ring(3, 3))
    assert unsafe(three, "n1", []) is None
    assert unsafe(three, "n1", ["n1"]) is None  # itself
    assert unsafe(three, "n1", ["n3"]) == (
        "refusing to take n1 down: n3 is down and they share 64 partitions (N=3), which "
        "would have two replicas down at once; bring n3 back first")
    # N=1: nobody shares a partition, anything goes.
    assert unsafe(ring_of(_ring(3, 1)), "n1", ["n2", "n3"]) is None


def _load(node: str, at_ms: int, commands: int, errors: int, latency: tuple[int, int] = (0, 0),
          *, noquorum: int = 0, under: int = 0, started_ms: int = 0) -> api.LoadReply:
    fast, slow = latency
    counts = [0] * (len(BUCKETS) + 1)
    counts[1] += fast  # <= 1 ms
    counts[8] += slow  # <= 250 ms
    cumulative = tuple(sum(counts[:i + 1]) for i in range(len(counts)))
    return api.LoadReply(node, at_ms, commands, errors, noquorum, cumulative, under, started_ms)


def test_the_window_sums_every_node_and_the_gates_name_their_figures() -> None:
    base = window([_load("n1", 0, 0, 0), _load("n2", 0, 0, 0)],
                  [_load("n1", 5000, 500, 0, (500, 0)), _load("n2", 5000, 500, 0, (500, 0))])
    assert (base.commands, base.errors, base.seconds) == (1000, 0, 5.0)
    assert base.p99_ms is not None and base.p99_ms <= 1.0
    assert judge(base, base, Gates()) == []
    bad = window([_load("n1", 0, 0, 0)],
                 [_load("n1", 5000, 1000, 20, (900, 100), noquorum=3, under=64)])
    failed = judge(base, bad, Gates())
    assert failed[0].startswith("p99 2") and failed[0].endswith("ms over the window vs "
                                                                "1.0 ms before (limit 7.0 ms)")
    assert failed[1:] == ["error rate 2.00% (20 of 1000) vs 0.00% before (limit 0.10%)",
                          "3 quorum failures in the window (limit 0)",
                          "64 under-replicated partitions as n1 sees them (limit 0)"]
    idle = Figures(5.0, 0, 0, 0, None, {"n1": 0})
    assert judge(idle, idle, Gates()) == []  # no traffic: nothing to compare


def test_a_node_restarting_in_the_window_counts_from_its_start_not_negative() -> None:
    """Regression: `gate FAILED: -2 commands in 3s ... errors -1 (50.00%)`
    when a node restarted during the gate window (its counters began at 0)."""
    before = [_load("n1", 0, 1000, 1, (1000, 0)), _load("n2", 0, 800, 0, (800, 0))]
    after = [_load("n1", 3000, 30, 0, (30, 0), started_ms=2000),
             _load("n2", 3000, 900, 0, (900, 0))]
    got = window(before, after)
    assert (got.commands, got.errors, got.quorum_failures) == (130, 0, 0)
    assert got.restarted == ("n1",) and got.seconds == 3.0
    assert got.p99_ms is not None and got.p99_ms <= 1.0
    assert got.line().endswith("(n1 restarted in the window: counted from its start)")
    assert judge(got, got, Gates()) == []
    # A node too old to report its start: counters going back mean a restart too.
    old = window([_load("n1", 0, 50, 2)], [_load("n1", 3000, 10, 0)])
    assert (old.commands, old.errors, old.restarted) == (10, 0, ("n1",))
    # Same process: a plain difference.
    same = window([_load("n1", 0, 50, 2, started_ms=7)], [_load("n1", 3000, 60, 2, started_ms=7)])
    assert (same.commands, same.errors, same.restarted) == (10, 0, ())


def _lease(node: str, granted: bool, holder: str = "", expires_ms: int = 0) -> api.LeaseReply:
    return api.LeaseReply(node, granted, holder, expires_ms)


def test_the_rollout_lease_needs_a_strict_majority_and_names_the_other_holder() -> None:
    members = ["n1", "n2", "n3"]
    mine = "me:1:aa"
    assert lease_refusal(members, {n: _lease(n, True, mine, 9) for n in members}, 0) is None
    two = {"n1": _lease("n1", True, mine, 9), "n2": _lease("n2", True, mine, 9),
           "n3": "cannot reach 127.0.0.1:1: refused"}
    assert lease_refusal(members, two, 0) is None  # 2 of 3
    other = {"n1": _lease("n1", True, mine, 9),
             "n2": _lease("n2", False, "ops:7:bb", 45_000),
             "n3": _lease("n3", False, "ops:7:bb", 46_000)}
    assert lease_refusal(members, other, 1_000) == (
        "another rollout is running: ops:7:bb holds the rollout lease on n2, n3 until "
        "00:00:46 UTC (in 45s unless it renews it); run one rollout at a time")
    # Two of four is no majority; nobody else holds it: the unreachable are named.
    four = ["n1", "n2", "n3", "n4"]
    half = {"n1": _lease("n1", True, mine, 9), "n2": _lease("n2", True, mine, 9),
            "n3": "down", "n4": "down"}
    assert lease_refusal(four, half, 0) == ("the rollout lease needs grants from 3 of 4 "
                                            "nodes, got 2; n3: down; n4: down")
