"""The coordinator's few small files: state (node identity, ring, hints) and
the private files and directories of a node (data directory, configs that
hold the cluster secret).

Each state file is one msgpack document replaced whole by write-temp + fsync
+ rename + fsync of the directory, so a crash leaves the old or the new
content, never half of either. Disk work runs in a thread when called from
the event loop.

Everything here is readable by its owner only: files 0600, directories 0700
(the engine's files get the same modes from ``lsm.fs``), as Redis and
PostgreSQL keep theirs. One of our files found open to others is tightened;
a directory is only warned about (it may be shared).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from typing import Any

import msgpack

from coordinator.errors import CoordinatorError

log = logging.getLogger("ringkv.files")

FILE_MODE = 0o600
DIR_MODE = 0o700


class StateFileError(CoordinatorError):
    """A state file exists but cannot be read; the message names it."""


IDENTITY_FILE = "node.msgpack"


def load_identity(data_dir: str, node_id: str) -> int:
    """The incarnation of node ``node_id`` in ``data_dir``. A new data
    directory gets a new one, so a wiped node never reuses clock entries of
    its former self (DESIGN §4); a directory of another node is refused."""
    path = os.path.join(data_dir, IDENTITY_FILE)
    doc = read_doc(path)
    if doc is None:
        doc = {"v": 1, "id": node_id, "incarnation": time.time_ns() // 1_000_000}
        write_doc(path, doc)
    if doc.get("id") != node_id:
        raise CoordinatorError(
            f"data directory {data_dir} belongs to node {doc.get('id')!r}, not {node_id!r}"
        )
    return int(doc["incarnation"])


def read_doc(path: str) -> dict[str, Any] | None:
    """The msgpack map stored at ``path``; None when the file does not exist."""
    try:
        with open(path, "rb") as f:
            doc = msgpack.unpackb(f.read(), raw=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise StateFileError(f"{path} does not hold a msgpack map")
    return doc


def write_doc(path: str, doc: dict[str, Any]) -> None:
    """Replace ``path`` with ``doc`` durably."""
    write_private(path, msgpack.packb(doc, use_bin_type=True))


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, durably (write-temp, fsync,
    rename, fsync of the directory)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with open(fd, "wb") as f:
        os.fchmod(fd, FILE_MODE)  # a stale temp file keeps its old mode
        f.write(data)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: str) -> None:
    """Create directory ``path`` (with its parents) for its owner only. One
    that exists open to others is left as it is, with a warning: it may be
    shared (``/tmp``), and only its owner knows."""
    os.makedirs(path, DIR_MODE, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("directory %s is open to other users (mode %03o): if it is ringkv's "
                    "alone, run: chmod -R go-rwx %s", path, mode, path)


def open_private_log(path: str) -> int:
    """A file descriptor appending to ``path``, created 0600 (or tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    tighten_file(path)
    return fd


def tighten_file(path: str) -> None:
    """chmod ``path`` (one of our files) to 0600 if others had any access."""
    old = stat.S_IMODE(os.stat(path).st_mode)
    if old & 0o077:
        os.chmod(path, FILE_MODE)
        log.warning("%s was open to other users (mode %03o); now %03o", path, old, FILE_MODE)


LOCK_FILE = "LOCK"


class DataDirLocked(CoordinatorError):
    """Another process holds the data directory's LOCK."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/LOCK``, holding our pid, for
    as long as the node runs: two nodes on one directory would each replay
    and rewrite the other's hints, ring and engines. The kernel drops the
    lock when the process dies, so a node killed with ``kill -9`` leaves
    nothing to clean up (only a stale pid in the file, never trusted)."""

    def __init__(self, data_dir: str) -> None:
        path = os.path.join(data_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {data_dir} is in use by another ringkv node (pid {holder} "
                f"holds {path}): stop that node first, or give this one another data_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # drops the flock
