"""Disk full on one node (issue 7, done point 3).

n3's data directory is a small tmpfs. Once it is filled up, n3's engines
turn read-only: a write that needs n3 (W=3) fails with READONLY naming n3,
while W=2 writes through every node, n3 included, keep being acknowledged
by the other two. After the filler is deleted n3 takes writes again and
catches up (hints, repair when the nodes have it, read repair), nothing
acknowledged is lost, and ``ringkv db check`` finds every engine of the
stopped node clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.cluster import ROOT, wait_for
from tests.faults.harness import settle, verify
from tests.faults.history import History
from tests.faults.nemesis import fault_cluster, fill, mount_unavailable, tmpfs
from tests.faults.workload import SetAdds, client, cmd, spread

pytestmark = pytest.mark.integration

FULL = 2
VOLUME_BYTES = 16 << 20


def db_check(path: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "cli", "db", "check", str(path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"db check {path}: exit {done.returncode}\n{done.stdout}" \
                                 f"\n{done.stderr}"
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def test_disk_full_on_one_node(tmp_path: Path) -> None:
    if (why := mount_unavailable()) is not None:
        pytest.skip(why)
    history = History()
    keys = [f"full:{i}" for i in range(40)]
    only_keys = [f"full:only:{i}" for i in range(50)]
    with tmpfs(tmp_path / "n3", VOLUME_BYTES) as volume, \
            fault_cluster(tmp_path, settings={"handoff": {"concurrency": 8}}) as nemesis:
        cluster = nemesis.cluster
        nemesis.history = history
        adds = SetAdds(cluster, history, spread(range(3), 1, keys), seed=7)
        r1 = client(cluster, 0)
        with adds:
            time.sleep(0.5)  # load before the disk fills (schedule timing)
            filler = fill(volume)
            history.note(f"{volume} full")

            def refused() -> str:
                try:
                    cmd(r1, "SET", "full:probe", "x", "W", 3)
                except redis.ReadOnlyError as exc:  # redis-py strips the code
                    return f"READONLY {exc}"
                except redis.ResponseError as exc:
                    assert "read-only" not in str(exc), f"read-only, but not READONLY: {exc}"
                    return ""
                return ""

            error = wait_for("a W=3 write refused by the full node", refused, 30)
            name = cluster.members[FULL].name
            assert error.startswith(f"READONLY disk full or I/O error on {name}: "), error
            assert "disk full" in error, error
            wait_for("INFO storage shows n3 read-only",
                     lambda: str(cluster.info(FULL, "storage")["read_only"]).startswith("yes"),
                     10)
            full_from = history.now()
            # Keys written only while n3 is full: n3 has to catch up on them.
            for key in only_keys:
                op = history.invoke(-2, "set", key, f"{key}=v", "n1")
                assert cmd(r1, "SET", key, f"{key}=v") is True
                history.complete(op, "ok")
            time.sleep(2.0)  # the cluster under load with n3 read-only
            full_until = history.now()
            filler.unlink()
            history.note(f"{volume} has space again")
            wait_for("n3 takes writes again (W=3 ok)",
                     lambda: cmd(r1, "SET", "full:probe", "y", "W", 3) in (True, b"OK"), 30)
            # The probe reached one of n3's workers; each of its engines
            # leaves read-only at its own next flush retry (backoff up to 1 s).
            wait_for("INFO storage shows every engine of n3 writable again",
                     lambda: str(cluster.info(FULL, "storage")["read_only"]) == "no", 30)
            time.sleep(0.5)
        done = [op for op in history.completions("add") if full_from <= op.time < full_until]
        acked = sum(op.type == "ok" for op in done)
        print(f"while n3 was full: {acked}/{len(done)} adds acknowledged (W=2); "
              f"error for W=3: {error[:120]}")
        assert done and acked == len(done), \
            f"W=2 adds refused while n3 was full: {acked}/{len(done)}"
        settle(cluster, nemesis)
        verdict = verify(cluster, history, keys, only_keys)
        print(verdict.summary(), verdict.registers)
        assert verdict.valid, verdict.problems()
        assert verdict.registers == {"keys": 50, "last_write_kept": 50, "last_write_lost": 0}
        assert str(cluster.info(FULL, "storage")["read_only"]) == "no"
        history.dump(tmp_path / "history.jsonl")
        nemesis.stop(FULL)
        for worker in sorted((cluster.members[FULL].data_dir / "workers").glob("worker-*")):
            doc = db_check(worker)
            assert doc["ok"] is True and doc["problems"] == [], doc
