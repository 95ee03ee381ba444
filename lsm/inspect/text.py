"""Text rendering of inspection results: lines for a terminal, one fact each."""

from __future__ import annotations

import datetime

from lsm.inspect.common import render_bytes, render_value
from lsm.inspect.dbcheck import DbReport
from lsm.inspect.logs import LevelInfo, ManifestReport, WalReport
from lsm.inspect.sst import (
    DumpResult,
    GetResult,
    Identity,
    PropertiesReport,
    ScanEntry,
    VerifyResult,
)
from lsm.manifest import FileMeta, VersionEdit
from lsm.sstable import TableProperties


def identity(r: Identity) -> list[str]:
    if r.is_sstable:
        return [f"{r.path}: ringkv SSTable, format version {r.format_version}, "
                f"{r.file_bytes} bytes"]
    first = [] if r.problem is None else [r.problem.line()]
    return [*first, f"{r.path}: not a valid ringkv SSTable"]


def _when(ms: int) -> str:
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def table_properties(p: TableProperties, hex_: bool, ratio: float | None = None) -> list[str]:
    rows = [
        ("format version", str(p.format_version)),
        ("entries", f"{p.entries} ({p.tombstones} tombstones)"),
        ("smallest key", render_bytes(p.smallest_key, hex_)),
        ("largest key", render_bytes(p.largest_key, hex_)),
        ("seq range", f"{p.smallest_seq}..{p.largest_seq}"),
        ("data blocks", f"{p.num_blocks} ({p.data_bytes} bytes)"),
        ("index block", f"{p.index_bytes} bytes"),
        ("filter block", f"{p.filter_bytes} bytes, {p.bloom_bits_per_key} bits per key"),
        ("raw keys", f"{p.raw_key_bytes} bytes"),
        ("raw values", f"{p.raw_value_bytes} bytes"),
        ("compression", p.compression
         + ("" if ratio is None else f", ratio {ratio} (raw keys and values / data blocks)")),
        ("file size", f"{p.file_bytes} bytes"),
        ("created", f"{_when(p.created_ms)} ({p.created_ms})"),
    ]
    if p.merge_operands:
        rows.insert(2, ("merge operands", f"{p.merge_operands} (operator "
                                          f"{p.merge_operator or '(not recorded)'})"))
    return [f"  {k:<15} {v}" for k, v in rows]


def props_report(r: PropertiesReport, hex_: bool) -> list[str]:
    return [f"{r.path}:", *table_properties(r.properties, hex_, r.compression_ratio)]


def scan_entry(e: ScanEntry, hex_: bool) -> str:
    key = render_bytes(e.key, hex_)
    if e.kind in _HAS_VALUE:
        return f"{key} @{e.seq} {e.kind} {render_value(e.value, hex_)}"
    return f"{key} @{e.seq} {e.kind}"


# Kinds whose entries carry bytes worth showing (a merge entry's is its operand).
_HAS_VALUE = ("value", "merge")


def get_result(r: GetResult, hex_: bool) -> list[str]:
    lines = [
        f"key: {render_bytes(r.key, hex_)}",
        "bloom filter: " + ("may contain the key" if r.bloom_may_contain
                            else "key is certainly absent"),
        "index: " + ("past the last block" if r.block is None else f"data block {r.block}"),
    ]
    f = r.found
    if f is None:
        lines.append("lookup: not found")
    elif f.kind == "value":
        lines.append(f"lookup: found @{f.seq} value {render_value(f.value, hex_)}")
    elif f.kind == "merge":
        lines.append(f"lookup: found @{f.seq} merge operand {render_value(f.value, hex_)} "
                     "(applies on top of older entries in other tables)")
    else:
        lines.append(f"lookup: found @{f.seq} {f.kind} (the key was deleted)")
    if r.problem is not None:
        lines.append(r.problem.line())
    return lines


def verify_result(r: VerifyResult) -> list[str]:
    if r.ok:
        return [f"{r.path}: OK ({r.entries} entries in {r.blocks} blocks, {r.file_bytes} bytes)"]
    lines = [p.line() for p in r.problems]
    if r.more_problems:
        lines.append(f"{r.path}: … and {r.more_problems} more problems")
    n = len(r.problems) + r.more_problems
    lines.append(f"{r.path}: CORRUPT ({n} problem{'s' if n != 1 else ''})")
    return lines


def dump_result(r: DumpResult, hex_: bool) -> list[str]:
    ft = r.footer
    lines = [f"{r.path}: {r.file_bytes} bytes", "data blocks (from the index):"]
    lines.append(f"  {'#':>4} {'offset':>10} {'size':>8} {'stored':<6} last key")
    for b in r.blocks:
        lines.append(f"  {b.index:>4} {b.offset:>10} {b.size:>8} {b.stored:<6} "
                     f"{render_bytes(b.last_key, hex_)}")
    lines.append("meta blocks:")
    for name in ("filter", "index", "properties"):
        h = ft[name]
        assert isinstance(h, dict)
        lines.append(f"  {name:<11} offset {h['offset']:>10} size {h['size']:>8}")
    lines.append(f"footer: offset {ft['offset']}, {ft['size']} bytes, "
                 f"format version {ft['format_version']}, magic {ft['magic']}")
    lines.append("properties:")
    lines += table_properties(r.properties, hex_)
    return lines


