"""The heavy-hitters sketch (coordinator/data/hotkeys.py): Space-Saving's
guarantees on any stream, and the sliding window of rates."""

from __future__ import annotations

import collections
import random

from hypothesis import given
from hypothesis import strategies as st

from coordinator.data.hotkeys import HotKeys, SpaceSaving, printable, top_lines


@given(st.lists(st.integers(0, 40), max_size=400), st.integers(1, 12))
def test_space_saving_bounds_every_tracked_count(stream: list[int], capacity: int) -> None:
    sketch = SpaceSaving(capacity)
    truth: collections.Counter[bytes] = collections.Counter()
    for n in stream:
        key = str(n).encode()
        sketch.add(key)
        truth[key] += 1
    assert len(sketch) <= capacity
    assert sketch.total == len(stream)
    for key, count in sketch.counts.items():
        assert count - sketch.errors[key] <= truth[key] <= count
    # Every key with more than total / capacity requests is tracked.
    for key, count in truth.items():
        if count > len(stream) / capacity:
            assert key in sketch.counts
    # The buckets agree with the counts (the stream summary is consistent).
    if sketch.counts:
        assert min(sketch.counts.values()) == sketch._min


def test_a_key_with_half_the_traffic_ranks_first_among_many() -> None:
    rng = random.Random(7)
    hot = HotKeys(capacity=32, window_s=10.0, clock=lambda: 0.0)
    for _ in range(20_000):
        if rng.random() < 0.5:
            hot.read(b"hot")
        else:
            hot.read(b"k%d" % rng.randrange(100_000))
    hot.write(b"hot")
    top = hot.top(3)
    assert top[0].key == b"hot"
    assert top[0].writes_per_s > 0
    assert hot.read_rate(b"hot") > 0.45 * 20_000 / 10  # guaranteed count over the window


def test_rates_cover_the_window_and_old_keys_leave() -> None:
    now = [100.0]
    hot = HotKeys(capacity=16, window_s=10.0, clock=lambda: now[0])
    for _ in range(500):
        hot.read(b"a")
    assert hot.top(1)[0].reads_per_s == 100.0  # 500 over the two epochs' 5 s + 0 s
    now[0] += 6  # next epoch: "a" is in the previous one still
    for _ in range(100):
        hot.write(b"b")
    assert {h.key for h in hot.top(5)} == {b"a", b"b"}
    now[0] += 5  # two rotations later "a" is gone
    assert [h.key for h in hot.top(5)] == [b"b"]
    now[0] += 20  # idle for longer than the window: nothing left
    assert hot.top(5) == []
    assert not hot.is_hot(b"b", 1.0)


def test_printable_keys_escape_what_info_lines_use() -> None:
    assert printable(b"user:42, x=\\\x00\xff") == r"user\x3a42\x2c\x20x\x3d\x5c\x00\xff"
    hot = HotKeys(capacity=16, clock=lambda: 0.0)
    hot.read(b"k")
    assert list(top_lines(hot.top(1))) == [("hotkey_1", "key=k,reads_per_s=0.2,writes_per_s=0")]
