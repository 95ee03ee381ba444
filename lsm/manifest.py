"""The manifest: an append-only log of version edits, and the CURRENT file.

``MANIFEST-NNNNNN`` uses the record_log frame format; each frame's payload
is one version edit, a msgpack map (format in docs/formats/manifest.md)::

    {"v": 1,                         format version of the edit (2: see below)
     "log": int,                     optional: WALs below this number are obsolete
     "next": int,                    optional: next file number to hand out
     "seq": int,                     optional: last sequence number in use
     "add": [[level, file], ...],    tables added; file = [number, size,
                                     smallest, largest, smallest_seq,
                                     largest_seq, entries, tombstones
                                     (, merge operands)]
     "del": [[level, number], ...],  tables removed
     "ptr": [[level, key], ...],     round-robin compaction pointers
     "merge": str}                   optional: name of the merge operator

An edit that names a merge operator or adds a table holding merge operands
(a ninth file field, written only when non-zero) is format 2, which readers
of format 1 refuse instead of misreading; every other edit stays format 1.

A new manifest starts with a snapshot edit that adds every live table, so
manifests never grow without bound: the engine writes a fresh one on every
open. ``CURRENT`` holds the name of the live manifest and a newline; it is
replaced atomically (temp file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import msgpack

from lsm import filenames
from lsm.errors import CorruptionError
from lsm.fs import FileSystem, WritableFile
from lsm.record_log import HEADER_SIZE, encode_frame, read_log

EDIT_FORMAT = 1
EDIT_FORMAT_MERGE = 2

log = logging.getLogger("lsm.manifest")


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the manifest knows about one SSTable."""

    number: int
    size: int
    smallest: bytes
    largest: bytes
    smallest_seq: int
    largest_seq: int
    entries: int
    tombstones: int
    merges: int = 0  # merge operand entries

    def encode(self) -> list[Any]:
        out = [
            self.number, self.size, self.smallest, self.largest,
            self.smallest_seq, self.largest_seq, self.entries, self.tombstones,
        ]
        return [*out, self.merges] if self.merges else out

    @classmethod
    def decode(cls, raw: Any) -> FileMeta:
        if not isinstance(raw, list) or len(raw) not in (8, 9):
            raise ValueError(f"file entry must be a list of 8 or 9 fields, got {raw!r:.80}")
        number, size, smallest, largest, sseq, lseq, entries, tombs, *rest = raw
        merges = rest[0] if rest else 0
        for name, v in (("number", number), ("size", size), ("smallest_seq", sseq),
                        ("largest_seq", lseq), ("entries", entries), ("tombstones", tombs),
                        ("merges", merges)):
            _nonneg(v, f"file field {name}")
        if not isinstance(smallest, bytes) or not isinstance(largest, bytes):
            raise ValueError("file key range must be bytes")
        if smallest > largest:
            raise ValueError(f"file {number}: smallest key sorts after largest key")
        return cls(number, size, smallest, largest, sseq, lseq, entries, tombs, merges)


@dataclass(frozen=True, slots=True)
class VersionEdit:
    log_number: int | None = None
    next_file_number: int | None = None
    last_seq: int | None = None
    added: tuple[tuple[int, FileMeta], ...] = ()
    deleted: tuple[tuple[int, int], ...] = ()
    compact_pointers: tuple[tuple[int, bytes], ...] = ()
    # The merge operator configured when the database was opened (snapshot
    # edits only): operands found on the next open must belong to it.
    merge_operator: str | None = None

    def encode(self) -> bytes:
        merges = self.merge_operator is not None or any(f.merges for _, f in self.added)
        body: dict[str, Any] = {"v": EDIT_FORMAT_MERGE if merges else EDIT_FORMAT}
        if self.log_number is not None:
            body["log"] = self.log_number
        if self.next_file_number is not None:
            body["next"] = self.next_file_number
        if self.last_seq is not None:
            body["seq"] = self.last_seq
        if self.added:
            body["add"] = [[level, f.encode()] for level, f in self.added]
        if self.deleted:
            body["del"] = [[level, number] for level, number in self.deleted]
        if self.compact_pointers:
            body["ptr"] = [[level, key] for level, key in self.compact_pointers]
        if self.merge_operator is not None:
            body["merge"] = self.merge_operator
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, payload: bytes) -> VersionEdit:
        """Raises ValueError naming what is wrong."""
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"edit is not valid msgpack: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(f"edit must be a map, got {type(body).__name__}")
        if body.get("v") not in (EDIT_FORMAT, EDIT_FORMAT_MERGE):
            raise ValueError(f"unsupported edit format {body.get('v')!r}")
        unknown = set(body) - {"v", "log", "next", "seq", "add", "del", "ptr", "merge"}
        if unknown:
            raise ValueError(f"edit has unknown fields {sorted(map(str, unknown))}")
        return cls(
            log_number=_opt_int(body, "log"),
            next_file_number=_opt_int(body, "next"),
            last_seq=_opt_int(body, "seq"),
            added=tuple((_level(p), FileMeta.decode(p[1])) for p in _pairs(body, "add")),
            deleted=tuple((_level(p), _nonneg(p[1], "deleted file")) for p in _pairs(body, "del")),
            compact_pointers=tuple((_level(p), _bytes(p[1])) for p in _pairs(body, "ptr")),
            merge_operator=_opt_str(body, "merge"),
        )


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    return None if v is None else _nonneg(v, name)


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{name} must be a string, got {type(v).__name__}")
    return v


