"""Merge operands layer by layer: memtable, resolution, iterators, blocks and
tables, WAL frames, manifest edits."""

from __future__ import annotations

import os

import pytest

from lsm import NOT_CACHED
from lsm.batch import WriteBatch
from lsm.block import Block, BlockBuilder
from lsm.cache import BlockCache
from lsm.errors import InvalidArgumentError
from lsm.fs import OsFileSystem
from lsm.iterators import (
    CompactionStats,
    compaction_stream,
    live_items,
    merge_resolving,
)
from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, Entry, kind_name, pack_trailer
from lsm.manifest import FileMeta, VersionEdit
from lsm.memtable import MemTable
from lsm.merging import finish, fold
from lsm.options import Decision, Options
from lsm.sstable import TableReader
from lsm.wal import decode_batch, encode_batch
from tests.lsm.helpers import write_table
from tests.lsm.merge_ops import AppendOperator, UnionOperator

APPEND = AppendOperator()


# -- memtable ---------------------------------------------------------------------
def test_memtable_combines_a_merge_with_the_entry_below_at_once() -> None:
    m = MemTable(1, APPEND)
    m.add_batch(1, [(KIND_VALUE, b"v", b"base"), (KIND_MERGE, b"v", b"a"),
                    (KIND_MERGE, b"v", b"b")])
    assert m.get(b"v") == (3, KIND_VALUE, b"base|a|b")
    m.add_batch(4, [(KIND_DELETE, b"d", b""), (KIND_MERGE, b"d", b"x")])
    assert m.get(b"d") == (5, KIND_VALUE, b"~|x")  # a delete is a missing base
    m.add_batch(6, [(KIND_MERGE, b"m", b"p"), (KIND_MERGE, b"m", b"q"),
                    (KIND_MERGE, b"m", b"r")])
    assert m.get(b"m") == (8, KIND_MERGE, b"p|q|r")  # nothing below yet: still an operand
    m.add(b"m", 9, KIND_VALUE, b"new")
    assert m.get(b"m") == (9, KIND_VALUE, b"new")  # a put hides the operands
    assert len(m) == 3  # one entry per key however many operands came


def test_memtable_merge_without_an_operator_is_refused() -> None:
    m = MemTable(1)
    m.add(b"k", 1, KIND_MERGE, b"a")  # an operand alone is only stored
    with pytest.raises(InvalidArgumentError, match="merge_operator"):
        m.add(b"k", 2, KIND_MERGE, b"b")


def test_memtable_stage_leaves_the_table_alone_until_commit() -> None:
    m = MemTable(1, APPEND)
    m.add(b"k", 1, KIND_VALUE, b"base")
    ops = [(KIND_MERGE, b"k", b"a"), (KIND_MERGE, b"n", b"b"), (KIND_MERGE, b"k", b"c")]
    staged = m.stage(2, ops)
    assert staged == {b"k": (4, KIND_VALUE, b"base|a|c"), b"n": (3, KIND_MERGE, b"b")}
    assert m.get(b"k") == (1, KIND_VALUE, b"base") and m.get(b"n") is None
    before = m.approx_bytes
    m.commit(staged, ops)
    assert m.get(b"k") == (4, KIND_VALUE, b"base|a|c")
    assert m.approx_bytes > before


def test_memtable_late_older_entry_goes_under_newer_operands() -> None:
    m = MemTable(1, APPEND)
    m.add(b"k", 5, KIND_MERGE, b"new")
    m.add(b"k", 3, KIND_VALUE, b"old")
    assert m.get(b"k") == (5, KIND_VALUE, b"old|new")
    m.add(b"k", 2, KIND_MERGE, b"older")  # the value at 5 hides it
    assert m.get(b"k") == (5, KIND_VALUE, b"old|new")


# -- resolution -------------------------------------------------------------------
def test_finish_applies_operands_oldest_first_onto_the_base() -> None:
    assert finish(APPEND, b"k", (5, KIND_VALUE, b"base"), [b"c", b"b"]) == b"base|b|c"
    assert finish(APPEND, b"k", (3, KIND_DELETE, b""), [b"c"]) == b"~|c"
    assert finish(APPEND, b"k", None, [b"c"]) == b"~|c"
    assert finish(APPEND, b"k", (3, KIND_DELETE, b""), []) is None
    assert finish(None, b"k", (3, KIND_VALUE, b"x"), []) == b"x"
    assert finish(APPEND, b"k", None, []) is None


