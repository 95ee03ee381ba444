"""What the load consists of, and the RESP bytes of each request.

Keys are ``<prefix><index>`` with the index zero-padded to the width of the
largest one, so every key has the same length and each command is a few
byte concatenations (no per-request encoding). SET values come from a pool
of distinct random byte strings (seeded), so a block compressor sees data
about as compressible as real values, not one value repeated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from cli.bench.keys import KeyDist

#: Distinct values per process; a few 4 KiB blocks of 1 KiB values then hold
#: no repeats for a compressor to find.
VALUE_POOL = 64


@dataclass(frozen=True, slots=True)
class Workload:
    read_ratio: float  # share of GETs; the rest are SETs
    value_size: int
    keys: int
    dist: KeyDist
    prefix: str = "bench:"

    def __post_init__(self) -> None:
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError(f"read ratio {self.read_ratio} is not within 0..1")
        if self.value_size < 0 or self.keys < 1:
            raise ValueError("value size must be >= 0 and the keyspace >= 1 key")

    def key_format(self) -> bytes:
        """``format % index`` is the key of ``index``."""
        return f"{self.prefix}%0{len(str(self.keys - 1))}d".encode()

    def describe(self) -> str:
        gets = round(self.read_ratio * 100)
        return (f"{gets}% GET / {100 - gets}% SET, {self.value_size}-byte values, "
                f"{self.keys:,} key{'s' if self.keys > 1 else ''} ({self.dist})")


class Commands:
    """Encodes requests of one workload; one instance per process, with its
    own random source (seeded, so a run can be repeated)."""

    def __init__(self, workload: Workload, seed: int) -> None:
        self.workload = workload
        rng = random.Random(seed)
        self._rand = rng.random
        self._key_index = workload.dist.sampler(workload.keys, rng)
        size = workload.value_size
        self._values = [b"$%d\r\n%s\r\n" % (size, rng.randbytes(size)) for _ in range(VALUE_POOL)]
        self._next_value = 0
        self._key_format = workload.key_format()
        key_len = len(self._key_format % 0)
        self._set_head = b"*3\r\n$3\r\nSET\r\n$%d\r\n" % key_len
        self._get_head = b"*2\r\n$3\r\nGET\r\n$%d\r\n" % key_len

    def next(self) -> bytes:
        """One request of the mix, on a key drawn from the distribution."""
        key = self._key_format % self._key_index()
        if self._rand() < self.workload.read_ratio:
            return self._get_head + key + b"\r\n"
        return self.set(key)

    def set(self, key: bytes) -> bytes:
        value = self._values[self._next_value]
        self._next_value = (self._next_value + 1) % VALUE_POOL
        return self._set_head + key + b"\r\n" + value

    def preload(self, share: int, shares: int) -> Iterator[bytes]:
        """SETs of every key whose index is ``share`` modulo ``shares``."""
        for index in range(share, self.workload.keys, shares):
            yield self.set(self._key_format % index)


def encode(*args: bytes) -> bytes:
    """One RESP multibulk request (for handshakes: AUTH, PING)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
