"""SSTable inspection: identify, properties, scan, get, verify, dump.

Every function opens the table read-only through the :class:`FileSystem`
and reads one data block at a time without filling any cache, so memory
stays bounded by the index, the filter and one block, whatever the size of
the file. Damage comes back as :class:`Problem` values, never tracebacks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lsm.block import TRAILER_SIZE, ZSTD
from lsm.errors import CorruptionError
from lsm.fs import FileSystem
from lsm.inspect.common import READ_ERRORS, Problem, render_bytes
from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, kind_name
from lsm.sstable import FOOTER_SIZE, MAGIC, Footer, TableProperties, TableReader
from lsm.table_meta import FORMAT_VERSION_MERGE

#: Problems listed per file before the rest are only counted.
MAX_PROBLEMS = 20

Progress = Callable[[int], None]


def open_table(fs: FileSystem, path: str) -> TableReader:
    """Open ``path`` as a table; CorruptionError/OSError say why not."""
    try:
        return TableReader.open(fs, path)
    except CorruptionError as exc:
        if "(not a ringkv SSTable)" not in exc.reason:
            raise
        # A table cut short has lost its footer too: say both.
        reason = exc.reason.replace("(not a ringkv SSTable)",
                                    "(not a ringkv SSTable, or one cut short)")
        raise CorruptionError(exc.path, exc.offset, reason) from None


def kind_text(kind: int) -> str:
    return "tombstone" if kind == KIND_DELETE else kind_name(kind)


def _q(key: bytes) -> str:
    return f"'{render_bytes(key)}'"


# -- identify -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Identity:
    path: str
    is_sstable: bool
    format_version: int | None
    file_bytes: int | None
    problem: Problem | None = None


def identify(fs: FileSystem, path: str) -> Identity:
    try:
        reader = open_table(fs, path)
    except READ_ERRORS as exc:
        size = fs.file_size(path) if fs.exists(path) else None
        return Identity(path, False, None, size, Problem.of(exc, path))
    try:
        return Identity(path, True, reader.footer.format_version, reader.properties.file_bytes)
    finally:
        reader.close()


# -- properties -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PropertiesReport:
    path: str
    properties: TableProperties
    #: raw key and value bytes / stored data block bytes
    compression_ratio: float


def properties(fs: FileSystem, path: str) -> PropertiesReport:
    reader = open_table(fs, path)
    try:
        p = reader.properties
        raw = p.raw_key_bytes + p.raw_value_bytes
        ratio = round(raw / p.data_bytes, 3) if p.data_bytes else 0.0
        return PropertiesReport(path, p, ratio)
    finally:
        reader.close()


# -- scan and get ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScanEntry:
    key: bytes
    seq: int
    kind: str
    value: bytes


def scan(
    reader: TableReader,
    start: bytes | None = None,
    end: bytes | None = None,
    prefix: bytes | None = None,
    limit: int | None = None,
) -> Iterator[ScanEntry]:
    """Entries with ``start <= key < end`` and the given prefix, in order.
    Raises CorruptionError when a block fails its checks mid-way."""
    if prefix is not None and (start is None or start < prefix):
        start = prefix
    for n, (key, seq, kind, value) in enumerate(reader.iter(start)):
        if end is not None and key >= end:
            return
        if prefix is not None and not key.startswith(prefix):
            return
        if limit is not None and n >= limit:
            return
        yield ScanEntry(key, seq, kind_text(kind), value)


@dataclass(frozen=True, slots=True)
class GetResult:
    path: str
    key: bytes
    #: False: the filter says the key is certainly absent.
    bloom_may_contain: bool
    #: index of the data block whose range holds the key, if any
    block: int | None
    found: ScanEntry | None
    problem: Problem | None = None


def get(reader: TableReader, key: bytes) -> GetResult:
    """The filter's verdict and what a lookup finds. Unlike the engine, the
    lookup runs even when the filter says no, to catch a lying filter."""
    verdict = reader.may_contain(key)
    handles = reader.block_handles()
    block = next((i for i, (last, _, _) in enumerate(handles) if key <= last), None)
    found = None
    problem = None
    it = scan(reader, start=key, limit=1)
    try:
        first = next(it, None)
    except CorruptionError as exc:
        return GetResult(reader.path, key, verdict, block, None, Problem.of(exc, reader.path))
    if first is not None and first.key == key:
        found = first
        if not verdict:
            problem = Problem(
                reader.path,
                reader.footer.filter_handle[0],
                "filter block says the key is absent but the table holds it (bad filter)",
            )
    return GetResult(reader.path, key, verdict, block, found, problem)


# -- verify ---------------------------------------------------------------------
@dataclass(slots=True)
class VerifyResult:
    path: str
    file_bytes: int = 0
    blocks: int = 0
    entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: problems found beyond the first MAX_PROBLEMS
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, offset: int | None, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.path, offset, reason))
        else:
            self.more_problems += 1


def verify(fs: FileSystem, path: str, progress: Progress | None = None) -> VerifyResult:
    """Check every block checksum, key order within and across blocks, the
    index against the blocks, the filter against the keys, and the totals
    against the properties. ``progress(n)`` is told of each ``n`` bytes read."""
    result = VerifyResult(path)
    try:
        reader = open_table(fs, path)
    except READ_ERRORS as exc:
        result.problems.append(Problem.of(exc, path))
        return result
    try:
        _check_layout(reader, result)
        _check_blocks(reader, result, progress)
    finally:
        reader.close()
    if progress is not None:  # the meta blocks and footer were read on open
        progress(max(0, result.file_bytes - reader.footer.filter_handle[0]))
    return result


def _check_layout(reader: TableReader, result: VerifyResult) -> None:
    """The handles tile the file: data blocks, filter, index, properties, footer."""
    p = reader.properties
    f = reader.footer
    result.file_bytes = p.file_bytes
    pos = 0
    for i, (_, off, size) in enumerate(reader.block_handles()):
        if off != pos:
            result.add(off, f"index entry {i}: block starts at {off}, expected {pos} "
                            "(gap or overlap between data blocks)")
        pos = off + size
    for name, (off, size) in (("filter", f.filter_handle), ("index", f.index_handle),
                              ("properties", f.props_handle)):
        if off != pos:
            result.add(off, f"{name} block starts at {off}, expected {pos}")
        pos = off + size
    if pos != p.file_bytes - FOOTER_SIZE:
        result.add(pos, f"footer expected at {pos}, found at {p.file_bytes - FOOTER_SIZE}")
    if f.filter_handle[0] != p.data_bytes:
        result.add(f.filter_handle[0], f"properties say {p.data_bytes} data bytes, "
                                       f"the blocks end at {f.filter_handle[0]}")
    if len(reader.block_handles()) != p.num_blocks:
        result.add(f.index_handle[0], f"properties say {p.num_blocks} data blocks, "
                                      f"the index lists {len(reader.block_handles())}")


def _check_blocks(reader: TableReader, result: VerifyResult, progress: Progress | None) -> None:
    p = reader.properties
    prev_last: bytes | None = None
    first_key: bytes | None = None
    tombstones = merges = 0
    merge_ok = p.format_version >= FORMAT_VERSION_MERGE
    raw_keys = raw_values = 0
    min_seq, max_seq = 1 << 62, 0
    bloom_misses = 0
    unreadable = 0
    for i, (index_key, off, size) in enumerate(reader.block_handles()):
        result.blocks += 1
        try:
            block = reader.read_block(i, fill_cache=False)
        except CorruptionError as exc:
            result.add(exc.offset, exc.reason)
            unreadable += 1
            prev_last = None
            continue
        finally:
            if progress is not None:
                progress(size)
        keys = block.keys
        if not keys:
            result.add(off, f"data block {i} is empty")
            continue
        result.entries += len(keys)
        if first_key is None:
            first_key = keys[0]
        if prev_last is not None and keys[0] <= prev_last:
            result.add(off, f"key order: data block {i} starts with {_q(keys[0])}, "
                            f"expected a key after {_q(prev_last)} (last key of block {i - 1})")
        for j, (a, b) in enumerate(itertools.pairwise(keys)):
            if b <= a:
                result.add(off, f"key order: data block {i} entry {j + 1} is {_q(b)}, "
                                f"expected a key after {_q(a)}")
        if keys[-1] != index_key:
            result.add(off, f"index entry {i} says block ends with {_q(index_key)}, "
                            f"block ends with {_q(keys[-1])}")
        prev_last = keys[-1]
        for j, t in enumerate(block.trailers):
            kind = t & 0xFF
            seq = t >> 8
            if kind == KIND_DELETE:
                tombstones += 1
            elif kind == KIND_MERGE and merge_ok:
                merges += 1
            elif kind != KIND_VALUE:
                why = " (a merge operand needs format version 2)" if kind == KIND_MERGE else ""
                result.add(off, f"data block {i} entry {j}: unknown kind {kind}{why}")
            min_seq = min(min_seq, seq)
            max_seq = max(max_seq, seq)
        raw_keys += sum(map(len, keys))
        raw_values += sum(len(block.value(j)) for j in range(len(keys)))
        for key in keys:
            if not reader.may_contain(key):
                bloom_misses += 1
    if result.blocks and prev_last is not None and first_key is not None:
        last_key = prev_last
        if first_key != p.smallest_key:
            result.add(None, f"properties say smallest key {_q(p.smallest_key)}, "
                             f"first key is {_q(first_key)}")
        if last_key != p.largest_key:
            result.add(None, f"properties say largest key {_q(p.largest_key)}, "
                             f"last key is {_q(last_key)}")
    if bloom_misses:
        result.add(reader.footer.filter_handle[0],
                   f"filter block denies {bloom_misses} keys the table holds")
    if unreadable:
        return  # totals cannot match when blocks were unreadable
    if result.entries:
        expected_seq = (p.smallest_seq, p.largest_seq)
        if (min_seq, max_seq) != expected_seq:
            result.add(None, f"properties say seq range {expected_seq[0]}..{expected_seq[1]}, "
                             f"blocks hold {min_seq}..{max_seq}")
    for what, said, found in (
        ("entries", p.entries, result.entries),
        ("tombstones", p.tombstones, tombstones),
        ("merge operands", p.merge_operands, merges),
        ("raw key bytes", p.raw_key_bytes, raw_keys),
        ("raw value bytes", p.raw_value_bytes, raw_values),
    ):
        if said != found:
            result.add(reader.footer.props_handle[0],
                       f"entry count: properties say {said} {what}, blocks hold {found}"
                       if what == "entries" else
                       f"properties say {said} {what}, blocks hold {found}")


# -- dump -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlockInfo:
    index: int
    offset: int
    size: int
    stored: str  # "zstd" or "raw"
    last_key: bytes


@dataclass(frozen=True, slots=True)
class DumpResult:
    path: str
    file_bytes: int
    footer: dict[str, object]
    blocks: list[BlockInfo]
    properties: TableProperties


def dump(fs: FileSystem, path: str) -> DumpResult:
    """Footer, meta block handles and every index entry (no data block is
    decoded; the stored type comes from each block's 5-byte trailer)."""
    reader = open_table(fs, path)
    f = fs.open_read(path)
    try:
        blocks = []
        for i, (last, off, size) in enumerate(reader.block_handles()):
            btype = f.read_at(off + size - TRAILER_SIZE, 1)
            stored = "zstd" if btype == bytes((ZSTD,)) else "raw"
            blocks.append(BlockInfo(i, off, size, stored, last))
        return DumpResult(
            path, reader.properties.file_bytes, describe(reader.footer, reader.properties),
            blocks, reader.properties,
        )
    finally:
        f.close()
        reader.close()


def describe(footer: Footer, props: TableProperties) -> dict[str, object]:
    size = props.file_bytes
    return {
        "offset": size - FOOTER_SIZE,
        "size": FOOTER_SIZE,
        "filter": {"offset": footer.filter_handle[0], "size": footer.filter_handle[1]},
        "index": {"offset": footer.index_handle[0], "size": footer.index_handle[1]},
        "properties": {"offset": footer.props_handle[0], "size": footer.props_handle[1]},
        "format_version": footer.format_version,
        "magic": MAGIC.decode(),
    }