def _nonneg(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r:.40}")
    return v


def _pairs(body: dict[str, Any], name: str) -> list[list[Any]]:
    v = body.get(name, [])
    if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
        raise ValueError(f"{name} must be a list of pairs")
    return v


def _level(pair: list[Any]) -> int:
    level = _nonneg(pair[0], "level")
    if level > 64:
        raise ValueError(f"level {level} out of range")
    return level


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return v


class ManifestWriter:
    """Appends edits to the live manifest; every append is synced before it
    returns, because the edit it carries is what makes a flush or compaction
    real."""

    def __init__(self, fs: FileSystem, path: str, file: WritableFile) -> None:
        self._fs = fs
        self.path = path
        self._file = file

    @classmethod
    def create(
        cls, fs: FileSystem, dirname: str, number: int, edits: list[VersionEdit]
    ) -> ManifestWriter:
        path = filenames.manifest_path(dirname, number)
        f = fs.create(path)
        try:
            for edit in edits:
                f.append(encode_frame(edit.encode()))
            f.sync()
        except BaseException:
            f.discard_buffer()
            f.close()
            raise
        return cls(fs, path, f)

    def append(self, edit: VersionEdit) -> None:
        """Append and sync one edit. After a failure this manifest may end in
        a partial frame, so the caller must not append to it again: it rolls
        to a new manifest instead (see ``DB.install``)."""
        f = self._file
        try:
            f.append(encode_frame(edit.encode()))
            f.sync()
        except BaseException:
            f.discard_buffer()
            raise

    def size(self) -> int:
        return self._file.size()

    def close(self) -> None:
        self._file.close()


def read_manifest(fs: FileSystem, path: str, strict: bool = True) -> list[VersionEdit]:
    """Every edit of the manifest at ``path``, oldest first. A torn last edit
    (a crash during an append) is ignored: it was never acknowledged."""
    return [edit for _, edit in read_manifest_records(fs, path, strict)[0]]


def read_manifest_records(
    fs: FileSystem, path: str, strict: bool = True
) -> tuple[list[tuple[int, VersionEdit]], str | None]:
    """``([(offset, edit)...], damage description or None)`` for tools."""
    data = fs.read_file(path)
    result = read_log(data, path, strict=strict)
    edits: list[tuple[int, VersionEdit]] = []
    for record in result.records:
        try:
            edits.append((record.offset, VersionEdit.decode(record.payload)))
        except ValueError as exc:
            raise CorruptionError(path, record.offset + HEADER_SIZE, str(exc)) from None
    if not edits and strict:
        raise CorruptionError(path, 0, "manifest holds no complete edit")
    damage = None
    if result.damage is not None:
        d = result.damage
        damage = f"{'torn tail' if d.torn else 'corruption'} at offset {d.offset}: {d.reason}"
        log.warning("%s: ignoring %s (an edit whose append never finished)", path, damage)
    return edits, damage


def set_current(fs: FileSystem, dirname: str, number: int) -> None:
    name = filenames.manifest_name(number)
    fs.write_file_atomic(os.path.join(dirname, filenames.CURRENT), name.encode() + b"\n")


def read_current(fs: FileSystem, dirname: str) -> str:
    """The manifest file name CURRENT points at."""
    path = os.path.join(dirname, filenames.CURRENT)
    raw = fs.read_file(path)
    name = raw.decode("ascii", "replace").strip()
    parsed = filenames.parse(name)
    if not raw.endswith(b"\n") or parsed is None or parsed[0] is not filenames.FileType.MANIFEST:
        raise CorruptionError(
            path, 0, f"expected 'MANIFEST-NNNNNN\\n', found {raw[:40]!r}"
        )
    if not fs.exists(os.path.join(dirname, name)):
        raise CorruptionError(path, 0, f"CURRENT names {name}, which does not exist")
    return name
