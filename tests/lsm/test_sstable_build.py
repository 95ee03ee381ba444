"""Table building: the per-entry and the sorted-run paths write the same bytes."""

from __future__ import annotations

import os
import random

from lsm.fs import OsFileSystem
from lsm.keys import Entry
from lsm.options import Options
from lsm.sstable import TableReader
from tests.lsm.helpers import write_table


def _build(path: str, entries: list[Entry], sorted_run: bool) -> bytes:
    write_table(path, entries, Options(block_bytes=700, clock_ms=lambda: 1), sorted_run)
    with open(path, "rb") as src:
        return src.read()


def test_sorted_run_path_writes_the_same_table(tmp_path: str) -> None:
    rnd = random.Random(5)
    keys = sorted({rnd.randbytes(rnd.randrange(1, 20)) for _ in range(3000)})
    entries = [
        (k, rnd.randrange(1, 10**9), rnd.choice((0, 1)), rnd.randbytes(rnd.randrange(0, 300)))
        for k in keys
    ]
    entries = [(k, s, kind, v if kind else b"") for k, s, kind, v in entries]
    a = _build(os.path.join(tmp_path, "a.sst"), entries, sorted_run=False)
    b = _build(os.path.join(tmp_path, "b.sst"), entries, sorted_run=True)
    assert a == b
    reader = TableReader.open(OsFileSystem(), os.path.join(tmp_path, "b.sst"))
    assert list(reader.iter()) == entries
    assert reader.properties.tombstones == sum(1 for e in entries if e[2] == 0)
    reader.close()
