"""Peer protocol negotiation (the range math, pure) and over real sockets:
the highest common version is used, no common version is refused naming
both ranges, a peer from before the negotiation is spoken to in 3, and a
connection made for one node refuses a server that is another."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.cluster import endpoints, peer, peer_server
from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.gossip import Gossiper
from coordinator.cluster.peer import PeerIdentityError, open_peer, peer_client
from coordinator.cluster.peer_versions import (
    PEER_PROTOCOL_MAX,
    PEER_PROTOCOL_MIN,
    Negotiated,
    PeerVersionError,
    VersionRange,
    local_range,
    negotiate,
)
from coordinator.cluster.ring import NodeId
from coordinator.config import ConfigError
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from tests.coordinator.cluster.test_peer import (
    SECRET,
    Handler,
    addr,
    no_loop_errors,  # noqa: F401 - an autouse fixture
    run,
    serving,
)


def test_the_highest_common_version_wins() -> None:
    assert negotiate(VersionRange(3, 4), VersionRange(3, 4)) == 4
    assert negotiate(VersionRange(3, 4), VersionRange(3, 3)) == 3
    assert negotiate(VersionRange(3, 3), VersionRange(3, 7)) == 3
    assert negotiate(VersionRange(4, 6), VersionRange(3, 5)) == 5
    with pytest.raises(PeerVersionError,
                       match=r"no common peer protocol: n3 speaks 3, we speak 4\.\.5"):
        negotiate(VersionRange(4, 5), VersionRange(3, 3), who="n3")


def test_the_local_range_never_goes_below_the_sealed_protocol() -> None:
    assert local_range() == VersionRange(PEER_PROTOCOL_MIN, PEER_PROTOCOL_MAX)
    assert local_range(3) == VersionRange(3, 3)
    for bad in (2, PEER_PROTOCOL_MAX + 1):
        with pytest.raises(ConfigError, match=r"max_peer_protocol must be 3\.\."):
            local_range(bad)
    for raw in ([4, 3], [3], "3..4", [0, 3], [True, 4]):
        with pytest.raises(PeerVersionError, match="lo <= hi"):
            VersionRange.from_wire(raw)


def _connect(server_versions: VersionRange | None, client_versions: VersionRange | None,
             ) -> Negotiated:
    heard: list[Negotiated] = []

    async def body() -> None:
        async with serving(Handler(), versions=server_versions) as server, \
                peer_client(addr(server), "n2", SECRET, versions=client_versions,
                            on_hello=heard.append) as client:
            assert (await client.call(m.Ping())).ok

    run(body())
    (agreed,) = heard
    return agreed


def test_both_on_the_newest_speak_it_and_an_older_maximum_is_honoured() -> None:
    agreed = _connect(None, None)
    assert agreed.version == PEER_PROTOCOL_MAX and agreed.node == "n1" and agreed.release
    assert _connect(VersionRange(3, 3), None).version == 3  # the server held back
    assert _connect(None, VersionRange(3, 3)).version == 3  # the client held back


def test_no_common_version_is_refused_naming_both_ranges() -> None:
    async def body() -> None:
        async with serving(Handler(), versions=VersionRange(5, 6)) as server:
            with pytest.raises(PeerVersionError, match=r"refused us: no common peer protocol: "
                                                       r"peer n2 speaks 3\.\.4, we speak 5\.\.6"):
                await open_peer("127.0.0.1", server.port, "n2", SECRET,
                                versions=VersionRange(3, 4))
            _, writer = await open_peer("127.0.0.1", server.port, "n2", SECRET,
                                        versions=VersionRange(5, 5))
            writer.close()

    run(body())


def test_a_node_that_no_longer_speaks_3_refuses_a_peer_without_hello(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_hello(*args: object, **kwargs: object) -> Negotiated:
        return Negotiated(3, VersionRange(3, 3), "n1", "")

    monkeypatch.setattr(peer, "_hello", no_hello)  # a release from before the hello

    async def body() -> None:
        async with serving(Handler(), versions=VersionRange(5, 6)) as server, \
                peer_client(addr(server), "n2", SECRET) as client:
            reply = await client.call(m.Ping(), timeout=2)
            assert reply.status is m.Status.BAD_REQUEST
            assert reply.message.startswith(
                "no common peer protocol: peer n2 (no hello) speaks 3, we speak 5..6")

    run(body())


def test_a_peer_from_before_the_negotiation_is_spoken_to_in_3(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What a protocol-3 release answers to an op it does not know.
    monkeypatch.setattr(peer_server._PeerConnection, "_hello",
                        lambda self, req: m.Reply(m.Status.BAD_REQUEST,
                                                  "envelope 0.op: unknown op 'hello'"))
    agreed = _connect(None, None)
    assert agreed.version == 3 and agreed.theirs == VersionRange(3, 3) and agreed.release == ""

    async def newer_only() -> None:
        async with serving(Handler()) as server:
            with pytest.raises(PeerVersionError, match=r"speaks 3, we speak 4"):
                await open_peer("127.0.0.1", server.port, "n2", SECRET,
                                versions=VersionRange(4, 4))

    run(newer_only())


def test_a_connection_for_one_node_refuses_another_node() -> None:
    async def body() -> None:
        async with serving(Handler()) as server:  # it is n1
            with pytest.raises(PeerIdentityError,
                               match=r"is node 'n1', not 'n4': refusing to send it n4's"):
                await open_peer("127.0.0.1", server.port, "n2", SECRET, expect="n4")
            _, writer = await open_peer("127.0.0.1", server.port, "n2", SECRET,
                                        expect="n1")
            writer.close()
            async with peer_client(addr(server), "n2", SECRET, expect="n4") as client:
                with pytest.raises(ShardUnavailable, match="is node 'n1', not 'n4'"):
                    await client.call(m.Ping(), timeout=2)

    run(body())


# --- protocol 4's difference: gossip entries with the node's versions ---------


def _ep(proto: int = 4, release: str = "0.2.0", generation: int = 1, version: int = 1,
        ) -> Endpoint:
    return Endpoint(NodeId("n1"), generation, version, MemberStatus.UP, "h:1", "h:2", 1, "",
                    proto, release)


def test_entries_carry_versions_only_for_protocol_4_peers() -> None:
    ep = _ep()
    assert len(endpoints.encode(ep)) == 8 == len(endpoints.encode(ep, 3))
    assert endpoints.encode(ep, 4)[8:] == [4, "0.2.0"]
    assert endpoints.decode(endpoints.encode(ep, 4)) == ep
    assert endpoints.decode(endpoints.encode(ep, 3)) == _ep(0, "")


def test_an_entry_relayed_by_a_protocol_3_node_keeps_the_known_versions() -> None:
    known = {NodeId("n1"): _ep(version=1)}
    relayed = {NodeId("n1"): _ep(0, "", version=5)}  # newer heartbeat, no versions
    assert endpoints.merge(known, relayed)[NodeId("n1")] == _ep(version=5)
    restarted = {NodeId("n1"): _ep(0, "", generation=2)}  # it may run another release now
    assert endpoints.merge(known, restarted)[NodeId("n1")].peer_protocol == 0


def test_gossip_speaks_the_form_of_the_peer() -> None:
    async def send(addr: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("not sent")

    gossiper = Gossiper(_ep(), (), send, protocol_of=lambda addr: 4 if addr == "new" else 3)
    _, to_old = gossiper.begin_round("old") or ("", {})
    _, to_new = gossiper.begin_round("new") or ("", {})
    assert "proto" not in to_old and len(to_old["members"][0]) == 8
    assert to_new["proto"] == 4 and len(to_new["members"][0]) == 10
    # Answers come back in the asker's form.
    assert len(gossiper.receive({"members": []})["members"][0]) == 8
    assert len(gossiper.receive({"members": [], "proto": 4})["members"][0]) == 10
    assert len(gossiper.receive({"members": [], "proto": 9})["members"][0]) == 10
