"""SSTable metadata formats: the footer and the properties block.

Shared by the table builder and reader (lsm.sstable) and the inspection
tool. Byte layouts are in docs/formats/sstable.md::

    footer, 52 bytes, little-endian
    0   8  filter offset      8  4  filter size
    12  8  index offset       20 4  index size
    28  8  properties offset  36 4  properties size
    40  4  format version     44 4  crc32c of bytes 0..43
    48  8  magic "RINGKVST"
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, fields

import msgpack

from lsm.block import TRAILER_SIZE
from lsm.coding import crc32c

MAGIC = b"RINGKVST"
FORMAT_VERSION = 1
#: Written for tables that hold merge operands (kind 2), which a reader of
#: version 1 would take for unknown data; tables without any stay version 1.
FORMAT_VERSION_MERGE = 2
READABLE_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_MERGE)
FOOTER = struct.Struct("<QIQIQIII8s")
FOOTER_SIZE = FOOTER.size  # 52
HANDLE = struct.Struct("<QI")
_CRC_SPAN = FOOTER_SIZE - 12  # the crc covers everything before it


@dataclass(frozen=True, slots=True)
class TableProperties:
    entries: int
    tombstones: int
    smallest_key: bytes
    largest_key: bytes
    smallest_seq: int
    largest_seq: int
    data_bytes: int
    index_bytes: int
    filter_bytes: int
    raw_key_bytes: int
    raw_value_bytes: int
    num_blocks: int
    file_bytes: int
    format_version: int
    bloom_bits_per_key: float
    compression: str
    created_ms: int
    # Format 2 only (absent from version-1 tables, read as 0 and ""): merge
    # operand entries and the name of the operator that wrote them.
    merge_operands: int = 0
    merge_operator: str = ""

    def encode(self) -> bytes:
        body = asdict(self)
        if not self.merge_operands:
            del body["merge_operands"], body["merge_operator"]
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes) -> TableProperties:
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"properties are not valid msgpack: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("properties must be a map")
        try:
            props = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw
                           or f.name not in _OPTIONAL})
        except KeyError as exc:
            raise ValueError(f"properties lack field {exc}") from None
        for f in fields(cls):
            want = {"bytes": bytes, "str": str, "float": (float, int)}.get(str(f.type), int)
            if not isinstance(getattr(props, f.name), want):  # type: ignore[arg-type]
                raise ValueError(f"property {f.name} has type {type(getattr(props, f.name))}")
        return props


@dataclass(frozen=True, slots=True)
class Footer:
    filter_handle: tuple[int, int]
    index_handle: tuple[int, int]
    props_handle: tuple[int, int]
    format_version: int

    def encode(self) -> bytes:
        head = FOOTER.pack(
            *self.filter_handle,
            *self.index_handle,
            *self.props_handle,
            self.format_version,
            0,
            MAGIC,
        )[:_CRC_SPAN]
        return head + struct.pack("<I", crc32c(head)) + MAGIC

    @classmethod
    def decode(cls, data: bytes, file_size: int) -> Footer:
        """Raises ValueError saying what was expected and what was found."""
        (f_off, f_size, i_off, i_size, p_off, p_size, version, crc, magic) = FOOTER.unpack(data)
        if magic != MAGIC:
            raise ValueError(
                f"bad magic: expected {MAGIC!r}, found {magic!r} (not a ringkv SSTable)"
            )
        found = crc32c(data[:_CRC_SPAN])
        if found != crc:
            raise ValueError(
                f"footer checksum mismatch (expected {crc:#010x}, found {found:#010x})"
            )
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"unsupported format version {version} (this build reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))})"
            )
        limit = file_size - FOOTER_SIZE
        for name, off, size in (
            ("filter", f_off, f_size),
            ("index", i_off, i_size),
            ("properties", p_off, p_size),
        ):
            if size < TRAILER_SIZE or off + size > limit:
                raise ValueError(f"{name} handle ({off}, {size}) lies outside the file")
        # The meta blocks sit back to back right before the footer.
        if i_off != f_off + f_size or p_off != i_off + i_size or p_off + p_size != limit:
            raise ValueError(
                f"meta blocks are not contiguous: filter ({f_off}, {f_size}), index "
                f"({i_off}, {i_size}), properties ({p_off}, {p_size}), footer at {limit}"
            )
        return cls((f_off, f_size), (i_off, i_size), (p_off, p_size), version)


_OPTIONAL = frozenset({"merge_operands", "merge_operator"})


def with_size(props: TableProperties, size: int) -> TableProperties:
    values = asdict(props)
    values["file_bytes"] = size
    return TableProperties(**values)
