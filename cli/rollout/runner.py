"""``ringkv rollout`` carried out: each node in turn drained, restarted
(it executes itself again: the installed code), waited for, and gated on
the cluster's signals before the next (the decisions are ``plan``'s).

Before anything: the rollout lease from a strict majority of ring nodes
(``lease``: one rollout at a time, cluster-wide), renewed by every wait,
given back at the end. Per node::

    safe?   no other node down that shares a partition with it (plan.unsafe)
    drain   it refuses client writes, flushes; peers route around it; wait
            until every other node sees it down (so no replica call is in
            flight to it when it stops)
    safe?   again, as the node itself sees the others now (another node
            sharing a partition down or draining: undrain it and stop)
    restart admin restart: a clean stop, then exec of the same command line
    ready   it answers as a new process (not draining), every worker ready,
            ring seen; every other node sees it up and holds no hints for it
    gate    one window of load figures of every node (plan.judge against the
            baseline window measured before the first node)

Every wait is bounded by ``timeout_s``; the first failure stops the rollout
with a :class:`RolloutError` naming the step, the signal and the figures.
A node drained but not yet told to restart when the rollout stops (an
error, Ctrl-C) is undrained on the way out; the report says what was left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cli.admin import ask
from cli.rollout.lease import LeaseHold, LeaseLost
from cli.rollout.plan import Figures, Gates, judge, ring_of, unsafe, window
from coordinator.cluster.peer import peer_client
from coordinator.ops import admin_api as api
from shardserver.protocol.client import ShardClient

R = TypeVar("R")
_POLL_S = 0.25
_CALL_TIMEOUT_S = 10.0


class RolloutError(Exception):
    """The rollout stopped; the message names the step and the figures."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # the safety check refused it (nothing was done)


@dataclass
class NodeReport:
    node: str
    drained_s: float = 0.0
    restarted_s: float = 0.0
    ready_s: float = 0.0
    gate: Figures | None = None
    failed: list[str] = field(default_factory=list)


@dataclass
class Report:
    order: list[str]
    gates: Gates
    baseline: Figures | None = None
    nodes: list[NodeReport] = field(default_factory=list)
    error: str | None = None  # why it stopped early
    refused: bool = False  # by the safety check or the lease, before touching that node
    interrupted: bool = False  # Ctrl-C (SIGINT)


