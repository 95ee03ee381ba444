"""Names of the files in a database directory.

    CURRENT            name of the live manifest, switched atomically
    LOCK               held by the process that has the database open
    MANIFEST-NNNNNN    log of version edits
    NNNNNN.log         write-ahead log of one memtable
    NNNNNN.sst         sorted table
    CURRENT.tmp        CURRENT being replaced; deleted on open
"""

from __future__ import annotations

import enum
import os


class FileType(enum.Enum):
    CURRENT = "current"
    LOCK = "lock"
    MANIFEST = "manifest"
    WAL = "wal"
    TABLE = "table"
    TEMP = "temp"


def wal_name(number: int) -> str:
    return f"{number:06d}.log"


def table_name(number: int) -> str:
    return f"{number:06d}.sst"


def manifest_name(number: int) -> str:
    return f"MANIFEST-{number:06d}"


CURRENT = "CURRENT"
LOCK = "LOCK"


def wal_path(dirname: str, number: int) -> str:
    return os.path.join(dirname, wal_name(number))


def table_path(dirname: str, number: int) -> str:
    return os.path.join(dirname, table_name(number))


def manifest_path(dirname: str, number: int) -> str:
    return os.path.join(dirname, manifest_name(number))


def parse(name: str) -> tuple[FileType, int] | None:
    """Classify a file name; ``None`` for files that are not ours."""
    if name == CURRENT:
        return FileType.CURRENT, 0
    if name == LOCK:
        return FileType.LOCK, 0
    if name == CURRENT + ".tmp":  # the only temp file the engine writes
        return FileType.TEMP, 0
    if name.startswith("MANIFEST-") and _digits(name[9:]):
        return FileType.MANIFEST, int(name[9:])
    stem, _, ext = name.partition(".")
    if _digits(stem):
        if ext == "log":
            return FileType.WAL, int(stem)
        if ext == "sst":
            return FileType.TABLE, int(stem)
    return None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
