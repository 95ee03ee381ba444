"""The table layout and the manifest that makes it durable (LevelDB's
VersionSet).

A :class:`VersionSet` owns the current :class:`~lsm.version.LsmVersion`, the
manifest writer, the log number (WALs below it are obsolete), the file-number
counter, the compaction pointers and the largest sequence number the manifest
recorded. Every change of the layout goes through :meth:`log_and_apply`: the
edit is appended and synced to the manifest, then the new version is handed to
a ``publish`` callback, so versions reach readers in the order they were
logged.

Locks (their place in the engine's order is written in :mod:`lsm.db`):
``_lock`` serializes :meth:`log_and_apply`; ``publish`` runs under it.
``_numbers`` guards the file-number counter and takes nothing else, so the
write path may draw a number while it holds its own lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

from lsm import compaction as policy
from lsm.errors import StorageIOError
from lsm.manifest import ManifestWriter, VersionEdit, read_manifest, set_current
from lsm.options import Options
from lsm.version import LsmVersion

log = logging.getLogger("lsm.version_set")


class VersionSet:
    def __init__(
        self,
        options: Options,
        path: str,
        version: LsmVersion,
        *,
        log_number: int = 0,
        next_file: int = 2,
        last_seq: int = 0,
        pointers: dict[int, bytes] | None = None,
        recorded_operator: str | None = None,
    ) -> None:
        self._options = options  # only its open-time knobs: levels, merge operator
        self._fs = options.fs
        self._path = path
        self._lock = threading.Lock()
        self._numbers = threading.Lock()
        self._current = version
        self._manifest: ManifestWriter | None = None  # see start_manifest
        self._manifest_broken = False
        self._log_number = log_number
        self._next_file = next_file
        self._last_seq = last_seq
        self._pointers = dict(pointers or {})
        self._recorded_operator = recorded_operator

    @classmethod
    def replay(cls, options: Options, path: str, manifest_file: str) -> VersionSet:
        """The layout the manifest ``manifest_file`` describes, with levels
        1+ checked for overlaps. Call :meth:`start_manifest` before logging
        edits."""
        source = os.path.join(path, manifest_file)
        version = LsmVersion.empty(options.num_levels)
        log_number, next_file, last_seq = 0, 2, 0
        pointers: dict[int, bytes] = {}
        recorded: str | None = None
        for edit in read_manifest(options.fs, source):
            version = version.apply(edit, source)
            if edit.log_number is not None:
                log_number = edit.log_number
            if edit.next_file_number is not None:
                next_file = edit.next_file_number
            if edit.last_seq is not None:
                last_seq = max(last_seq, edit.last_seq)
            pointers.update(edit.compact_pointers)
            if edit.merge_operator is not None:
                recorded = edit.merge_operator
        version.check_levels(source)
        return cls(
            options, path, version, log_number=log_number, next_file=next_file,
            last_seq=last_seq, pointers=pointers, recorded_operator=recorded,
        )

    # -- read-only views ------------------------------------------------------
    @property
    def current(self) -> LsmVersion:
        return self._current

    @property
    def log_number(self) -> int:
        return self._log_number

    @property
    def last_seq(self) -> int:
        """The largest sequence number the manifest recorded."""
        return self._last_seq

    @property
    def next_file_number(self) -> int:
        return self._next_file

    @property
    def recorded_merge_operator(self) -> str | None:
        """The merge operator named at the open that wrote the manifest."""
        return self._recorded_operator

    def pick_compaction(self, options: Options) -> policy.CompactionTask | None:
        """The most urgent compaction of the current version. Takes no lock:
        callers hold the write path's lock (see lsm.db)."""
        return policy.pick_compaction(self._current, options, self._pointers)

    # -- file numbers ---------------------------------------------------------
    def new_file_number(self) -> int:
        with self._numbers:
            number = self._next_file
            self._next_file += 1
            return number

    def reserve_file_numbers(self, count: int) -> int:
        """A block of ``count`` numbers; returns the first."""
        with self._numbers:
            first = self._next_file
            self._next_file += count
            return first

    def skip_file_numbers(self, used: Iterable[int]) -> None:
        """Never hand out a number already ``used`` by a file on disk."""
        with self._numbers:
            self._next_file = max([self._next_file, *(n + 1 for n in used)])

    # -- the manifest ---------------------------------------------------------
    def start_manifest(self, log_number: int, last_seq: int) -> int:
        """Write a fresh manifest holding a snapshot of the current version and
        switch CURRENT to it; returns its number. Done once per open."""
        with self._lock:
            self._last_seq = max(self._last_seq, last_seq)
            number = self._write_snapshot(self._current, log_number)
            self._log_number = log_number
            return number

    def log_and_apply(
        self, edit: VersionEdit, publish: Callable[[LsmVersion], None]
    ) -> LsmVersion:
        """Log ``edit`` durably in the manifest, make the result the current
        version and hand it to ``publish`` (under ``_lock``)."""
        with self._lock:
            version = self._current.apply(edit)
            log_number = self._log_number
            if edit.log_number is not None:
                log_number = max(log_number, edit.log_number)
            # Hints, kept even if the append fails: a higher last_seq bounds
            # numbers that were used anyway; a pointer only steers picking.
            if edit.last_seq is not None:
                self._last_seq = max(self._last_seq, edit.last_seq)
            self._pointers.update(edit.compact_pointers)
            if self._manifest is None or self._manifest_broken:
                self._roll_manifest(version, log_number)
            else:
                try:
                    self._manifest.append(edit)
                except StorageIOError:
                    self._manifest_broken = True
                    raise
            self._log_number = log_number
            self._current = version
            publish(version)
        return version

    def close(self) -> None:
        """Close the manifest (every edit was synced when it was appended)."""
        if self._manifest is not None:
            try:
                self._manifest.close()
            except StorageIOError as exc:
                log.warning("closing %s: %s", self._path, exc)

    def _roll_manifest(self, version: LsmVersion, log_number: int) -> None:
        """Start a new manifest holding a snapshot of ``version``, because the
        last append to the old one failed and may have left a partial frame.
        ``_lock`` held."""
        old = self._manifest
        number = self._write_snapshot(version, log_number)
        if old is not None:
            try:
                old.close()
                self._fs.remove(old.path)
            except (StorageIOError, FileNotFoundError) as exc:  # removed on the next open
                log.warning("could not remove old manifest %s: %s", old.path, exc)
        log.warning("%s: switched to manifest %d after a failed append", self._path, number)

    def _write_snapshot(self, version: LsmVersion, log_number: int) -> int:
        """A new manifest holding ``version`` whole, named by CURRENT."""
        number = self.new_file_number()
        op = self._options.merge_operator
        snapshot = VersionEdit(
            log_number=log_number,
            next_file_number=self._next_file,
            last_seq=self._last_seq,
            added=tuple((n, f) for n, files in enumerate(version.levels) for f in files),
            compact_pointers=tuple(sorted(self._pointers.items())),
            merge_operator=None if op is None else op.name,
        )
        self._manifest = ManifestWriter.create(self._fs, self._path, number, [snapshot])
        set_current(self._fs, self._path, number)
        self._manifest_broken = False
        return number
