"""A whole ``ringkv shadow`` run: startup (both servers reachable, the
listening socket), the main loop (overdue ringkv replies, live lines, the
stop conditions) and shutdown (clients closed, ringkv's pending replies
awaited for ``--grace``, every task cancelled), then the report."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from cli.bench.conn import ServerAddr
from cli.bench.workload import encode
from cli.shadow.config import ShadowConfig
from cli.shadow.proxy import ClientSide, Context
from cli.shadow.report import Report, live_line
from cli.shadow.stats import ShadowStats

#: How often overdue ringkv replies and the stop conditions are checked.
TICK_S = 0.05

Progress = Callable[[str], None]


class ShadowError(Exception):
    """The proxy cannot start; the message names the cause."""


async def run(config: ShadowConfig, progress: Progress | None = None) -> Report:
    """Proxy until a stop condition or SIGINT/SIGTERM; the findings."""
    await _reachable("primary", config.primary, None, config.connect_timeout_s)
    await _reachable("ringkv", config.shadow, config.shadow_password, config.connect_timeout_s)
    ctx = Context(config, ShadowStats(config.samples, config.reply_chars))
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(lambda: ClientSide(ctx), config.listen.host,
                                          config.listen.port, reuse_address=True)
    except OSError as exc:
        raise ShadowError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    if progress is not None:
        progress(f"shadow: listening on {config.listen}, serving from primary "
                 f"{config.primary}, mirroring to ringkv {config.shadow}")
    try:
        await _main_loop(ctx, stop, started, progress)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.close()
        await _shutdown(ctx)
    return Report(config, time.monotonic() - started, ctx.stats)


async def _main_loop(ctx: Context, stop: asyncio.Event, started: float,
                     progress: Progress | None) -> None:
    config, stats = ctx.config, ctx.stats
    live = progress if config.interval_s > 0 else None
    last = started
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_S)
        now = time.monotonic()
        _check_links(ctx)
        if live is not None and now - last >= config.interval_s:
            live(live_line(now - started, stats.interval(now - last), stats))
            last = now
        if (config.duration_s and now - started >= config.duration_s) or (
                config.requests and stats.requests >= config.requests):
            return


async def _shutdown(ctx: Context) -> None:
    for client in list(ctx.clients):
        client.close()
    deadline = time.monotonic() + ctx.config.grace_s
    while ctx.stats.pending > 0 and time.monotonic() < deadline:
        await asyncio.sleep(TICK_S)  # ringkv's last replies arrive meanwhile
        _check_links(ctx)
    for link in list(ctx.links):
        link.abort("pending at stop")
    await ctx.tasks.cancel_all()


def _check_links(ctx: Context) -> None:
    now_ns = time.monotonic_ns()
    for link in list(ctx.links):
        link.check(now_ns)


async def _reachable(role: str, addr: ServerAddr, password: str | None,
                     timeout_s: float) -> None:
    """Connect once (and AUTH if a password is set), so that a wrong address
    fails at start with its cause rather than as counts in the report."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(addr.host, addr.port), timeout_s)
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or "timed out"
        raise ShadowError(f"cannot connect to the {role} at {addr}: {why}") from None
    try:
        if password is not None:
            writer.write(encode(b"AUTH", password.encode()))
            try:
                line = await asyncio.wait_for(reader.readline(), timeout_s)
            except (OSError, TimeoutError):
                line = b""
            if not line.startswith(b"+"):
                why = line.decode("utf-8", "replace").strip() or "no answer"
                raise ShadowError(f"the {role} at {addr} refused AUTH: {why}")
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout_s)

