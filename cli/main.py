"""The ``ringkv`` command: one click group, one module per command group."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkv")
def cli() -> None:
    """ringkv: a Dynamo-style distributed key-value store that speaks Redis."""


def main() -> None:
    cli()
