"""Open table readers, one per live SSTable, opened on first use; and which
tables may be deleted.

A compaction *retires* its input tables once its edit is installed; a scan
*pins* the tables of the version it reads. A retired table is deleted once
it is neither in the current version nor pinned. ``_pins_lock`` guards the
pins and the retired set and takes nothing else; scans pin under the write
path's lock (see ``WritePath.scan_sources``), so a version cannot be
replaced between the moment a scan takes it and the moment its tables are
pinned.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from lsm.cache import BlockCache
from lsm.filenames import table_path
from lsm.fs import FileSystem
from lsm.sstable import TableReader


class TableCache:
    def __init__(self, fs: FileSystem, dirname: str, block_cache: BlockCache | None) -> None:
        self._fs = fs
        self._dir = dirname
        self._block_cache = block_cache
        self._readers: dict[int, TableReader] = {}
        self._lock = threading.Lock()
        self._pins_lock = threading.Lock()
        self._pins: Counter[int] = Counter()
        self._retired: set[int] = set()

    def get(self, number: int) -> TableReader:
        reader = self._readers.get(number)
        if reader is not None:
            return reader
        with self._lock:
            reader = self._readers.get(number)
            if reader is None:
                reader = TableReader.open(
                    self._fs, table_path(self._dir, number), number, self._block_cache
                )
                self._readers[number] = reader
            return reader

    def if_open(self, number: int) -> TableReader | None:
        """The reader of table ``number`` if it is already open (opening one
        reads the file)."""
        return self._readers.get(number)

    def evict(self, number: int) -> None:
        with self._lock:
            reader = self._readers.pop(number, None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.close()

    def bloom_counts(self) -> tuple[int, int]:
        """(filter checks, negatives) summed over the open readers: how often
        a bloom filter spared a block read."""
        readers = list(self._readers.values())
        return sum(r.bloom_checks for r in readers), sum(r.bloom_negatives for r in readers)

    # -- table lifetimes ------------------------------------------------------
    def pin(self, numbers: list[int]) -> None:
        with self._pins_lock:
            self._pins.update(numbers)

    def unpin(self, numbers: list[int]) -> None:
        with self._pins_lock:
            self._pins.subtract(numbers)
            self._pins += Counter()  # drop zero counts

    def retire(self, numbers: Iterable[int]) -> None:
        """Tables no longer in the current version: delete when unpinned."""
        with self._pins_lock:
            self._retired.update(numbers)

    def take_deletable(self, live: set[int] | frozenset[int]) -> list[int]:
        """Retired tables neither ``live`` nor pinned, forgotten and closed
        here; the caller removes their files."""
        with self._pins_lock:
            doomed = [n for n in self._retired if n not in live and not self._pins[n]]
            self._retired.difference_update(doomed)
        for number in doomed:
            self.evict(number)
        return doomed
