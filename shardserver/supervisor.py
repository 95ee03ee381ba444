"""Supervisor: spawns the shard workers of one node, watches them, restarts
the ones that die, and stops them all within a bounded time (DESIGN §2).

Worker i owns partitions ``i*Q/W <= p < (i+1)*Q/W`` and keeps its engine in
``<data_dir>/worker-<i>`` and its socket at ``<socket_dir>/worker-<i>.sock``;
W is fixed by the node's first start (``shardserver.worker_count``).
One task per worker runs its life cycle::

    spawn ──▶ running ──(exit, or pings keep failing: SIGKILL)──▶ backoff ──▶ spawn
                 │
               stop(): SIGTERM, wait, SIGKILL

A worker that stops answering pings (``max_failed_pings`` in a row after it
first answered, or no answer within ``startup_timeout_s`` of its spawn) is
killed and restarted like a dead one. While a worker is down or not ready
yet, ``ready(i)`` is false, so the coordinator routes around its partitions
like a down replica. Restarts back off exponentially (``backoff_initial_s``
doubling up to ``backoff_max_s``); the delay resets once a worker has
stayed up for ``stable_s``. A try that fails on the supervisor's side (a
spawn error, a bug) is logged, its process killed, and it counts as an
exit: a worker's task ends only with ``stop``. A Supervisor runs once:
after ``stop`` make a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shardserver.config import WorkerConfig, WorkerSettings
from shardserver.protocol import codec, messages
from shardserver.protocol.backoff import Backoff
from shardserver.protocol.errors import ProtocolError
from shardserver.protocol.pool import WorkerView, partition_ranges
from shardserver.worker_count import resolve_workers

log = logging.getLogger("ringkv.supervisor")

PingResult = Literal["ready", "not_ready", "down"]
#: ``ping(socket_path, timeout_s)``: what the worker at that socket says.
Pinger = Callable[[str, float], Awaitable[PingResult]]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    partitions: range
    socket_path: str
    data_dir: str


@dataclass(slots=True)
class WorkerState:
    spec: WorkerSpec
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    failed_pings: int = 0
    task: asyncio.Task[None] | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)


def socket_path(socket_dir: str, index: int) -> str:
    """Where worker ``index`` listens."""
    return os.path.join(socket_dir, f"worker-{index}.sock")


class Supervisor:
    def __init__(
        self,
        data_dir: str,
        socket_dir: str,
        q: int,
        workers: int | None = None,
        *,
        ping: Pinger | None = None,
        settings: WorkerSettings | None = None,
        ping_interval_s: float = 0.5,
        ping_timeout_s: float = 2.0,
        max_failed_pings: int = 6,
        startup_timeout_s: float = 60.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        stable_s: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.q = q
        #: 0 or None: the count the node first ran with, or the default
        #: (shardserver.worker_count); another count than the recorded one raises.
        self.workers = resolve_workers(data_dir, workers, q)
        ranges = partition_ranges(q, self.workers)
        self.specs = [
            WorkerSpec(
                i, r,
                socket_path(socket_dir, i),
                os.path.join(data_dir, f"worker-{i}"),
            )
            for i, r in enumerate(ranges)
        ]
        self._states = [WorkerState(s) for s in self.specs]
        self._owner = [s.index for s in self.specs for _ in s.partitions]
        self._ping: Pinger = ping or ping_worker
        self._settings = settings or WorkerSettings()
        self._ping_interval = ping_interval_s
        self._ping_timeout = ping_timeout_s
        self._max_failed_pings = max_failed_pings
        self._startup_timeout = startup_timeout_s
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._stable_s = stable_s
        self._python = python
        self._socket_dir = socket_dir
        self._data_dir = data_dir
        self._stopping = asyncio.Event()

    # -- queries ----------------------------------------------------------------
    def worker_for(self, partition: int) -> int:
        if not 0 <= partition < self.q:
            raise ValueError(f"partition {partition} outside 0..{self.q - 1}")
        return self._owner[partition]

    def socket_for(self, partition: int) -> str:
        return self.specs[self.worker_for(partition)].socket_path

    def ready(self, index: int) -> bool:
        return self._states[index].ready

    def pid(self, index: int) -> int | None:
        proc = self._states[index].proc
        return None if proc is None or proc.returncode is not None else proc.pid

    def restarts(self, index: int) -> int:
        return self._states[index].restarts

    def status(self) -> list[WorkerView]:
        return [
            WorkerView(st.spec.index, st.spec.partitions, st.spec.socket_path,
                       self.pid(st.spec.index), st.ready, st.restarts, st.last_exit)
            for st in self._states
        ]

    # -- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Spawn every worker (returns at once; see ``wait_ready``)."""
        # Owner only (0700): the engines' files and the workers' sockets.
        os.makedirs(self._socket_dir, 0o700, exist_ok=True)
        os.makedirs(self._data_dir, 0o700, exist_ok=True)
        for st in self._states:
            if st.task is None:
                st.task = asyncio.create_task(
                    self._run(st), name=f"supervise-worker-{st.spec.index}"
                )

    async def wait_ready(self, timeout_s: float, indices: Sequence[int] | None = None) -> None:
        """Wait until the given workers (default all) answer pings as ready."""
        chosen = [self._states[i] for i in (indices if indices is not None else
                                              range(self.workers))]
        async with asyncio.timeout(timeout_s):
            for st in chosen:
                await st.ready_event.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every worker, SIGKILL those still alive after ``timeout_s``
        (at most); returns once all are reaped and the tasks ended."""
        self._stopping.set()
        tasks = [st.task for st in self._states if st.task is not None]
        deadline = time.monotonic() + max(timeout_s, 0.1)
        for st in self._states:
            _signal(st.proc, signal.SIGTERM)
        for st in self._states:
            proc = st.proc
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("worker %d: no exit after SIGTERM; killing", st.spec.index)
                _signal(proc, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for st in self._states:
            st.task = None
            st.ready = False

    async def _run(self, st: WorkerState) -> None:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while not self._stopping.is_set():
            try:
                await self._spawn(st)
                await self._watch(st)
            except OSError as exc:  # fork/exec failed (ping and signals keep theirs)
                log.error("worker %d: cannot spawn: %s", st.spec.index, exc)
                await self._end(st)
            except Exception:
                # A bug of ours, not the worker's: this task must go on all
                # the same, or the worker stays down for good, unnoticed.
                log.exception("worker %d: supervising it failed; restarting it",
                              st.spec.index)
                await self._end(st)
            st.ready = False
            st.ready_event.clear()
            if self._stopping.is_set():
                return
            if time.monotonic() - st.started_at >= self._stable_s:
                backoff.succeeded()
            delay = backoff.failed()
            log.warning(
                "worker %d exited (code %s); restarting in %.2fs",
                st.spec.index, st.last_exit, delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            st.restarts += 1

    def config(self, spec: WorkerSpec) -> WorkerConfig:
        """What worker ``spec.index`` runs with (written to its stdin)."""
        r = spec.partitions
        return WorkerConfig(spec.socket_path, spec.data_dir, (r.start, r.stop),
                            str(spec.index), self._settings, protocol=messages.PROTOCOL)

    async def _spawn(self, st: WorkerState) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        st.proc = proc = await asyncio.create_subprocess_exec(
            self._python, "-m", "shardserver.worker", "--config", "-",
            env=env, stdin=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        # A worker killed right after the fork (its pid is among our children
        # from then on) may be gone already: its end of the pipe is closed, so
        # is our transport, and uvloop's write would raise RuntimeError, which
        # used to end this task for good. It died: _watch sees the exit.
        if not proc.stdin.is_closing():
            with contextlib.suppress(OSError, TimeoutError):
                proc.stdin.write(self.config(st.spec).to_json())
                await asyncio.wait_for(proc.stdin.drain(), self._ping_timeout)
        proc.stdin.close()
        st.started_at = time.monotonic()
        st.failed_pings = 0
        log.info("worker %d started, pid %d", st.spec.index, st.proc.pid)

    async def _end(self, st: WorkerState) -> None:
        """After a try that failed on our side: SIGKILL its process if it
        runs and wait (bounded) for the exit, so that the next spawn does
        not race it for the socket and the engine."""
        proc = st.proc
        if proc is not None:
            _signal(proc, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
            st.last_exit = proc.returncode

    async def _watch(self, st: WorkerState) -> None:
        """Ping until the process exits; SIGKILL it if it stops answering."""
        proc = st.proc
        assert proc is not None
        answered = False
        while proc.returncode is None:
            result = await self._ping(st.spec.socket_path, self._ping_timeout)
            answered = answered or result != "down"
            if result == "down" and not answered:
                # Still starting (interpreter start-up, imports, binding the
                # socket): only a start-up that takes too long counts as hung.
                if time.monotonic() - st.started_at > self._startup_timeout:
                    log.error("worker %d did not start answering; killing it", st.spec.index)
                    _signal(proc, signal.SIGKILL)
            elif result == "ready":
                st.failed_pings = 0
                if not st.ready:
                    log.info("worker %d ready", st.spec.index)
                st.ready = True
                st.ready_event.set()
            elif result == "not_ready":
                st.failed_pings = 0
                st.ready = False
            else:
                st.failed_pings += 1
                # One late answer is a busy node, not a dead worker: a
                # coordinator short of CPU must not cut off its own workers
                # (its requests would then fail with NOQUORUM). Two in a row
                # take it out of service; an exit does at once.
                if st.failed_pings >= 2:
                    st.ready = False
                if st.failed_pings >= self._max_failed_pings and not self._stopping.is_set():
                    log.error("worker %d stopped answering pings; killing it", st.spec.index)
                    _signal(proc, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self._ping_interval)
        st.last_exit = proc.returncode


def _signal(proc: asyncio.subprocess.Process | None, sig: signal.Signals) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


async def ping_worker(socket_path: str, timeout_s: float) -> PingResult:
    """One PING on a fresh connection: "ready", "not_ready" or "down".

    A fresh connection per ping keeps the probe independent of the request
    path, so a worker whose request connections are wedged still shows up.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(codec.encode_requests([(1, messages.Ping())]))
            decoder = codec.FrameDecoder(1 << 20)
            while True:
                data = await reader.read(65536)
                if not data:
                    return "down"
                decoder.feed(data)
                for payload in decoder.frames():
                    for rid, reply in codec.decode_replies(payload):
                        if rid == 1 and reply.ok and isinstance(reply.payload, dict):
                            return "ready" if reply.payload.get("ready") else "not_ready"
                        if rid == 1:
                            return "down"
    except (OSError, TimeoutError, ProtocolError):
        return "down"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
