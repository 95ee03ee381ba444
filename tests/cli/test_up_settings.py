"""``ringkv up --set``: settings over the configs ``ringkv up`` writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.serve import Layout, _settings
from coordinator.config import load


def _layout(*given: str) -> Layout:
    ctx = click.Context(click.Command("up"))
    return Layout(3, "/tmp/d", 7379, 3, 2, 64, "s3cret", _settings(ctx, None, given))  # type: ignore[arg-type]


def test_settings_reach_every_node_or_one(tmp_path: Path) -> None:
    layout = _layout("hotkeys.cache_ms=50", 'reads.fanout="quorum"', "reads.hedge=false",
                     "node3:node.reply_delay_ms=100", "cluster.r=1")
    for i in range(3):
        path = tmp_path / f"n{i}.toml"
        path.write_text(layout.toml(i))
        c = load(str(path))
        assert (c.cache_ms, c.read_fanout, c.hedge_reads, c.r) == (50, "quorum", False, 1)
        assert c.reply_delay_ms == (100 if i == 2 else 0)
        assert c.id == f"node{i + 1}" and c.secret == "s3cret"
    assert tomllib.loads(layout.toml(0))["network"]["seeds"][2] == "127.0.0.1:17381"


@pytest.mark.parametrize("bad", ["hotkeys.cache=5", "cache_ms=5", "hotkeys.cache_ms",
                                 "n3:node.reply_delay_ms=1"])
def test_a_bad_setting_is_refused_before_anything_starts(bad: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["up", "--data", str(tmp_path), "--set", bad])
    assert result.exit_code == 2 and "--set" in result.output, result.output
    assert not any(tmp_path.iterdir())
