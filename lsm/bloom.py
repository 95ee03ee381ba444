"""Bloom filters for SSTables, built on pybloom-live.

pybloom-live does the sizing (k = ceil(log2(1/p)) slices of m bits, one
hash per slice) and owns the bit layout; we store its ``tofile`` output as
the table's filter block. pybloom-live hashes strings: a key's bytes are
mapped one-to-one onto code points 0-255 (``latin-1``), which it then
encodes as UTF-8. That mapping is part of the on-disk format.

A pybloom-live membership test costs a few microseconds, mostly in its hash
generator, and every point lookup pays it once per table it asks. So
:class:`Filter` builds and serialises with pybloom-live but probes with a
flat loop over the same bits: the same salted hash (xxh128 or SHA-*, chosen
by pybloom-live from the filter's size), the same digest slicing, the same
bit positions. ``test_bloom`` checks the two agree.
"""

from __future__ import annotations

import io
import struct
from typing import Any

from pybloom_live import BloomFilter

# pybloom-live's header: error_rate (double), num_slices, bits_per_slice,
# capacity, count (uint64 each).
_HEADER = struct.Struct("<dQQQQ")


class Filter:
    __slots__ = ("_bf", "_bits", "_fmt", "_k", "_m", "_salts", "bits_per_key", "count")

    def __init__(self, bf: BloomFilter) -> None:
        self._bf = bf
        self.count = int(bf.count)
        self.bits_per_key = bf.num_bits / max(1, bf.capacity)
        self._bits = bf.bitarray
        self._k = int(bf.num_slices)
        self._m = int(bf.bits_per_slice)
        self._fmt, self._salts = _probe_params(self._k, self._m, bf.hashfn)

    @classmethod
    def build(cls, keys: list[bytes], error_rate: float) -> Filter:
        """pybloom-live sizes the filter and owns the bit array; the bits are
        set by the same flat loop the probe uses (``test_bloom`` checks that
        pybloom-live's own membership test finds every key)."""
        bf = BloomFilter(max(1, len(keys)), error_rate)
        k, m = int(bf.num_slices), int(bf.bits_per_slice)
        fmt, salts = _probe_params(k, m, bf.hashfn)
        bits = bf.bitarray
        unpack = fmt.unpack
        for key in keys:
            data = key.decode("latin-1").encode()
            offset = 0
            left = k
            for salt in salts:
                h = salt.copy()
                h.update(data)
                for v in unpack(h.digest()):
                    bits[offset + v % m] = True
                    offset += m
                    left -= 1
                    if not left:
                        break
        bf.count = len(keys)
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
        data = key.decode("latin-1").encode()
        bits, m, k = self._bits, self._m, self._k
        offset = 0
        for salt in self._salts:
            h = salt.copy()
            h.update(data)
            for v in self._fmt.unpack(h.digest()):
                if not bits[offset + v % m]:
                    return False
                offset += m
                k -= 1
                if not k:
                    return True
        return True

    def may_contain_reference(self, key: bytes) -> bool:
        """pybloom-live's own test, for checking :meth:`may_contain`."""
        return key.decode("latin-1") in self._bf


def _probe_params(k: int, m: int, hashfn: Any) -> tuple[struct.Struct, tuple[Any, ...]]:
    """Digest layout and salted hash states as pybloom-live derives them: each
    slice takes one 2-, 4- or 8-byte native-order chunk of a salted digest."""
    code, size = ("Q", 8) if m >= 1 << 31 else ("I", 4) if m >= 1 << 15 else ("H", 2)
    per_digest = hashfn().digest_size // size
    fmt = struct.Struct(code * per_digest)
    salts = tuple(
        hashfn(hashfn(struct.pack("I", i)).digest()) for i in range(-(-k // per_digest))
    )
    return fmt, salts
