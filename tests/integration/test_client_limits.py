"""Client limits on a real node with ``requirepass`` (issue 13, points 6 and
7): Redis's limits before AUTH, failed AUTHs slowed down and counted, the
CONFIG GET pattern cap, a malformed header answered without a traceback,
and a client that asks for huge MGET replies without reading them, which
must neither grow the coordinator without bound nor slow anyone else."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.clients import connect, read_until_close, rss_mib, served_meanwhile
from tests.cluster import Cluster, scrape, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "open-sesame"
IDLE_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("limits")), nodes=1, n=1, workers=2,
                settings={"security": {"requirepass": PASSWORD},
                          "network": {"idle_timeout_s": IDLE_TIMEOUT_S}})
    try:
        c.start()
        yield c
    finally:
        c.close()


def address(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"{host}:{port}"


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def exchange(c: Cluster, data: bytes, quiet: float = 0.5) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection; what comes back until the server
    closes (True) or is ``quiet`` seconds silent (False)."""
    with connect(c) as s:
        s.sendall(data)
        return read_until_close(s, quiet=quiet)


def stat(c: Cluster, name: str) -> int:
    return int(c.info(0, "stats")[name])


def log_lines(c: Cluster, text: str) -> list[str]:
    return [line for line in c.members[0].log.read_text(errors="replace").splitlines()
            if text in line]


# -- before AUTH -----------------------------------------------------------------


