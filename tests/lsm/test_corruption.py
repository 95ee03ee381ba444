"""Byte-level damage: truncate a WAL at every offset, flip every byte of an
SSTable and of the middle of a WAL. The engine must report CorruptionError
or return the right data; it must never return a wrong value."""

from __future__ import annotations

import logging
import os

import pytest

from lsm.db import DB
from lsm.errors import CorruptionError
from lsm.faultfs import FaultFileSystem
from lsm.fs import OsFileSystem
from lsm.options import Options
from lsm.record_log import HEADER_SIZE, encode_frame, read_log
from lsm.sstable import TableBuilder, TableReader

DB_DIR = "/db"


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="lsm")


def _options(fs: FaultFileSystem) -> Options:
    return Options(fs=fs, fsync="always", background_threads=False, memtable_bytes=1 << 20)


def _load(files: dict[str, bytes]) -> FaultFileSystem:
    fs = FaultFileSystem()
    fs.mkdirs(DB_DIR)
    for name, data in files.items():
        f = fs.create(os.path.join(DB_DIR, name))
        f.append(data)
        f.sync()
        f.close()
    fs.sync_dir(DB_DIR)
    return fs


def _unflushed_db(writes: int) -> tuple[dict[str, bytes], str, dict[bytes, bytes]]:
    """A closed database whose data is all in one WAL; returns its files, the
    WAL's name and what was written."""
    fs = FaultFileSystem()
    expected = {b"key%03d" % i: b"value-%d" % i * (1 + i % 3) for i in range(writes)}
    db = DB.open(DB_DIR, _options(fs))
    for key, value in expected.items():
        db.put(key, value)
    db.close()
    files = {name: fs.read_file(os.path.join(DB_DIR, name)) for name in fs.listdir(DB_DIR)}
    files.pop("LOCK", None)
    (wal,) = [n for n, data in files.items() if n.endswith(".log") and data]
    return files, wal, expected


def _contents(fs: FaultFileSystem) -> dict[bytes, bytes]:
    with DB.open(DB_DIR, _options(fs)) as db:
        found = dict(db.scan())
        for key, value in found.items():
            assert db.get(key) == value
        return found


def test_wal_truncated_at_every_offset_recovers_a_clean_prefix() -> None:
    files, wal, expected = _unflushed_db(12)
    data = files[wal]
    order = list(expected)
    frame_ends = [r.offset + HEADER_SIZE + len(r.payload) for r in read_log(data, wal).records]
    assert len(frame_ends) == len(order)
    for cut in range(len(data) + 1):
        found = _contents(_load({**files, wal: data[:cut]}))
        whole = sum(1 for end in frame_ends if end <= cut)
        assert found == {k: expected[k] for k in order[:whole]}, f"cut at {cut}"


def test_flipping_any_byte_in_the_middle_of_a_wal_is_never_a_wrong_value() -> None:
    files, wal, expected = _unflushed_db(12)
    data = files[wal]
    records = read_log(data, wal).records
    # Every byte from the third frame to the end of the second-to-last one.
    lo = records[2].offset
    hi = records[-1].offset
    detected = 0
    for pos in range(lo, hi):
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        try:
            found = _contents(_load({**files, wal: bytes(damaged)}))
        except CorruptionError as exc:
            assert exc.path.endswith(wal) and exc.offset is not None
            detected += 1
            continue
        for key, value in found.items():
            assert expected[key] == value, f"wrong value for {key!r} after flipping byte {pos}"
    # Damage before the last frame is corruption, not a torn tail.
    assert detected == hi - lo


def _build_table(path: str) -> dict[bytes, bytes]:
    fs = OsFileSystem()
    entries = {b"row%04d" % i: (b"abc%d" % i) * (1 + i % 7) for i in range(60)}
    f = fs.create(path)
    builder = TableBuilder(f, Options(block_bytes=256, compression_level=3))
    for seq, (key, value) in enumerate(sorted(entries.items()), start=1):
        builder.add(key, seq, 1, value)
    builder.finish()
    f.sync()
    f.close()
    return entries


def test_flipping_any_byte_of_an_sstable_is_detected_or_harmless(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "000001.sst")
    entries = _build_table(path)
    with open(path, "rb") as src:
        good = src.read()
    reader = TableReader.open(OsFileSystem(), path)
    assert reader.properties.num_blocks > 4  # several blocks, some compressed
    reader.close()
    fs = OsFileSystem()
    detected = 0
    for pos in range(len(good)):
        damaged = bytearray(good)
        damaged[pos] ^= 0xFF
        with open(path, "wb") as out:
            out.write(damaged)
        try:
            table = TableReader.open(fs, path)
        except CorruptionError as exc:
            assert exc.path == path and exc.offset is not None
            detected += 1
            continue
        try:
            for key, value in entries.items():
                try:
                    hit = table.get(key)
                except CorruptionError:
                    detected += 1
                    continue
                assert hit is not None and hit[2] == value, f"byte {pos}: wrong answer for {key!r}"
            try:
                scanned = {k: v for k, _, _, v in table.iter()}
            except CorruptionError:
                continue
            assert scanned == entries, f"byte {pos}: scan returned different entries"
        finally:
            table.close()
    assert detected >= len(good) // 2


def test_record_log_tells_torn_tails_from_corruption() -> None:
    frames = [encode_frame(b"first"), encode_frame(b"second"), encode_frame(b"third")]
    data = b"".join(frames)
    ok = read_log(data, "x.log")
    assert [r.payload for r in ok.records] == [b"first", b"second", b"third"]
    assert ok.damage is None and ok.valid_end == len(data)
    zero_tail = read_log(data + bytes(40), "x.log")
    assert zero_tail.torn_tail == len(data) and len(zero_tail.records) == 3
    last_bad = bytearray(data)
    last_bad[-1] ^= 1
    torn = read_log(bytes(last_bad), "x.log")
    assert torn.torn_tail == len(frames[0]) + len(frames[1])
    mid_bad = bytearray(data)
    mid_bad[len(frames[0]) + HEADER_SIZE] ^= 1
    with pytest.raises(CorruptionError) as info:
        read_log(bytes(mid_bad), "x.log")
    assert info.value.offset == len(frames[0]) and "checksum" in info.value.reason
