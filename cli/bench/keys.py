"""Which key each request touches: ``uniform``, ``zipf:<s>`` or ``hot``.

A distribution hands out key indexes in ``0 .. keys-1``; the workload turns
an index into a key name. ``parse_dist`` reads the command-line spelling
and raises ValueError naming what is wrong.

- ``uniform``: every key equally likely.
- ``zipf:<s>``: key of rank k (index k-1) with probability proportional to
  1 / k**s, s > 0 (s = 0.99 is YCSB's usual skew). Sampled in O(1) per draw
  by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion
  to generate variates from monotone discrete distributions", 1996), so a
  keyspace of millions needs no table.
- ``hot``: every request on key 0; ``hot:<f>``: a fraction f (0 < f <= 1)
  of requests on key 0, the rest uniform over all keys.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

_ABOVE_MINUS_ONE = math.nextafter(-1.0, 0.0)
#: Draws one key index from a random source.
Sampler = Callable[[], int]


@dataclass(frozen=True, slots=True)
class KeyDist:
    """A parsed ``--dist``: ``kind`` is uniform, zipf or hot; ``param`` is
    s for zipf and the hot fraction for hot (1.0 for plain ``hot``)."""

    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        if self.kind == "uniform" or (self.kind == "hot" and self.param == 1.0):
            return self.kind
        return f"{self.kind}:{self.param:g}"

    def sampler(self, keys: int, rng: random.Random) -> Sampler:
        """A function drawing indexes in ``0 .. keys-1`` from ``rng``."""
        if keys < 1:
            raise ValueError(f"the keyspace needs at least one key, not {keys}")
        rand = rng.random
        if self.kind == "uniform":
            return lambda: int(rand() * keys)
        if self.kind == "hot":
            fraction = self.param
            return lambda: 0 if rand() < fraction else int(rand() * keys)
        zipf = Zipf(keys, self.param, rand)
        return zipf.draw


def parse_dist(spec: str) -> KeyDist:
    """``uniform``, ``zipf:<s>`` (s > 0), ``hot`` or ``hot:<fraction>``."""
    kind, _, arg = spec.strip().lower().partition(":")
    if kind == "uniform" and not arg:
        return KeyDist("uniform")
    if kind == "hot" and not arg:
        return KeyDist("hot", 1.0)
    if kind in ("zipf", "hot") and arg:
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"{spec!r}: {arg!r} is not a number") from None
        if kind == "zipf" and not 0.0 < value <= 10.0:
            raise ValueError(f"{spec!r}: the Zipf exponent must be in (0, 10]")
        if kind == "hot" and not 0.0 < value <= 1.0:
            raise ValueError(f"{spec!r}: the hot key's share must be in (0, 1]")
        return KeyDist(kind, value)
    if kind == "zipf":
        raise ValueError(f"{spec!r}: give the exponent, e.g. zipf:0.99")
    raise ValueError(f"{spec!r}: expected uniform, zipf:<s> or hot[:<fraction>]")


class Zipf:
    """Ranks 1..n with P(k) proportional to k**-s, by rejection-inversion.

    The method inverts H, an antiderivative of the continuous envelope
    h(x) = x**-s, to map a uniform draw to x; the rank is x rounded, kept
    outright when x lies close enough to it (the ``_accept_band`` test,
    which holds for most draws) and otherwise only if the draw falls under
    the step function of the true probabilities. Expected draws per rank
    stay below ~1.1 for every s.
    """

    def __init__(self, n: int, s: float, rand: Callable[[], float]) -> None:
        if n < 1 or s <= 0.0:
            raise ValueError(f"Zipf needs n >= 1 and s > 0, not n={n}, s={s}")
        self.n, self.s, self._rand = n, s, rand
        self._h_top = self._big_h(1.5) - 1.0
        self._h_bottom = self._big_h(n + 0.5)
        self._accept_band = 2.0 - self._big_h_inverse(self._big_h(2.5) - self._h(2.0))

    def draw(self) -> int:
        """A key index (rank - 1) in 0 .. n-1."""
        for _ in range(1000):
            u = self._h_bottom + self._rand() * (self._h_top - self._h_bottom)
            x = self._big_h_inverse(u)
            k = min(max(int(x + 0.5), 1), self.n)
            if k - x <= self._accept_band or u >= self._big_h(k + 0.5) - self._h(k):
                return k - 1
        return 0  # not reached in practice: most rounds accept

    def _h(self, x: float) -> float:
        return math.exp(-self.s * math.log(x))

    def _big_h(self, x: float) -> float:
        """(x**(1-s) - 1) / (1-s), and log x at s = 1, without cancellation."""
        log_x = math.log(x)
        return _expm1_over((1.0 - self.s) * log_x) * log_x

    def _big_h_inverse(self, y: float) -> float:
        # (1 + t) must stay positive; rounding can push t to -1 for the
        # rarest ranks, which then clamp to n.
        t = max(y * (1.0 - self.s), _ABOVE_MINUS_ONE)
        return math.exp(_log1p_over(t) * y)


def _expm1_over(x: float) -> float:
    """(e**x - 1) / x, continuous at 0."""
    return math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x / 2.0


def _log1p_over(x: float) -> float:
    """log(1 + x) / x, continuous at 0."""
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x / 2.0
