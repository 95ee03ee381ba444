"""What the OS says of a process and a disk: resident memory and CPU time
from ``/proc`` (the coordinator's and its workers'), free space from
statvfs. Cheap reads, safe from any thread; 0 where the OS does not say."""

from __future__ import annotations

import os
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident memory (``/proc/<pid>/statm``; 0 if unknown)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """A process's user + system CPU time (``/proc/<pid>/stat``; 0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields_ = f.read().rsplit(b")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass(frozen=True, slots=True)
class DiskSpace:
    free_bytes: int
    size_bytes: int


def disk_space(path: str) -> DiskSpace:
    try:
        st = os.statvfs(path)
    except OSError:
        return DiskSpace(0, 0)
    return DiskSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
