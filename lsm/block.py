"""Blocks: the unit of an SSTable that is compressed, checksummed and cached.

Contents of a block before compression (all integers little-endian)::

    keys      K bytes          every key, concatenated in order
    values    V bytes          every value, concatenated in the same order
    key_ends  4 bytes * n      u32 end offset of key i within ``keys``
    val_ends  4 bytes * n      u32 end offset of value i within ``values``
    trailers  8 bytes * n      u64 ``seq << 8 | kind`` of entry i
    n         4 bytes          u32 entry count
    K         4 bytes          u32 length of ``keys``

Columns instead of interleaved records let a reader decode a whole block with
a few C calls (``array.frombytes`` and one list comprehension) and then find a
key with :func:`bisect.bisect_left`, which matters more in Python than the
bytes prefix compression would save (zstd takes most of them back anyway).

On disk a block is followed by a 5-byte trailer::

    type   1 byte   0 = stored raw, 1 = zstd
    crc    4 bytes  crc32c of the stored bytes and the type byte

Index blocks use the same layout, with a block handle as the value.
"""

from __future__ import annotations

import bisect
import struct
import threading
from array import array
from collections.abc import Sequence
from itertools import accumulate

import zstandard

from lsm.coding import NATIVE_LITTLE_ENDIAN, crc32c

TAIL = struct.Struct("<II")  # n, K
TRAILER = struct.Struct("<BI")  # type, crc
TRAILER_SIZE = TRAILER.size  # 5
RAW = 0
ZSTD = 1
# Store a block raw unless zstd saves at least 1/8 of it: incompressible
# values (already compressed blobs, random bytes) skip decompression on read.
_MIN_SAVING = 8


def _u32(data: bytes | memoryview) -> array[int]:
    a = array("I")
    a.frombytes(data)
    if not NATIVE_LITTLE_ENDIAN:
        a.byteswap()
    return a


def _u64(data: bytes | memoryview) -> array[int]:
    a = array("Q")
    a.frombytes(data)
    if not NATIVE_LITTLE_ENDIAN:
        a.byteswap()
    return a


