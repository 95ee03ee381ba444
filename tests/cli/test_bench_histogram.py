"""The bench latency histogram against a sorted-list oracle."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.bench.histogram import (
    BUCKETS,
    HIGHEST_US,
    LINEAR,
    SUB,
    Histogram,
    bucket_of,
    bucket_range,
    of,
)

PCTS = (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
# Latencies as they come: mostly small, some spanning every octave, some
# beyond the top bucket.
values = st.lists(st.one_of(st.integers(0, 2000), st.integers(0, 2 * HIGHEST_US)),
                  min_size=1, max_size=400)


def oracle(sorted_values: list[int], pct: float) -> int:
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def test_buckets_tile_the_range_without_gaps_or_overlaps() -> None:
    assert bucket_range(0) == (0, 0)
    assert bucket_of(HIGHEST_US) == BUCKETS - 1
    for i in range(BUCKETS):
        lo, hi = bucket_range(i)
        assert bucket_of(lo) == i == bucket_of(hi)
        if i:
            assert bucket_range(i - 1)[1] + 1 == lo
        if i >= LINEAR:  # never wider than 1/SUB of its lower bound
            assert hi - lo + 1 <= lo / SUB


@given(values)
def test_percentiles_match_the_sorted_oracle_to_the_bucket(vals: list[int]) -> None:
    h = of(vals)
    ordered = sorted(vals)
    for pct in PCTS:
        got, want = h.percentile(pct), oracle(ordered, pct)
        assert got <= ordered[-1]
        if want <= HIGHEST_US:  # never below the true value, within its bucket
            assert want <= got
            assert bucket_of(got) == bucket_of(want)
        else:  # beyond the range: somewhere in the top bucket or the maximum
            assert got >= bucket_range(BUCKETS - 1)[0]
    assert h.percentile(100) == h.max_us == ordered[-1]
    assert h.min_us == ordered[0] and h.total == len(vals) and h.sum_us == sum(vals)


@given(values, values)
def test_merge_equals_one_histogram_of_both(a: list[int], b: list[int]) -> None:
    merged = of(a)
    merged.merge(of(b))
    both = of(a + b)
    assert merged.counts == both.counts
    assert (merged.total, merged.sum_us, merged.min_us, merged.max_us) == (
        both.total, both.sum_us, both.min_us, both.max_us)
    for pct in PCTS:
        assert merged.percentile(pct) == both.percentile(pct)


def test_merging_into_or_from_an_empty_histogram() -> None:
    h = Histogram()
    h.merge(Histogram())
    assert h.total == 0 and h.percentile(99) == 0
    h.merge(of([7, 9]))
    assert (h.min_us, h.max_us, h.percentile(50)) == (7, 9, 7)


@given(values)
def test_dict_form_round_trips_through_json(vals: list[int]) -> None:
    h = of(vals)
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.counts == h.counts
    assert (back.total, back.sum_us, back.min_us, back.max_us) == (
        h.total, h.sum_us, h.min_us, h.max_us)


def test_a_bad_dict_form_is_refused_with_the_reason() -> None:
    good = of([1, 500]).to_dict()
    with pytest.raises(ValueError, match="layout"):
        Histogram.from_dict({**good, "sub_buckets": 64})
    with pytest.raises(ValueError, match="out of range"):
        Histogram.from_dict({**good, "counts": {str(BUCKETS): 1}})
    with pytest.raises(ValueError, match="sum of its counts"):
        Histogram.from_dict({**good, "total": 3})


def test_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="101"):
        of([1]).percentile(101)
