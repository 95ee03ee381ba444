"""One 3-node cluster (N=3, W=2, R=2) shared by the fault tests of this
package that heal it after themselves; tests that need their own node
settings (disk full, clock skew) start their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.nemesis import Nemesis, fault_cluster

#: Handoff of more partitions at once than the default 2, so hints drain in
#: a second or two between schedules instead of ~10 s. Every read mechanism
#: of issue 15 on: coalescing (the default), the hot-key cache with a low
#: hot bar (the workloads' keys are read a few times a second), reads to R
#: replicas with hedging.
SETTINGS: dict[str, dict[str, Any]] = {
    "handoff": {"concurrency": 8},
    "hotkeys": {"coalesce": True, "cache_ms": 50, "hot_reads_per_s": 1.0},
    "reads": {"fanout": "quorum", "hedge": True},
}
#: ``RINGKV_FAULT_PARTITIONS=4096`` runs the shared cluster with that many
#: ring partitions (CI runs one schedule at 4,096: test_schedules.py).
if partitions := os.environ.get("RINGKV_FAULT_PARTITIONS"):
    SETTINGS["cluster"] = {"partitions": int(partitions)}


@pytest.fixture(scope="package")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nemesis]:
    with fault_cluster(Path(tmp_path_factory.mktemp("faults")), settings=SETTINGS) as nemesis:
        yield nemesis
