"""Merge operands through a real database: order across memtables, levels
and compactions (in a child process, where the operator travels pickled),
the operator-name check on open, and operators that refuse an operand."""

from __future__ import annotations

import os
import random

import pytest

from lsm import filenames, table_writer
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.errors import InvalidArgumentError
from lsm.fs import OsFileSystem
from lsm.inspect.logs import manifest
from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, Entry
from lsm.options import Options
from lsm.sstable import TableReader
from tests.lsm.helpers import write_table
from tests.lsm.merge_ops import AppendOperator, OtherAppendOperator, PickyOperator

APPEND = AppendOperator()


def small(**kw: object) -> Options:
    base: dict[str, object] = dict(
        memtable_bytes=8192, block_bytes=1024, target_file_bytes=4096,
        level1_bytes=8192, level_fanout=2, l0_compaction_trigger=2, num_levels=4,
        merge_operator=APPEND,
    )
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


def _expected(base: bytes | None, ops: list[bytes]) -> bytes:
    return APPEND.full_merge(b"", base, ops)


def test_operands_keep_their_order_across_memtable_levels_and_compaction(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    keys = [b"key%04d" % i for i in range(300)]
    model: dict[bytes, bytes | None] = {}
    with DB.open(path, small()) as db:
        for i, key in enumerate(keys):
            if i % 3 == 0:
                db.put(key, b"base%d" % i)
                model[key] = b"base%d" % i
        db.compact_range()
        for rnd in range(6):  # each round: operands, a flush, background compactions
            for i, key in enumerate(keys):
                if (i + rnd) % 2:
                    db.merge(key, b"r%d" % rnd)
                    model[key] = APPEND.full_merge(key, model.get(key), [b"r%d" % rnd])
                if i % 50 == rnd:
                    db.delete(key)
                    model[key] = None
            db.flush()
            assert all(db.get(k) == model.get(k) for k in keys)
        db.wait_for_compactions()
        assert db.stats()["counters"]["compaction_merge_operands"] > 0
        assert dict(db.scan()) == {k: v for k, v in model.items() if v is not None}
        assert db.get(b"key0011") == _expected(None, [b"r0", b"r2", b"r4"])
        assert db.get(b"key0012") == _expected(b"base12", [b"r1", b"r3", b"r5"])
        assert db.get(b"key0001") == _expected(None, [b"r2", b"r4"])  # deleted in round 1
    with DB.open(path, small()) as db:
        assert all(db.get(k) == model.get(k) for k in keys)
        db.compact_range(bottommost=True)
        assert all(level["merge_operands"] == 0 for level in db.stats()["levels"])
        assert dict(db.scan()) == {k: v for k, v in model.items() if v is not None}


def _level_operands(path: str) -> dict[int, list[bytes]]:
    """Operand values held by each level's tables, read from the files."""
    fs = OsFileSystem()
    out: dict[int, list[bytes]] = {}
    for level, meta in manifest(fs, path).live_tables():
        reader = TableReader.open(fs, filenames.table_path(path, meta.number))
        out.setdefault(level, []).extend(v for _, _, kind, v in reader.iter() if kind == KIND_MERGE)
        reader.close()
    return out


def test_compaction_above_data_keeps_partial_operands_and_the_bottom_resolves(
    tmp_path: str,
) -> None:
    path = os.path.join(tmp_path, "db")
    rng = random.Random(5)
    values = {b"key%04d" % i: rng.randbytes(60) for i in range(400)}  # incompressible
    keys = list(values)
    with DB.open(path, small()) as db:
        for key in keys:
            db.put(key, values[key])
        db.compact_range()
        db.wait_for_compactions()  # level 1 is over its target: part moves deeper
        assert sum(level["files"] for level in db.stats()["levels"][2:]) > 0
        for op in (b"a", b"b"):
            for key in keys:
                db.merge(key, op)
            db.flush()
        db.wait_for_compactions()
        levels = db.stats()["levels"]
        deepest = max(n for n, level in enumerate(levels) if level["files"])
        upper = [n for n, level in enumerate(levels) if level["merge_operands"] and n < deepest]
        assert upper, levels  # operands whose base lies deeper stay operands...
        assert all(db.get(k) == values[k] + b"|a|b" for k in keys)
    held = _level_operands(path)
    assert set(held[upper[0]]) == {b"a|b"}  # ...combined with partial_merge, in order
    with DB.open(path, small()) as db:
        db.compact_range(bottommost=True)
        assert not any(_level_operands(path).values())
        assert all(db.get(k) == values[k] + b"|a|b" for k in keys)


def _table(dirname: str, number: int, entries: list[Entry]) -> None:
    write_table(filenames.table_path(dirname, number), entries,
                Options(block_bytes=512, merge_operator=APPEND))


@pytest.mark.parametrize("bottommost", [False, True])
def test_child_process_compaction_uses_the_pickled_operator(
    tmp_path: str, bottommost: bool
) -> None:
    dirname = str(tmp_path)
    _table(dirname, 1, [(b"k%03d" % i, 100 + i, KIND_MERGE, b"new") for i in range(50)])
    _table(dirname, 2, [(b"k%03d" % i, 50 + i, KIND_MERGE if i % 2 else KIND_DELETE,
                         b"mid" if i % 2 else b"") for i in range(50)])
    _table(dirname, 3, [(b"k%03d" % i, 1 + i, KIND_VALUE, b"old") for i in range(0, 50, 4)])
    opts = Options(block_bytes=512, target_file_bytes=2048, merge_operator=APPEND)
    job = table_writer.CompactionJob(dirname, ((1,), (2,), (3,)), bottommost, 10, 40, opts)
    assert table_writer.can_run_in_child(job)
    out = table_writer.run_in_child(job, lambda: False)
    got = []
    for meta in out.files:
        reader = TableReader.open(OsFileSystem(), filenames.table_path(dirname, meta.number))
        got += [(k, kind, v) for k, _, kind, v in reader.iter()]
        reader.close()
    expected = []
    for i in range(50):
        key = b"k%03d" % i
        if i % 2 == 0:  # the tombstone in table 2 is the base; table 3's value is hidden
            expected.append((key, KIND_VALUE, b"~|new"))
        else:  # nothing below the two operands in these inputs
            expected.append((key, KIND_VALUE, b"~|mid|new") if bottommost
                            else (key, KIND_MERGE, b"mid|new"))
    assert got == expected
    assert out.merge_operands == 25 + 2 * 25
    assert sum(f.merges for f in out.files) == (0 if bottommost else 25)


def test_open_refuses_operands_without_their_operator(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    with DB.open(path, small()) as db:
        db.put(b"k", b"base")
        db.merge(b"k", b"a")  # combined with the put in the memtable
        db.merge(b"m", b"a")  # stays an operand: nothing below it
    before = sorted(os.listdir(path))
    with pytest.raises(InvalidArgumentError, match=r"WAL \d+\.log holds merge operands of "
                       r"merge operator 'test-append'.*not set"):
        DB.open(path, small(merge_operator=None))
    with pytest.raises(InvalidArgumentError, match="named 'test-append-v2'"):
        DB.open(path, small(merge_operator=OtherAppendOperator()))
    assert sorted(os.listdir(path)) == before  # a refused open changes nothing
    with DB.open(path, small()) as db:
        db.flush()
        assert db.stats()["levels"][0]["merge_operands"] == 1
    with pytest.raises(InvalidArgumentError, match="its tables hold merge operands"):
        DB.open(path, small(merge_operator=None))
    with pytest.raises(InvalidArgumentError, match="test-append-v2"):
        DB.open(path, small(merge_operator=OtherAppendOperator()))
    with DB.open(path, small()) as db:
        assert (db.get(b"k"), db.get(b"m")) == (b"base|a", b"~|a")
        db.compact_range(bottommost=True)  # resolves the last operand
    with DB.open(path, small(merge_operator=None)) as db:  # nothing left to merge
        assert (db.get(b"k"), db.get(b"m")) == (b"base|a", b"~|a")
        with pytest.raises(InvalidArgumentError, match="merge operator"):
            db.merge(b"k", b"b")
        with pytest.raises(InvalidArgumentError, match="merge operator"):
            db.write(WriteBatch().put(b"j", b"1").merge(b"k", b"b"))
        assert db.get(b"j") is None
    with DB.open(path, small(merge_operator=OtherAppendOperator())) as db:
        db.merge(b"k", b"c")
    with pytest.raises(InvalidArgumentError, match=r"'test-append-v2', but .*'test-append'"):
        DB.open(path, small())


def test_an_operand_the_operator_refuses_leaves_no_trace(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    picky = small(merge_operator=PickyOperator())
    with DB.open(path, picky) as db:
        db.put(b"k", b"base")
        with pytest.raises(ValueError, match="refused"):
            db.merge(b"k", b"boom")
        with pytest.raises(ValueError, match="refused"):
            db.write(WriteBatch().put(b"x", b"1").merge(b"k", b"ok").merge(b"k", b"boom"))
        assert db.get(b"k") == b"base" and db.get(b"x") is None
        db.merge(b"k", b"fine")
    with DB.open(path, picky) as db:  # nothing of the refused writes reached the WAL
        assert db.get(b"k") == b"base|fine" and db.get(b"x") is None


def test_merge_input_is_checked_like_a_put(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small()) as db:
        with pytest.raises(InvalidArgumentError, match="keys are bytes"):
            db.merge("k", b"a")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="value too large"):
            db.merge(b"k", b"x" * ((1 << 28) + 1))
    with pytest.raises(InvalidArgumentError, match=r"merge_operator\.name"):
        Options(merge_operator=object()).validate()  # type: ignore[arg-type]


def test_delete_then_merge_starts_from_nothing(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small()) as db:
        db.put(b"k", b"base")
        db.flush()
        db.delete(b"k")
        db.flush()
        db.merge(b"k", b"a")
        assert db.get(b"k") == b"~|a"
        (entry,) = list(db.scan_entries(b"k"))
        assert entry[1:] == (3, KIND_VALUE, b"~|a")
        db.compact_range()
        assert db.get(b"k") == b"~|a"
        db.delete(b"k")
        assert db.get(b"k") is None and list(db.scan()) == []
        (entry,) = list(db.scan_entries())
        assert entry[2] == KIND_DELETE
