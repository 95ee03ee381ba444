"""Request counts and latencies are kept in plain Python and rendered at
scrape time; what a scrape shows must be what prometheus-client's own
Counter and Histogram showed for the same observations: names, labels,
buckets, counts and sums."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from coordinator.client.commands import COMMANDS, level_label
from coordinator.data.quorum import Consistency
from coordinator.ops.metrics import BUCKETS, RequestCounts


class _Families(Collector):
    def __init__(self, counts: RequestCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield from self.counts.families()


def _exposition(registry: CollectorRegistry) -> dict[str, float]:
    """Sample line -> value; ``_created`` values (wall-clock times) as 0,
    HELP and TYPE lines as they are."""
    lines: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("#"):
            lines[line] = 0.0
            continue
        name, value = line.rsplit(" ", 1)
        lines[name] = 0.0 if re.match(r"\w+_created\{", name) else float(value)
    return lines


def test_a_scrape_shows_what_prometheus_client_counters_and_histograms_showed() -> None:
    reference = CollectorRegistry()
    requests = Counter("ringkv_requests", "Data commands by command, consistency level and "
                       "outcome", ["command", "consistency", "outcome"], registry=reference)
    latency = Histogram("ringkv_request_seconds", "Data command latency at the coordinator",
                        ["command", "consistency"], buckets=BUCKETS, registry=reference)
    counts = RequestCounts()
    ours = CollectorRegistry()
    ours.register(_Families(counts))

    rng = random.Random(19)
    levels = [Consistency(), Consistency(r=1, w=3), Consistency(r=2, w=2, pr=1, pw=1)]
    specs = [COMMANDS[name] for name in ("GET", "SET", "MGET", "DEL", "VSET")]
    # every bucket edge exactly, either side of it, and past the last
    edges = [b for edge in BUCKETS for b in (edge, edge * 0.999, edge * 1.001)] + [7.0, 0.0]
    for i in range(3000):
        spec, level = rng.choice(specs), rng.choice(levels)
        outcome = rng.choice(("ok", "ok", "ok", "noquorum", "error"))
        seconds = edges[i] if i < len(edges) else rng.expovariate(200.0)
        counts.observe(spec, level, outcome, seconds)
        label = level_label(spec, level)
        requests.labels(spec.name, label, outcome).inc()
        latency.labels(spec.name, label).observe(seconds)

    got, want = _exposition(ours), _exposition(reference)
    assert got.keys() == want.keys()
    for line, value in want.items():
        assert abs(got[line] - value) <= 1e-9 * max(1.0, abs(value)), line


def test_nothing_observed_renders_empty_families() -> None:
    registry = CollectorRegistry()
    registry.register(_Families(RequestCounts()))
    text = generate_latest(registry).decode()
    assert "# TYPE ringkv_requests_total counter" in text
    assert "# TYPE ringkv_request_seconds histogram" in text
    assert "_total{" not in text
