"""Bad arguments of the admin commands are clean click errors naming the
value (regression: `--addr 127.0.0.1:abc` was a ValueError traceback), and
are refused before anything reaches a node."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def secret(tmp_path: Path) -> str:
    path = tmp_path / "cluster.secret"
    path.write_text("s" * 32 + "\n")
    return str(path)


@pytest.mark.parametrize(("addr", "why"), [
    ("nohost", "'nohost' is not HOST:PORT"),
    ("127.0.0.1:abc", "'127.0.0.1:abc' is not HOST:PORT"),
    (":40100", "':40100' is not HOST:PORT"),
    ("127.0.0.1:99999", "'127.0.0.1:99999': the port must be 1..65535"),
    ("127.0.0.1:0", "'127.0.0.1:0': the port must be 1..65535"),
])
@pytest.mark.parametrize("command", [["status"], ["readonly", "on"], ["rollout"]])
def test_a_bad_addr_is_a_clean_error(secret: str, command: list[str], addr: str,
                                     why: str) -> None:
    result = CliRunner().invoke(cli, [*command, "--addr", addr, "--secret-file", secret])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Invalid value for '--addr': {why}" in result.output


@pytest.mark.parametrize("nodes", ["", ",", " , "])
def test_rollout_refuses_an_empty_node_list(secret: str, nodes: str) -> None:
    """Regression: `--nodes ''` rolled the whole cluster."""
    result = CliRunner().invoke(cli, ["rollout", "--nodes", nodes, "--addr", "127.0.0.1:1",
                                      "--secret-file", secret])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--nodes'" in result.output
    assert "names no node (leave --nodes out to roll every node)" in result.output


def test_readonly_refuses_a_reason_with_a_line_break(secret: str) -> None:
    result = CliRunner().invoke(cli, ["readonly", "on", "--reason", "x\r\nrole:slave",
                                      "--addr", "127.0.0.1:1", "--secret-file", secret])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--reason': the reason may not hold control characters" \
        in result.output
