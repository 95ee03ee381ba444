"""Fixed-width little-endian integer coding shared by the on-disk formats.

Every format in ``lsm`` uses little-endian fixed-width integers (no varints):
Python decodes a ``struct`` field in one C call, while a varint costs a loop
iteration per byte. The few bytes this wastes are taken back by zstd.
"""

from __future__ import annotations

import sys

import crc32c as _crc32c

# ``array`` uses native byte order; our formats are little-endian.
NATIVE_LITTLE_ENDIAN = sys.byteorder == "little"


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli), hardware-accelerated where the CPU has it."""
    return int(_crc32c.crc32c(data, value))
