"""The crash checker itself: it must reject what the engine must never do."""

from __future__ import annotations

from tests.property.write_history import Write, WriteHistory


def _history() -> WriteHistory:
    h = WriteHistory()
    h.base = {b"a": b"0"}
    h.add(Write(((b"a", b"1"),), acked=True, wal="/w1", end=10))
    h.add(Write(((b"b", b"1"),), acked=False))
    h.add(Write(((b"c", b"1"), (b"a", None)), acked=True, wal="/w2", end=5))
    h.add(Write(((b"d", b"1"),), acked=True, wal="/w2", end=9))
    return h


def test_every_prefix_is_accepted_from_the_durable_one_on() -> None:
    h = _history()
    lowest = h.durable_count({"/w1": 10, "/w2": 5})
    assert lowest == 3
    assert h.explain_mismatch({b"c": b"1"}, lowest) is None
    assert h.explain_mismatch({b"c": b"1", b"b": b"1"}, lowest) is None  # the failed write
    assert h.explain_mismatch({b"c": b"1", b"d": b"1"}, lowest) is None


def test_a_lost_synced_write_is_rejected() -> None:
    h = _history()
    msg = h.explain_mismatch({b"a": b"1"}, h.durable_count({"/w1": 10, "/w2": 5}))
    assert msg is not None and "closest is 3" in msg


def test_a_gap_is_rejected_even_when_nothing_was_synced() -> None:
    h = _history()
    # write 3 (c) survived but write 1 (a=1) did not: not a prefix
    assert h.explain_mismatch({b"a": b"0", b"c": b"1"}, 0) is not None


def test_a_phantom_is_rejected() -> None:
    h = _history()
    assert h.explain_mismatch({b"zz": b"1"}, 0) is not None
    assert h.explain_mismatch({b"a": b"9"}, 0) is not None


def test_acked_count_is_the_kill_bound() -> None:
    h = _history()
    assert h.acked_count() == 4
    assert h.explain_mismatch({b"c": b"1", b"d": b"1"}, h.acked_count()) is None
    assert h.explain_mismatch({b"c": b"1"}, h.acked_count()) is not None
