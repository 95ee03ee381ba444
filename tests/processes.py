"""Stopping the processes a test started, always within a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then
    SIGKILL after ``timeout``; closes the pipes the test opened."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
