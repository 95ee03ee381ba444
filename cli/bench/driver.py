"""A whole run: split the connections and the rate over generator
processes, start them together, print a progress line a second, merge
what they measured into one :class:`~cli.bench.report.Report`.

With one process (the default) the load runs in this process. With more,
each is a child (multiprocessing, spawn) that connects, preloads, says it
is ready, waits for the common start time, then sends a :class:`Tick` a
second and its :class:`BenchTotals` at the end over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import uvloop

from cli.bench.config import BenchConfig
from cli.bench.conn import BenchError
from cli.bench.histogram import Histogram
from cli.bench.report import Report, build_report
from cli.bench.share import Share, SharePlan
from cli.bench.stats import BenchTotals, Tick

#: The common start is this long after the last process is ready.
START_DELAY_S = 0.1
#: How long children may take to start, connect and preload.
READY_TIMEOUT_S = 3600.0
#: Extra time after the run's planned end before a silent child is an error.
END_SLACK_S = 30.0


Progress = Callable[[str], None]


def run(config: BenchConfig, progress: Progress | None = None) -> Report:
    """Run the load and return what was measured. BenchError if it could not
    start or a generator process failed."""
    ticks = _Ticks(config.processes, progress)
    plans = config.plans()
    if config.processes == 1:
        result = uvloop.run(_run_here(plans[0], ticks.add))
        return build_report(config, [result])
    return build_report(config, _run_children(plans, ticks))


async def _run_here(plan: SharePlan, on_tick: Callable[[Tick], None]) -> BenchTotals:
    share = Share(plan)
    await share.prepare()
    return await share.run(time.monotonic_ns() + round(START_DELAY_S * 1e9), on_tick)


def _run_children(plans: list[SharePlan], ticks: _Ticks) -> list[BenchTotals]:
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    try:
        for plan in plans:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(plan, theirs), daemon=True,
                               name=f"ringkv-bench-{plan.index}")
            proc.start()
            theirs.close()
            pipes.append(ours)
            procs.append(proc)
        ready: set[int] = set()
        _collect(pipes, procs, time.monotonic() + READY_TIMEOUT_S,
                 lambda i, kind, _: ready.add(i) if kind == "ready" else None,
                 lambda: len(ready) == len(plans))
        t0 = time.monotonic_ns() + round(START_DELAY_S * 1e9)
        for pipe in pipes:
            pipe.send(("start", t0))
        p = plans[0]
        end = time.monotonic() + START_DELAY_S + p.warmup_s + p.duration_s + p.grace_s
        results: dict[int, BenchTotals] = {}

        def take(i: int, kind: str, body: Any) -> None:
            if kind == "tick":
                ticks.add(body)
            elif kind == "done":
                results[i] = body

        _collect(pipes, procs, end + END_SLACK_S, take, lambda: len(results) == len(plans))
        return [results[i] for i in range(len(plans))]
    finally:
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for pipe in pipes:
            pipe.close()


def _collect(pipes: list[multiprocessing.connection.Connection],
             procs: Sequence[multiprocessing.process.BaseProcess], deadline: float,
             take: Callable[[int, str, Any], None], done: Callable[[], bool]) -> None:
    """Read the children's messages until ``done()``; BenchError on a
    child's error, a child that died, or the deadline."""
    index = {id(p): i for i, p in enumerate(pipes)}
    live = list(pipes)  # a child closes its end after "done"
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError("a generator process did not report in time")
        for ready in multiprocessing.connection.wait(live, min(left, 1.0)):
            pipe = cast(multiprocessing.connection.Connection, ready)
            i = index[id(pipe)]
            try:
                kind, body = pipe.recv()
            except EOFError:
                raise BenchError(f"generator process {i} exited "
                                 f"(status {procs[i].exitcode})") from None
            if kind == "error":
                raise BenchError(str(body))
            if kind == "done":
                live.remove(pipe)
            take(i, kind, body)


def _child(plan: SharePlan, pipe: multiprocessing.connection.Connection) -> None:
    """A generator process: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(_child_main(plan, pipe))
    except BenchError as exc:
        pipe.send(("error", str(exc)))
    finally:
        pipe.close()


async def _child_main(plan: SharePlan, pipe: multiprocessing.connection.Connection) -> None:
    share = Share(plan)
    await share.prepare()
    pipe.send(("ready", None))
    # The parent answers within moments of the last child being ready; wait
    # off the event loop so the connections' (idle) sockets stay serviced.
    message = await asyncio.to_thread(_receive, pipe, READY_TIMEOUT_S)
    if message is None or message[0] != "start":
        share.close()
        return
    # Pipe writes of a few hundred bytes a second: the parent reads them at once.
    result = await share.run(message[1], lambda tick: pipe.send(("tick", tick)))
    pipe.send(("done", result))


def _receive(pipe: multiprocessing.connection.Connection, timeout_s: float) -> Any:
    with contextlib.suppress(EOFError, OSError):
        if pipe.poll(timeout_s):
            return pipe.recv()
    return None


class _Ticks:
    """Merges each second's ticks from every process into one progress line."""

    def __init__(self, processes: int, progress: Progress | None) -> None:
        self._processes = processes
        self._progress = progress
        self._pending: dict[int, list[Tick]] = {}

    def add(self, tick: Tick) -> None:
        got = self._pending.setdefault(tick.second, [])
        got.append(tick)
        if len(got) == self._processes:
            del self._pending[tick.second]
            if self._progress is not None:
                self._progress(progress_line(got))


def progress_line(ticks: list[Tick]) -> str:
    latency = Histogram()
    for t in ticks:
        latency.merge(t.latency)
    sent, ok, errors = (sum(getattr(t, f) for t in ticks) for f in ("sent", "ok", "errors"))
    in_flight, behind = sum(t.in_flight for t in ticks), sum(t.behind for t in ticks)
    line = (f"[{ticks[0].second:>4}s] sent {sent:>7,}/s  ok {ok:>7,}/s  errors {errors:,}  "
            f"p50 {latency.percentile(50) / 1000:.3f}  p99 {latency.percentile(99) / 1000:.3f}  "
            f"max {latency.max_us / 1000:.3f} ms  in flight {in_flight:,}")
    return line + (f"  behind {behind:,}" if behind else "")
