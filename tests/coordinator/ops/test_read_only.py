"""The kill switch's state file: on and off survive a reload, a bad file
names itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest

from coordinator.files import StateFileError
from coordinator.ops.read_only import READ_ONLY_FILE, ReadOnlySwitch, reason_problem


def test_on_and_off_survive_a_reload(tmp_path: Path) -> None:
    switch = ReadOnlySwitch("n1", str(tmp_path))
    switch.load()
    assert switch.refusal is None
    assert asyncio.run(switch.set(True, "maintenance"))
    assert not asyncio.run(switch.set(True, "maintenance"))  # already so
    again = ReadOnlySwitch("n1", str(tmp_path))
    again.load()
    assert again.refusal == ("writes are off on n1 (operator): maintenance; "
                             "reads still work")
    assert again.state is not None and again.state.since_ms > 0
    assert asyncio.run(again.set(False))
    last = ReadOnlySwitch("n1", str(tmp_path))
    last.load()
    assert last.refusal is None and not asyncio.run(last.set(False))


def test_a_bad_file_is_named(tmp_path: Path) -> None:
    (tmp_path / READ_ONLY_FILE).write_bytes(msgpack.packb({"v": 1, "on": True, "reason": 5}))
    with pytest.raises(StateFileError, match=READ_ONLY_FILE):
        ReadOnlySwitch("n1", str(tmp_path)).load()


@pytest.mark.parametrize("reason", ["x\r\npeer_protocol:99", "a\nrole:slave", "tab\there",
                                    "bell\x07", "del\x7f", "c1\x85", "ls\u2028", "rtl\u202e"])
def test_a_reason_with_control_characters_is_refused(reason: str) -> None:
    """Regression: a CR/LF in the reason forged `peer_protocol:99` and
    `role:slave` lines in INFO server."""
    problem = reason_problem(reason)
    assert problem is not None and problem.startswith(
        "the reason may not hold control characters or line breaks (found "), problem


def test_a_plain_reason_is_fine() -> None:
    assert reason_problem("") is None
    assert reason_problem("migration window: db → v2 (ticket #42)") is None
    assert reason_problem("x" * 201) == "the reason is at most 200 characters"
