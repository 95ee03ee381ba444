"""A node's worker count: the default by cores, and fixed by its first start
(shardserver.worker_count)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardserver.errors import WorkerConfigError
from shardserver.protocol.pool import default_worker_count, usable_cores
from shardserver.worker_count import COUNT_FILE, recorded_workers, resolve_workers


def test_default_leaves_one_core_to_the_coordinator_and_keeps_one_worker() -> None:
    assert [default_worker_count(c) for c in (1, 2, 3, 4, 16)] == [1, 1, 2, 3, 15]
    assert default_worker_count() == max(1, usable_cores() - 1)


def test_a_new_node_records_the_default_or_the_configured_count(tmp_path: Path) -> None:
    assert resolve_workers(str(tmp_path / "a"), 0, 64) == min(default_worker_count(), 64)
    assert (tmp_path / "a" / COUNT_FILE).read_text() == f"{min(default_worker_count(), 64)}\n"
    assert resolve_workers(str(tmp_path / "b"), 3, 64) == 3
    assert recorded_workers(str(tmp_path / "b")) == 3


def test_the_recorded_count_holds_and_another_one_is_refused(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert resolve_workers(d, 3, 64) == 3
    assert resolve_workers(d, 0, 64) == 3
    assert resolve_workers(d, None, 64) == 3
    assert resolve_workers(d, 3, 64) == 3
    with pytest.raises(WorkerConfigError, match=r"written by 3 workers.*set workers = 3"):
        resolve_workers(d, 2, 64)


def test_a_node_from_before_the_file_counts_its_worker_directories(tmp_path: Path) -> None:
    for i in (0, 1):
        (tmp_path / f"worker-{i}").mkdir()
    (tmp_path / "worker-x").mkdir()  # not a worker's
    assert recorded_workers(str(tmp_path)) == 2
    with pytest.raises(WorkerConfigError, match="written by 2 workers"):
        resolve_workers(str(tmp_path), 1, 64)
    assert resolve_workers(str(tmp_path), 0, 64) == 2
    assert (tmp_path / COUNT_FILE).read_text() == "2\n"


@pytest.mark.parametrize("text", ["", "0\n", "two\n", "-1\n"])
def test_a_damaged_count_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / COUNT_FILE).write_text(text)
    with pytest.raises(WorkerConfigError, match=f"{COUNT_FILE}: expected a worker count"):
        resolve_workers(str(tmp_path), 0, 64)


@pytest.mark.parametrize("count", [-1, 65])
def test_a_count_outside_0_to_partitions_is_refused(tmp_path: Path, count: int) -> None:
    with pytest.raises(WorkerConfigError, match=r"workers must be 0 \(by cores\) to 64"):
        resolve_workers(str(tmp_path), count, 64)


def test_the_default_is_at_most_one_worker_per_partition(tmp_path: Path) -> None:
    assert resolve_workers(str(tmp_path), 0, 1) == 1
