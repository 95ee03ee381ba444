"""The coordinator's few small state files (node identity, ring, hints).

Each is one msgpack document replaced whole by write-temp + fsync + rename +
fsync of the directory, so a crash leaves the old or the new content, never
half of either. Disk work runs in a thread when called from the event loop.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

from coordinator.errors import CoordinatorError


class StateFileError(CoordinatorError):
    """A state file exists but cannot be read; the message names it."""


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
    data = msgpack.packb(doc, use_bin_type=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
