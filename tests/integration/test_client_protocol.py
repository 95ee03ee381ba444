"""The client server of a real one-node cluster, spoken to by redis-py,
redis-cli and raw sockets: RESP2/RESP3, inline commands, pipelining order,
Redis's error texts, and a protocol error that closes only its own
connection."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import Cluster, wait_for
from tests.processes import raw

pytestmark = pytest.mark.integration


@contextmanager
def one_node(root: Path, **network: Any) -> Iterator[int]:
    """A one-node cluster (N=1, one worker) with these [network] settings
    (``requirepass`` goes to [security]); yields its client port."""
    settings: dict[str, dict[str, Any]] = {"network": network}
    if "requirepass" in network:
        settings["security"] = {"requirepass": network.pop("requirepass")}
    c = Cluster(root, nodes=1, n=1, workers=1, settings=settings)
    try:
        c.start()
        yield c.members[0].client_port
    finally:
        c.close()


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with one_node(tmp_path_factory.mktemp("proto")) as p:
        yield p


def test_redis_py_default_resp3_and_resp2(port: int) -> None:
    r3 = redis.Redis(port=port, socket_timeout=5)  # redis-py 8 sends HELLO 3
    assert r3.ping() is True
    assert r3.echo(b"\x00bin\xff") == b"\x00bin\xff"
    r2 = redis.Redis(port=port, socket_timeout=5, protocol=2)
    assert r2.ping() is True
    assert r2.config_get("n") == {"n": "1"}  # redis-py decodes CONFIG GET replies
    assert r3.info("server")["node_id"] == "n1"


def test_pipeline_of_10000_replies_in_order(port: int) -> None:
    r = redis.Redis(port=port, socket_timeout=10)
    pipe = r.pipeline(transaction=False)
    for i in range(10000):
        pipe.echo(b"%d" % i)
    assert pipe.execute() == [b"%d" % i for i in range(10000)]


def test_redis_error_texts(port: int) -> None:
    r = redis.Redis(port=port, socket_timeout=5, protocol=2)
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("FOO", "a", "b")  # type: ignore[no-untyped-call]
    assert str(info.value) == "unknown command 'FOO', with args beginning with: 'a' 'b' "
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("GET")  # type: ignore[no-untyped-call]
    assert str(info.value) == "wrong number of arguments for 'get' command"
    with pytest.raises(redis.ResponseError) as info:
        r.set("k", b"x" * 70000)
    assert str(info.value) == "value too large (70000 > 65536 bytes)"
    with pytest.raises(redis.ResponseError) as info:
        r.set("k", "v", ex=10)
    assert "not supported" in str(info.value)
    assert r.ping() is True  # command errors never close the connection


def test_inline_commands_and_quotes(port: int) -> None:
    assert raw(port, b"PING\r\nECHO \"a b\"\r\nECHO 'c\\'d'\r\n") == (
        b"+PONG\r\n$3\r\na b\r\n$3\r\nc'd\r\n"
    )


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b'ECHO "unbalanced\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
    ],
)
def test_protocol_error_replies_then_closes_only_that_connection(
    port: int, request_bytes: bytes, reply: bytes
) -> None:
    other = redis.Redis(port=port, socket_timeout=5)
    assert other.ping() is True
    # Replies to earlier requests in the same read still come first.
    assert raw(port, b"PING\r\n" + request_bytes, expect_close=True) == b"+PONG\r\n" + reply
    assert other.ping() is True


def test_data_commands_reach_storage(port: int) -> None:
    r = redis.Redis(port=port, socket_timeout=5)
    assert r.set("k", b"v") is True
    assert r.get("k") == b"v"
    assert r.delete("k", "other") == 1


def test_auth_and_limits(tmp_path: Path) -> None:
    # Room for a connection the start-up checks left, reaped once idle (1 s).
    with one_node(tmp_path, requirepass="pw", max_clients=3, idle_timeout_s=1) as port:
        wait_for("a connection is accepted",
                 lambda: raw(port, b"PING\r\n") == b"-NOAUTH Authentication required.\r\n", 10)
        assert raw(port, b"AUTH wrong\r\n").startswith(b"-WRONGPASS")
        assert raw(port, b"AUTH pw\r\nPING\r\n") == b"+OK\r\n+PONG\r\n"
        r = redis.Redis(port=port, password="pw", socket_timeout=5)
        assert r.ping() is True
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        try:
            deadline = time.monotonic() + 5
            reply = b""
            while time.monotonic() < deadline and not reply.startswith(b"-ERR max"):
                reply = raw(port, b"", expect_close=True)
            assert reply == b"-ERR max number of clients reached\r\n"
        finally:
            for s in held:
                s.close()
        # An idle connection is closed after idle_timeout (1 s here). The
        # server may not have reaped the held connections yet: wait
        # until a connection is accepted, not refused for max clients.
        deadline = time.monotonic() + 5
        while True:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                started = time.monotonic()
                first = s.recv(10)
                if first == b"":
                    break
                assert first.startswith(b"-ERR max"), first
                assert time.monotonic() < deadline, "held connections never reaped"
            time.sleep(0.05)
        assert time.monotonic() - started < 4.5


def test_a_client_that_stops_reading_is_dropped_after_the_idle_timeout(tmp_path: Path) -> None:
    with one_node(tmp_path, idle_timeout_s=1) as port:
        r = redis.Redis(port=port, socket_timeout=5)
        deaf = socket.socket()
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.connect(("127.0.0.1", port))
        deaf.setblocking(False)
        echo = b"*2\r\n$4\r\nECHO\r\n$32768\r\n" + b"x" * 32768 + b"\r\n"
        deadline = time.monotonic() + 15
        # Keep the server busy with replies we never read, until it gives up
        # on us (it stops reading once its queue is full, so sends block).
        while int(r.info("stats")["slow_readers_dropped"]) == 0:
            assert time.monotonic() < deadline, "the deaf client was never dropped"
            for _ in range(20):
                try:
                    deaf.send(echo)
                except BlockingIOError:
                    break
                except OSError:
                    break  # dropped already: the next INFO shows it
            time.sleep(0.05)
        assert r.ping() is True
        deaf.close()


def test_redis_cli_one_shot_and_pipe(port: int) -> None:
    def cli(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            input=stdin, capture_output=True, text=True, timeout=20, check=True,
        )
        return done.stdout

    assert cli("PING") == "PONG\n"
    assert cli("ECHO", "hello world") == "hello world\n"
    assert "unknown command 'NOPE'" in cli("NOPE")
    assert cli(stdin="PING\nECHO x\n") == "PONG\nx\n"
