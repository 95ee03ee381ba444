"""Open table readers, one per live SSTable, opened on first use."""

from __future__ import annotations

import threading

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
