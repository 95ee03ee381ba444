"""Actors and hypothesis strategies shared by the version-model tests."""

from __future__ import annotations

from hypothesis import strategies as st

from shardserver.protocol.vclock import ActorId, VClock

A = ActorId(b"a#0")
B = ActorId(b"b#0")
C = ActorId(b"c#0")
D = ActorId(b"d#0")

actors_st = st.sampled_from([A, B, C, D])


def clocks(max_counter: int, max_size: int | None = None) -> st.SearchStrategy[VClock]:
    return st.dictionaries(actors_st, st.integers(0, max_counter), max_size=max_size).map(
        VClock.of
    )
