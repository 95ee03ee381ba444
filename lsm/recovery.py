"""Opening a database: manifest replay, WAL replay, clean-up.

Steps, in order:

1. No CURRENT: create an empty database (refused if tables or WALs exist,
   since that means CURRENT was lost, not that the directory is new).
2. Replay the manifest named by CURRENT into a VersionSet; check that levels
   1+ do not overlap and that every table it names exists. If tables hold
   merge operands, the configured merge operator must have the name the
   manifest recorded (InvalidArgumentError otherwise).
3. Replay every WAL numbered >= the manifest's log number, oldest first, each
   into its own memtable (merge operands in it are checked the same way);
   truncate a torn tail (the WAL module warns) and fsync what is left. The
   recovered memtables become immutable and are flushed in the background,
   so opening costs one read of the WALs, not a rewrite of them.
4. Start a new WAL, write a fresh manifest holding a snapshot of the version,
   switch CURRENT to it, and delete what nothing references any more.

The result is a :class:`Recovered` record: the version set and what the
write path starts from. Recovery builds these; it touches no engine object.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsm import filenames
from lsm.errors import CorruptionError, InvalidArgumentError
from lsm.filenames import FileType
from lsm.fs import FileSystem
from lsm.keys import KIND_MERGE, Op
from lsm.manifest import ManifestWriter, VersionEdit, read_current, set_current
from lsm.memtable import MemTable
from lsm.options import Options
from lsm.version_set import VersionSet
from lsm.wal import WalWriter, replay_file

if TYPE_CHECKING:
    from lsm.options import MergeOperator

log = logging.getLogger("lsm.recovery")


@dataclass(frozen=True, slots=True)
class Recovered:
    """What an open starts from."""

    versions: VersionSet  # manifest replayed, a fresh manifest started
    wal: WalWriter  # the new, empty WAL that takes the writes
    memtable: MemTable  # empty, logged in ``wal``
    immutables: tuple[MemTable, ...]  # replayed WALs, newest first, to be flushed
    wals: tuple[WalWriter, ...]  # every live WAL, ``wal`` included
    last_seq: int


def recover(options: Options, path: str) -> Recovered:
    fs = options.fs
    names = fs.listdir(path)
    parsed = {name: filenames.parse(name) for name in names}
    if filenames.CURRENT not in names:
        stray = [n for n, p in parsed.items() if p and p[0] in (FileType.TABLE, FileType.WAL)]
        if stray:
            raise CorruptionError(
                os.path.join(path, filenames.CURRENT), None,
                f"CURRENT is missing but the directory holds {len(stray)} data files "
                f"(e.g. {stray[0]}); refusing to create a new database over them",
            )
        if not options.create_if_missing:
            raise InvalidArgumentError(f"no database at {path} and create_if_missing is off")
        _create(fs, path)
        names = fs.listdir(path)
        parsed = {name: filenames.parse(name) for name in names}

    manifest_file = read_current(fs, path)
    versions = VersionSet.replay(options, path, manifest_file)
    version = versions.current
    merge_check = _MergeCheck(path, versions.recorded_merge_operator, options.merge_operator)
    if any(f.merges for files in version.levels for f in files):
        merge_check.found("its tables hold")
    for files in version.levels:
        for f in files:
            if filenames.table_name(f.number) not in names:
                raise CorruptionError(
                    filenames.table_path(path, f.number), None,
                    f"table {f.number} is referenced by {manifest_file} but missing",
                )
    versions.skip_file_numbers(p[1] for p in parsed.values() if p is not None)

    wal_numbers = sorted(
        p[1] for p in parsed.values()
        if p and p[0] is FileType.WAL and p[1] >= versions.log_number
    )
    last_seq = versions.last_seq
    recovered: list[MemTable] = []
    empty_wals: list[int] = []
    for number in wal_numbers:
        mem = MemTable(number, options.merge_operator)
        wal_path = filenames.wal_path(path, number)
        result = replay_file(fs, wal_path, merge_check.guard(mem.add_batch, wal_path))
        last_seq = max(last_seq, result.last_seq)
        if result.torn_tail is not None:
            fs.truncate(wal_path, result.valid_end)
        if len(mem):
            recovered.append(mem)
        else:
            empty_wals.append(number)

    wal_number = versions.new_file_number()
    wal = WalWriter(fs.create(filenames.wal_path(path, wal_number)), wal_number)
    wals = [wal]
    for mem in recovered:
        # Reopen for the flush job, which closes it after flushing. Synced
        # now: a killed process leaves its last records in the OS's cache,
        # and they must be durable before anything written to the new WAL is.
        old = WalWriter(fs.open_append(filenames.wal_path(path, mem.wal_number)), mem.wal_number)
        old.sync()
        wals.append(old)

    oldest_needed = recovered[0].wal_number if recovered else wal_number
    # Also makes the new WAL's name durable (CURRENT's rename syncs the directory).
    manifest_number = versions.start_manifest(oldest_needed, last_seq)

    live = version.file_numbers()
    for name, p in parsed.items():
        if p is None:
            continue
        kind, number = p
        stale = (
            (kind is FileType.MANIFEST and number != manifest_number)
            or (kind is FileType.WAL and (number < oldest_needed or number in empty_wals))
            or (kind is FileType.TABLE and number not in live)
            or kind is FileType.TEMP
        )
        if stale:
            log.info("%s: deleting obsolete %s", path, name)
            # A temp name may have been reused and renamed by this very open.
            with contextlib.suppress(FileNotFoundError):
                fs.remove(os.path.join(path, name))
    fs.sync_dir(path)
    return Recovered(
        versions=versions,
        wal=wal,
        memtable=MemTable(wal_number, options.merge_operator),
        immutables=tuple(reversed(recovered)),
        wals=tuple(wals),
        last_seq=last_seq,
    )


class _MergeCheck:
    """Operands found on open must belong to the configured merge operator:
    the one whose name the manifest recorded at the open that wrote them."""

    def __init__(self, path: str, recorded: str | None, configured: MergeOperator | None) -> None:
        self._path = path
        self._recorded = recorded
        self._configured = None if configured is None else configured.name

    @property
    def ok(self) -> bool:
        return self._configured is not None and self._recorded in (None, self._configured)

    def found(self, what: str) -> None:
        if self.ok:
            return
        written = ("an unrecorded merge operator" if self._recorded is None
                   else f"merge operator {self._recorded!r}")
        if self._configured is None:
            wanted = (f"open it with Options.merge_operator named {self._recorded!r}"
                      if self._recorded is not None else "open it with that merge operator")
            raise InvalidArgumentError(
                f"{self._path}: {what} merge operands of {written}, and "
                f"Options.merge_operator is not set; {wanted}"
            )
        raise InvalidArgumentError(
            f"{self._path}: {what} merge operands of {written}, but "
            f"Options.merge_operator is named {self._configured!r}"
        )

    def guard(
        self, apply: Callable[[int, list[Op]], None], wal_path: str
    ) -> Callable[[int, list[Op]], None]:
        if self.ok:
            return apply

        def checked(first_seq: int, ops: list[Op]) -> None:
            if any(op[0] == KIND_MERGE for op in ops):
                self.found(f"its WAL {os.path.basename(wal_path)} holds")
            apply(first_seq, ops)

        return checked


def _create(fs: FileSystem, path: str) -> None:
    edit = VersionEdit(log_number=0, next_file_number=2, last_seq=0)
    writer = ManifestWriter.create(fs, path, 1, [edit])
    writer.close()
    set_current(fs, path, 1)
