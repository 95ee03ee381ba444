"""A worker's config travels as one typed record (JSON on the worker's
stdin) and is refused, with a one-line reason, when it does not fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shardserver.config import WorkerConfig, WorkerConfigError, WorkerSettings

REPO = Path(__file__).resolve().parents[2]


def test_a_config_round_trips_through_json() -> None:
    config = WorkerConfig("/tmp/w.sock", "/tmp/w", (8, 16), "3",
                          WorkerSettings(fsync="always", memtable_bytes=1 << 20))
    assert WorkerConfig.from_json(config.to_json()) == config
    assert config.partition_range == range(8, 16)
    assert config.settings.options().memtable_bytes == 1 << 20


def test_missing_settings_take_the_defaults() -> None:
    got = WorkerConfig.from_json(b'{"socket_path": "s", "data_dir": "d", "partitions": [0, 4]}')
    assert got.settings == WorkerSettings()


@pytest.mark.parametrize(("doc", "why"), [
    (b"{", "Expecting"),
    (b'{"socket_path": "s", "data_dir": "d"}', "missing partitions"),
    (b'{"socket_path": "s", "data_dir": "d", "partitions": [4, 4]}', "out of"),
    (b'{"socket_path": "s", "data_dir": "d", "partitions": [0, 4], '
     b'"settings": {"fsync": "sometimes"}}', "settings.fsync"),
    (b'{"socket_path": "s", "data_dir": "d", "partitions": [0, 4], '
     b'"settings": {"threads": "8"}}', "settings.threads: expected int"),
])
def test_a_bad_config_is_refused_naming_the_field(doc: bytes, why: str) -> None:
    with pytest.raises(WorkerConfigError, match=why):
        WorkerConfig.from_json(doc)


def test_the_worker_exits_with_one_line_on_a_bad_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shardserver.worker", "--config", "-"],
        input=b'{"socket_path": 1}', capture_output=True, timeout=30, cwd=REPO, check=False,
    )
    assert done.returncode == 2
    assert b"worker config.socket_path: expected str" in done.stderr
