"""Clients for integration tests of the client port: raw sockets, a
well-behaved bystander that times its round trips while others misbehave,
and the coordinator's memory."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from tests.cluster import Cluster, wait_for

#: A sanity bound, not a benchmark: a well-behaved client's round trip
#: while another client misbehaves.
SLOW_ROUND_S = 2.0


def rss_mib(c: Cluster, field: str = "VmRSS") -> float:
    """The coordinator's resident memory (VmRSS now, VmHWM its peak so far)."""
    proc = c.members[0].proc
    assert proc is not None
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{proc.pid}/status")


def connect(c: Cluster, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:  # before connect, so the window is small from the start
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", c.members[0].client_port))
    return s


def read_until_close(s: socket.socket, timeout: float = 5.0, quiet: float = 0.5
                     ) -> tuple[bytes, bool]:
    """What the server sends until it closes (True) or is ``quiet`` seconds
    silent (False). A reset counts as a close: the server closes with our
    unread bytes in its buffer, which Linux answers with RST."""
    out = b""
    deadline = time.monotonic() + timeout
    s.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


class Bystander(threading.Thread):
    """A well-behaved client: SET then GET in a loop, checking each answer
    and timing each round."""

    def __init__(self, c: Cluster, name: str) -> None:
        super().__init__(daemon=True)
        self.client = c.client(0, socket_timeout=10)
        self.key = name
        self.rounds = 0
        self.worst_s = 0.0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set() and not self.failures:
                value = f"{self.key}-{self.rounds}".encode()
                started = time.monotonic()
                ok = self.client.set(self.key, value) is True
                got = self.client.get(self.key)
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                if not ok or got != value:
                    self.failures.append(f"round {self.rounds}: set {ok}, got {got!r}")
                self.rounds += 1
        except Exception as exc:
            self.failures.append(f"round {self.rounds}: {exc!r}")
        finally:
            self.client.close()


@contextlib.contextmanager
def served_meanwhile(c: Cluster, name: str, bound_s: float = SLOW_ROUND_S
                     ) -> Iterator[Bystander]:
    """Run a :class:`Bystander` around the block; afterwards check that it
    kept being served, correctly and without a long stall."""
    b = Bystander(c, name)
    b.start()
    wait_for("bystander's first round", lambda: b.rounds > 0 or b.failures, timeout=10)
    before = b.rounds
    try:
        yield b
        during = b.rounds
        wait_for("bystander still served", lambda: b.rounds >= during + 3 or b.failures,
                 timeout=10)
    finally:
        b.done.set()
        b.join(15)
    assert not b.is_alive(), "bystander hung"
    assert not b.failures, b.failures
    # The slowest round is reported, not judged: a loaded CI machine makes
    # any bound flaky. A round starved past the client's 10 s socket
    # timeout fails above, as a hang.
    print(f"bystander {name}: {during - before} rounds during the block, "
          f"slowest {b.worst_s:.2f}s (on an idle machine: under {bound_s}s)")
