"""Sorted string tables: immutable files of entries in key order.

Footer and properties live in lsm.table_meta; they are re-exported here.

File layout (byte-level detail in docs/formats/sstable.md)::

    +----------------------+
    | data block 0         |  block format of lsm.block, each with its
    | ...                  |  5-byte trailer (type, crc32c); zstd or raw
    | data block n-1       |
    +----------------------+
    | filter block         |  pybloom-live filter of every key (never compressed)
    | index block          |  block format: last key of data block i ->
    |                      |  u64 offset, u32 size (trailer included)
    | properties block     |  msgpack map (entries, tombstones, key and seq ranges, sizes)
    +----------------------+
    | footer, 52 bytes     |  handles of filter, index, properties; format
    |                      |  version; crc32c of the footer; magic
    +----------------------+

Each key appears at most once per table (the newest version; flushes and
compactions drop older ones), so a lookup is: bloom filter, bisect of the
index, bisect inside one block. A table holding merge operands is written as
format version 2 (see lsm.table_meta); any other as version 1.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TypeVar

from lsm.block import TRAILER_SIZE, Block, BlockBuilder, Codec
from lsm.bloom import Filter
from lsm.cache import BlockCache
from lsm.errors import CorruptionError
from lsm.fs import FileSystem, RandomAccessFile, WritableFile
from lsm.keys import KIND_DELETE, KIND_MERGE, Entry, Hit, pack_trailer, unpack_trailer
from lsm.merging import NOT_CACHED, NotCached
from lsm.options import Options
from lsm.table_meta import (
    FOOTER_SIZE,
    FORMAT_VERSION,
    FORMAT_VERSION_MERGE,
    HANDLE,
    MAGIC,
    Footer,
    TableProperties,
    with_size,
)

T = TypeVar("T")


class TableBuilder:
    """Writes one table to ``file``; entries must come in strictly ascending
    key order. The caller syncs and closes the file."""

    def __init__(self, file: WritableFile, options: Options) -> None:
        self._file = file
        self._block_bytes = options.block_bytes
        self._error_rate = options.bloom_error_rate
        self._codec = Codec(options.compression_level)
        self._compress = options.compression_level > 0
        self._block = BlockBuilder()
        self._index = BlockBuilder()
        self._keys: list[bytes] = []
        self._offset = 0
        self._last: bytes | None = None
        self._first: bytes | None = None
        self._tombstones = 0
        self._merges = 0
        self._merge_operator = options.merge_operator
        self._min_seq = 1 << 62
        self._max_seq = 0
        self._raw_keys = 0
        self._raw_values = 0
        self._blocks = 0
        self._compressed_blocks = 0
        self._raw_streak = 0
        self._clock_ms = options.clock_ms

    def add(self, key: bytes, seq: int, kind: int, value: bytes) -> None:
        last = self._last
        if last is not None and key <= last:
            raise ValueError(f"keys out of order: {key!r} after {last!r}")
        if self._first is None:
            self._first = key
        self._last = key
        self._block.add(key, pack_trailer(seq, kind), value)
        self._keys.append(key)
        self._raw_keys += len(key)
        self._raw_values += len(value)
        if kind == KIND_DELETE:
            self._tombstones += 1
        elif kind == KIND_MERGE:
            self._merges += 1
        self._min_seq = min(self._min_seq, seq)
        self._max_seq = max(self._max_seq, seq)
        if self._block.raw_size >= self._block_bytes:
            self._flush_block()

    def add_sorted(self, entries: list[Entry]) -> None:
        """Add a whole run of entries known to be in strictly ascending key
        order (a memtable's), a block at a time. Same result as calling
        :meth:`add` for each; several times cheaper per entry."""
        if not entries:
            return
        self._flush_block()
        if self._last is not None and entries[0][0] <= self._last:
            raise ValueError(f"keys out of order: {entries[0][0]!r} after {self._last!r}")
        if self._first is None:
            self._first = entries[0][0]
        self._last = entries[-1][0]
        keys = [e[0] for e in entries]
        values = [e[3] for e in entries]
        trailers = [(e[1] << 8) | e[2] for e in entries]
        self._keys += keys
        self._raw_keys += sum(map(len, keys))
        self._raw_values += sum(map(len, values))
        kinds = [e[2] for e in entries]
        self._tombstones += kinds.count(KIND_DELETE)
        self._merges += kinds.count(KIND_MERGE)
        seqs = [e[1] for e in entries]
        lo, hi = min(seqs), max(seqs)
        self._min_seq = min(self._min_seq, lo)
        self._max_seq = max(self._max_seq, hi)
        limit = self._block_bytes
        start = 0
        size = 0
        n = len(entries)
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            size += len(k) + len(v) + 16
            if size >= limit or i == n - 1:
                self._block.add_run(keys[start : i + 1], values[start : i + 1],
                                    trailers[start : i + 1])
                self._flush_block()
                start, size = i + 1, 0

    def estimated_size(self) -> int:
        return self._offset + self._block.raw_size

    def _write(self, sealed: bytes) -> tuple[int, int]:
        handle = (self._offset, len(sealed))
        self._file.append(sealed)
        self._offset += len(sealed)
        return handle

    def _flush_block(self) -> None:
        if not len(self._block):
            return
        last = self._block.last_key()
        raw = self._block.finish()
        # After a run of blocks zstd could not shrink (random or already
        # compressed values), try only every 8th block: a failed attempt
        # costs as much as a successful one.
        attempt = self._compress and (self._raw_streak < 4 or self._blocks % 8 == 0)
        sealed = self._codec.seal(raw, attempt)
        if sealed[-TRAILER_SIZE] != 0:
            self._compressed_blocks += 1
            self._raw_streak = 0
        elif attempt:
            self._raw_streak += 1
        offset, size = self._write(sealed)
        self._index.add(last, 0, HANDLE.pack(offset, size))
        self._blocks += 1

    def finish(self) -> TableProperties:
        self._flush_block()
        data_bytes = self._offset
        bloom = Filter.build(self._keys, self._error_rate)
        filter_handle = self._write(self._codec.seal(bloom.encode(), compress=False))
        index_handle = self._write(self._codec.seal(self._index.finish(), self._compress))
        version = FORMAT_VERSION_MERGE if self._merges else FORMAT_VERSION
        op = self._merge_operator
        props = TableProperties(
            entries=len(self._keys),
            tombstones=self._tombstones,
            smallest_key=self._first or b"",
            largest_key=self._last or b"",
            smallest_seq=self._min_seq if self._keys else 0,
            largest_seq=self._max_seq,
            data_bytes=data_bytes,
            index_bytes=index_handle[1],
            filter_bytes=filter_handle[1],
            raw_key_bytes=self._raw_keys,
            raw_value_bytes=self._raw_values,
            num_blocks=self._blocks,
            file_bytes=0,  # not stored: the reader knows the file size
            format_version=version,
            bloom_bits_per_key=round(bloom.bits_per_key, 3),
            compression=f"zstd-{self._compressed_blocks}/{self._blocks}"
            if self._compress
            else "none",
            created_ms=self._clock_ms(),
            merge_operands=self._merges,
            merge_operator=op.name if self._merges and op is not None else "",
        )
        props_handle = self._write(self._codec.seal(props.encode(), compress=False))
        self._write(Footer(filter_handle, index_handle, props_handle, version).encode())
        self._keys = []
        return with_size(props, self._offset)


class TableReader:
    """Reads one table. Thread-safe: blocks are read with positional reads
    and decoded blocks are shared through the block cache."""

    def __init__(
        self,
        *,
        path: str,
        number: int,
        file: RandomAccessFile,
        footer: Footer,
        index_keys: list[bytes],
        handles: list[tuple[int, int]],
        bloom: Filter,
        properties: TableProperties,
        cache: BlockCache | None,
        codec: Codec,
    ) -> None:
        self.path = path
        self.number = number
        self._file = file
        self.footer = footer
        self._index_keys = index_keys
        self._handles = handles
        self._bloom = bloom
        self.properties = properties
        self._cache = cache
        self._codec = codec
        self.bloom_checks = 0
        self.bloom_negatives = 0

    @classmethod
    def open(
        cls, fs: FileSystem, path: str, number: int = 0, cache: BlockCache | None = None
    ) -> TableReader:
        f = fs.open_read(path)
        try:
            return cls._open(path, number, f, cache)
        except BaseException:
            f.close()
            raise

    @classmethod
    def _open(
        cls, path: str, number: int, f: RandomAccessFile, cache: BlockCache | None
    ) -> TableReader:
        size = f.size()
        if size < FOOTER_SIZE:
            raise CorruptionError(
                path,
                0,
                f"file of {size} bytes is too short for the {FOOTER_SIZE}-byte footer "
                "(not an SSTable, or truncated)",
            )
        codec = Codec(0)
        try:
            footer = Footer.decode(f.read_at(size - FOOTER_SIZE, FOOTER_SIZE), size)
        except ValueError as exc:
            raise CorruptionError(path, size - FOOTER_SIZE, str(exc)) from None

        def load(handle: tuple[int, int], what: str) -> bytes:
            try:
                return codec.open(_read_exact(f, path, *handle), 1 << 31)
            except ValueError as exc:
                raise CorruptionError(path, handle[0], f"{what} block: {exc}") from None

        def decode(handle: tuple[int, int], what: str, fn: Callable[[bytes], T]) -> T:
            raw = load(handle, what)
            try:
                return fn(raw)
            except ValueError as exc:
                raise CorruptionError(path, handle[0], f"{what} block: {exc}") from None

        bloom = decode(footer.filter_handle, "filter", Filter.decode)
        index = decode(footer.index_handle, "index", Block.decode)
        props = with_size(decode(footer.props_handle, "properties", TableProperties.decode), size)
        handles = []
        data_end = footer.filter_handle[0]
        for i in range(len(index)):
            raw = index.value(i)
            if len(raw) != HANDLE.size:
                raise CorruptionError(
                    path, footer.index_handle[0], f"index entry {i} is not a handle"
                )
            off, bsize = HANDLE.unpack(raw)
            if bsize < TRAILER_SIZE or off + bsize > data_end:
                raise CorruptionError(
                    path,
                    footer.index_handle[0],
                    f"index entry {i} points at ({off}, {bsize}), outside the data blocks",
                )
            handles.append((off, bsize))
        return cls(
            path=path,
            number=number,
            file=f,
            footer=footer,
            index_keys=index.keys,
            handles=handles,
            bloom=bloom,
            properties=props,
            cache=cache,
            codec=codec,
        )

    def close(self) -> None:
        self._file.close()

    def may_contain(self, key: bytes) -> bool:
        return self._bloom.may_contain(key)

    def block_handles(self) -> list[tuple[bytes, int, int]]:
        """``(last key, offset, size)`` of every data block."""
        return [(k, o, s) for k, (o, s) in zip(self._index_keys, self._handles, strict=True)]

    def read_block(self, i: int, fill_cache: bool = True, lookup: bool = True) -> Block:
        """Data block ``i``, from the block cache if there (``lookup=False``:
        the caller already looked)."""
        offset, size = self._handles[i]
        cache = self._cache
        cache_key = (self.number, offset)
        if cache is not None and lookup:
            block: Block | None = cache.get(cache_key)
            if block is not None:
                return block
        try:
            block = Block.decode(
                self._codec.open(_read_exact(self._file, self.path, offset, size), 1 << 31)
            )
        except ValueError as exc:
            raise CorruptionError(self.path, offset, f"data block {i}: {exc}") from None
        if cache is not None and fill_cache:
            cache.put(cache_key, block, block.charge())
        return block

    def get(self, key: bytes) -> Hit | None:
        """``(seq, kind, value)`` of ``key`` in this table, or ``None``."""
        i = self._block_for(key)
        if i < 0:
            return None
        cache = self._cache
        block = None if cache is None else cache.get((self.number, self._handles[i][0]))
        if block is None:
            block = self.read_block(i, lookup=False)
        return self._find(block, i, key)

    def get_cached(self, key: bytes) -> Hit | NotCached | None:
        """:meth:`get` without reading the file: ``NOT_CACHED`` when the
        data block that may hold ``key`` is not in the block cache."""
        i = self._block_for(key)
        if i < 0:
            return None
        cache = self._cache
        block = None if cache is None else cache.peek((self.number, self._handles[i][0]))
        if block is None:
            return NOT_CACHED
        return self._find(block, i, key)

    def _block_for(self, key: bytes) -> int:
        """The data block that may hold ``key``, or -1 when the bloom filter
        rules it out or it sorts after the last block."""
        self.bloom_checks += 1
        if not self._bloom.may_contain(key):
            self.bloom_negatives += 1
            return -1
        i = bisect.bisect_left(self._index_keys, key)
        return -1 if i == len(self._index_keys) else i

    def _find(self, block: Block, i: int, key: bytes) -> Hit | None:
        j = block.find(key)
        if j < 0:
            return None
        seq, kind = unpack_trailer(block.trailers[j])
        if kind > KIND_MERGE:
            raise CorruptionError(
                self.path, self._handles[i][0], f"entry {j} has unknown kind {kind}"
            )
        return seq, kind, block.value(j)

    def iter(self, start: bytes | None = None, fill_cache: bool = False) -> Iterator[Entry]:
        """Entries with key >= ``start`` in order. Blocks not in the cache are
        decoded for this scan only unless ``fill_cache``."""
        i = 0 if start is None else bisect.bisect_left(self._index_keys, start)
        first = True
        for n in range(i, len(self._handles)):
            block = self.read_block(n, fill_cache)
            j = block.seek(start) if first and start is not None else 0
            first = False
            keys, trailers, value = block.keys, block.trailers, block.value
            for k in range(j, len(keys)):
                t = trailers[k]
                yield keys[k], t >> 8, t & 0xFF, value(k)


def _read_exact(f: RandomAccessFile, path: str, offset: int, size: int) -> bytes:
    data = f.read_at(offset, size)
    if len(data) != size:
        raise CorruptionError(path, offset, f"expected {size} bytes, file ends after {len(data)}")
    return data


__all__ = [
    "FOOTER_SIZE",
    "FORMAT_VERSION",
    "HANDLE",
    "MAGIC",
    "Footer",
    "TableBuilder",
    "TableProperties",
    "TableReader",
]