class BlockBuilder:
    __slots__ = ("_key_ends", "_keys", "_trailers", "_val_ends", "_values", "raw_size")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        self._key_ends = array("I")
        self._val_ends = array("I")
        self._trailers = array("Q")
        self.raw_size = 0

    def add(self, key: bytes, trailer: int, value: bytes) -> None:
        self._keys.append(key)
        self._values.append(value)
        self._key_ends.append((self._key_ends[-1] if self._key_ends else 0) + len(key))
        self._val_ends.append((self._val_ends[-1] if self._val_ends else 0) + len(value))
        self._trailers.append(trailer)
        self.raw_size += len(key) + len(value) + 16

    def add_run(self, keys: list[bytes], values: list[bytes], trailers: list[int]) -> None:
        """Add many entries at once (an empty builder only): one C-level
        pass per column instead of a Python call per entry."""
        if self._keys:
            raise RuntimeError("add_run needs an empty block builder")
        self._keys = keys
        self._values = values
        self._key_ends = array("I", accumulate(map(len, keys)))
        self._val_ends = array("I", accumulate(map(len, values)))
        self._trailers = array("Q", trailers)
        self.raw_size = self._key_ends[-1] + self._val_ends[-1] + 16 * len(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def last_key(self) -> bytes:
        return self._keys[-1]

    def finish(self) -> bytes:
        """The block's uncompressed contents; the builder is reset."""
        cols = [self._key_ends, self._val_ends, self._trailers]
        if not NATIVE_LITTLE_ENDIAN:
            for c in cols:
                c.byteswap()
        keys = b"".join(self._keys)
        out = b"".join(
            (keys, b"".join(self._values), *(c.tobytes() for c in cols),
             TAIL.pack(len(self._keys), len(keys)))
        )
        self.__init__()  # type: ignore[misc]
        return out


class Block:
    """A decoded block: sorted keys and lazily sliced values. The key list
    is built on first use (a scan, a seek); a point lookup bisects the key
    column in place, so a get that misses the block cache does not slice
    every key of a 16 KiB block (~140 of them) to find one."""

    __slots__ = ("_key_area", "_key_ends", "_keys", "_val_ends", "_values", "trailers")

    def __init__(
        self, key_area: bytes, key_ends: array[int], values: bytes, val_ends: array[int],
        trailers: array[int],
    ) -> None:
        self._key_area = key_area
        self._key_ends = key_ends
        self._keys: list[bytes] | None = None
        self._values = values
        self._val_ends = val_ends
        self.trailers = trailers

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Raises ValueError when the layout does not add up."""
        size = len(data)
        if size < TAIL.size:
            raise ValueError(f"block of {size} bytes is shorter than its 8-byte tail")
        n, klen = TAIL.unpack_from(data, size - TAIL.size)
        columns = size - TAIL.size - 16 * n
        if columns < 0 or klen > columns:
            raise ValueError(f"block tail claims {n} entries and {klen} key bytes in {size} bytes")
        view = memoryview(data)
        key_ends = _u32(view[columns : columns + 4 * n])
        val_ends = _u32(view[columns + 4 * n : columns + 8 * n])
        trailers = _u64(view[columns + 8 * n : columns + 16 * n])
        vlen = columns - klen
        if n and (key_ends[-1] != klen or val_ends[-1] != vlen):
            raise ValueError(
                f"block columns disagree: keys end at {key_ends[-1]} (expected {klen}), "
                f"values at {val_ends[-1]} (expected {vlen})"
            )
        return cls(data[:klen], key_ends, data[klen:columns], val_ends, trailers)

    @property
    def keys(self) -> list[bytes]:
        keys = self._keys
        if keys is None:
            area, ends = self._key_area, self._key_ends
            starts = [0, *ends[:-1]] if ends else []
            keys = self._keys = [area[a:b] for a, b in zip(starts, ends, strict=True)]
        return keys

    def __len__(self) -> int:
        return len(self._key_ends)

    def value(self, i: int) -> bytes:
        ends = self._val_ends
        return self._values[(ends[i - 1] if i else 0) : ends[i]]

    def find(self, key: bytes) -> int:
        """Index of ``key``, or -1."""
        keys: Sequence[bytes] = self._keys if self._keys is not None else _KeyColumn(self)
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return i
        return -1

    def seek(self, key: bytes) -> int:
        """Index of the first key >= ``key``."""
        return bisect.bisect_left(self.keys, key)

    def charge(self) -> int:
        """Approximate memory held, for the cache budget (the key list counted
        as if built)."""
        return len(self._values) + len(self._key_area) * 2 + 70 * len(self._key_ends)


class _KeyColumn(Sequence[bytes]):
    """A block's keys as a sequence, each sliced only when bisect asks."""

    __slots__ = ("_area", "_ends")

    def __init__(self, block: Block) -> None:
        self._area = block._key_area
        self._ends = block._key_ends

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        ends = self._ends
        return self._area[(ends[i - 1] if i else 0) : ends[i]]


class Codec:
    """Compression and checksums of stored blocks. zstd contexts are not
    thread-safe, so each thread gets its own."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self._level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def seal(self, raw: bytes, compress: bool = True) -> bytes:
        """Stored form of a block: maybe compressed, plus type and crc."""
        btype = RAW
        stored = raw
        if compress and len(raw) > 64:
            packed = self._compressor().compress(raw)
            if len(packed) <= len(raw) - len(raw) // _MIN_SAVING:
                stored, btype = packed, ZSTD
        crc = crc32c(bytes((btype,)), crc32c(stored))
        return b"".join((stored, TRAILER.pack(btype, crc)))

    def open(self, sealed: bytes, max_raw: int) -> bytes:
        """Check and decompress a stored block; raises ValueError."""
        if len(sealed) < TRAILER_SIZE:
            raise ValueError(f"block of {len(sealed)} bytes has no room for its trailer")
        body = memoryview(sealed)[:-TRAILER_SIZE]
        btype, crc = TRAILER.unpack_from(sealed, len(sealed) - TRAILER_SIZE)
        found = crc32c(sealed[-TRAILER_SIZE : -TRAILER_SIZE + 1], crc32c(body))
        if found != crc:
            raise ValueError(f"block checksum mismatch (expected {crc:#010x}, found {found:#010x})")
        if btype == RAW:
            return bytes(body)
        if btype == ZSTD:
            try:
                return self._decompressor().decompress(body, max_output_size=max_raw)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd could not decompress the block: {exc}") from None
        raise ValueError(f"unknown block type {btype}")
