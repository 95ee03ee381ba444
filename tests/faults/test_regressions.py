"""Product bugs the fault harness found, fixed since: their regression tests,
on a real cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cluster import Cluster, local_read, wait_for
from tests.faults.nemesis import Nemesis
from tests.faults.workload import client, cmd


@pytest.mark.integration
def test_context_writes_of_one_key_in_flight_together_are_both_kept(shared: Nemesis) -> None:
    """Two VSETs of one key through n1 while n3 is paused: both are
    acknowledged by n1 and n2 at once (the second's call to n3 waits for
    the first's, the client does not), and once n3 is back it holds both.
    Sent to n3 together, n3 could apply the later dot first; a client
    reading it there would write a context covering the earlier dot it never
    saw, dropping that acknowledged add (the fault harness lost 1 of 13,488
    adds so). The order itself is unit-tested with ``send_after`` in
    tests/coordinator/test_datapath.py."""
    key = f"in-flight-{os.getpid()}"
    r = client(shared.cluster, 0, timeout_s=10.0)
    context = cmd(r, "VGET", key)[0]
    shared.pause(2)
    try:
        assert cmd(r, "VSET", key, context, "first") == b"OK"
        assert cmd(r, "VSET", key, context, "second") == b"OK"  # n3 still paused
    finally:
        shared.resume(2)

    def on_n3() -> list[bytes | None]:
        return sorted(v.value for v in local_read(shared.cluster, 2, key.encode()) or ())

    wait_for("n3 holds both siblings", lambda: on_n3() == [b"first", b"second"], 10)
    _, *values = cmd(r, "VGET", key, "R", 3)
    assert sorted(values) == [b"first", b"second"]


@pytest.mark.integration
def test_two_vsets_with_one_context_through_one_node_keep_both(shared: Nemesis) -> None:
    """The second VSET's clock used to dominate the first (same actor, larger
    counter), so an acknowledged value vanished; dotted version vectors fixed it."""
    r = client(shared.cluster, 0)
    key = f"same-actor-{os.getpid()}"
    context = cmd(r, "VGET", key)[0]
    assert cmd(r, "VSET", key, context, "left") == b"OK"
    assert cmd(r, "VSET", key, context, "right") == b"OK"
    _, *values = cmd(r, "VGET", key, "R", 3)
    assert sorted(values) == [b"left", b"right"]


def _hex_addr(text: str) -> tuple[str, int]:
    ip, port = text.split(":")
    return ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)), int(port, 16)


def peer_sources(cluster: Cluster, i: int) -> set[str]:
    """Local addresses of node ``i``'s TCP connections to other nodes' peer ports."""
    proc = cluster.members[i].proc
    assert proc is not None
    inodes = set()
    for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = {(m.host, m.peer_port) for j, m in enumerate(cluster.members) if j != i}
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and _hex_addr(fields[2]) in peers:
            out.add(_hex_addr(fields[1])[0])
    return out


@pytest.mark.integration
def test_peers_connect_from_their_bind_address(shared: Nemesis) -> None:
    """``open_peer`` ignored ``source=``, so every node dialled from
    127.0.0.1 and a cut-off by address was impossible."""
    cluster = shared.cluster
    for i, m in enumerate(cluster.members):
        sources = peer_sources(cluster, i)
        assert sources, f"{m.name} has no peer connections"
        assert sources == {m.host}, f"{m.name} dials peers from {sorted(sources)}"
