"""The engine with a merge operator against a dict model.

Puts, deletes and merge operands (alone, in batches, through ``write`` and
``try_write``) mixed with flushes, compactions (above and at the bottom) and
reopens, so that operands meet their bases in the memtable, in reads across
levels, in scans and in compactions. Two operators: a set union of 8-byte
items (associative, commutative, idempotent, like the shard layer's join of
sibling sets) and an append (not commutative), which shows whether operands
are applied oldest to newest everywhere.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from lsm import NOT_CACHED
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.faultfs import FaultFileSystem
from lsm.options import MergeOperator, Options
from tests.lsm.merge_ops import AppendOperator, UnionOperator

pytestmark = pytest.mark.property

keys_st = st.binary(min_size=1, max_size=6)
# Few distinct items, so that unions overlap and repeat.
items_st = st.lists(st.sampled_from([bytes([i]) * 8 for i in range(6)]), max_size=3).map(
    b"".join
)
# One write: (key, "put" | "delete" | "merge", bytes).
op_st = st.tuples(st.sampled_from(["put", "delete", "merge", "merge"]), items_st)


class MergeModel(RuleBasedStateMachine):
    operator: MergeOperator = UnionOperator()
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.fs = FaultFileSystem(seed=11)
        self.options = Options(
            fs=self.fs,
            fsync="never",
            memtable_bytes=4096,
            block_bytes=256,
            target_file_bytes=2048,
            level1_bytes=4096,
            level_fanout=2,
            l0_compaction_trigger=2,
            l0_slowdown_trigger=4,
            l0_stop_trigger=8,
            num_levels=4,
            block_cache_bytes=1 << 14,
            merge_operator=self.operator,
        )
        self.db = DB.open("/db", self.options)
        self.model: dict[bytes, bytes | None] = {}

    @initialize(target=keys, key=keys_st)
    def first_key(self, key: bytes) -> bytes:
        return key

    @rule(target=keys, key=keys_st)
    def new_key(self, key: bytes) -> bytes:
        return key

    def _model_apply(self, key: bytes, kind: str, data: bytes) -> None:
        if kind == "put":
            self.model[key] = data
        elif kind == "delete":
            self.model[key] = None
        else:
            self.model[key] = self.operator.full_merge(key, self.model.get(key), [data])

    @rule(key=keys, op=op_st)
    def write_one(self, key: bytes, op: tuple[str, bytes]) -> None:
        kind, data = op
        if kind == "put":
            self.db.put(key, data)
        elif kind == "delete":
            self.db.delete(key)
        else:
            self.db.merge(key, data)
        self._model_apply(key, kind, data)

    @rule(ops=st.lists(st.tuples(keys, op_st), min_size=1, max_size=8), inline=st.booleans())
    def batch(self, ops: list[tuple[bytes, tuple[str, bytes]]], inline: bool) -> None:
        b = WriteBatch()
        for key, (kind, data) in ops:
            if kind == "put":
                b.put(key, data)
            elif kind == "delete":
                b.delete(key)
            else:
                b.merge(key, data)
        if not (inline and self.db.try_write(b)):
            self.db.write(b)
        for key, (kind, data) in ops:
            self._model_apply(key, kind, data)

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        expected = self.model.get(key)
        cached = self.db.get_cached(key)
        # NOT_CACHED even right after a get when a compaction replaced the tables
        assert cached is NOT_CACHED or cached == expected, (key, cached, expected)
        assert self.db.get(key) == expected

    @rule(start=keys_st, end=keys_st)
    def scan(self, start: bytes, end: bytes) -> None:
        expected = sorted(
            (k, v) for k, v in self.model.items() if v is not None and start <= k < end
        )
        assert list(self.db.scan(start, end)) == expected

    @rule()
    def flush(self) -> None:
        self.db.flush()

    @rule(bottommost=st.booleans())
    def compact(self, bottommost: bool) -> None:
        self.db.compact_range(bottommost=bottommost)

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = DB.open("/db", self.options)
        self.check_all()

    def check_all(self) -> None:
        live = {k: v for k, v in self.model.items() if v is not None}
        assert dict(self.db.scan()) == live
        for key, value in self.model.items():
            assert self.db.get(key) == value

    @invariant()
    def recent_keys_read_back(self) -> None:
        for key in list(self.model)[-3:]:
            assert self.db.get(key) == self.model[key]

    def teardown(self) -> None:
        self.check_all()
        self.db.close()


class AppendModel(MergeModel):
    operator = AppendOperator()


_EXAMPLES = {"ci": 100, "soak": 3000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 20)
for _machine in (MergeModel, AppendModel):
    _machine.TestCase.settings = settings(
        max_examples=_EXAMPLES, stateful_step_count=40, deadline=None
    )
TestUnionMergeModel = MergeModel.TestCase
TestAppendMergeModel = AppendModel.TestCase
