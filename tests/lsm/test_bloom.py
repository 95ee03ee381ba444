from __future__ import annotations

import random

import pytest

from lsm.bloom import Filter


@pytest.mark.parametrize(
    ("count", "error_rate"), [(1, 0.01), (500, 0.01), (3000, 0.001), (20000, 1e-5)]
)
def test_fast_probe_agrees_with_pybloom_live(count: int, error_rate: float) -> None:
    rnd = random.Random(count)
    keys = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(count)]
    f = Filter.decode(Filter.build(keys, error_rate).encode())
    assert all(f.may_contain(k) for k in keys)
    assert all(f.may_contain_reference(k) for k in keys)  # pybloom-live agrees
    probes = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(5000)]
    assert [f.may_contain(p) for p in probes] == [f.may_contain_reference(p) for p in probes]
    false_positives = sum(f.may_contain(p) for p in probes if p not in set(keys))
    assert false_positives <= max(5, 3 * error_rate * len(probes))


def test_garbage_is_not_a_filter() -> None:
    with pytest.raises(ValueError, match="filter"):
        Filter.decode(b"\x00" * 10)
    with pytest.raises(ValueError, match="implausible"):
        Filter.decode(b"\xff" * 100)
