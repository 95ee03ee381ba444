"""Checksummed record frames: the container format of the WAL and the manifest.

A log file is a sequence of frames, nothing else (no file header, no block
padding)::

    offset  size  field
    0       4     length       payload bytes, u32 little-endian
    4       1     type         1 = full record (the only type written so far)
    5       4     header_crc   crc32c of bytes 0..4 (length and type)
    9       4     payload_crc  crc32c of the payload
    13      n     payload

The header carries its own checksum so that a damaged length is recognised
as damage instead of sending the reader to a wrong offset.

Reading stops at the first frame that does not check out, and decides whether
that is a *torn tail* (what a crash during an append leaves behind, safe to
cut off) or *corruption* (damage to data that was once complete):

* fewer than 13 bytes left, or a payload that runs past the end of the file:
  torn tail (the append never finished);
* a bad header checksum where every byte after the 13 header bytes is zero:
  torn tail (the file system extended the file but the data never landed,
  or landed only partly);
* a bad payload checksum in a frame followed by nothing but zeros (or by
  nothing at all): torn tail (the last append was torn inside its payload);
* anything else is corruption in the middle of the file: a
  :class:`~lsm.errors.CorruptionError` naming the file and the offset. The
  records before it are still returned to callers that ask for them
  (``strict=False``), for inspection tools.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from lsm.coding import crc32c
from lsm.errors import CorruptionError

HEADER = struct.Struct("<IBII")
HEADER_SIZE = HEADER.size  # 13
_LEN_TYPE = struct.Struct("<IB")
TYPE_FULL = 1
MAX_RECORD_BYTES = (1 << 32) - 1


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    n = len(payload)
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"record too large ({n} bytes)")
    head = _LEN_TYPE.pack(n, TYPE_FULL)
    return b"".join((head, struct.pack("<II", crc32c(head), crc32c(payload)), payload))


@dataclass(frozen=True, slots=True)
class Record:
    offset: int  # where the frame starts
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Why reading stopped before the end of the file."""

    offset: int
    torn: bool  # True: a torn tail that recovery may cut off
    reason: str


@dataclass(frozen=True, slots=True)
class LogContents:
    records: list[Record]
    valid_end: int  # end of the last good frame: the clean prefix
    damage: Damage | None

    @property
    def torn_tail(self) -> int | None:
        return self.damage.offset if self.damage and self.damage.torn else None


def iter_frames(data: bytes) -> Iterator[Record | Damage]:
    """Yield each good frame of ``data`` and, if reading stops early, one
    final :class:`Damage` saying where and why."""
    pos = 0
    end = len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < HEADER_SIZE:
            yield Damage(pos, True, f"incomplete frame header ({end - pos} of 13 bytes)")
            return
        length, rtype, header_crc, payload_crc = HEADER.unpack_from(data, pos)
        if crc32c(view[pos : pos + 5]) != header_crc:
            if not any(view[pos + HEADER_SIZE :]):
                # Nothing but (part of) a header before a zero-filled tail.
                yield Damage(pos, True, f"unfinished frame in a zeroed tail of {end - pos} bytes")
            else:
                yield Damage(
                    pos, False,
                    f"frame header checksum mismatch (expected {header_crc:#010x}, "
                    f"found {crc32c(view[pos : pos + 5]):#010x})",
                )
            return
        if rtype != TYPE_FULL:
            yield Damage(pos, False, f"unknown frame type {rtype}")
            return
        body = pos + HEADER_SIZE
        stop = body + length
        if stop > end:
            yield Damage(
                pos, True, f"frame payload cut short ({end - body} of {length} bytes)"
            )
            return
        payload = data[body:stop]
        found = crc32c(payload)
        if found != payload_crc:
            # Torn if nothing but zeros follows: the last append, partly landed.
            yield Damage(
                pos, not any(view[stop:]),
                f"payload checksum mismatch (expected {payload_crc:#010x}, found {found:#010x})",
            )
            return
        yield Record(pos, payload)
        pos = stop


def read_log(data: bytes, path: str, strict: bool = True) -> LogContents:
    """Split ``data`` (a whole log file) into records.

    With ``strict``, damage that is not a torn tail raises CorruptionError;
    otherwise it is reported in the result like a torn tail is.
    """
    records: list[Record] = []
    valid_end = 0
    damage: Damage | None = None
    for item in iter_frames(data):
        if isinstance(item, Damage):
            damage = item
            break
        records.append(item)
        valid_end = item.offset + HEADER_SIZE + len(item.payload)
    if damage is not None and not damage.torn and strict:
        raise CorruptionError(path, damage.offset, damage.reason)
    return LogContents(records, valid_end, damage)
