"""WAL and manifest inspection: records, torn tails, edits, resulting levels."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from lsm import filenames
from lsm.errors import CorruptionError
from lsm.fs import FileSystem
from lsm.inspect.common import READ_ERRORS, Problem, render_bytes
from lsm.keys import kind_name
from lsm.manifest import FileMeta, VersionEdit, read_current
from lsm.options import Options
from lsm.record_log import HEADER_SIZE, LogContents, read_log
from lsm.version import LsmVersion
from lsm.wal import decode_batch


def _not_ours(result: LogContents, what: str) -> str:
    d = result.damage
    if d is not None and not d.torn and not result.records and d.offset == 0:
        return f" (not a ringkv {what})"
    return ""


# -- WAL ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WalOp:
    seq: int
    kind: str
    key: bytes
    value_bytes: int


@dataclass(frozen=True, slots=True)
class WalRecord:
    offset: int
    first_seq: int
    ops: list[WalOp]


@dataclass(slots=True)
class WalReport:
    path: str
    file_bytes: int = 0
    records: list[WalRecord] = field(default_factory=list)
    record_count: int = 0
    operations: int = 0
    last_seq: int = 0
    #: end of the last good record
    valid_end: int = 0
    #: where a torn tail (an unfinished last append) starts; recovery cuts it off
    torn_tail: int | None = None
    torn_reason: str | None = None
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def wal(fs: FileSystem, path: str, keep_records: bool = True) -> WalReport:
    """Every batch of the WAL at ``path``; damage before the tail is the
    report's problem (records before it are still listed)."""
    report = WalReport(path)
    try:
        data = fs.read_file(path)
    except READ_ERRORS as exc:
        report.problem = Problem.of(exc, path)
        return report
    report.file_bytes = len(data)
    result = read_log(data, path, strict=False)
    for record in result.records:
        try:
            first_seq, ops = decode_batch(record.payload)
        except ValueError as exc:
            report.problem = Problem(path, record.offset + HEADER_SIZE, str(exc))
            return report
        report.record_count += 1
        report.operations += len(ops)
        report.valid_end = record.offset + HEADER_SIZE + len(record.payload)
        if ops:
            report.last_seq = max(report.last_seq, first_seq + len(ops) - 1)
        if keep_records:
            report.records.append(WalRecord(record.offset, first_seq, [
                WalOp(first_seq + i, kind_name(kind), key, len(value))
                for i, (kind, key, value) in enumerate(ops)
            ]))
    d = result.damage
    if d is not None:
        if d.torn:
            report.torn_tail = d.offset
            report.torn_reason = d.reason
        else:
            report.problem = Problem(path, d.offset, d.reason + _not_ours(result, "WAL"))
    return report


def is_dir(fs: FileSystem, path: str) -> bool:
    try:
        fs.listdir(path)
    except READ_ERRORS:
        return False
    return True


# -- manifest -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EditInfo:
    offset: int
    edit: VersionEdit


@dataclass(frozen=True, slots=True)
class LevelInfo:
    level: int
    bytes: int
    files: list[FileMeta]


@dataclass(slots=True)
class ManifestReport:
    path: str
    current: str | None = None
    edits: list[EditInfo] = field(default_factory=list)
    levels: list[LevelInfo] = field(default_factory=list)
    log_number: int | None = None
    next_file_number: int | None = None
    last_seq: int | None = None
    torn_tail: int | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def live_tables(self) -> list[tuple[int, FileMeta]]:
        return [(lv.level, f) for lv in self.levels for f in lv.files]


def manifest(fs: FileSystem, target: str) -> ManifestReport:
    """Edits of the manifest ``target`` names (a database directory, whose
    CURRENT is followed, or a MANIFEST file) and the levels they produce."""
    report = ManifestReport(target)
    if is_dir(fs, target):
        try:
            report.current = read_current(fs, target)
        except READ_ERRORS as exc:
            report.problems.append(
                Problem.of(exc, os.path.join(target, filenames.CURRENT))
            )
            return report
        report.path = os.path.join(target, report.current)
    path = report.path
    try:
        data = fs.read_file(path)
    except READ_ERRORS as exc:
        report.problems.append(Problem.of(exc, path))
        return report
    result = read_log(data, path, strict=False)
    for record in result.records:
        try:
            report.edits.append(EditInfo(record.offset, VersionEdit.decode(record.payload)))
        except ValueError as exc:
            report.problems.append(Problem(path, record.offset + HEADER_SIZE, str(exc)))
            break
    d = result.damage
    if d is not None:
        if d.torn:
            report.torn_tail = d.offset
        else:
            report.problems.append(
                Problem(path, d.offset, d.reason + _not_ours(result, "manifest"))
            )
    if not report.edits and not report.problems:
        report.problems.append(Problem(path, 0, "manifest holds no complete edit"))
    _replay(report)
    return report


def _replay(report: ManifestReport) -> None:
    added = [level for e in report.edits for level, _ in e.edit.added]
    num_levels = max([Options().num_levels, *(n + 1 for n in added)])
    version = LsmVersion.empty(num_levels)
    for info in report.edits:
        e = info.edit
        try:
            version = version.apply(e, report.path)
        except CorruptionError as exc:
            report.problems.append(Problem(report.path, info.offset, exc.reason))
        report.log_number = e.log_number if e.log_number is not None else report.log_number
        if e.next_file_number is not None:
            report.next_file_number = e.next_file_number
        if e.last_seq is not None:
            report.last_seq = e.last_seq
    last = version.last_nonempty_level()
    report.levels = [
        LevelInfo(n, version.level_bytes(n), list(version.levels[n])) for n in range(last + 1)
    ]
    for n, files in enumerate(version.levels[1:], start=1):
        for a, b in itertools.pairwise(files):
            if a.largest >= b.smallest:
                report.problems.append(Problem(
                    report.path, None,
                    f"level {n} files {a.number} and {b.number} overlap: "
                    f"'{render_bytes(a.largest)}' (largest of {a.number}) >= "
                    f"'{render_bytes(b.smallest)}' "
                    f"(smallest of {b.number})",
                ))
