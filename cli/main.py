"""The ``ringkv`` command: one click group, one module per command group."""

from __future__ import annotations

import click

from cli import cluster, hotkeys, inspect, readonly, serve
from cli.bench.command import bench
from cli.rollout.command import rollout
from cli.shadow.command import shadow


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkv")
def cli() -> None:
    """ringkv: a Dynamo-style distributed key-value store that speaks Redis."""


cli.add_command(inspect.sst)
cli.add_command(inspect.wal)
cli.add_command(inspect.manifest)
cli.add_command(inspect.db)
cli.add_command(serve.serve)
cli.add_command(serve.up)
cli.add_command(bench)
cli.add_command(rollout)
cli.add_command(shadow)
for command in (cluster.status, cluster.ring, cluster.hints, cluster.transfers,
                cluster.flush, cluster.drain, cluster.compact, cluster.repair,
                cluster.remove, hotkeys.hotkeys, readonly.readonly):
    cli.add_command(command)


def main() -> None:
    cli()