def test_fold_partial_above_the_bottom_full_at_the_bottom() -> None:
    head: Entry = (b"k", 9, KIND_MERGE, b"c")
    assert fold(APPEND, head, [b"c", b"b", b"a"], None, False) == (b"k", 9, KIND_MERGE, b"a|b|c")
    assert fold(APPEND, head, [b"c", b"b"], None, True) == (b"k", 9, KIND_VALUE, b"~|b|c")
    base: Entry = (b"k", 1, KIND_VALUE, b"base")
    assert fold(APPEND, head, [b"c"], base, False) == (b"k", 9, KIND_VALUE, b"base|c")
    assert fold(APPEND, head, [b"c"], None, False) is head


# -- iterators --------------------------------------------------------------------
def _sources() -> list[list[Entry]]:
    newest = [(b"a", 30, KIND_MERGE, b"a3"), (b"b", 31, KIND_MERGE, b"b3"),
              (b"c", 32, KIND_VALUE, b"C"), (b"e", 33, KIND_MERGE, b"e3")]
    middle = [(b"a", 20, KIND_MERGE, b"a2"), (b"b", 21, KIND_DELETE, b""),
              (b"c", 22, KIND_MERGE, b"hidden"), (b"d", 23, KIND_MERGE, b"d2")]
    oldest = [(b"a", 10, KIND_VALUE, b"A"), (b"b", 11, KIND_VALUE, b"gone"),
              (b"d", 13, KIND_VALUE, b"D")]
    return [newest, middle, oldest]


def test_merge_resolving_for_a_scan_resolves_every_key() -> None:
    out = list(merge_resolving([iter(s) for s in _sources()], APPEND, bottom=True))
    assert out == [
        (b"a", 30, KIND_VALUE, b"A|a2|a3"), (b"b", 31, KIND_VALUE, b"~|b3"),
        (b"c", 32, KIND_VALUE, b"C"), (b"d", 23, KIND_VALUE, b"D|d2"),
        (b"e", 33, KIND_VALUE, b"~|e3"),
    ]
    assert list(live_items(out, b"c")) == [(b"a", b"A|a2|a3"), (b"b", b"~|b3")]


def test_merge_resolving_above_the_bottom_keeps_baseless_runs_as_operands() -> None:
    newest, middle, _ = _sources()
    stats = CompactionStats()
    out = list(merge_resolving([newest, middle], APPEND, bottom=False, stats=stats))
    assert out == [
        (b"a", 30, KIND_MERGE, b"a2|a3"), (b"b", 31, KIND_VALUE, b"~|b3"),
        (b"c", 32, KIND_VALUE, b"C"), (b"d", 23, KIND_MERGE, b"d2"),
        (b"e", 33, KIND_MERGE, b"e3"),
    ]
    assert stats.merge_operands == 5  # a: 2, b: 1, d: 1, e: 1
    single = list(merge_resolving([newest], APPEND, bottom=True))
    assert single[0] == (b"a", 30, KIND_VALUE, b"~|a3")


def test_compaction_filter_sees_resolved_values_only() -> None:
    seen: list[tuple[bytes, bytes]] = []

    def flt(key: bytes, value: bytes) -> tuple[int, bytes | None]:
        seen.append((key, value))
        return Decision.KEEP, None

    newest, middle, _ = _sources()
    merged = merge_resolving([newest, middle], APPEND, bottom=False)
    out = list(compaction_stream(merged, False, flt, CompactionStats()))
    assert [e[2] for e in out] == [KIND_MERGE, KIND_VALUE, KIND_VALUE, KIND_MERGE, KIND_MERGE]
    assert seen == [(b"b", b"~|b3"), (b"c", b"C")]


# -- blocks and tables ------------------------------------------------------------
def test_block_round_trip_keeps_the_merge_kind() -> None:
    b = BlockBuilder()
    b.add(b"a", pack_trailer(7, KIND_MERGE), b"op")
    b.add(b"b", pack_trailer(8, KIND_VALUE), b"v")
    block = Block.decode(b.finish())
    assert [(t >> 8, t & 0xFF) for t in block.trailers] == [(7, KIND_MERGE), (8, KIND_VALUE)]
    assert block.value(0) == b"op"
    assert kind_name(KIND_MERGE) == "merge"


