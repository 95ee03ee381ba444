"""Frames after the peer handshake are tagged: a man in the middle who
relays the handshake (tests/relay.py, real TCP sockets on 127.0.0.1) can
neither inject, modify, replay, reorder nor drop a frame; the server closes
the connection and applies nothing past the first bad frame."""

from __future__ import annotations

import asyncio
import logging

import pytest

from coordinator.cluster import peer_auth
from coordinator.cluster.peer import peer_client
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.session import (
    TAG_BYTES,
    FrameOpener,
    FrameSealer,
    PeerIntegrityError,
    SealedReader,
)
from tests.coordinator.cluster.test_peer import (
    SECRET,
    Handler,
    addr,
    no_loop_errors,  # noqa: F401 - an autouse fixture
    run,
    serving,
)
from tests.relay import Relay, Tamper

INTEGRITY = "failed its integrity check"
#: The client's frames through the relay: 0 the handshake answer, 1 the
#: hello (the first sealed frame), then the requests.
FIRST = 2


class Recorder(Handler):
    """Handler that remembers the keys of the reads it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[bytes] = []

    async def __call__(self, peer_id: str, req: m.Request) -> m.Reply:
        if isinstance(req, m.ReplicaRead):
            self.keys.append(req.key)
        return await super().__call__(peer_id, req)


def _request_frame(rid: int, key: bytes) -> bytes:
    return codec.encode_requests([(rid, m.ReplicaRead(0, key))])


# --- the tag itself ------------------------------------------------------------------


def test_session_keys_differ_per_direction_connection_and_secret() -> None:
    a, b = peer_auth.new_nonce(), peer_auth.new_nonce()
    c2s, s2c = peer_auth.session_keys(SECRET, a, b, "n1", "n2")
    assert c2s != s2c and len(c2s) == 32
    assert peer_auth.session_keys(SECRET, a, b, "n1", "n2") == (c2s, s2c)
    assert peer_auth.session_keys(SECRET, b, a, "n1", "n2")[0] != c2s
    assert peer_auth.session_keys(b"other", a, b, "n1", "n2")[0] != c2s
    assert peer_auth.session_keys(SECRET, a, b, "n1", "n3")[0] != c2s
    # The ids are length-delimited: moving a character across them changes the key.
    assert peer_auth.session_keys(SECRET, a, b, "n1x", "n2")[0] != \
        peer_auth.session_keys(SECRET, a, b, "n1", "xn2")[0]


def test_opener_takes_each_frame_once_in_order_and_nothing_modified() -> None:
    key, other = bytes(32), bytes(31) + b"\x01"

    def sealed(sealer: FrameSealer, payload: bytes) -> bytes:
        _, tag = sealer.seal(payload)
        return payload + tag

    sealer = FrameSealer(key)
    first, second = sealed(sealer, b"first"), sealed(sealer, b"second")
    assert len(first) == len(b"first") + TAG_BYTES
    opener = FrameOpener(key)
    assert bytes(opener.open(first)) == b"first"
    with pytest.raises(PeerIntegrityError, match="peer frame 1 " + INTEGRITY):
        opener.open(first)  # replayed
    assert bytes(opener.open(second)) == b"second"
    for bad in (second,  # reordered: frame 1 where frame 0 is due
                bytes([first[0] ^ 1]) + first[1:],  # one bit flipped
                b"fir" + first[-TAG_BYTES:],  # truncated body
                sealed(FrameSealer(other), b"first")):  # another connection's key
        with pytest.raises(PeerIntegrityError, match="peer frame 0 " + INTEGRITY):
            FrameOpener(key).open(bad)
    with pytest.raises(PeerIntegrityError, match="shorter than its 16-byte tag"):
        opener.open(b"short")


# --- a man in the middle, over real sockets ---------------------------------------


def _attack(tamper: Tamper, calls: int = 1) -> tuple[Recorder, list[object]]:
    """A peer client talking to a PeerServer through a Relay that applies
    ``tamper``; returns the server's handler and the outcome of each call."""
    handler = Recorder()
    outcomes: list[object] = []

    async def body() -> None:
        async with serving(handler) as server, \
                Relay(("127.0.0.1", server.port), tamper) as relay, \
                peer_client(f"127.0.0.1:{relay.port}", "n2", SECRET, timeout_s=5) as client:
            for i in range(calls):
                try:
                    outcomes.append(await client.call(m.ReplicaRead(0, b"honest-%d" % i)))
                except ShardUnavailable as e:
                    outcomes.append(e)
            # The server still serves honest peers.
            async with peer_client(addr(server), "n3", SECRET) as direct:
                assert (await direct.call(m.Ping())).ok

    run(body())
    return handler, outcomes


