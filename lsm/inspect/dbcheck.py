"""``db check``: a whole database directory, without opening the database.

Nothing is locked or written, so it can run next to a live node; a file a
compaction deletes meanwhile shows up as missing, and a rerun settles it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lsm import filenames
from lsm.filenames import FileType
from lsm.fs import FileSystem
from lsm.inspect.common import READ_ERRORS, Problem, render_bytes
from lsm.inspect.logs import LevelInfo, is_dir, manifest, wal
from lsm.inspect.sst import Progress, properties, verify
from lsm.manifest import FileMeta


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    level: int | None  # tables only
    bytes: int | None
    ok: bool
    note: str = ""


@dataclass(slots=True)
class DbReport:
    path: str
    current: str | None = None
    levels: list[LevelInfo] = field(default_factory=list)
    tables: list[FileCheck] = field(default_factory=list)
    wals: list[FileCheck] = field(default_factory=list)
    #: files no live version, WAL or CURRENT refers to (left for the next open to remove)
    unreferenced: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def table_bytes(fs: FileSystem, path: str) -> int:
    """Bytes of the tables the live manifest references (for a progress bar)."""
    report = manifest(fs, path)
    return sum(f.size for _, f in report.live_tables())


def check(fs: FileSystem, path: str, progress: Progress | None = None) -> DbReport:
    report = DbReport(path)
    if not is_dir(fs, path):
        report.problems.append(Problem(path, None, "not a directory"))
        return report
    names = fs.listdir(path)
    if filenames.CURRENT not in names:
        report.problems.append(
            Problem(path, None, "no CURRENT file (not a ringkv database directory)")
        )
        return report
    m = manifest(fs, path)
    report.current = m.current
    report.levels = m.levels
    report.problems += m.problems
    if m.current is None:
        return report
    referenced = {filenames.CURRENT, filenames.LOCK, m.current}
    for level, meta in m.live_tables():
        name = filenames.table_name(meta.number)
        referenced.add(name)
        report.tables.append(_check_table(fs, path, level, meta, report, progress=progress))
    log_number = m.log_number or 0
    for name in names:
        parsed = filenames.parse(name)
        if parsed is None or parsed[0] is not FileType.WAL or parsed[1] < log_number:
            continue
        referenced.add(name)
        w = wal(fs, os.path.join(path, name), keep_records=False)
        note = f"{w.record_count} records, {w.operations} operations"
        if w.torn_tail is not None:
            note += f", torn tail at offset {w.torn_tail} (recovery drops it)"
        if w.problem is not None:
            report.problems.append(w.problem)
        report.wals.append(FileCheck(name, None, w.file_bytes, w.ok, note))
    report.unreferenced = [n for n in names if n not in referenced]
    return report


def _check_table(
    fs: FileSystem, dirname: str, level: int, meta: FileMeta,
    report: DbReport, *, progress: Progress | None,
) -> FileCheck:
    name = filenames.table_name(meta.number)
    tpath = os.path.join(dirname, name)
    if not fs.exists(tpath):
        report.problems.append(Problem(
            tpath, None, f"missing: level {level} of {report.current} references it",
        ))
        return FileCheck(name, level, None, False, "missing")
    result = verify(fs, tpath, progress)
    report.problems += result.problems
    if result.more_problems:
        report.problems.append(Problem(tpath, None, f"… and {result.more_problems} more"))
    if not result.ok:
        return FileCheck(name, level, result.file_bytes or None, False, "corrupt")
    ok = True
    try:
        p = properties(fs, tpath).properties
    except READ_ERRORS as exc:  # deleted or replaced since verify
        report.problems.append(Problem.of(exc, tpath))
        return FileCheck(name, level, None, False, "unreadable")
    for what, said, found in (
        ("size", meta.size, p.file_bytes),
        ("smallest key", meta.smallest, p.smallest_key),
        ("largest key", meta.largest, p.largest_key),
        ("entries", meta.entries, p.entries),
        ("merge operands", meta.merges, p.merge_operands),
    ):
        if said != found:
            ok = False
            shown = [render_bytes(v) if isinstance(v, bytes) else str(v) for v in (said, found)]
            report.problems.append(Problem(
                tpath, None, f"{report.current} says {what} {shown[0]}, the table has {shown[1]}",
            ))
    return FileCheck(name, level, p.file_bytes, ok, f"{result.entries} entries")
