"""One generator process's part of a run: its connections, its schedule,
its ticks.

Open loop. The process sends ``rate`` requests/s in batches of ``pipeline``
requests, one batch every ``pipeline / rate`` seconds, handed to its
connections in turn: batch j is due at ``t0 + (j + phase) * interval`` and
goes to connection ``j % connections``. Every request of a batch has the
batch's intended time; its latency is reply time minus intended time,
whether or not the connection was free then, so a slow server (or a slow
generator) shows as latency and is never hidden by the generator waiting
(coordinated omission). A connection never waits for replies before it
writes the next batch.

The event loop's timers have a resolution of one millisecond, so the
pacer wakes at most every millisecond and writes every batch due within
the next millisecond (``EARLY_NS``). A batch written before its intended
time counts its latency from when it was written; one written late counts
from its intended time; ``lag`` records how late each went out.

Closed loop (rate 0): each connection writes a batch, waits for all its
replies, writes the next; latency counts from the write.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import hiredis

from cli.bench.conn import BenchError, Lane, ServerAddr, Window
from cli.bench.stats import BenchCounters, BenchTotals, Tick
from cli.bench.workload import Commands, Workload

EARLY_NS = 1_000_000
#: Each preload batch must be answered within this.
PRELOAD_TIMEOUT_S = 30.0
PRELOAD_PIPELINE = 16
#: How often the end of the grace period checks for outstanding replies.
DRAIN_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class SharePlan:
    """One generator process's part of a run."""

    index: int  # of this process, 0 .. processes-1
    processes: int
    targets: tuple[ServerAddr, ...]  # one per connection
    rate: float  # requests/s of this process; 0: closed loop
    phase: float  # the schedule starts this many batch intervals after t0
    pipeline: int
    workload: Workload
    seed: int
    warmup_s: float
    duration_s: float
    grace_s: float
    password: str | None
    connect_timeout_s: float
    preload: bool


async def sleep_until(t_ns: int) -> None:
    await asyncio.sleep(max(0, t_ns - time.monotonic_ns()) / 1e9)


class Share:
    """Owns one process's lanes and stats for one run."""

    def __init__(self, plan: SharePlan) -> None:
        self.plan = plan
        self.stats = BenchCounters()
        self._commands = Commands(plan.workload, plan.seed * 1000 + plan.index)
        self._lanes = [Lane(t, self._commands, self.stats, pipeline=plan.pipeline,
                            password=plan.password, connect_timeout_s=plan.connect_timeout_s)
                       for t in plan.targets]

    async def prepare(self) -> None:
        """Connect every lane, then preload the keyspace if asked."""
        try:
            async with asyncio.TaskGroup() as group:
                for lane in self._lanes:
                    group.create_task(lane.connect())
            if self.plan.preload:
                await self._preload()
        except* BenchError as group_error:
            self.close()
            raise group_error.exceptions[0] from None

    async def _preload(self) -> None:
        """SET every key of this process's share once, closed loop."""
        source = self._commands.preload(self.plan.index, self.plan.processes)
        depth = max(self.plan.pipeline, PRELOAD_PIPELINE)

        async def fill(lane: Lane) -> None:
            while batch := list(itertools.islice(source, depth)):
                replies = await lane.call(b"".join(batch), len(batch), PRELOAD_TIMEOUT_S)
                bad = next((r for r in replies if isinstance(r, hiredis.ReplyError)), None)
                if bad is not None:
                    raise BenchError(f"preload: {lane.target} answered a SET with {bad}")

        async with asyncio.TaskGroup() as group:
            for lane in self._lanes:
                group.create_task(fill(lane))

    async def run(self, t0_ns: int, on_tick: Callable[[Tick], None]) -> BenchTotals:
        """The load from ``t0_ns`` (monotonic clock) through warm-up, window
        and grace; ``on_tick`` gets each second's counts."""
        p = self.plan
        start = t0_ns + round(p.warmup_s * 1e9)
        window = Window(start, start + round(p.duration_s * 1e9))
        await sleep_until(t0_ns)
        cpu0 = time.process_time()
        seconds = math.ceil((window.end - t0_ns) / 1e9)
        ticker = asyncio.get_running_loop().create_task(self._ticks(t0_ns, seconds, on_tick))
        try:
            for lane in self._lanes:
                lane.start(window, closed_loop=p.rate == 0)
            if p.rate > 0:
                await self._pace(t0_ns, window)
            else:
                await sleep_until(window.end)
            deadline = window.end + round(p.grace_s * 1e9)
            while any(lane.in_flight for lane in self._lanes) and time.monotonic_ns() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            await ticker  # the tick of the window's last second, at most a second away
        finally:
            ticker.cancel()
        result = self.stats.result(
            timeouts=sum(lane.measured_in_flight() for lane in self._lanes),
            unsent=sum(lane.measured_owed() for lane in self._lanes),
            cpu_s=time.process_time() - cpu0)
        self.close()
        return result

    async def _pace(self, t0_ns: int, window: Window) -> None:
        p, lanes, stats = self.plan, self._lanes, self.stats
        interval = p.pipeline * 1e9 / p.rate
        for j in itertools.count():
            due = t0_ns + int((j + p.phase) * interval)
            if due >= window.end:
                break
            now = time.monotonic_ns()
            if due > now + EARLY_NS:
                for lane in lanes:
                    lane.flush(now)
                # Whole milliseconds, rounded up: never wake (and spin) before
                # the batch is within EARLY_NS of its time.
                await asyncio.sleep(math.ceil((due - EARLY_NS - now) / 1e6) / 1e3)
            lanes[j % len(lanes)].owe(due)
            if due >= window.start:
                stats.on_scheduled(p.pipeline)
        now = time.monotonic_ns()
        for lane in lanes:
            lane.flush(now)

    async def _ticks(self, t0_ns: int, seconds: int, on_tick: Callable[[Tick], None]) -> None:
        """A tick at each whole second from t0 through the end of the window,
        so every process sends the same seconds."""
        for second in range(1, seconds + 1):
            await sleep_until(t0_ns + second * 1_000_000_000)
            on_tick(self.stats.tick(second, sum(lane.in_flight for lane in self._lanes),
                                    sum(lane.owed for lane in self._lanes)))

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
