"""The ``ringkv`` command: one click group, one module per command group.

Each command's module is imported only when that command runs (or when
``--help`` lists them all): importing every one (the server, the offline
inspection tools, the benchmark, the rollout and shadow tools) cost about
0.6 s of CPU at every start, and ``ringkv compact`` started on three nodes
at once took that from the machine serving requests
(docs/benchmarks.md, "Stalls during compaction and node restart")."""

from __future__ import annotations

import importlib

import click

#: Command name → the module defining it, under an attribute of the same name.
COMMANDS = {
    **dict.fromkeys(("sst", "wal", "manifest", "db"), "cli.inspect"),
    **dict.fromkeys(("serve", "up"), "cli.serve"),
    "bench": "cli.bench.command",
    "rollout": "cli.rollout.command",
    "shadow": "cli.shadow.command",
    **dict.fromkeys(("status", "ring", "hints", "transfers", "flush", "drain", "compact",
                     "repair", "remove"), "cli.cluster"),
    "hotkeys": "cli.hotkeys",
    "readonly": "cli.readonly",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkv")
def cli() -> None:
    """ringkv: a Dynamo-style distributed key-value store that speaks Redis."""


def main() -> None:
    cli()
