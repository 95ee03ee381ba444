"""A manual compaction (``compact_range``) must not starve flushes and writes:
it runs in bounded steps, and a level 0 that reached its trigger meanwhile is
merged down between two steps, not after the whole range."""

from __future__ import annotations

import os
import threading

from lsm.db import DB
from lsm.options import Decision, Options
from tests.lsm.helpers import wait_until

TIMEOUT_S = 30.0


class Gate:
    """A compaction filter that, while armed, holds the compaction offering
    it an old key (prefix ``a``) from ``start`` on until the test lets it go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._start = b""
        self.entered = threading.Event()
        self._release = threading.Event()

    def arm(self, start: bytes = b"a") -> None:
        with self._lock:
            self._armed = True
            self._start = start
            self.entered.clear()
            self._release.clear()

    def release(self) -> None:
        self._release.set()

    def __call__(self, key: bytes, value: bytes) -> tuple[int, bytes | None]:
        if key.startswith(b"a"):
            with self._lock:
                hold = self._armed and key >= self._start
                self._armed = self._armed and not hold
            if hold:
                self.entered.set()
                if not self._release.wait(TIMEOUT_S):
                    raise AssertionError("the test never released the compaction")
        return Decision.KEEP, None


def _options(gate: Gate) -> Options:
    # In-thread compactions, so the filter can hold one; a small target file
    # size so level 1 has many files and the manual compaction many steps.
    return Options(
        memtable_bytes=64 << 10, block_bytes=1024, target_file_bytes=4096,
        level1_bytes=64 << 20, l0_compaction_trigger=2, l0_slowdown_trigger=3,
        l0_stop_trigger=4, num_levels=4, compaction_filter=gate,
        compaction_in_process=False, fsync="never",
    )


def _l0(db: DB) -> int:
    files = db.stats()["l0_files"]
    assert isinstance(files, int)
    return files


def test_level0_is_merged_while_a_manual_compaction_is_in_progress(tmp_path: str) -> None:
    gate = Gate()
    with DB.open(os.path.join(tmp_path, "db"), _options(gate)) as db:
        old = {b"a%05d" % i: b"old%05d" % i + b"." * 100 for i in range(5000)}
        for k, v in old.items():
            db.put(k, v)
        db.compact_range()
        assert _l0(db) == 0
        level1 = db.stats()["levels"][1]["bytes"]
        assert level1 > 3 * 10 * 4096, "level 1 must need several manual steps"

        gate.arm()
        errors: list[BaseException] = []

        def manual() -> None:
            try:
                db.compact_range(bottommost=True)
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        worker = threading.Thread(target=manual, name="manual-compaction")
        worker.start()
        try:
            assert gate.entered.wait(TIMEOUT_S), "the manual compaction never started"
            # Meanwhile new writes (keys after every old one) flush to level 0,
            # past its compaction trigger, while the manual step is held.
            new = {}
            for n in range(3):
                for i in range(50):
                    key = b"z%d-%03d" % (n, i)
                    new[key] = b"new"
                    db.put(key, b"new")
                db.flush()
            assert _l0(db) == 3
            # A later step is held too (a key far past what one step takes);
            # before it started, level 0 was merged.
            gate.arm(b"a04000")
            gate.release()
            assert gate.entered.wait(TIMEOUT_S), "no second manual step"
            assert worker.is_alive()
            assert _l0(db) == 0, "level 0 waited for the whole manual compaction"
        finally:
            gate.release()
            worker.join(TIMEOUT_S)
        assert not worker.is_alive() and not errors, errors
        assert _l0(db) == 0
        for k, v in {**old, **new}.items():
            assert db.get(k) == v
        assert dict(db.scan()) == {**old, **new}


def test_writes_go_on_while_a_manual_step_is_held(tmp_path: str) -> None:
    """A held step (a slow disk, a huge file) holds neither flushes nor writes
    below the stop trigger."""
    gate = Gate()
    with DB.open(os.path.join(tmp_path, "db"), _options(gate)) as db:
        for i in range(500):
            db.put(b"a%05d" % i, b"x" * 100)
        db.compact_range()
        gate.arm()
        worker = threading.Thread(target=lambda: db.compact_range(bottommost=True),
                                  name="manual-compaction")
        worker.start()
        try:
            assert gate.entered.wait(TIMEOUT_S)
            db.put(b"b", b"1")
            db.flush()
            wait_until(lambda: _l0(db) == 1, TIMEOUT_S, "the flush to level 0")
            assert db.get(b"b") == b"1"
        finally:
            gate.release()
            worker.join(TIMEOUT_S)
        assert not worker.is_alive()
