"""Node-wide guards of the client server, on a real node with ``requirepass``
(issue 19, probe findings): a budget of reply bytes in flight over all
connections (``max_node_reply_bytes``), at most about 16 KiB held for an
unauthenticated connection, AUTH with a user other than ``default``, and
failed AUTHs counted per source address across connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import connect, read_until_close, rss_mib, served_meanwhile
from tests.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "open-sesame"
NODE_BUDGET = 64 << 20
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("guard")), nodes=1, n=1, workers=2,
                settings={"security": {"requirepass": PASSWORD},
                          "network": {"max_node_reply_bytes": NODE_BUDGET}})
    try:
        c.start()
        yield c
    finally:
        c.close()


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def stat(c: Cluster, name: str) -> int:
    return int(c.info(0, "stats")[name])


# -- replies in flight over the whole node ---------------------------------------------


def test_big_mgets_of_many_clients_stay_within_the_node_budget(cluster: Cluster) -> None:
    """Eight clients loop MGETs of 512 stored 64 KiB values (32 MiB
    replies). Each may run alone within its connection's budget, so without
    a node-wide bound all eight ran at once. With max_node_reply_bytes at
    64 MiB one runs at a time and the others get OVERLOADED; the node stays
    near its budget and a bystander's SET/GET round trips stay fast."""
    r = cluster.client(0, socket_timeout=60)
    keys = [f"big:{i:03d}".encode() for i in range(512)]
    value = {k: (k * 9363)[:65536] for k in keys}  # 64 KiB each
    for start in range(0, len(keys), 50):
        r.mset({k: value[k] for k in keys[start:start + 50]})
    baseline = rss_mib(cluster)
    peak = baseline
    stop = threading.Event()
    answered: list[int] = []
    refused: list[int] = []
    wrong: list[str] = []

    mget = pack(b"MGET", *keys)
    expected = b"*512\r\n" + b"".join(
        b"$%d\r\n%s\r\n" % (len(value[k]), value[k]) for k in keys)
    overloaded = (b"-OVERLOADED replies in flight on this node are at max_node_reply_bytes "
                  b"(%d); retry later\r\n" % NODE_BUDGET)

    def loop() -> None:
        """MGETs on a raw socket: the replies are compared whole, not parsed
        in Python, so these threads leave the bystander's thread the GIL."""
        with connect(cluster) as s:
            s.settimeout(60)
            s.sendall(pack(b"AUTH", PASSWORD.encode()))
            if s.recv(16) != b"+OK\r\n":
                wrong.append("AUTH failed")
                return
            buf = bytearray(len(expected))
            while not stop.is_set():
                s.sendall(mget)
                view, got = memoryview(buf), 0
                while got < len(expected):
                    n = s.recv_into(view[got:])
                    if not n:
                        wrong.append("closed")
                        return
                    got += n
                    if got == len(overloaded) and buf[:got] == overloaded:
                        break
                if got == len(overloaded) and buf[:got] == overloaded:
                    refused.append(1)
                    stop.wait(0.01)  # as a client would, before it retries
                elif buf == expected:
                    answered.append(1)
                else:
                    wrong.append(f"unexpected reply {bytes(buf[:80])!r}")
                    return

    refused_before = stat(cluster, "overloaded_refused")
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(8)]
    with served_meanwhile(cluster, "bystander-budget"):
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(answered) < 16 and not wrong:
            peak = max(peak, rss_mib(cluster))
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
    growth = peak - baseline
    print(f"coordinator RSS {baseline:.0f} MiB before, {peak:.0f} MiB peak; "
          f"{len(answered)} MGETs answered, {len(refused)} refused")
    assert not wrong, wrong
    assert not any(t.is_alive() for t in threads)
    assert len(answered) >= 8
    assert refused and stat(cluster, "overloaded_refused") - refused_before == len(refused)
    # One 32 MiB reply at a time (its values and its encoding), plus slack;
    # eight at once took it past 500 MiB.
    assert growth < 200, f"coordinator grew by {growth:.0f} MiB"


# -- before AUTH -----------------------------------------------------------------------


