"""An in-memory, crashable, fault-injecting file system for tests.

Part of the product's test kit (like LevelDB's FaultInjectionTestEnv and
Pebble's MemFS + errorfs). The model of durability is strict on purpose:

* file contents are durable only up to the last ``sync()`` of that file;
* a directory entry (create, rename, remove) is durable only after
  ``sync_dir()`` of its directory.

``crash()`` turns the live state into what a power cut would leave: every
file falls back to its synced contents, optionally keeping a torn prefix of
the bytes appended since (the "last write torn" case), and every directory
falls back to its last synced listing. Handles opened before the crash fail
afterwards, like the file descriptors of a dead process.

Faults: ``space_limit`` makes appends beyond a byte budget fail with ENOSPC;
``fail`` is a hook ``(op, path) -> errno | None`` that injects any errno into
any operation.
"""

from __future__ import annotations

import errno as errno_mod
import os
import random
import threading
from collections.abc import Callable

from lsm.errors import LockedError
from lsm.fs import (
    FileLock,
    FileSystem,
    RandomAccessFile,
    WritableFile,
    translate_os_error,
)

FaultHook = Callable[[str, str], int | None]


class _Inode:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = b""


class _Dead(OSError):
    def __init__(self, path: str) -> None:
        super().__init__(errno_mod.EBADF, "handle from before a simulated crash", path)


