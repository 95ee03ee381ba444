"""The coordinator's few small files: state (node identity, ring, hints) and
the private files and directories of a node (data directory, configs that
hold the cluster secret).

Each state file is one msgpack document replaced whole by write-temp + fsync
+ rename + fsync of the directory, so a crash leaves the old or the new
content, never half of either. Disk work runs in a thread when called from
the event loop.

Everything here is readable by its owner only: files 0600, directories 0700
(the engine's files get the same modes from ``lsm.fs``), as Redis and
PostgreSQL keep theirs. One of our files found readable by others is
tightened; a directory only readable by others is warned about. What
others could *write* is refused (UnsafePathError, naming the fix): a data
directory or private file owned by another user or writable by group or
others, or a symlink in place of a private file. Files are never written
through a predictable temp name or a symlink (``write_private``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
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


class UnsafePathError(CoordinatorError):
    """A file or directory others could write, own or redirect (a symlink)
    is refused; the message names the path and the fix."""


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, durably: a fresh temp file
    (O_EXCL|O_NOFOLLOW with a random name, so nothing planted beside it can
    redirect the write), fsync, rename over ``path`` (which replaces a
    symlink found there rather than writing through it), fsync of the
    directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with open(fd, "wb") as f:
            os.fchmod(fd, FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_owned(path: str, st: os.stat_result, what: str, *, root_ok: bool = False) -> None:
    """Raise UnsafePathError unless ``path`` (whose stat is ``st``) belongs
    to this user (or to root, if ``root_ok``) and only its owner may write
    it: anyone else who can would be able to swap the node's secret, config
    or state files for their own, or plant symlinks that redirect them."""
    me = os.geteuid()
    if st.st_uid != me and not (root_ok and st.st_uid == 0):
        raise UnsafePathError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {me}): its "
            f"owner could replace what ringkv keeps there. Use one of your own, or run: "
            f"chown {me} {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafePathError(
            f"{what} {path} is writable by other users (mode {mode:03o}): they could plant "
            f"files or symlinks there. Run: chmod go-w {path}")


def private_dir(path: str) -> None:
    """Create directory ``path`` (with its parents) for its owner only, and
    make sure it is ours alone to write: one owned by another user, writable
    by group or others (``/tmp`` itself), or a symlink another user made is
    refused (UnsafePathError). One only readable by others is left as it
    is, with a warning."""
    os.makedirs(path, DIR_MODE, exist_ok=True)
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode):
        check_owned(path, link, "data directory symlink")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"data directory {path} is not a directory")
    check_owned(path, st, "data directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        log.warning("directory %s is open to other users (mode %03o): if it is ringkv's "
                    "alone, run: chmod -R go-rwx %s", path, mode, path)


def _open_own(path: str, flags: int, what: str) -> int:
    """``os.open`` of one of our private files, never through a symlink;
    the file must be ours and writable by us alone (UnsafePathError), and
    is tightened to 0600 if others could read it."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{what} {path} is a symbolic link: ringkv writes its "
                                  f"private files only in place. Remove it: rm {path}") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{what} {path} is not a regular file")
        check_owned(path, st, what)
        old = stat.S_IMODE(st.st_mode)
        if old & 0o077:
            os.fchmod(fd, FILE_MODE)
            log.warning("%s was open to other users (mode %03o); now %03o", path, old,
                        FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private_log(path: str) -> int:
    """A file descriptor appending to ``path``, created 0600 (or tightened)."""
    return _open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "log")


def read_private(path: str, what: str) -> bytes | None:
    """The content of our private file ``path`` (a secret), None when it
    does not exist; refused as ``_open_own`` says."""
    try:
        fd = _open_own(path, os.O_RDONLY, what)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        return f.read()


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
