"""Background work at a lower CPU priority than the event loop it serves.

Linux niceness is per thread, so a process can run its flushes,
compactions and other long CPU-bound jobs on threads that yield the core to
its event loop (and to the other processes of the node) without a process
of their own. A thread can only lower its priority: without CAP_SYS_NICE it
could not raise it back, so a thread that asked for it keeps it."""

from __future__ import annotations

import contextlib
import os
import threading


def lower_thread_priority(nice: int) -> None:
    """Give the calling thread niceness ``nice`` (never less nice than it
    is). Where the call is refused (not permitted, not Linux) the thread
    runs as it was."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
