"""The file-system interface: the only module of the engine that touches the OS.

Every open, write, fsync, rename and delete of the engine goes through a
:class:`FileSystem`, as LevelDB's ``Env`` and Pebble's ``vfs.FS``. Production
uses :class:`OsFileSystem`; tests use :class:`lsm.faultfs.FaultFileSystem`,
which can drop unsynced data, tear the last write, and inject ENOSPC or EIO.

Files are created readable by their owner only (0600) and directories 0700,
as Redis and PostgreSQL keep their data: an engine's files hold the data.

This is also the boundary where ``OSError`` becomes an engine error:
ENOSPC/EDQUOT become :class:`DiskFullError`, anything else
:class:`StorageIOError`, both naming the operation and the path.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

from lsm.errors import DiskFullError, LockedError, StorageIOError

_FULL_ERRNOS = frozenset({errno_mod.ENOSPC, errno_mod.EDQUOT})
FILE_MODE = 0o600
DIR_MODE = 0o700


def translate_os_error(exc: OSError, op: str, path: str) -> StorageIOError:
    """Turn an OSError into the engine's error kind, naming what failed."""
    what = f"{op} {path}: {exc.strerror or exc}"
    if exc.errno in _FULL_ERRNOS:
        return DiskFullError(f"disk full: {what}", exc.errno)
    return StorageIOError(f"I/O error: {what}", exc.errno)


@contextmanager
def os_errors(op: str, path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise translate_os_error(exc, op, path) from exc


class WritableFile(ABC):
    """A file opened for appending. ``append`` buffers; ``flush`` hands the
    buffer to the OS (survives a process kill); ``sync`` makes it durable
    (survives a power cut)."""

    path: str

    @abstractmethod
    def append(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def sync(self) -> None: ...

    @abstractmethod
    def sync_flushed(self) -> None:
        """fsync what earlier ``flush`` calls handed to the OS, without touching
        the buffer; safe to call from another thread while one appends."""

    @abstractmethod
    def discard_buffer(self) -> None:
        """Drop bytes appended but not yet flushed (after a failed write)."""

    @abstractmethod
    def size(self) -> int:
        """Bytes appended so far (buffered or not)."""

    @abstractmethod
    def close(self) -> None: ...


class RandomAccessFile(ABC):
    path: str

    @abstractmethod
    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset``; fewer only at end of file."""

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


class FileLock(ABC):
    @abstractmethod
    def release(self) -> None: ...


class FileSystem(ABC):
    @abstractmethod
    def create(self, path: str) -> WritableFile:
        """Create (or truncate) ``path`` for writing."""

    @abstractmethod
    def open_append(self, path: str) -> WritableFile:
        """Open an existing file and append at its end."""

    @abstractmethod
    def open_read(self, path: str) -> RandomAccessFile: ...

    @abstractmethod
    def read_file(self, path: str) -> bytes: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def file_size(self, path: str) -> int: ...

    @abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abstractmethod
    def mkdirs(self, path: str) -> None: ...

    @abstractmethod
    def remove(self, path: str) -> None: ...

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src`` (durable after ``sync_dir``)."""

    @abstractmethod
    def truncate(self, path: str, size: int) -> None: ...

    @abstractmethod
    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory ``path`` durable."""

    @abstractmethod
    def lock(self, path: str) -> FileLock:
        """Take an exclusive lock on ``path``; raise LockedError if held."""

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data``: write a temp file, fsync, rename,
        fsync the directory. A crash leaves either the old or the new file."""
        tmp = path + ".tmp"
        f = self.create(tmp)
        try:
            f.append(data)
            f.sync()
        finally:
            f.close()
        self.rename(tmp, path)
        self.sync_dir(os.path.dirname(path) or ".")


class _OsWritableFile(WritableFile):
    __slots__ = ("_buf", "_fd", "_size", "path")

    _FLUSH_AT = 1 << 20

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self._buf = bytearray()
        self._size = size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self._FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        view = memoryview(buf)
        done = 0
        try:
            while done < len(buf):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            view.release()
            del buf[:done]
            raise translate_os_error(exc, "write", self.path) from exc
        view.release()
        buf.clear()

    def sync(self) -> None:
        self.flush()
        self.sync_flushed()

    def sync_flushed(self) -> None:
        with os_errors("fsync", self.path):
            os.fsync(self._fd)

    def discard_buffer(self) -> None:
        self._size -= len(self._buf)
        self._buf.clear()

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1


class _OsRandomAccessFile(RandomAccessFile):
    __slots__ = ("_fd", "_size", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def read_at(self, offset: int, n: int) -> bytes:
        # try/except rather than os_errors(): this is on every block-cache miss.
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise translate_os_error(exc, "read", self.path) from exc

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _OsFileLock(FileLock):
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class OsFileSystem(FileSystem):
    """The real file system."""

    def create(self, path: str) -> WritableFile:
        with os_errors("create", path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         FILE_MODE)
        return _OsWritableFile(path, fd, 0)

    def open_append(self, path: str) -> WritableFile:
        with os_errors("open", path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return _OsWritableFile(path, fd, os.fstat(fd).st_size)

    def open_read(self, path: str) -> RandomAccessFile:
        with os_errors("open", path):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return _OsRandomAccessFile(path, fd)

    def read_file(self, path: str) -> bytes:
        with os_errors("read", path), open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def file_size(self, path: str) -> int:
        with os_errors("stat", path):
            return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        with os_errors("listdir", path):
            return sorted(os.listdir(path))

    def mkdirs(self, path: str) -> None:
        with os_errors("mkdir", path):
            os.makedirs(path, DIR_MODE, exist_ok=True)

    def remove(self, path: str) -> None:
        with os_errors("remove", path):
            os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        with os_errors("rename", src):
            os.replace(src, dst)

    def truncate(self, path: str, size: int) -> None:
        with os_errors("truncate", path):
            os.truncate(path, size)

    def sync_dir(self, path: str) -> None:
        with os_errors("fsync directory", path):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def lock(self, path: str) -> FileLock:
        with os_errors("lock", path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{path} is locked by another process (is a node running?)") from None
        return _OsFileLock(fd)
