from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cluster.ring import NodeId
from coordinator.data.quorum import (
    Consistency,
    Outcome,
    check_levels,
    plan,
    read_tally,
    write_tally,
)
from coordinator.errors import CommandError

PREF = [NodeId(n) for n in ("a", "b", "c", "d", "e")]


def up_except(*down: str) -> object:
    return lambda node: node not in down


def test_all_up_targets_are_the_primaries() -> None:
    p = plan(PREF, 3, up_except())  # type: ignore[arg-type]
    assert [(t.node, t.primary, t.hint_for) for t in p.targets] == [
        ("a", True, None),
        ("b", True, None),
        ("c", True, None),
    ]
    assert p.down_primaries == ()


def test_down_primaries_are_replaced_by_fallbacks_in_order() -> None:
    p = plan(PREF, 3, up_except("a", "c"))  # type: ignore[arg-type]
    assert [(t.node, t.primary, t.hint_for) for t in p.targets] == [
        ("b", True, None),
        ("d", False, "a"),
        ("e", False, "c"),
    ]
    assert p.down_primaries == ("a", "c")


def test_without_fallbacks_a_live_primary_keeps_the_hint() -> None:
    p = plan(PREF[:3], 3, up_except("b"))  # type: ignore[arg-type]
    assert [(t.node, t.primary, t.hint_for) for t in p.targets] == [
        ("a", True, "b"),
        ("c", True, None),
    ]
    p = plan(PREF[:4], 3, up_except("a", "b"))  # type: ignore[arg-type]
    assert [(t.node, t.primary, t.hint_for) for t in p.targets] == [
        ("c", True, "b"),
        ("d", False, "a"),
    ]


def test_one_node_down_w2_succeeds_w3_fails_naming_the_replicas() -> None:
    # 3 nodes in the cluster, one killed: no fallback exists.
    p = plan(PREF[:3], 3, up_except("c"))  # type: ignore[arg-type]
    t = write_tally(p, 2, 0)
    assert t.ack(NodeId("a")) is Outcome.PENDING
    assert t.ack(NodeId("b")) is Outcome.SUCCEEDED
    t3 = write_tally(p, 3, 0)
    assert t3.outcome() is Outcome.FAILED  # out of reach before anyone answers
    text = str(t3.error())
    assert text.startswith("NOQUORUM needed 3 acks, got 0")
    assert "c primary down" in text


def test_pw_counts_primaries_only_even_with_fallbacks_up() -> None:
    p = plan(PREF, 3, up_except("b"))  # type: ignore[arg-type]
    t = write_tally(p, 3, 3)
    assert t.outcome() is Outcome.FAILED
    assert "primary acks" in str(t.error())
    t2 = write_tally(p, 2, 2)
    t2.ack(NodeId("d"))
    assert t2.ack(NodeId("a")) is Outcome.PENDING
    assert t2.ack(NodeId("c")) is Outcome.SUCCEEDED


def test_two_down_sloppy_w2_succeeds_through_fallbacks_but_pw2_fails() -> None:
    p = plan(PREF, 3, up_except("a", "b"))  # type: ignore[arg-type]
    w = write_tally(p, 2, 0)
    w.ack(NodeId("d"))
    assert w.ack(NodeId("e")) is Outcome.SUCCEEDED
    assert write_tally(p, 2, 2).outcome() is Outcome.FAILED


def test_failures_and_late_or_foreign_answers() -> None:
    p = plan(PREF, 3, up_except())  # type: ignore[arg-type]
    t = read_tally(p, 2, 0)
    assert t.fail(NodeId("a"), "timeout") is Outcome.PENDING
    assert t.fail(NodeId("b"), "disk full") is Outcome.FAILED
    assert t.ack(NodeId("a")) is Outcome.FAILED  # a failed answer stays failed
    assert t.ack(NodeId("zz")) is Outcome.FAILED  # not a target: ignored
    text = str(t.error())
    assert "needed 2 replies, got 0" in text and "a primary timeout" in text
    assert "b primary disk full" in text and "c primary no answer" in text


def test_levels_are_checked_against_n() -> None:
    check_levels(Consistency(r=2, w=2, pr=1, pw=0), 3)
    with pytest.raises(CommandError, match="W must be between 1 and N"):
        check_levels(Consistency(w=4), 3)
    with pytest.raises(CommandError, match=r"PW \(2\) cannot exceed W"):
        check_levels(Consistency(w=1, pw=2), 3)
    merged = Consistency(w=3).merged(Consistency(r=2, w=2, pr=0, pw=0))
    assert merged == Consistency(r=2, w=3, pr=0, pw=0)


@pytest.mark.property
@settings(max_examples=200)
@given(
    down=st.sets(st.sampled_from("abcde")),
    n=st.integers(1, 3),
    w=st.integers(1, 3),
    pw=st.integers(0, 3),
    order=st.permutations(range(5)),
)
def test_verdict_matches_counting(
    down: set[str], n: int, w: int, pw: int, order: list[int]
) -> None:
    w, pw = min(w, n), min(pw, w, n)
    p = plan(PREF, n, lambda node: node not in down)
    assert len(p.targets) == min(n, 5 - len(down))
    assert len({t.node for t in p.targets}) == len(p.targets)
    assert all(t.node not in down for t in p.targets)
    t = write_tally(p, w, pw)
    outcome = t.outcome()
    for i in order:
        if i < len(p.targets) and outcome is Outcome.PENDING:
            outcome = t.ack(p.targets[i].node)
    primaries = sum(1 for x in p.targets if x.primary)
    expected = len(p.targets) >= w and primaries >= pw
    assert (outcome is Outcome.SUCCEEDED) == expected
