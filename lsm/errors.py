"""Typed errors of the storage engine.

One class per failure kind, as LevelDB's Status has one code per kind, so that
callers (the shard server, the CLI) can translate each to their own vocabulary
at their boundary without parsing messages.
"""

from __future__ import annotations


class LSMError(Exception):
    """Base class of every error the engine raises on purpose."""


class CorruptionError(LSMError):
    """Data read from disk failed a check: checksum, magic, length or order.

    ``path`` and ``offset`` say where; ``reason`` says what was expected and
    what was found.
    """

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"corruption in {where}: {reason}")


class StorageIOError(LSMError):
    """The operating system refused an I/O operation (EIO and friends).

    The engine turns read-only until the condition clears; reads keep working.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class DiskFullError(StorageIOError):
    """A write failed because the device has no space left (ENOSPC)."""


class ClosedError(LSMError):
    """The database was used after ``close()``."""


class InvalidArgumentError(LSMError, ValueError):
    """A caller passed something the engine cannot take: a key that is not
    bytes or is too long, a value too large, a bad option."""


class LockedError(LSMError):
    """Another process holds the database directory's LOCK file."""


#: LevelDB's name for the kind; ``lsm.errors.IOError`` reads naturally at call sites.
IOError = StorageIOError
