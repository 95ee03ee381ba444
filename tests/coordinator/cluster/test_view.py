"""ClusterView carries out the membership reducer's effects: the ring file is
written in a thread, never on the event loop, and the latest ring wins."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator import files
from coordinator.cluster import endpoints
from coordinator.cluster import membership as mb
from coordinator.cluster import ring as ringmod
from coordinator.cluster import view as viewmod
from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.ring import NodeId
from coordinator.cluster.view import ClusterView, load_ring
from coordinator.config import NodeConfig
from tests.coordinator.stores import run


def config(root: Path) -> NodeConfig:
    return NodeConfig(id="a", data_dir=str(root), partitions=8, n=1)


async def never(addr: str, payload: dict[str, Any]) -> dict[str, Any]:
    raise ConnectionError("no peers here")


def start(view: ClusterView) -> asyncio.Task[None]:
    me = Endpoint(NodeId("a"), 1, 0, MemberStatus.UP, "c", "p", 0)
    return asyncio.ensure_future(view.start_gossip(
        me, never, interval_s=0.05, on_restart=lambda node: None, accept=lambda ep: True))


def test_the_ring_file_is_written_off_the_event_loop_and_the_latest_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[str] = []
    real = files.write_doc

    def slow_write(path: str, doc: dict[str, Any]) -> None:
        writers.append(threading.current_thread().name)
        time.sleep(0.05)  # a slow disk: adoptions meanwhile are coalesced
        real(path, doc)

    monkeypatch.setattr(files, "write_doc", slow_write)

    async def body() -> None:
        view = ClusterView(config(tmp_path), None)
        gossip = start(view)
        try:
            await view.form(timeout_s=1)
            assert view.ring is not None and view.ring.epoch == 1
            assert load_ring(str(tmp_path)) == view.ring
            gossip_of = view.gossip
            assert gossip_of is not None
            loop_thread = threading.current_thread().name
            started = time.monotonic()
            for extra in ("b", "c", "d"):  # three ring changes in one go
                gossip_of.members[NodeId(extra)] = Endpoint(
                    NodeId(extra), 1, 1, MemberStatus.UP, "c", "p", 0)
                view._apply(mb.MembersSeen(view._members()))
            assert time.monotonic() - started < 0.05, "the event loop waited for the disk"
            await view.close()
            assert view.ring is not None and view.ring.epoch == 4
            assert load_ring(str(tmp_path)) == view.ring
            assert loop_thread not in writers
            assert len(writers) <= 3, writers  # the first, then the latest
        finally:
            gossip.cancel()

    run(body())


def test_hint_effects_go_to_the_listener(tmp_path: Path) -> None:
    seen: list[mb.HintEffect] = []

    async def body() -> None:
        cfg = NodeConfig(id="a", data_dir=str(tmp_path), partitions=8, n=1)
        view = ClusterView(cfg, None)
        view.on_hints = seen.extend
        gossip = start(view)
        try:
            await view.form(timeout_s=1)
            assert view.gossip is not None
            view.gossip.members[NodeId("b")] = Endpoint(
                NodeId("b"), 1, 1, MemberStatus.UP, "c", "p", 0)
            view._apply(mb.MembersSeen(view._members()))
            await view.close()
        finally:
            gossip.cancel()

    run(body())
    assert seen and all(isinstance(e, mb.HintCopies) for e in seen)
    assert {o for e in seen if isinstance(e, mb.HintCopies) for o in e.owners} == {"b"}


def test_placing_partitions_runs_off_the_event_loop_which_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18.4: a join heard in gossip (a rebalance) and ``ringkv remove``
    place partitions in a thread; the loop runs on meanwhile, and a result
    whose starting state changed under it is computed again."""
    threads: list[tuple[str, str]] = []
    real = mb.apply
    slow = threading.Event()

    def recording(state: mb.MembershipState, event: mb.Event) -> Any:
        threads.append((type(event).__name__, threading.current_thread().name))
        if slow.is_set() and isinstance(event, mb.MembersSeen):
            time.sleep(0.3)  # a rebalance at scale, here without the CPU
        return real(state, event)

    monkeypatch.setattr(mb, "apply", recording)

    async def body() -> None:
        view = ClusterView(NodeConfig(id="a", data_dir=str(tmp_path), partitions=64, n=1), None)
        gossip = start(view)
        try:
            await view.form(timeout_s=1)
            loop_thread = threading.current_thread().name
            assert view.gossip is not None and view.ring is not None
            slow.set()
            joiner = Endpoint(NodeId("b"), 1, 1, MemberStatus.UP, "c", "p", 0)
            view.gossip.receive({"members": [endpoints.encode(joiner)]})
            assert view.ring.node_ids == ("a",)  # not decided on the loop
            ticks = 0
            deadline = time.monotonic() + 10
            while view.ring.node_ids != ("a", "b") and time.monotonic() < deadline:
                ticks += 1
                await asyncio.sleep(0.01)
            assert view.ring.node_ids == ("a", "b") and ticks >= 10, ticks
            slow.clear()
            old, new = await view.remove(NodeId("b"))
            assert new.removed == {"b"} and old.node_ids == ("a", "b")
            placed = [(kind, t) for kind, t in threads
                      if kind in ("Form", "MembersSeen", "Remove")]
            assert {kind for kind, _ in placed} >= {"Form", "MembersSeen", "Remove"}
            # Those that placed partitions ran in a thread (a MembersSeen
            # with nobody new is decided on the loop).
            assert all(t != loop_thread for kind, t in placed if kind != "MembersSeen")
            assert any(t != loop_thread for kind, t in placed if kind == "MembersSeen")
            await view.close()
        finally:
            gossip.cancel()

    run(body())


def test_a_placement_whose_state_changed_meanwhile_is_decided_again(tmp_path: Path) -> None:
    async def body() -> None:
        view = ClusterView(NodeConfig(id="a", data_dir=str(tmp_path), partitions=64, n=1), None)
        gossip = start(view)
        try:
            await view.form(timeout_s=1)
            assert view.gossip is not None and view.ring is not None
            for node in ("b", "c"):
                view.gossip.members[NodeId(node)] = Endpoint(
                    NodeId(node), 1, 1, MemberStatus.UP, "c", "p", 0)
            join = view._apply_placing(mb.MembersSeen(view._members()))
            task = asyncio.ensure_future(join)
            await asyncio.sleep(0)  # the thread starts from the ring with "a" alone
            # Meanwhile a ring that has b and c already arrives from a peer.
            theirs = ringmod.claim([("a", None), ("b", None), ("c", None)], 64, 1, epoch=5)
            view._apply(mb.RingReceived(theirs, view._members()))
            assert await task is True
            assert view.ring == theirs  # nothing more to place: no rival epoch-2 ring
            await view.close()
        finally:
            gossip.cancel()

    run(body())


def test_draining_refuses_writes_and_says_leaving(tmp_path: Path) -> None:
    async def body() -> None:
        view = ClusterView(config(tmp_path), None)
        gossip = start(view)
        try:
            assert view.draining is None and view.is_up(NodeId("a"))
            view.start_draining()
            assert view.draining == "node a is draining; send writes to another node"
            assert not view.is_up(NodeId("a"))
            assert view.members[NodeId("a")].status is MemberStatus.LEAVING
        finally:
            gossip.cancel()

    run(body())
    assert viewmod.RING_FILE == "ring.msgpack"