def wal_report(r: WalReport, hex_: bool, records: bool) -> list[str]:
    lines = []
    if records:
        for rec in r.records:
            lines.append(
                f"record at {rec.offset}: batch of {len(rec.ops)} from seq {rec.first_seq}"
            )
            for op in rec.ops:
                size = f" ({op.value_bytes} bytes)" if op.kind in _HAS_VALUE else ""
                lines.append(f"  @{op.seq} {op.kind:<6} {render_bytes(op.key, hex_)}{size}")
    lines.append(f"{r.path}: {r.record_count} records, {r.operations} operations, "
                 f"last seq {r.last_seq}, {r.valid_end} of {r.file_bytes} bytes good")
    if r.torn_tail is not None:
        lines.append(f"{r.path}: offset {r.torn_tail}: torn tail ({r.torn_reason}); "
                     f"recovery drops the last {r.file_bytes - r.torn_tail} bytes")
    if r.problem is not None:
        lines.append(r.problem.line())
        lines.append(f"{r.path}: CORRUPT")
    else:
        lines.append(f"{r.path}: OK")
    return lines


def _file(level: int | None, f: FileMeta, hex_: bool) -> str:
    where = "" if level is None else f"L{level} "
    return (f"{where}#{f.number} {f.size} bytes [{render_bytes(f.smallest, hex_)} .. "
            f"{render_bytes(f.largest, hex_)}] seq {f.smallest_seq}..{f.largest_seq} "
            f"{f.entries} entries ({f.tombstones} tombstones"
            + (f", {f.merges} merge operands)" if f.merges else ")"))


def _edit(e: VersionEdit, hex_: bool) -> list[str]:
    out = []
    for name, v in (("log", e.log_number), ("next file", e.next_file_number),
                    ("last seq", e.last_seq)):
        if v is not None:
            out.append(f"  {name} {v}")
    out += [f"  add {_file(level, f, hex_)}" for level, f in e.added]
    out += [f"  delete L{level} #{n}" for level, n in e.deleted]
    out += [f"  compact pointer L{level} {render_bytes(k, hex_)}"
            for level, k in e.compact_pointers]
    if e.merge_operator is not None:
        out.append(f"  merge operator {e.merge_operator}")
    return out


def levels(ls: list[LevelInfo], hex_: bool) -> list[str]:
    lines = []
    for lv in ls:
        lines.append(f"  L{lv.level}: {len(lv.files)} files, {lv.bytes} bytes")
        lines += [f"    {_file(None, f, hex_)}" for f in lv.files]
    return lines or ["  (no tables)"]


def manifest_report(r: ManifestReport, hex_: bool) -> list[str]:
    lines = [] if r.current is None else [f"CURRENT -> {r.current}"]
    for i, info in enumerate(r.edits):
        lines.append(f"edit {i} at offset {info.offset}:")
        lines += _edit(info.edit, hex_)
    if r.torn_tail is not None:
        lines.append(f"{r.path}: offset {r.torn_tail}: torn last edit (never acknowledged)")
    if r.edits:
        lines.append(f"resulting version (log {r.log_number}, next file {r.next_file_number}, "
                     f"last seq {r.last_seq}):")
        lines += levels(r.levels, hex_)
    lines += [p.line() for p in r.problems]
    lines.append(f"{r.path}: {'OK' if r.ok else 'CORRUPT'}")
    return lines


def db_report(r: DbReport, hex_: bool) -> list[str]:
    lines = [f"CURRENT -> {r.current}" if r.current else f"{r.path}: no readable CURRENT"]
    if r.levels:
        lines.append("levels:")
        lines += levels(r.levels, hex_)
    for title, files in (("tables", r.tables), ("live WALs", r.wals)):
        if files:
            lines.append(f"{title}:")
        for f in files:
            status = "ok" if f.ok else "BAD"
            size = "" if f.bytes is None else f", {f.bytes} bytes"
            lines.append(f"  {f.name}: {status}{size}" + (f", {f.note}" if f.note else ""))
    if r.unreferenced:
        lines.append("unreferenced files (not part of the live database):")
        lines += [f"  {n}" for n in r.unreferenced]
    lines += [p.line() for p in r.problems]
    n = len(r.problems)
    lines.append(f"{r.path}: " + ("OK" if r.ok else f"CORRUPT ({n} problem{'s' * (n != 1)})"))
    return lines
