"""Key distributions of ringkv bench: frequencies against the exact
probabilities, and the --dist spellings."""

from __future__ import annotations

import collections
import random

import pytest

from cli.bench.keys import KeyDist, Zipf, parse_dist

DRAWS = 100_000


def frequencies(dist: KeyDist, keys: int, seed: int = 7) -> list[float]:
    draw = dist.sampler(keys, random.Random(seed))
    counts = collections.Counter(draw() for _ in range(DRAWS))
    assert set(counts) <= set(range(keys))
    return [counts[k] / DRAWS for k in range(keys)]


@pytest.mark.parametrize("s", [0.5, 0.99, 1.0, 1.5, 3.0])
def test_zipf_frequencies_match_the_exact_probabilities(s: float) -> None:
    keys = 30
    weights = [(k + 1) ** -s for k in range(keys)]
    exact = [w / sum(weights) for w in weights]
    got = frequencies(KeyDist("zipf", s), keys)
    # 100k draws: a frequency's standard error is below 0.0016
    assert max(abs(g - e) for g, e in zip(got, exact, strict=True)) < 0.006
    assert got[0] == max(got)


def test_zipf_draws_stay_in_range_for_huge_keyspaces_and_steep_skew() -> None:
    rng = random.Random(3)
    for n, s in ((1, 0.99), (2, 5.0), (10**9, 0.99), (10**9, 8.0)):
        z = Zipf(n, s, rng.random)
        assert all(0 <= z.draw() < n for _ in range(2000))


def test_uniform_spreads_evenly() -> None:
    got = frequencies(parse_dist("uniform"), 10)
    assert max(abs(g - 0.1) for g in got) < 0.006


def test_hot_puts_everything_or_its_share_on_key_0() -> None:
    assert frequencies(parse_dist("hot"), 50)[0] == 1.0
    got = frequencies(parse_dist("hot:0.5"), 50)
    assert abs(got[0] - (0.5 + 0.5 / 50)) < 0.01
    assert abs(sum(got[1:]) - 0.49) < 0.01


@pytest.mark.parametrize(("spec", "why"), [
    ("zipf", "give the exponent"), ("zipf:x", "not a number"), ("zipf:0", r"\(0, 10\]"),
    ("zipf:-1", r"\(0, 10\]"), ("hot:0", r"\(0, 1\]"), ("hot:1.5", r"\(0, 1\]"),
    ("gauss", "expected uniform"), ("uniform:2", "expected uniform"),
])
def test_bad_spellings_name_the_problem(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_dist(spec)


def test_spellings_round_trip() -> None:
    for spec in ("uniform", "zipf:0.99", "hot", "hot:0.25", "ZIPF:1.2"):
        assert str(parse_dist(str(parse_dist(spec)))) == str(parse_dist(spec))
    assert str(parse_dist("zipf:1.20")) == "zipf:1.2"
