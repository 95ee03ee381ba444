from __future__ import annotations

from lsm.iterators import CompactionStats, compaction_stream, live_items, merge_newest
from lsm.keys import KIND_DELETE, KIND_VALUE
from lsm.memtable import MemTable
from lsm.options import Decision


def test_memtable_keeps_newest_even_if_applied_out_of_order() -> None:
    m = MemTable(1)
    m.add(b"k", 5, KIND_VALUE, b"new")
    m.add(b"k", 3, KIND_VALUE, b"old")
    assert m.get(b"k") == (5, KIND_VALUE, b"new")
    m.add_batch(10, [(KIND_VALUE, b"b", b"1"), (KIND_DELETE, b"a", b"")])
    assert [e[0] for e in m.entries()] == [b"a", b"b", b"k"]
    assert m.max_seq() == 11


def test_merge_prefers_newest_source() -> None:
    newer = [(b"a", 9, KIND_VALUE, b"A2"), (b"c", 8, KIND_DELETE, b"")]
    older = [(b"a", 1, KIND_VALUE, b"A1"), (b"b", 2, KIND_VALUE, b"B"), (b"c", 3, KIND_VALUE, b"C")]
    merged = list(merge_newest([newer, older]))
    assert merged == [newer[0], older[1], newer[1]]
    assert list(live_items(merged, None)) == [(b"a", b"A2"), (b"b", b"B")]
    assert list(live_items(merged, b"b")) == [(b"a", b"A2")]


def test_compaction_stream_rules() -> None:
    entries = [
        (b"a", 1, KIND_DELETE, b""),
        (b"b", 2, KIND_VALUE, b"drop-me"),
        (b"c", 3, KIND_VALUE, b"replace-me"),
        (b"d", 4, KIND_VALUE, b"keep"),
    ]

    def flt(key: bytes, value: bytes) -> tuple[int, bytes | None]:
        if value == b"drop-me":
            return Decision.DROP, None
        if value == b"replace-me":
            return Decision.REPLACE, b"replaced"
        return Decision.KEEP, None

    stats = CompactionStats()
    bottom = list(compaction_stream(entries, True, flt, stats))
    assert bottom == [(b"c", 3, KIND_VALUE, b"replaced"), (b"d", 4, KIND_VALUE, b"keep")]
    assert stats.dropped_tombstones == 1 and stats.filtered == 1 and stats.replaced == 1
    upper = list(compaction_stream(entries, False, flt, CompactionStats()))
    # above the bottom a dropped entry must keep shadowing older versions
    assert upper[0] == entries[0] and upper[1] == (b"b", 2, KIND_DELETE, b"")