def _build(path: str, entries: list[Entry], sorted_run: bool) -> None:
    write_table(path, entries, Options(block_bytes=256, merge_operator=APPEND), sorted_run)


@pytest.mark.parametrize("sorted_run", [False, True])
def test_table_with_operands_is_format_2_and_records_the_operator(
    tmp_path: str, sorted_run: bool
) -> None:
    entries: list[Entry] = [
        (b"k%03d" % i, i + 1, (KIND_MERGE, KIND_VALUE, KIND_DELETE)[i % 3],
         b"" if i % 3 == 2 else b"x%d" % i)
        for i in range(60)
    ]
    path = os.path.join(tmp_path, "000001.sst")
    _build(path, entries, sorted_run)
    reader = TableReader.open(OsFileSystem(), path)
    p = reader.properties
    assert (p.format_version, p.merge_operands, p.merge_operator, p.tombstones) == (
        2, 20, "test-append", 20)
    assert list(reader.iter()) == entries
    assert reader.get(b"k003") == (4, KIND_MERGE, b"x3")
    reader.close()
    plain = os.path.join(tmp_path, "000002.sst")
    _build(plain, [e for e in entries if e[2] != KIND_MERGE], sorted_run)
    reader = TableReader.open(OsFileSystem(), plain)
    assert (reader.properties.format_version, reader.properties.merge_operands) == (1, 0)
    reader.close()


def test_table_get_cached_answers_only_from_the_block_cache(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "000003.sst")
    _build(path, [(b"k%03d" % i, i + 1, KIND_MERGE, b"%d" % i) for i in range(0, 100, 2)],
           False)
    cache = BlockCache(1 << 20)
    reader = TableReader.open(OsFileSystem(), path, 3, cache)
    assert reader.get_cached(b"k010") is NOT_CACHED
    assert cache.stats()["misses"] == 0  # a probe is not a miss: the read that follows is
    assert reader.get(b"k010") == (11, KIND_MERGE, b"10")
    assert reader.get_cached(b"k010") == (11, KIND_MERGE, b"10")
    assert reader.get_cached(b"zzz") is None  # past the last block: no block needed
    absent = [reader.get_cached(b"k%03d" % i) for i in range(1, 100, 2)]
    # The bloom filter answers for most (1 % false positives need the block).
    assert sum(a is None for a in absent) >= 45
    reader.close()


# -- WAL and manifest -------------------------------------------------------------
def test_wal_batch_round_trip_with_merges() -> None:
    b = WriteBatch().put(b"k", b"v").merge(b"k", b"op").delete(b"j")
    assert b.byte_size() == 1 + 1 + 1 + 2 + 1
    payload = encode_batch(41, b.ops)
    assert decode_batch(payload) == (41, b.ops)
    bad = bytearray(encode_batch(1, [(KIND_MERGE, b"k", b"op")]))
    bad[12] = 3
    with pytest.raises(ValueError, match="unknown kind 3"):
        decode_batch(bytes(bad))


def test_manifest_edits_carry_merge_counts_and_operator_as_format_2() -> None:
    plain = FileMeta(5, 100, b"a", b"z", 1, 9, 10, 2)
    merged = FileMeta(6, 100, b"a", b"z", 1, 9, 10, 2, merges=4)
    old = VersionEdit(log_number=3, added=((0, plain),))
    assert old.encode()[:4] == b"\x83\xa1v\x01"  # format 1, byte for byte as before
    assert VersionEdit.decode(old.encode()) == old
    for edit in (VersionEdit(added=((0, merged),)), VersionEdit(merge_operator="test-append")):
        raw = edit.encode()
        assert b"\xa1v\x02" in raw
        assert VersionEdit.decode(raw) == edit
    assert merged.encode()[-1] == 4 and len(plain.encode()) == 8
    with pytest.raises(ValueError, match="merge must be a string"):
        VersionEdit.decode(b"\x82\xa1v\x02\xa5merge\x07")


def test_union_operator_is_a_join() -> None:
    u = UnionOperator()
    a, b, c = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8
    assert u.partial_merge(b"k", a + b, b) == a + b
    assert u.full_merge(b"k", c, [b, a, b]) == a + b + c
    with pytest.raises(ValueError, match="multiple of 8"):
        u.full_merge(b"k", None, [b"short"])
