"""One ringkv node's life cycle: open, start, run, stop.

:meth:`Node.open` reads the node's state files (identity, hints, the ring it
last adopted) and wires the parts, each owning its own state::

    ClientServer (client/) ──▶ command table ──▶ DataPath (data/) ──▶ Router ──▶ workers
         INFO ◀── StatusSource (ops/)               │                  └──▶ peers
    PeerServer (cluster/) ──▶ PeerService (ops/) ──▶ Router, AdminHandler, gossip
    ClusterView (cluster/): ring (membership reducer), gossip, liveness
    Handoff, AntiEntropy (repair/) ──▶ Router

:meth:`Node.start` brings them up in order::

    workers ready ─▶ peer server ─▶ gossip (form the ring with the seeds if
    there is none yet) ─▶ handoff, anti-entropy and stats tasks ─▶ metrics
    ─▶ client server

and :meth:`Node.stop` takes them down in reverse; every task is owned and
cancelled on the way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from coordinator import files
from coordinator.client.server import ClientServer
from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.peer_server import PeerServer
from coordinator.cluster.peer_versions import RELEASE
from coordinator.cluster.ring import NodeId
from coordinator.cluster.view import ClusterView, load_ring
from coordinator.config import NodeConfig
from coordinator.data.clock import Clock
from coordinator.data.datapath import DataPath
from coordinator.data.router import Router
from coordinator.data.shared_reads import ReadOptions
from coordinator.ops.admin import AdminHandler, RestartCheck
from coordinator.ops.cluster_commands import ClusterCommands
from coordinator.ops.metrics import Metrics
from coordinator.ops.peer_service import PeerService
from coordinator.ops.read_only import ReadOnlySwitch
from coordinator.ops.status import StatusSource, WorkerStatsPoller
from coordinator.repair.anti_entropy import AntiEntropy
from coordinator.repair.handoff import Handoff
from coordinator.repair.hints import HintStore
from shardserver.protocol.pool import WorkerPool
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import DEFAULT_SIBLING_CAP

log = logging.getLogger("ringkv.node")


@dataclass(frozen=True, slots=True)
class Timing:
    formation_timeout_s: float = 30.0
    gossip_interval_s: float = 1.0


class Node:
    def __init__(self, config: NodeConfig, pool: WorkerPool, *, incarnation: int,
                 hints: HintStore, view: ClusterView, clock: Clock,
                 timing: Timing = Timing(), insecure_no_secret: bool = False,
                 lock: files.DataDirLock | None = None,
                 read_only: ReadOnlySwitch | None = None,
                 restart_check: RestartCheck = lambda: None) -> None:
        self.config = config
        self.read_only = read_only or ReadOnlySwitch(config.id, config.data_dir)
        self._lock = lock
        self.pool = pool
        self.timing = timing
        self.view = view
        self.router = Router(config, pool, view, hints, clock.refuse_write)
        self.data = DataPath(
            self.router, clock, make_actor(config.id, incarnation),
            timeout_s=self.router.timeout_s, max_reply_bytes=config.max_reply_bytes,
            sibling_cap=DEFAULT_SIBLING_CAP, hinted_handoff=config.handoff_enabled,
            reads=ReadOptions.of(config),
        )
        self.handoff = Handoff(self.router, hints, config)
        view.on_hints = self.handoff.ring_changed
        self.anti_entropy = AntiEntropy(self.router, interval_s=config.aae_interval_s,
                                        sibling_cap=DEFAULT_SIBLING_CAP)
        self.worker_stats = WorkerStatsPoller(self.router)
        self.cluster_commands = ClusterCommands(config, view, self.router, self.data,
                                                self.worker_stats, read_only=self.read_only)
        self.metrics = Metrics()
        self.client_server = ClientServer(
            config, self.cluster_commands,
            lambda section: self.status.info_text(section),  # noqa: PLW0108 - made next
            self.metrics.observe, lambda: self.status.reset_stats())  # noqa: PLW0108
        self.status = StatusSource(
            config=config, incarnation=incarnation, view=view, router=self.router,
            data=self.data, handoff=self.handoff, hints=hints, anti_entropy=self.anti_entropy,
            clock=clock, worker_stats=self.worker_stats, clients=self.client_server,
            read_only=self.read_only)
        self.metrics.collect(self.status)
        admin = AdminHandler(config, view=view, router=self.router, handoff=self.handoff,
                             hints=hints, anti_entropy=self.anti_entropy, status=self.status,
                             read_only=self.read_only, restart=self.request_restart,
                             requests=self.metrics.requests.totals, restart_check=restart_check)
        service = PeerService(config, view=view, router=self.router, admin=admin,
                              cluster_commands=self.cluster_commands,
                              worker_stats=self.worker_stats)
        self.peer_server = PeerServer(
            config.id, config.secret.encode(), service.handle, bind=config.bind,
            port=config.peer_port, fast=self.router.from_peer,
            allow_empty_secret=insecure_no_secret, versions=self.router.versions,
            attach=self.router.attach, workers=pool.workers,
        )
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set by the admin API's restart: stop, then the process executes
        #: itself again (cli.serve); ``_stopping`` ends :meth:`run`.
        self.restart_requested = False
        self._stopping = asyncio.Event()

    @classmethod
    def open(cls, config: NodeConfig, pool: WorkerPool, *, timing: Timing = Timing(),
             insecure_no_secret: bool = False,
             restart_check: RestartCheck = lambda: None) -> Node:
        """The node of ``config.data_dir``: its identity (made on first
        use), its hints and the ring it adopted last. Holds the directory's
        LOCK until :meth:`stop` (DataDirLocked when another node has it)."""
        files.private_dir(config.data_dir)
        lock = files.DataDirLock(config.data_dir)
        try:
            incarnation = files.load_identity(config.data_dir, config.id)
            clock = Clock(config.max_clock_drift_ms, offset_ms=config.clock_offset_ms,
                          secret=config.secret.encode())
            hints = HintStore(config.data_dir)
            hints.load(clock.hint_since)
            view = ClusterView(config, load_ring(config.data_dir))
            read_only = ReadOnlySwitch(config.id, config.data_dir)
            read_only.load()  # the operator's kill switch outlives restarts
            return cls(config, pool, incarnation=incarnation, hints=hints, view=view,
                       clock=clock, timing=timing, insecure_no_secret=insecure_no_secret,
                       lock=lock, read_only=read_only, restart_check=restart_check)
        except BaseException:
            lock.release()
            raise

    # -- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        await self.pool.start()
        await self.pool.wait_ready(120)
        await self.router.connect_workers()
        await self.peer_server.start()
        config = self.config
        me = Endpoint(
            self.view.id, int(time.time() * 1000), 0, MemberStatus.UP,
            f"{config.advertised_host()}:{config.client_port}",
            f"{config.advertised_host()}:{self.peer_server.port}",
            self.view.ring.epoch if self.view.ring else 0, config.zone,
            self.router.versions.hi, RELEASE,
        )
        self._own(self.view.start_gossip(
            me, self.router.gossip, interval_s=self.timing.gossip_interval_s,
            on_restart=self._peer_restarted, accept=self._clock.endpoint_ok,
            protocol_of=self.router.protocol_of,
        ), "gossip")
        if self.view.ring is None:
            await self.view.form(self.timing.formation_timeout_s)
        self._own(self.handoff.run(), "handoff")
        self._own(self.anti_entropy.run(), "anti-entropy")
        self._own(self.worker_stats.run(), "stats")
        if config.metrics_port:
            self.metrics.serve(config.bind, config.metrics_port)
        await self.client_server.start()
        log.info("node %s ready: clients on %s:%d, peers on %s:%d, ring epoch %d",
                 config.id, config.bind, self.client_server.port, config.bind,
                 self.peer_server.port, self.view.ring.epoch if self.view.ring else 0)

    async def run(self, until: asyncio.Event,
                  ready: Callable[[Node], None] = lambda node: None) -> None:
        """Start, call ``ready``, serve until ``until`` is set, stop. Set
        during startup (SIGTERM while the node waits for its seeds or its
        workers), it cancels the start and stops what was started."""
        try:
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(self._until(until))
            try:
                await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not starting.done():
                    starting.cancel()
                    log.info("node %s: stopping during startup", self.config.id)
                    await asyncio.wait((starting,))
            if starting.cancelled():
                return
            starting.result()  # raises what the start raised
            ready(self)
            await self._until(until)
        finally:
            await self.stop()

    async def _until(self, until: asyncio.Event) -> None:
        """Until ``until`` is set or a restart is asked for."""
        waits = [asyncio.ensure_future(until.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def request_restart(self) -> None:
        """Stop as on SIGTERM; the caller of :meth:`run` then starts the
        process again with the same command line (``restart_requested``)."""
        log.info("node %s: restart asked for: stopping, then executing again", self.config.id)
        self.restart_requested = True
        self._stopping.set()

    async def stop(self) -> None:
        self.metrics.stop()
        await self.client_server.stop()
        await self.data.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.handoff.close()
        await self.peer_server.stop()
        await self.view.close()
        await self.router.close()
        await self.pool.stop()
        if self._lock is not None:
            self._lock.release()

    def _own(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.config.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s died", task.get_name(), exc_info=task.exception())

    def _peer_restarted(self, node: NodeId) -> None:
        """Gossip brought a new generation of ``node``: dial it again now,
        and hand it its hints now."""
        self.router.peer_restarted(node)
        self.handoff.owner_back(node)