def test_unauthenticated_clients_get_redis_limits(cluster: Cluster) -> None:
    """Redis's limits before AUTH: 10 arguments and 16 KiB per bulk; past
    them Redis's protocol error, and the connection is closed."""
    assert exchange(cluster, pack(b"AUTH", *[b"a"] * 10)) == (
        b"-ERR Protocol error: unauthenticated multibulk length\r\n", True)
    assert exchange(cluster, pack(b"AUTH", b"x" * (17 * 1024))) == (
        b"-ERR Protocol error: unauthenticated bulk length\r\n", True)
    # At the limits: answered, and the connection stays.
    reply, closed = exchange(cluster, pack(b"GET", *[b"a"] * 9) + pack(b"AUTH", b"x" * 16384))
    assert reply == (b"-NOAUTH Authentication required.\r\n"
                     b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert not closed
    # A request after AUTH in the same write gets the full limits.
    big = b"v" * (20 * 1024)
    reply, closed = exchange(cluster, pack(b"AUTH", PASSWORD.encode())
                             + pack(b"SET", b"after-auth", big) + pack(b"GET", b"after-auth"))
    assert reply == b"+OK\r\n+OK\r\n$%d\r\n%s\r\n" % (len(big), big)
    assert not closed


# -- failed AUTH -----------------------------------------------------------------


def test_repeated_wrong_auth_is_slowed_down_counted_and_logged(cluster: Cluster) -> None:
    """40,000 wrong passwords a second were answered. Now the first failure
    is answered at once and each later one on the connection waits twice as
    long as the one before, up to 1 s: of 200 pipelined guesses only a few
    are answered in 3 s, while 200 correct AUTHs are answered at once and
    another client is not slowed."""
    window_s = 3.0
    before = stat(cluster, "auth_failures")
    with served_meanwhile(cluster, "bystander-auth"), connect(cluster) as s:
        s.sendall(pack(b"AUTH", b"wrong") * 200)
        answered = b""
        deadline = time.monotonic() + window_s
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                answered += s.recv(65536)
        guesses = answered.count(b"-WRONGPASS")
        where = address(s)
    print(f"{guesses} of 200 wrong AUTHs answered in {window_s} s")
    # Held 0, 20, 40, 80, 160, 320, 640 ms, then 1 s each: 8 answered in 3 s.
    assert 3 <= guesses <= 20, guesses
    # Counted as they are checked (the one being held too, at most).
    assert stat(cluster, "auth_failures") - before in (guesses, guesses + 1)
    lines = log_lines(cluster, f"AUTH failed from {where}")
    assert guesses <= len(lines) <= guesses + 1, lines
    good = (pack(b"AUTH", PASSWORD.encode()) * 200)
    started = time.monotonic()
    reply, _ = exchange(cluster, good, quiet=0.3)
    assert reply == b"+OK\r\n" * 200
    assert time.monotonic() - started < window_s


# -- CONFIG GET and malformed headers ---------------------------------------------


def test_a_200_kb_config_get_pattern_is_refused_at_once(cluster: Cluster) -> None:
    r = cluster.client(0)
    started = time.monotonic()
    with pytest.raises(redis.ResponseError, match=r"CONFIG GET pattern too long "
                                                  r"\(200000 > 256 bytes\)"):
        r.config_get("*a" * 100_000)
    assert time.monotonic() - started < 1.0  # it blocked the node for 2.3 s
    assert r.config_get("max_value*") == {"max_value_bytes": "65536"}


@pytest.mark.parametrize(("request_bytes", "reason"), [
    (b"*1\rX", "multibulk length must end with CRLF"),
    (b"*1\r\n$4\rXPING\r\n", "bulk length must end with CRLF"),
], ids=["multibulk", "bulk"])
def test_a_header_cr_without_lf_gets_a_protocol_error_and_one_log_line(
    cluster: Cluster, request_bytes: bytes, reason: str
) -> None:
    """hiredis raised out of the parser on ``*1\\rX``: an uncaught exception
    and a traceback in the node's log, and no reply."""
    with connect(cluster) as s:
        s.sendall(request_bytes + b"$4\r\nPING\r\n")
        where = address(s)
        data = b""
        while chunk := s.recv(1024):
            data += chunk
    assert data == b"-ERR Protocol error: %s\r\n" % reason.encode()

    def logged() -> list[str]:
        return log_lines(cluster, f"client {where}: ERR Protocol error: {reason}")

    assert len(wait_for("the protocol error logged", logged, 5)) == 1
    assert log_lines(cluster, "Traceback") == []
    assert cluster.client(0).ping() is True


# -- a client that does not read huge replies -------------------------------------


def mgets_done(c: Cluster) -> int:
    return int(sum(v for k, v in scrape(c, 0).items()
                   if k.startswith('ringkv_requests_total{command="MGET"')))


def test_a_client_not_reading_huge_mget_replies_is_bounded_then_dropped(cluster: Cluster) -> None:
    """Eight pipelined MGETs of ~64 MiB replies each (250 stored 64 KiB
    values, each named four times), never read. The server used to run all
    eight at once and grow the coordinator by hundreds of MiB; now an MGET
    that may reach max_reply_bytes runs alone, its reply leaves in 256 KiB
    slices as the client takes them, nothing more is read, and after
    idle_timeout_s without progress the client is dropped and logged with
    its address. A bystander is served all along."""
    r = cluster.client(0, socket_timeout=60)
    keys = [f"huge:{i:03d}".encode() for i in range(250)]
    for start in range(0, len(keys), 50):  # an MSET request stays under 4 MiB
        r.mset({k: k * (65536 // len(k)) for k in keys[start:start + 50]})
    mget = pack(b"MGET", *keys * 4)  # 1,000 keys: 64,000,000 bytes of values
    dropped = stat(cluster, "slow_readers_dropped")
    done_before = mgets_done(cluster)
    baseline = rss_mib(cluster)
    peak = baseline

    def sample() -> None:
        nonlocal peak
        peak = max(peak, rss_mib(cluster))

    with served_meanwhile(cluster, "bystander-mget"):
        deaf = connect(cluster, rcvbuf=65536)
        try:
            where = address(deaf)
            deaf.sendall(pack(b"AUTH", PASSWORD.encode()) + mget * 8)
            seen = [-1]

            def stalled() -> bool:
                sample()
                seen.append(mgets_done(cluster) - done_before)
                return seen[-1] >= 1 and seen[-1] == seen[-2]

            wait_for("the first MGET answered, then no more", stalled, 30, interval=1.0)

            def gone() -> bool:
                sample()
                return stat(cluster, "slow_readers_dropped") > dropped

            wait_for("the deaf client dropped", gone, IDLE_TIMEOUT_S + 20, interval=0.5)
            ran = mgets_done(cluster) - done_before
        finally:
            deaf.close()
    growth = peak - baseline
    print(f"coordinator RSS {baseline:.0f} MiB before, {peak:.0f} MiB peak; {ran} MGETs ran")
    assert ran == 1, f"{ran} of 8 MGETs ran for a client that read none"
    # One reply's values (16 MiB) and encoding (61 MiB) at a time, plus slack.
    assert growth < 150, f"coordinator grew by {growth:.0f} MiB"
    lines = log_lines(cluster, f"client {where} dropped: took none of its replies")
    assert len(lines) == 1, lines
    assert r.mget(keys[:2]) == [k * (65536 // len(k)) for k in keys[:2]]