def test_an_injected_frame_is_refused_and_closes_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ringkv.peer")

    def inject(index: int, frame: bytes) -> list[bytes]:
        return [_request_frame(99, b"injected"), frame] if index == FIRST else [frame]

    handler, outcomes = _attack(inject)
    assert b"injected" not in handler.keys and handler.keys == []
    assert isinstance(outcomes[0], ShardUnavailable)
    assert INTEGRITY in caplog.text and "dropping peer n2" in caplog.text


def test_a_modified_frame_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ringkv.peer")

    def modify(index: int, frame: bytes) -> list[bytes]:
        return [frame.replace(b"honest", b"HONEST")] if index == FIRST else [frame]

    handler, outcomes = _attack(modify)
    assert handler.keys == [] and isinstance(outcomes[0], ShardUnavailable)
    assert "peer frame 1 " + INTEGRITY in caplog.text  # frame 0: the hello


def test_a_replayed_frame_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ringkv.peer")

    def replay(index: int, frame: bytes) -> list[bytes]:
        return [frame, frame] if index == FIRST else [frame]

    handler, _ = _attack(replay)
    # Never the copy; the original too is dropped when both arrive in one
    # read (a bad frame discards the rest of what came with it).
    assert handler.keys in ([], [b"honest-0"])
    assert "peer frame 2 " + INTEGRITY in caplog.text


def test_reordered_and_dropped_frames_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ringkv.peer")
    held: list[bytes] = []

    def reorder(index: int, frame: bytes) -> list[bytes]:
        if index == FIRST:  # hold the first request until the second is sent
            held.append(frame)
            return []
        return [frame, *held] if index == FIRST + 1 else [frame]

    def drop(index: int, frame: bytes) -> list[bytes]:
        return [] if index == FIRST else [frame]

    async def two_calls(tamper: Tamper) -> Recorder:
        handler = Recorder()
        async with serving(handler) as server, \
                Relay(("127.0.0.1", server.port), tamper) as relay, \
                peer_client(f"127.0.0.1:{relay.port}", "n2", SECRET, timeout_s=5) as client:
            first = asyncio.ensure_future(client.call(m.ReplicaRead(0, b"first"), timeout=2))
            while client.frames_sent < 1:
                await asyncio.sleep(0.005)  # until the first frame left the client
            second = await asyncio.gather(client.call(m.ReplicaRead(0, b"second"), timeout=2),
                                          return_exceptions=True)
            await asyncio.gather(first, return_exceptions=True)
            assert not any(isinstance(r, m.Reply) and r.ok for r in second)
        return handler

    async def body() -> None:
        assert (await two_calls(reorder)).keys == []
        assert (await two_calls(drop)).keys == []

    run(body())
    assert caplog.text.count("peer frame 1 " + INTEGRITY) == 2


def test_bytes_flooded_behind_the_handshake_answer_are_not_buffered_without_bound() -> None:
    """A stranger that sends its handshake answer and then streams bytes
    gets its connection failed at 64 KiB, not held in memory until the
    handshake deadline."""
    async def body() -> None:
        reader = SealedReader(plain_frames=1, limit=1 << 16)
        answer = codec.encode_requests([(1, m.Ping())])
        reader.feed_data(answer + b"x" * (64 << 10))
        reader.feed_data(b"x")
        with pytest.raises(PeerIntegrityError, match="before the handshake finished"):
            await reader.read(1)

    run(body())
