"""Data blocks: a point lookup finds what a scan of the key list finds,
without building that list."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lsm.block import Block, BlockBuilder


@settings(max_examples=200)
@given(keys=st.lists(st.binary(min_size=1, max_size=24), unique=True, max_size=200),
       probes=st.lists(st.binary(min_size=0, max_size=24), max_size=20))
def test_find_agrees_with_the_key_list(keys: list[bytes], probes: list[bytes]) -> None:
    keys.sort()
    builder = BlockBuilder()
    for i, k in enumerate(keys):
        builder.add(k, i << 8 | 1, b"v%d" % i)
    raw = builder.finish()
    lazy = Block.decode(raw)
    for probe in [*keys, *probes]:
        want = keys.index(probe) if probe in keys else -1
        assert lazy.find(probe) == want
        if want >= 0:
            assert lazy.value(want) == b"v%d" % want
    assert lazy._keys is None  # point lookups never built the list
    built = Block.decode(raw)
    assert built.keys == keys and len(built) == len(keys)
    for probe in [*keys, *probes]:
        assert built.find(probe) == lazy.find(probe)
