"""The ``ringkv shadow`` click command: options in, report out."""

from __future__ import annotations

import json
import sys

import click
import uvloop

from cli.bench.command import TargetParam
from cli.bench.conn import ServerAddr
from cli.shadow.config import ShadowConfig
from cli.shadow.server import ShadowError, run


class AddrParam(click.ParamType[ServerAddr]):
    """``PORT`` (on 127.0.0.1) or ``HOST:PORT``."""

    name = "[host:]port"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> ServerAddr:
        if isinstance(value, ServerAddr):
            return value
        target = TargetParam().convert(value, param, ctx)
        if isinstance(target, int):
            return ServerAddr("127.0.0.1", target)
        host, _, port = target.rpartition(":")
        return ServerAddr(host, int(port))


@click.command()
@click.option("--listen", type=AddrParam(), required=True,
              help="Where clients connect: PORT (on 127.0.0.1) or HOST:PORT.")
@click.option("--primary", type=AddrParam(), required=True,
              help="The Redis that serves every reply (the source of truth).")
@click.option("--shadow", type=AddrParam(), default="127.0.0.1:7379", show_default=True,
              help="The ringkv node that gets the mirrored requests.")
@click.option("--shadow-password", envvar="RINGKV_SHADOW_PASSWORD",
              help="AUTH to ringkv with this (env RINGKV_SHADOW_PASSWORD). Clients "
              "authenticate to the primary themselves; their AUTH is not mirrored.")
@click.option("--max-pending", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Mirrored requests awaiting ringkv's reply, over all connections; "
              "past it mirrors are dropped (counted), the primary never waits.")
@click.option("--shadow-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds ringkv may take to reply before that "
              "connection's pending mirrors are abandoned and it reconnects.")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to connect to either server.")
@click.option("--duration", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Stop after this many seconds; 0: at SIGINT/SIGTERM.")
@click.option("--requests", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop once the primary answered this many requests; 0: no limit.")
@click.option("--interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds between live lines on stderr; 0: none.")
@click.option("--samples", type=click.IntRange(min=1), default=20, show_default=True,
              help="Mismatches kept with both replies for the report.")
@click.option("--grace", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="At the end, seconds to wait for ringkv's pending replies.")
@click.option("--json", "as_json", is_flag=True, help="The final report as one JSON "
              "document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No lines on stderr while running.")
def shadow(*, listen: ServerAddr, primary: ServerAddr, shadow: ServerAddr,
           shadow_password: str | None, max_pending: int, shadow_timeout: float,
           connect_timeout: float, duration: float, requests: int, interval: float,
           samples: int, grace: float, as_json: bool, quiet: bool) -> None:
    """Proxy Redis clients to a primary Redis and mirror their requests to
    ringkv: every reply the clients get is the primary's, and ringkv's
    replies are compared with it. Reports mismatches (with their keys),
    requests ringkv does not support, and both sides' latency
    percentiles, live on stderr and at the end (SIGINT/SIGTERM,
    --duration or --requests).

    \b
    ringkv shadow --listen 6380 --primary 127.0.0.1:6379             # ringkv on 7379
    ringkv shadow --listen 6380 --primary redis1:6379 --shadow 127.0.0.1:7379 --json
    """
    try:
        config = ShadowConfig(
            listen=listen, primary=primary, shadow=shadow, shadow_password=shadow_password,
            max_pending=max_pending, shadow_timeout_s=shadow_timeout,
            connect_timeout_s=connect_timeout, duration_s=duration, requests=requests,
            interval_s=interval, samples=samples, grace_s=grace)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        report = uvloop.run(run(config, None if quiet else _progress))
    except ShadowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