def test_an_unauthenticated_connection_holds_at_most_about_16_kib(cluster: Cluster) -> None:
    """8,000 connections each holding a 65,000-byte partial inline line took
    the coordinator from 284 to 1,118 MB: the 64 KiB line limit applied
    before AUTH too. Now a line over 16 KiB, or a multibulk request over
    16.5 KiB, before AUTH is a protocol error and a close."""
    baseline = rss_mib(cluster)
    socks: list[socket.socket] = []
    try:
        for _ in range(400):
            s = connect(cluster)
            s.sendall(b"x" * 65_000)
            socks.append(s)
        for s in socks:
            reply, closed = read_until_close(s, quiet=5.0)
            assert (reply, closed) == (b"-ERR Protocol error: too big inline request\r\n",
                                       True)
    finally:
        for s in socks:
            s.close()
    print(f"coordinator RSS {baseline:.0f} MiB before, {rss_mib(cluster):.0f} MiB after")
    # Ten 16 KiB bulks pass Redis's own limits, not ours.
    with connect(cluster) as s:
        s.sendall(pack(b"HELLO", *[b"y" * 16_000] * 9))
        assert read_until_close(s) == (
            b"-ERR Protocol error: unauthenticated request too large\r\n", True)
    # A line of 16 KiB still gets its NOAUTH, and the connection stays.
    with connect(cluster) as s:
        s.sendall(b"GET " + b"k" * (16 * 1024 - 4) + b"\r\n")
        assert read_until_close(s) == (b"-NOAUTH Authentication required.\r\n", False)
    # After AUTH, the full limits.
    with connect(cluster) as s:
        s.sendall(pack(b"AUTH", PASSWORD.encode()) + b"ECHO " + b"z" * 60_000 + b"\r\n")
        assert read_until_close(s) == (b"+OK\r\n$60000\r\n" + b"z" * 60_000 + b"\r\n", False)


# -- AUTH --------------------------------------------------------------------------


def test_auth_as_another_user_than_default_fails_like_a_wrong_password(
        cluster: Cluster) -> None:
    password = PASSWORD.encode()
    with connect(cluster) as s:
        s.sendall(pack(b"AUTH", b"bob", password) + pack(b"GET", b"k")
                  + pack(b"HELLO", b"3", b"AUTH", b"bob", password)
                  + pack(b"AUTH", b"default", password, b"extra")
                  + pack(b"AUTH", b"default", password) + pack(b"PING"))
        reply, closed = read_until_close(s, quiet=2.0)
    assert reply == (WRONGPASS + b"-NOAUTH Authentication required.\r\n" + WRONGPASS
                     + b"-ERR syntax error\r\n" + b"+OK\r\n" + b"+PONG\r\n")
    assert not closed


def _one_guess(c: Cluster, password: bytes = b"wrong") -> tuple[bytes, float]:
    """One AUTH on a new connection: its reply and when it came."""
    with connect(c) as s:
        s.settimeout(15)
        s.sendall(pack(b"AUTH", password))
        reply = s.recv(1024)
        return reply, time.monotonic()


def test_failed_auths_are_counted_per_address_across_connections(cluster: Cluster) -> None:
    """A new connection per guess used to start from a clean slate: the
    per-connection slow-down never applied. Now the eleventh failure from
    an address within about ten seconds flags it: each later AUTH from it,
    on any connection, waits for the address's next slot, so ten guesses
    sent at once on ten connections are answered one slot apart. A correct
    AUTH (after its own wait) clears the address."""
    for _ in range(12):
        assert _one_guess(cluster)[0] == WRONGPASS
    started = time.monotonic()
    times: list[float] = []
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(cluster)) for _ in range(10)]
        for s in socks:
            s.sendall(pack(b"AUTH", b"wrong"))
        for s in socks:
            s.settimeout(15)
            assert s.recv(1024) == WRONGPASS
            times.append(time.monotonic() - started)
    times.sort()
    print("answers at", [f"{t:.3f}" for t in times])
    # Slots are at least 20 ms apart: ten answers take at least 180 ms,
    # and no more than a few come in the first 50 ms.
    assert times[-1] - times[0] >= 0.18, times
    assert sum(t < 0.05 for t in times) <= 2, times
    reply, _ = _one_guess(cluster, PASSWORD.encode())
    assert reply == b"+OK\r\n"
    # The address is clear: a wrong guess is answered at once again.
    sent = time.monotonic()
    reply, at = _one_guess(cluster)
    assert reply == WRONGPASS and at - sent < 0.5
    assert cluster.client(0).ping() is True
    wait_for("INFO counts the failures", lambda: stat(cluster, "auth_failures") >= 23, 5)
