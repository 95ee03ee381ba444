"""A man in the middle between an operator holding the secret and a real
node (``ringkv serve``): it relays the peer handshake untouched, then
injects a replica write of its own, or rewrites the operator's. Before
frames were tagged after the handshake, the node applied both; now it
applies neither, says why in its log and closes that connection only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cluster.peer import peer_client
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.hlc import HLC
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import plain_version
from tests.cluster import SECRET, Cluster, local_read, ring_of
from tests.relay import Relay, Tamper

pytestmark = pytest.mark.integration

INTEGRITY = "failed its integrity check"

#: The client frame the relay tampers with: the first request after the hello.
FIRST = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("relay")), nodes=1, n=1, workers=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


def _write(cluster: Cluster, key: bytes, value: bytes) -> m.ReplicaWrite:
    version = plain_version(make_actor("operator", 1), HLC().now(), value)
    return m.ReplicaWrite(ring_of(cluster).partition_of(key), key, version, "lww")


def _through_relay(cluster: Cluster, tamper: Tamper, request: m.Request) -> object:
    node = cluster.members[0]

    async def body() -> object:
        async with Relay((node.host, node.peer_port), tamper) as relay, \
                peer_client(f"127.0.0.1:{relay.port}", "operator", SECRET.encode(),
                            timeout_s=10) as client:
            try:
                return await client.call(request)
            except ShardUnavailable as e:
                return e

    return asyncio.run(asyncio.wait_for(body(), 60))


def _stored(cluster: Cluster, key: bytes) -> list[bytes | None]:
    return [v.value for v in local_read(cluster, 0, key) or ()]


def test_a_frame_injected_after_a_relayed_handshake_is_not_applied(cluster: Cluster) -> None:
    injected = codec.encode_requests([(424242, _write(cluster, b"injected", b"forged"))])

    def inject(index: int, frame: bytes) -> list[bytes]:
        # 0: the handshake answer, 1: the hello, 2: the write
        return [injected, frame] if index == FIRST else [frame]

    outcome = _through_relay(cluster, inject, m.Ping())
    assert isinstance(outcome, ShardUnavailable), outcome
    assert _stored(cluster, b"injected") == []
    assert INTEGRITY in cluster.members[0].log.read_text()


def test_a_write_rewritten_on_the_way_is_not_applied(cluster: Cluster) -> None:
    def rewrite(index: int, frame: bytes) -> list[bytes]:
        return [frame.replace(b"value-A", b"value-B")] if index == FIRST else [frame]

    outcome = _through_relay(cluster, rewrite, _write(cluster, b"rewritten", b"value-A"))
    assert isinstance(outcome, ShardUnavailable), outcome
    assert _stored(cluster, b"rewritten") == []
    # The node still serves: the same write, relayed untouched, goes through.
    reply = _through_relay(cluster, lambda i, f: [f], _write(cluster, b"rewritten", b"value-A"))
    assert isinstance(reply, m.Reply) and reply.ok, reply
    assert _stored(cluster, b"rewritten") == [b"value-A"]
    assert cluster.client(0).get(b"rewritten") == b"value-A"
