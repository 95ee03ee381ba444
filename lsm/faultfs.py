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

``crash_at()`` arms a power cut *inside* an operation: the n-th next
operation of the chosen kinds (fsync, rename, write, ...; counted over every
thread) does not happen; the file system crashes instead and stays *down*,
failing every operation with EIO as if the machine were off, until
``restart()``. So the process that was running (its background threads
included) cannot touch the state that survived; the test kills it, restarts
the file system and reopens.

``synced_high_water(path)`` says how many bytes of ``path`` an fsync has
made durable since the file system last came up, even if the file was
removed since: a test compares it with where each acknowledged write ended
to know which writes the engine promised to keep.

Faults: ``space_limit`` makes appends beyond a byte budget fail with ENOSPC;
``fail`` is a hook ``(op, path) -> errno | None`` that injects any errno into
any operation. ``slow`` is a hook ``(op, path) -> None`` called before each
fsync and directory fsync *outside* the file system's lock: a test parks the
syncing thread there (a slow disk) while other threads' operations go on.
"""

from __future__ import annotations

import errno as errno_mod
import os
import random
import threading
from collections.abc import Callable, Collection

from lsm.errors import LockedError, StorageIOError
from lsm.fs import (
    FileLock,
    FileSystem,
    RandomAccessFile,
    WritableFile,
    translate_os_error,
)

FaultHook = Callable[[str, str], int | None]
SlowHook = Callable[[str, str], None]

#: Operation names passed to ``fail`` hooks and counted by ``crash_at``.
OPS = (
    "create", "open", "append", "write", "fsync", "read", "remove", "rename",
    "truncate", "fsync directory", "lock",
)


class _Inode:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = b""


class _Dead(OSError):
    def __init__(self, path: str) -> None:
        super().__init__(errno_mod.EBADF, "handle from before a simulated crash", path)


class _Armed:
    """A crash waiting for its operation."""

    __slots__ = ("countdown", "ops", "tear")

    def __init__(self, ops: frozenset[str], countdown: int, tear: bool) -> None:
        self.ops = ops
        self.countdown = countdown
        self.tear = tear


class _MemWritable(WritableFile):
    def __init__(self, fs: FaultFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self.path = path
        self._inode = inode
        self._gen = fs.generation
        self._buf = bytearray()
        self._closed = False

    def _check(self, op: str, in_flight: bytes | bytearray = b"") -> None:
        """Called with ``fs.mu`` held, so that a crash cannot fall between
        the check and the operation."""
        if self._gen != self._fs.generation:
            raise translate_os_error(_Dead(self.path), op, self.path)
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        self._fs.inject(op, self.path, self._inode, in_flight)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        with self._fs.mu:
            self._check("append")
        self._buf += data

    def flush(self) -> None:
        if not self._buf:  # no write(2) happens, so nothing can fail
            return
        with self._fs.mu:
            self._check("write", self._buf)
            self._fs.charge(len(self._buf), self.path)
            self._inode.data += self._buf
        self._buf.clear()

    def sync(self) -> None:
        self.flush()
        self.sync_flushed()

    def sync_flushed(self) -> None:
        self._fs.slow_down("fsync", self.path)
        with self._fs.mu:
            self._check("fsync")
            self._inode.synced = bytes(self._inode.data)
            self._fs.note_sync(self.path, len(self._inode.synced))

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
        with self._fs.mu:
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
        self.slow: SlowHook | None = None
        self.rng = random.Random(seed)
        self.bytes_written = 0
        self.down = False  # crashed by crash_at(), until restart()
        self._armed: _Armed | None = None
        self._high_water: dict[str, int] = {}

    # -- fault plumbing -------------------------------------------------------
    def inject(
        self,
        op: str,
        path: str,
        inode: _Inode | None = None,
        in_flight: bytes | bytearray = b"",
    ) -> None:
        """Fail ``op`` if the file system is down, if an armed crash falls on
        it, or if the ``fail`` hook says so. Called with ``mu`` held;
        ``in_flight`` is what a write is about to add to ``inode`` (a torn
        crash may keep part of it)."""
        if self.down:
            raise _down_error(op, path)
        armed = self._armed
        if armed is not None and op in armed.ops:
            armed.countdown -= 1
            if armed.countdown < 0:
                self._armed = None
                if armed.tear and inode is not None and in_flight:
                    inode.data += in_flight[: self.rng.randint(0, len(in_flight))]
                self._power_cut(armed.tear)
                self.down = True
                raise _down_error(op, path)
        hook = self.fail
        if hook is not None:
            code = hook(op, path)
            if code is not None:
                raise translate_os_error(OSError(code, os.strerror(code), path), op, path)

    def slow_down(self, op: str, path: str) -> None:
        """Call the ``slow`` hook, if any (``mu`` not held)."""
        hook = self.slow
        if hook is not None:
            hook(op, path)

    def used_bytes(self) -> int:
        return sum(len(i.data) for i in self.live.values())

    def charge(self, n: int, path: str) -> None:
        if self.space_limit is not None and self.used_bytes() + n > self.space_limit:
            err = OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC), path)
            raise translate_os_error(err, "write", path)
        self.bytes_written += n

    def note_sync(self, path: str, size: int) -> None:
        self._high_water[path] = max(self._high_water.get(path, 0), size)

    def synced_high_water(self, path: str) -> int:
        """The most bytes of ``path`` an fsync made durable since the file
        system last came up (0 if none), whether or not it still exists."""
        with self.mu:
            return self._high_water.get(path, 0)

    def crash(self, tear: bool = False) -> None:
        """Simulate a power cut and the machine coming back. With ``tear``,
        each file keeps a random prefix of the bytes appended since its last
        sync instead of none of them."""
        with self.mu:
            self._power_cut(tear)
            self.restart()

    def crash_at(self, ops: Collection[str], countdown: int, tear: bool = False) -> None:
        """Arm a power cut: the operation after the next ``countdown``
        operations named in ``ops`` (see ``OPS``) crashes the file system
        instead of happening, and every later operation fails with EIO until
        ``restart()``. With ``tear``, files keep random prefixes of unsynced
        bytes, the write that was cut included."""
        unknown = set(ops) - set(OPS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {OPS}")
        with self.mu:
            self._armed = _Armed(frozenset(ops), countdown, tear)

    def disarm(self) -> None:
        """Cancel a crash armed by ``crash_at`` that has not happened yet."""
        with self.mu:
            self._armed = None

    def restart(self) -> None:
        """Bring the file system back up after a crash (a new boot): any
        armed crash is cancelled and high-water marks start afresh."""
        with self.mu:
            self.down = False
            self._armed = None
            self._high_water.clear()

    def _power_cut(self, tear: bool) -> None:
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
        with self.mu:
            self.inject("create", path)
            self._need_dir(path, "create")
            inode = _Inode()
            self.live[path] = inode
            self._high_water.pop(path, None)
        return _MemWritable(self, path, inode)

    def open_append(self, path: str) -> WritableFile:
        with self.mu:
            self.inject("open", path)
            inode = self._get(path)
        return _MemWritable(self, path, inode)

    def _get(self, path: str) -> _Inode:
        try:
            return self.live[path]
        except KeyError:
            raise FileNotFoundError(errno_mod.ENOENT, "no such file", path) from None

    def open_read(self, path: str) -> RandomAccessFile:
        with self.mu:
            self.inject("open", path)
            return _MemReadable(self, path, self._get(path))

    def read_file(self, path: str) -> bytes:
        with self.mu:
            self.inject("read", path)
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
        with self.mu:
            self.inject("remove", path)
            self._get(path)
            del self.live[path]

    def rename(self, src: str, dst: str) -> None:
        with self.mu:
            self.inject("rename", src)
            inode = self._get(src)
            del self.live[src]
            self.live[dst] = inode

    def truncate(self, path: str, size: int) -> None:
        with self.mu:
            self.inject("truncate", path)
            inode = self._get(path)
            del inode.data[size:]
            inode.synced = inode.synced[:size]

    def sync_dir(self, path: str) -> None:
        path = path.rstrip("/") or "/"
        self.slow_down("fsync directory", path)
        with self.mu:
            self.inject("fsync directory", path)
            for p in [p for p in self.durable if self._parent(p) == path]:
                del self.durable[p]
            for p, inode in self.live.items():
                if self._parent(p) == path:
                    self.durable[p] = inode

    def lock(self, path: str) -> FileLock:
        with self.mu:
            self.inject("lock", path)
            if path in self.locks:
                raise LockedError(f"{path} is locked by another process (is a node running?)")
            self.locks.add(path)
        return _MemLock(self, path)


def _down_error(op: str, path: str) -> StorageIOError:
    err = OSError(errno_mod.EIO, "file system is down after a simulated crash", path)
    return translate_os_error(err, op, path)