class Rollout:
    def __init__(self, addr: str, secret: bytes, *, gates: Gates, window_s: float,
                 timeout_s: float, progress: Callable[[str], None],
                 drain_wait_s: float = 1.0) -> None:
        self.addr, self.secret = addr, secret
        self.gates, self.window_s, self.timeout_s = gates, window_s, timeout_s
        self.drain_wait_s = drain_wait_s
        self.say = progress
        self._clients: dict[str, ShardClient] = {}
        self.peers: dict[str, str] = {}  # node id -> peer address
        self.lease: LeaseHold | None = None
        self.left: str | None = None  # the state a stop left a drained node in

    # -- talking to nodes ---------------------------------------------------------
    def _client(self, addr: str) -> ShardClient:
        if addr not in self._clients:
            self._clients[addr] = peer_client(addr, "admin-rollout", self.secret,
                                              timeout_s=_CALL_TIMEOUT_S)
        return self._clients[addr]

    async def _ask(self, node: str | None, request: api.AdminRequest, reply: type[R]) -> R | str:
        """``request`` to ``node`` itself (None: the node we were given)."""
        addr = self.addr if node is None else self.peers.get(node)
        if addr is None:
            return f"no peer address known for {node}"
        return await ask(self._client(addr), request, reply, timeout_s=_CALL_TIMEOUT_S * 6)

    async def _must(self, node: str | None, request: api.AdminRequest, reply: type[R]) -> R:
        got = await self._ask(node, request, reply)
        if isinstance(got, str):
            raise RolloutError(f"{node or self.addr}: {got}")
        return got

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    # -- the plan -----------------------------------------------------------------
    async def prepare(self, only: list[str] | None) -> tuple[list[str], Any]:
        """The nodes to roll, in order, and the ring; every node's peer address."""
        ring = ring_of(await self._must(None, api.RingRequest(), api.RingReply))
        status = await self._must(None, api.StatusRequest(cluster=True), api.ClusterStatus)
        asked = next((n for n in status.nodes if n.node == status.asked), None)
        if isinstance(asked, api.NodeStatus):
            self.peers = {n: v.peer_addr for n, v in asked.peers.items() if v.peer_addr}
        members = [str(n) for n in ring.node_ids]
        order = members if not only else [n for n in members if n in only]
        if only and (unknown := sorted(set(only) - set(members))):
            raise RolloutError(f"no node {', '.join(unknown)} in the ring "
                               f"({', '.join(members)})", refused=True)
        down = {n.node: n.error or n.state for n in status.nodes
                if isinstance(n, api.NodeUnreachable) and n.node in order}
        if down:
            raise RolloutError("cannot roll a node that is down: " + "; ".join(
                f"{n} is {why}" for n, why in sorted(down.items()))
                + " (bring it back first, or leave it out of --nodes)", refused=True)
        return order, ring

    async def busy_nodes(self, node: str, others: list[str]) -> list[str]:
        """Nodes down or draining now: as ``node`` sees them, and as each of
        ``others`` says of itself (no gossip delay: one drained a moment
        ago by someone else counts)."""
        busy = set(await self.down_nodes(node))
        states = await asyncio.gather(*(self._ask(o, api.StatusRequest(), api.NodeStatus)
                                        for o in others))
        busy.update(o for o, got in zip(others, states, strict=True)
                    if isinstance(got, str) or got.state != "up")
        return sorted(busy)

    # -- the lease ----------------------------------------------------------------
    async def take_lease(self, members: list[str]) -> None:
        """Hold the rollout lease on a majority of ``members``, or refuse."""
        async def one(node: str, request: api.LeaseRequest) -> api.LeaseReply | str:
            return await self._ask(node, request, api.LeaseReply)

        self.lease = LeaseHold(members, one)
        if (why := await self.lease.take()) is not None:
            self.lease = None
            raise RolloutError(why, refused=True)
        self.say(f"holding the rollout lease as {self.lease.holder}")

    async def renew_lease(self) -> None:
        if self.lease is not None:
            try:
                await self.lease.renew()
            except LeaseLost as exc:
                raise RolloutError(str(exc)) from None

    async def release_lease(self) -> None:
        if self.lease is not None:
            await self.lease.release()
            self.lease = None

    async def down_nodes(self, anchor: str | None = None) -> list[str]:
        """Ring members ``anchor`` (default: the node we were given) cannot
        reach now. Asked of the node about to go down, whose view of the
        others is older than that of a node just restarted."""
        status = await self._must(anchor, api.StatusRequest(cluster=True), api.ClusterStatus)
        return [n.node for n in status.nodes if isinstance(n, api.NodeUnreachable)]

    # -- figures ------------------------------------------------------------------
    async def _loads(self, nodes: list[str]) -> list[api.LoadReply]:
        got = await asyncio.gather(*(self._must(n, api.LoadRequest(), api.LoadReply)
                                     for n in nodes))
        return list(got)

    async def measure(self, nodes: list[str]) -> Figures:
        before = await self._loads(nodes)
        end = time.monotonic() + self.window_s
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 1.0))
            await self.renew_lease()
        return window(before, await self._loads(nodes))

    # -- one node -----------------------------------------------------------------
    async def roll(self, node: str, ring: Any, members: list[str], baseline: Figures,
                   ) -> NodeReport:
        report = NodeReport(node)
        others = [n for n in members if n != node]
        if (why := unsafe(ring, node, await self.down_nodes(node))) is not None:
            raise RolloutError(why, refused=True)
        started = time.monotonic()
        self.say(f"{node}: draining")
        try:  # from the drain request on, until the node took the restart request
            await self._must(node, api.DrainRequest(), api.DrainReply)
            await self._wait(f"every other node sees {node} down (routes around it)",
                             lambda: self._seen(node, others, "down"))
            # Requests already on their way to the node finish meanwhile.
            end = time.monotonic() + self.drain_wait_s
            while (left := end - time.monotonic()) > 0:
                await asyncio.sleep(min(left, 1.0))
                await self.renew_lease()
            report.drained_s = round(time.monotonic() - started, 1)
            if (why := unsafe(ring, node, await self.busy_nodes(node, others))) is not None:
                raise RolloutError(f"{why} (seen after draining {node})", refused=True)
            self.say(f"{node}: drained in {report.drained_s}s; restarting")
            await self._must(node, api.RestartRequest(), api.RestartReply)
        except BaseException:
            await self._undrain(node)
            raise
        restarted = time.monotonic()
        await self._wait(f"{node} answers as a new process with every worker ready",
                         lambda: self._fresh(node))
        report.restarted_s = round(time.monotonic() - restarted, 1)
        self.say(f"{node}: back after {report.restarted_s}s; waiting for peers and hints")
        await self._wait(f"every other node sees {node} up",
                         lambda: self._seen(node, others, "up"))
        await self._wait(f"hints for {node} drained on every other node",
                         lambda: self._no_hints_for(node, others))
        report.ready_s = round(time.monotonic() - started, 1)
        self.say(f"{node}: ready {report.ready_s}s after the drain; gate over "
                 f"{self.window_s:g}s")
        report.gate = await self.measure(members)
        report.failed = judge(baseline, report.gate, self.gates)
        self.say(f"{node}: {'gate FAILED' if report.failed else 'gate ok'}: "
                 f"{report.gate.line()}")
        return report

    async def _undrain(self, node: str) -> None:
        """Take the drain back (the rollout stops before restarting ``node``)."""
        try:
            got = await asyncio.wait_for(
                self._ask(node, api.DrainRequest(off=True), api.DrainReply), _CALL_TIMEOUT_S)
        except TimeoutError:
            got = f"no answer in {_CALL_TIMEOUT_S:g}s"
        if isinstance(got, str):
            self.left = (f"{node} is LEFT DRAINING (undrain failed: {got}); undo it with "
                         f"`ringkv drain --off --addr {self.peers.get(node, 'PEER_ADDR')}`")
        else:
            self.left = f"{node} undrained: it takes writes again"
        self.say(self.left)

    async def _wait(self, what: str, check: Callable[[], Awaitable[bool | str]]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            await self.renew_lease()
            last = await check()
            if last is True:
                return
            if time.monotonic() > deadline:
                raise RolloutError(f"not true after {self.timeout_s:g}s: {what} ({last})")
            await asyncio.sleep(_POLL_S)

    async def _seen(self, node: str, others: list[str], state: str) -> bool | str:
        for other in others:
            got = await self._ask(other, api.StatusRequest(), api.NodeStatus)
            if isinstance(got, str):
                return got
            view = got.peers.get(node)
            if view is None or view.state != state:
                return f"{other} sees it {view.state if view else 'not at all'}"
        return True

    async def _fresh(self, node: str) -> bool | str:
        got = await self._ask(node, api.StatusRequest(), api.NodeStatus)
        if isinstance(got, str):
            return got
        if got.state != "up":
            return f"it is {got.state}"
        if got.workers_ready < got.workers or not got.ring_epoch:
            return f"{got.workers_ready}/{got.workers} workers ready, ring epoch {got.ring_epoch}"
        return True

    async def _no_hints_for(self, node: str, others: list[str]) -> bool | str:
        for other in others:
            got = await self._ask(other, api.StatusRequest(), api.NodeStatus)
            if isinstance(got, str):
                return got
            backlog = got.hint_backlog.get(node)
            if backlog is not None and backlog.partitions:
                return f"{other} holds {backlog.partitions} hinted partitions for it"
        return True


async def run(rollout: Rollout, only: list[str] | None, dry_run: bool) -> Report:
    """The whole rollout (or its plan with ``dry_run``); the report says how
    far it went and why it stopped."""
    report = Report([], rollout.gates)
    try:
        await _run(rollout, report, only, dry_run)
    except RolloutError as exc:
        report.error, report.refused = str(exc), exc.refused
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancelled us
        report.error, report.interrupted = "interrupted (Ctrl-C)", True
    finally:
        try:
            await rollout.release_lease()
        finally:
            await rollout.close()
    if rollout.left is not None:
        report.error = f"{report.error}; {rollout.left}"
    return report


async def _run(rollout: Rollout, report: Report, only: list[str] | None,
               dry_run: bool) -> None:
    report.order, ring = await rollout.prepare(only)
    down = await rollout.down_nodes()
    members = [str(n) for n in ring.node_ids if str(n) not in down]
    for node in report.order:  # nothing starts when a node is unsafe to start with
        if (why := unsafe(ring, node, down)) is not None:
            raise RolloutError(why, refused=True)
    if dry_run:
        return
    await rollout.take_lease([str(n) for n in ring.node_ids])
    rollout.say(f"baseline over {rollout.window_s:g}s")
    report.baseline = await rollout.measure(members)
    rollout.say(f"baseline: {report.baseline.line()}")
    for node in report.order:
        step = await rollout.roll(node, ring, members, report.baseline)
        report.nodes.append(step)
        if step.failed:
            report.error = f"gate failed after {node}: " + "; ".join(step.failed)
            return
