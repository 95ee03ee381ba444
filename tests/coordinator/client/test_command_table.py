"""The command table is the one place a command is known: the protocol doc
lists exactly its commands, and what the server, the metrics and a
draining node derive from it follows each entry's kind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.client.commands import COMMANDS, TABLE, CommandSpec, Kind, level_label
from coordinator.client.parsing import simple
from coordinator.data.quorum import Consistency

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def documented_commands() -> set[str]:
    """The command names in the first column of docs/protocol.md's table of
    commands (each code span's first word)."""
    text = DOC.read_text()
    section = text.split("## Commands and their errors", 1)[1].split("\n### ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_column = line.split(" | ", 1)[0]
            names |= {span.split()[0] for span in re.findall(r"`([^`]+)`", first_column)}
    return names


def test_the_protocol_doc_lists_every_command_of_the_table_and_no_other() -> None:
    assert documented_commands() == set(COMMANDS)


def test_names_are_unique_and_upper_case() -> None:
    assert len(TABLE) == len(COMMANDS)
    assert all(spec.name == spec.name.upper() for spec in TABLE)


def test_writes_are_exactly_what_a_draining_node_refuses() -> None:
    refused = {spec.name for spec in TABLE if spec.write}
    assert refused == {"SET", "DEL", "MSET", "VSET", "VDEL", "FLUSHALL", "FLUSHDB"}
    assert all(spec.write for spec in TABLE if spec.kind is Kind.WRITE)


def test_the_metrics_label_follows_the_kind() -> None:
    levels = Consistency(r=2, w=3, pr=1)
    assert level_label(COMMANDS["MGET"], levels) == "R=2 PR=1"
    assert level_label(COMMANDS["MSET"], levels) == "W=3 PW=0"
    assert level_label(COMMANDS["DBSIZE"], levels) == "-"
    assert level_label(COMMANDS["FLUSHALL"], levels) == "-"


def test_connection_commands_answer_and_the_others_run() -> None:
    for spec in TABLE:
        assert (spec.answer is not None) == (spec.kind is Kind.CONNECTION), spec.name
        assert (spec.run is not None) == (spec.kind is not Kind.CONNECTION), spec.name
    with pytest.raises(ValueError, match="answers"):
        CommandSpec("NOPE", 1, simple, Kind.READ)
