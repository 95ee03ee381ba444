"""One adapter per engine under test, so the benchmark loop is the same for all.

Every store is opened with the same durability: each write reaches the OS
(a write(2) per operation) but nothing is fsynced per write. ``describe()``
says exactly what that means for each engine.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENGINES = ("ringkv", "rocksdict", "plyvel", "lmdb", "sqlite3")
#: Engines whose unflushed writes live in a WAL replayed on open.
WAL_ENGINES = ("ringkv", "rocksdict", "plyvel")
#: PyPI distribution of each peer (for versions and "not installed" notes).
DISTRIBUTIONS = {"rocksdict": "rocksdict", "plyvel": "plyvel", "lmdb": "lmdb"}
_MODULES = {"ringkv": "lsm.db", "rocksdict": "rocksdict", "plyvel": "plyvel", "lmdb": "lmdb",
            "sqlite3": "sqlite3"}


@dataclass(frozen=True, slots=True)
class Tuning:
    """Settings applied alike where an engine has the knob. ``matched=False``
    leaves the peers at their library defaults."""

    memtable_bytes: int
    block_cache_bytes: int
    bloom_bits: int = 10  # ~1 % false positives, as ringkv's bloom_error_rate 0.01
    matched: bool = True
    lmdb_map_bytes: int = 8 << 30


class Store:
    """An open engine: ``put``/``get`` are the engine's own callables where
    possible, so the loop measures the engine and not an adapter."""

    name = "?"

    def __init__(self) -> None:
        self.put: Callable[[bytes, bytes], Any]
        self.get: Callable[[bytes], bytes | None]

    def settle(self) -> None:
        """Wait for background flushes/compactions the engine can report on."""

    def compact(self) -> None:
        """Full manual compaction (or checkpoint), blocking until done."""

    def begin_reads(self) -> None:
        """Called once before the read phase."""

    def extra(self) -> dict[str, Any]:
        """Engine-specific figures worth printing."""
        return {}

    def close(self) -> None:
        raise NotImplementedError


def available(name: str) -> bool:
    try:
        return importlib.util.find_spec(_MODULES[name]) is not None
    except ModuleNotFoundError:  # parent package missing (lsm when run elsewhere)
        return False


def importable(name: str) -> str | None:
    """None if ``name`` can be imported, else why not (e.g. lsm.db half written)."""
    try:
        importlib.import_module(_MODULES[name])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def open_store(name: str, path: str, tuning: Tuning) -> Store:
    opener = {
        "ringkv": RingkvStore,
        "rocksdict": RocksdictStore,
        "plyvel": PlyvelStore,
        "lmdb": LmdbStore,
        "sqlite3": SqliteStore,
    }[name]
    os.makedirs(path, exist_ok=True)
    return opener(path, tuning)


def describe(name: str, tuning: Tuning) -> str:
    """The durability and tuning each engine runs with, for the notes."""
    mem, cache = tuning.memtable_bytes >> 20, tuning.block_cache_bytes >> 20
    matched = (
        f"write buffer {mem} MiB, block cache {cache} MiB, bloom {tuning.bloom_bits} bits/key"
        if tuning.matched
        else "library defaults"
    )
    return {
        "ringkv": f"Options(fsync='interval'): WAL written to the OS per put, fsync every 1 s "
        f"in the background; memtable {mem} MiB, block cache {cache} MiB, bloom 1 %",
        "rocksdict": f"raw mode, WriteOptions(sync=False), WAL on (one write(2) per put, never "
        f"fsynced by the engine); {matched}",
        "plyvel": f"LevelDB, put(sync=False): log written per put, never fsynced; {matched}",
        "lmdb": "one write transaction per put with sync=False, metasync=False (pages reach "
        "the OS at commit, no fsync) and one env.sync() after the last put; reads in one read "
        "transaction. No WAL: copy-on-write B+tree, so an OS crash may lose or (unlike a "
        "WAL engine) corrupt the unsynced tail; a process crash loses nothing",
        "sqlite3": "journal_mode=WAL, synchronous=NORMAL, autocommit (one transaction per put; "
        "WAL fsynced only at checkpoints); rowid table with a BLOB primary key"
        + (f"; page cache {cache} MiB" if tuning.matched else ""),
    }[name]


# -- adapters -------------------------------------------------------------------
class RingkvStore(Store):
    name = "ringkv"

    def __init__(self, path: str, tuning: Tuning) -> None:
        super().__init__()
        from lsm.db import DB
        from lsm.options import Options

        options = Options(
            fsync="interval",
            memtable_bytes=tuning.memtable_bytes,
            block_cache_bytes=tuning.block_cache_bytes,
        )
        self.db = DB.open(path, options)
        self.put = self.db.put
        self.get = self.db.get

    def settle(self) -> None:
        self.db.wait_for_compactions()

    def compact(self) -> None:
        self.db.compact_range(None, None)
        self.db.wait_for_compactions()

    def extra(self) -> dict[str, Any]:
        stats = self.db.stats()
        keep = ("l0_files", "stall_s", "write_stalls", "write_slowdowns", "wal_bytes",
                "table_bytes", "block_cache", "counters")
        out = {k: stats.get(k) for k in keep}
        out["levels"] = [(lv.get("files"), lv.get("bytes")) for lv in stats.get("levels", [])]
        return out

    def close(self) -> None:
        self.db.close()


class RocksdictStore(Store):
    name = "rocksdict"
    _BUSY = ("rocksdb.num-running-compactions", "rocksdb.num-running-flushes",
             "rocksdb.compaction-pending", "rocksdb.mem-table-flush-pending")

    def __init__(self, path: str, tuning: Tuning) -> None:
        super().__init__()
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        if tuning.matched:
            opts.set_write_buffer_size(tuning.memtable_bytes)
            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(tuning.bloom_bits, False)
            table.set_block_cache(rocksdict.Cache(tuning.block_cache_bytes))
            opts.set_block_based_table_factory(table)
        self.db = rocksdict.Rdict(path, opts)
        write = rocksdict.WriteOptions()
        write.sync = False
        write.disable_wal = False  # type: ignore[method-assign,assignment]  # stub is wrong
        self.db.set_write_options(write)
        self.put = self.db.put
        self.get = self.db.get

    def settle(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not any(self.db.property_int_value(p) for p in self._BUSY):
                return
            time.sleep(0.05)

    def compact(self) -> None:
        self.db.compact_range(None, None)
        self.settle()

    def close(self) -> None:
        self.db.close()


class PlyvelStore(Store):
    name = "plyvel"

    def __init__(self, path: str, tuning: Tuning) -> None:
        super().__init__()
        import plyvel

        kwargs: dict[str, Any] = {}
        if tuning.matched:
            kwargs = {
                "write_buffer_size": tuning.memtable_bytes,
                "lru_cache_size": tuning.block_cache_bytes,
                "bloom_filter_bits": tuning.bloom_bits,
            }
        self.db = plyvel.DB(path, create_if_missing=True, **kwargs)
        self.put = self.db.put  # sync=False is plyvel's default
        self.get = self.db.get

    def compact(self) -> None:
        self.db.compact_range()

    def close(self) -> None:
        self.db.close()


class LmdbStore(Store):
    name = "lmdb"

    def __init__(self, path: str, tuning: Tuning) -> None:
        super().__init__()
        import lmdb

        self.env = lmdb.open(
            path, map_size=tuning.lmdb_map_bytes, sync=False, metasync=False, writemap=False
        )
        env = self.env

        def put(key: bytes, value: bytes) -> None:
            with env.begin(write=True) as txn:
                txn.put(key, value)

        self.put = put
        self._read: Any = None
        self.get = self._get_outside_phase

    def _get_outside_phase(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def begin_reads(self) -> None:
        # lmdb readers idiomatically keep one read transaction (a snapshot).
        self._read = self.env.begin()
        self.get = self._read.get

    def settle(self) -> None:
        self.env.sync(True)

    def compact(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        if self._read is not None:
            self._read.abort()
        self.env.close()


class SqliteStore(Store):
    name = "sqlite3"

    def __init__(self, path: str, tuning: Tuning) -> None:
        super().__init__()
        import sqlite3

        conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if tuning.matched:
            conn.execute(f"PRAGMA cache_size=-{tuning.block_cache_bytes // 1024}")
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self.conn = conn
        execute = conn.execute
        put_sql = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
        get_sql = "SELECT v FROM kv WHERE k = ?"

        def put(key: bytes, value: bytes) -> None:
            execute(put_sql, (key, value))

        def get(key: bytes) -> bytes | None:
            row = execute(get_sql, (key,)).fetchone()
            return None if row is None else bytes(row[0])

        self.put = put
        self.get = get

    def compact(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.conn.close()
