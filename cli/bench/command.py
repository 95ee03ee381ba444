"""The ``ringkv bench`` click command: options in, report out."""

from __future__ import annotations

import json
import sys

import click

from cli.bench.config import BenchConfig
from cli.bench.conn import BenchError, ServerAddr
from cli.bench.driver import run
from cli.bench.keys import KeyDist, parse_dist
from cli.bench.workload import Workload


class TargetParam(click.ParamType[str | int]):
    """``PORT`` (on --host) or ``HOST:PORT``."""

    name = "[host:]port"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> str | int:
        if isinstance(value, int):
            return value
        text = str(value)
        host, sep, port = text.rpartition(":")
        if (sep and not host) or not port.isdigit() or not 0 < int(port) < 65536:
            self.fail(f"{text!r} is not PORT or HOST:PORT (port 1-65535)", param, ctx)
        return f"{host}:{port}" if sep else int(port)


class DistParam(click.ParamType[KeyDist]):
    name = "uniform|zipf:S|hot[:F]"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> KeyDist:
        if isinstance(value, KeyDist):
            return value
        try:
            return parse_dist(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Host of every --port given without one.")
@click.option("--port", "ports", type=TargetParam(), multiple=True, default=(7379,),
              show_default=True, help="Target PORT or HOST:PORT; repeat to spread the "
              "connections over several (connection i goes to target i mod targets).")
@click.option("--rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="Requests/s over all connections (open loop); 0: closed loop, each "
              "connection sends its next batch when the last is answered (peak rate).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds measured.")
@click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds of load before the measured window.")
@click.option("--grace", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds to wait for replies after the window; later ones are timeouts.")
@click.option("-c", "--connections", type=click.IntRange(min=1), default=50,
              show_default=True)
@click.option("-P", "--pipeline", type=click.IntRange(min=1), default=1, show_default=True,
              help="Requests per batch: a connection writes a batch at once, at the "
              "batch's intended time, without waiting for earlier replies.")
@click.option("--read-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of GETs; the rest are SETs.")
@click.option("-d", "--value-size", type=click.IntRange(min=0), default=1024,
              show_default=True, help="SET value bytes.")
@click.option("--keys", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Keyspace size (keys bench:0..N-1, zero-padded).")
@click.option("--dist", type=DistParam(), default="uniform", show_default=True,
              help="Key distribution: uniform, zipf:<s> (s > 0), hot (one key) or "
              "hot:<f> (a share f on one key, the rest uniform).")
@click.option("--preload", is_flag=True, help="SET every key once before the run.")
@click.option("--password", help="AUTH with this before anything else.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seeds keys and values, so a run can be repeated.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generator processes (each takes a share of the connections and rate).")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to connect and get PING's answer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line on stderr.")
def bench(*, host: str, ports: tuple[str | int, ...], rate: float, duration: float,
          warmup: float, grace: float, connections: int, pipeline: int, read_ratio: float,
          value_size: int, keys: int, dist: KeyDist, preload: bool, password: str | None,
          seed: int, processes: int, connect_timeout: float, as_json: bool,
          quiet: bool) -> None:
    """Load a Redis-protocol server at a fixed rate and report latency
    percentiles measured from each request's intended send time, so time a
    request spent waiting behind a slow one counts (no coordinated
    omission). A progress line a second goes to stderr.

    \b
    ringkv bench --rate 2000 --duration 30                 # node1 of `ringkv up`
    ringkv bench --port 7379 --port 7380 --port 7381 -P 16 --read-ratio 0.9 --preload
    ringkv bench --rate 0 --duration 10                    # closed loop: the peak rate
    """
    targets = tuple(_target(host, p) for p in ports)
    try:
        config = BenchConfig(
            targets=targets, rate=rate, duration_s=duration, connections=connections,
            pipeline=pipeline, workload=Workload(read_ratio, value_size, keys, dist),
            warmup_s=warmup, grace_s=grace, seed=seed, password=password,
            processes=processes, connect_timeout_s=connect_timeout, preload=preload)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        report = run(config, None if quiet else _progress)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())


def _target(host: str, port: str | int) -> ServerAddr:
    if isinstance(port, int):
        return ServerAddr(host, port)
    h, _, p = port.rpartition(":")
    return ServerAddr(h, int(p))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