class _MemWritable(WritableFile):
    def __init__(self, fs: FaultFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self.path = path
        self._inode = inode
        self._gen = fs.generation
        self._buf = bytearray()
        self._closed = False

    def _check(self, op: str) -> None:
        if self._gen != self._fs.generation:
            raise translate_os_error(_Dead(self.path), op, self.path)
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        self._fs.inject(op, self.path)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._check("append")
        self._buf += data

    def flush(self) -> None:
        self._check("write")
        if not self._buf:
            return
        with self._fs.mu:
            self._fs.charge(len(self._buf), self.path)
            self._inode.data += self._buf
        self._buf.clear()

    def sync(self) -> None:
        self.flush()
        self.sync_flushed()

    def sync_flushed(self) -> None:
        self._check("fsync")
        with self._fs.mu:
            self._inode.synced = bytes(self._inode.data)

    def discard_buffer(self) -> None:
        self._buf.clear()

    def size(self) -> int:
        return len(self._inode.data) + len(self._buf)

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._gen == self._fs.generation:
                self.flush()
        finally:
            self._closed = True


class _MemReadable(RandomAccessFile):
    def __init__(self, fs: FaultFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self.path = path
        self._inode = inode

    def read_at(self, offset: int, n: int) -> bytes:
        self._fs.inject("read", self.path)
        return bytes(self._inode.data[offset : offset + n])

    def size(self) -> int:
        return len(self._inode.data)

    def close(self) -> None:
        pass


class _MemLock(FileLock):
    def __init__(self, fs: FaultFileSystem, path: str) -> None:
        self._fs = fs
        self._path = path
        self._gen = fs.generation

    def release(self) -> None:
        with self._fs.mu:
            if self._gen == self._fs.generation:
                self._fs.locks.discard(self._path)


class FaultFileSystem(FileSystem):
    def __init__(self, seed: int = 0) -> None:
        self.mu = threading.RLock()
        self.live: dict[str, _Inode] = {}
        self.durable: dict[str, _Inode] = {}
        self.dirs: set[str] = {"/"}
        self.locks: set[str] = set()
        self.generation = 0
        self.space_limit: int | None = None
        self.fail: FaultHook | None = None
        self.rng = random.Random(seed)
        self.bytes_written = 0

    # -- fault plumbing -------------------------------------------------------
    def inject(self, op: str, path: str) -> None:
        hook = self.fail
        if hook is not None:
            code = hook(op, path)
            if code is not None:
                raise translate_os_error(OSError(code, os.strerror(code), path), op, path)

    def used_bytes(self) -> int:
        return sum(len(i.data) for i in self.live.values())

    def charge(self, n: int, path: str) -> None:
        if self.space_limit is not None and self.used_bytes() + n > self.space_limit:
            err = OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC), path)
            raise translate_os_error(err, "write", path)
        self.bytes_written += n

    def crash(self, tear: bool = False) -> None:
        """Simulate a power cut. With ``tear``, each file keeps a random prefix
        of the bytes appended since its last sync instead of none of them."""
        with self.mu:
            self.generation += 1
            self.locks.clear()
            survivors: dict[str, _Inode] = {}
            for path, inode in self.durable.items():
                data = bytes(inode.data)
                synced = inode.synced
                if tear and len(data) > len(synced) and data.startswith(synced):
                    keep = self.rng.randint(0, len(data) - len(synced))
                    synced = data[: len(synced) + keep]
                fresh = _Inode()
                fresh.data = bytearray(synced)
                fresh.synced = synced
                survivors[path] = fresh
            self.live = survivors
            self.durable = dict(survivors)

    # -- FileSystem -----------------------------------------------------------
    def _parent(self, path: str) -> str:
        return os.path.dirname(path) or "/"

    def _need_dir(self, path: str, op: str) -> None:
        if self._parent(path) not in self.dirs:
            raise translate_os_error(
                OSError(errno_mod.ENOENT, "no such directory", path), op, path
            )

    def create(self, path: str) -> WritableFile:
        self.inject("create", path)
        with self.mu:
            self._need_dir(path, "create")
            inode = _Inode()
            self.live[path] = inode
        return _MemWritable(self, path, inode)

    def open_append(self, path: str) -> WritableFile:
        self.inject("open", path)
        with self.mu:
            inode = self._get(path)
        return _MemWritable(self, path, inode)

    def _get(self, path: str) -> _Inode:
        try:
            return self.live[path]
        except KeyError:
            raise FileNotFoundError(errno_mod.ENOENT, "no such file", path) from None

    def open_read(self, path: str) -> RandomAccessFile:
        self.inject("open", path)
        with self.mu:
            return _MemReadable(self, path, self._get(path))

    def read_file(self, path: str) -> bytes:
        self.inject("read", path)
        with self.mu:
            return bytes(self._get(path).data)

    def exists(self, path: str) -> bool:
        with self.mu:
            return path in self.live or path in self.dirs

    def file_size(self, path: str) -> int:
        with self.mu:
            return len(self._get(path).data)

    def listdir(self, path: str) -> list[str]:
        path = path.rstrip("/") or "/"
        with self.mu:
            return sorted(os.path.basename(p) for p in self.live if self._parent(p) == path)

    def mkdirs(self, path: str) -> None:
        # Directories are durable on creation: the engine's directory exists
        # before the engine starts, so modelling its loss adds nothing.
        with self.mu:
            while path not in ("", "/"):
                self.dirs.add(path.rstrip("/"))
                path = os.path.dirname(path.rstrip("/"))

    def remove(self, path: str) -> None:
        self.inject("remove", path)
        with self.mu:
            self._get(path)
            del self.live[path]

    def rename(self, src: str, dst: str) -> None:
        self.inject("rename", src)
        with self.mu:
            inode = self._get(src)
            del self.live[src]
            self.live[dst] = inode

    def truncate(self, path: str, size: int) -> None:
        self.inject("truncate", path)
        with self.mu:
            inode = self._get(path)
            del inode.data[size:]
            inode.synced = inode.synced[:size]

    def sync_dir(self, path: str) -> None:
        self.inject("fsync directory", path)
        path = path.rstrip("/") or "/"
        with self.mu:
            for p in [p for p in self.durable if self._parent(p) == path]:
                del self.durable[p]
            for p, inode in self.live.items():
                if self._parent(p) == path:
                    self.durable[p] = inode

    def lock(self, path: str) -> FileLock:
        with self.mu:
            if path in self.locks:
                raise LockedError(f"{path} is locked by another process (is a node running?)")
            self.locks.add(path)
        return _MemLock(self, path)
