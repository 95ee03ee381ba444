"""Bloom filters for SSTables, built on pybloom-live.

pybloom-live does the sizing (k = ceil(log2(1/p)) slices of m bits, one
hash per slice) and owns the bit layout; we store its ``tofile`` output as
the table's filter block. pybloom-live hashes strings: a key's bytes are
mapped one-to-one onto code points 0-255 (``latin-1``), which it then
encodes as UTF-8. That mapping is part of the on-disk format.

A pybloom-live membership test costs a few microseconds, mostly in its
generator. :class:`Filter` keeps the filter object and answers
``may_contain`` through it; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import io
import struct

from pybloom_live import BloomFilter

# pybloom-live's header: error_rate (double), num_slices, bits_per_slice,
# capacity, count (uint64 each).
_HEADER = struct.Struct("<dQQQQ")


class Filter:
    __slots__ = ("_bf", "bits_per_key", "count")

    def __init__(self, bf: BloomFilter) -> None:
        self._bf = bf
        self.count = int(bf.count)
        self.bits_per_key = bf.num_bits / max(1, bf.capacity)

    @classmethod
    def build(cls, keys: list[bytes], error_rate: float) -> Filter:
        bf = BloomFilter(max(1, len(keys)), error_rate)
        add = bf.add
        for key in keys:
            add(key.decode("latin-1"), skip_check=True)
        return cls(bf)

    def encode(self) -> bytes:
        out = io.BytesIO()
        self._bf.tofile(out)
        return out.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Filter:
        """Raises ValueError if ``data`` is not a pybloom-live filter."""
        if len(data) < _HEADER.size:
            raise ValueError(f"filter needs a {_HEADER.size}-byte header, found {len(data)} bytes")
        error_rate, slices, bits, capacity, count = _HEADER.unpack_from(data)
        if not (0 < error_rate < 1) or not (0 < slices <= 64) or bits <= 0 or count > capacity:
            raise ValueError(
                f"implausible filter header (error_rate={error_rate}, slices={slices}, "
                f"bits_per_slice={bits}, capacity={capacity}, count={count})"
            )
        expected = (slices * bits + 7) // 8
        if len(data) - _HEADER.size != expected:
            raise ValueError(
                f"filter bit array is {len(data) - _HEADER.size} bytes, expected {expected}"
            )
        return cls(BloomFilter.fromfile(io.BytesIO(data)))

    def may_contain(self, key: bytes) -> bool:
        return key.decode("latin-1") in self._bf
