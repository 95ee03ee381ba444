"""The engine against a dict model, with crashes and disk-full injected.

Runs on the crashable in-memory file system with ``fsync="always"``, so every
acknowledged write must survive a crash. A write that failed may or may not
have happened: the model keeps both possibilities for that key until the next
acknowledged write to it settles the question.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.errors import DiskFullError, StorageIOError
from lsm.faultfs import FaultFileSystem
from lsm.options import Options
from tests.lsm.helpers import wait_until

pytestmark = pytest.mark.property

ABSENT = None
Possible = frozenset[bytes | None]

keys_st = st.binary(min_size=1, max_size=12)
values_st = st.binary(max_size=300)


class EngineModel(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.fs = FaultFileSystem(seed=7)
        self.options = Options(
            fs=self.fs,
            fsync="always",
            memtable_bytes=4096,
            block_bytes=512,
            target_file_bytes=8192,
            level1_bytes=16384,
            level_fanout=2,
            l0_compaction_trigger=2,
            l0_slowdown_trigger=4,
            l0_stop_trigger=8,
            num_levels=4,
            block_cache_bytes=1 << 16,
        )
        self.db = DB.open("/db", self.options)
        # key -> every value it may hold (None: absent)
        self.model: dict[bytes, Possible] = {}
        # Whether a disk_fills step is in force. Preconditions read this, not
        # fs.space_limit: background threads make the file system's state
        # vary between runs, and hypothesis needs preconditions to replay.
        self.disk_limited = False

    @initialize(target=keys, key=keys_st)
    def first_key(self, key: bytes) -> bytes:
        return key

    @rule(target=keys, key=keys_st)
    def new_key(self, key: bytes) -> bytes:
        return key

    def _apply(self, ops: list[tuple[bytes, bytes | None]], write: object) -> None:
        try:
            write()  # type: ignore[operator]
        except StorageIOError:
            for key, value in ops:
                self.model[key] = self.model.get(key, frozenset({None})) | {value}
            return
        for key, value in ops:
            self.model[key] = frozenset({value})

    @rule(key=keys, value=values_st)
    def put(self, key: bytes, value: bytes) -> None:
        self._apply([(key, value)], lambda: self.db.put(key, value))

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self._apply([(key, None)], lambda: self.db.delete(key))

    @rule(ops=st.lists(st.tuples(keys, st.none() | values_st), min_size=1, max_size=8))
    def batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        b = WriteBatch()
        final: dict[bytes, bytes | None] = {}
        for key, value in ops:
            if value is None:
                b.delete(key)
            else:
                b.put(key, value)
            final[key] = value
        self._apply(list(final.items()), lambda: self.db.write(b))

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.db.get(key) in self.model.get(key, frozenset({None}))

    @rule()
    def flush(self) -> None:
        with contextlib.suppress(StorageIOError):
            self.db.flush()

    @rule()
    def compact(self) -> None:
        with contextlib.suppress(StorageIOError):
            self.db.compact_range()

    @rule()
    def reopen(self) -> None:
        self.db.close()
        try:
            self.db = DB.open("/db", self.options)
        except DiskFullError:
            # Opening writes a new WAL and manifest; with the disk full it must
            # fail cleanly and succeed once space is back.
            assert self.disk_limited
            self.fs.space_limit = None
            self.db = DB.open("/db", self.options)
        self.check_all()

    @rule(tear=st.booleans())
    def crash(self, tear: bool) -> None:
        self.db.kill()
        self.fs.space_limit = None
        self.disk_limited = False
        self.fs.crash(tear=tear)
        self.db = DB.open("/db", self.options)
        self.check_all()

    @precondition(lambda self: not self.disk_limited)
    @rule(headroom=st.integers(min_value=0, max_value=6000))
    def disk_fills(self, headroom: int) -> None:
        self.disk_limited = True
        self.fs.space_limit = self.fs.used_bytes() + headroom

    @precondition(lambda self: self.disk_limited)
    @rule()
    def disk_freed(self) -> None:
        self.disk_limited = False
        self.fs.space_limit = None

        def writable() -> bool:
            try:
                self.db.put(b"\xff-probe", b"")
            except DiskFullError:
                return False
            return True

        wait_until(writable, timeout=10, what="writes to resume after space came back")
        self.model[b"\xff-probe"] = frozenset({b""})

    def check_all(self) -> None:
        seen = dict(self.db.scan())
        for key, possible in self.model.items():
            assert seen.get(key) in possible, (key, seen.get(key), possible)
            assert self.db.get(key) in possible
        for key, value in seen.items():
            # nothing appears that was never written
            assert key in self.model and value in self.model[key]

    @invariant()
    def readable(self) -> None:
        # Reads keep working whatever state the engine is in.
        for key in list(self.model)[:3]:
            assert self.db.get(key) in self.model[key]

    def teardown(self) -> None:
        self.fs.space_limit = None
        self.db.close()


_EXAMPLES = {"ci": 200, "soak": 5000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 25)
EngineModel.TestCase.settings = settings(
    max_examples=_EXAMPLES, stateful_step_count=40, deadline=None
)
TestEngineModel = EngineModel.TestCase
