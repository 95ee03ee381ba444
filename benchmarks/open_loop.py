"""Open-loop latency at half of each target's peak rate, through the library
behind ``ringkv bench`` (cli/bench): one implementation of the load, used
by the CLI and by the benchmark scripts alike.

The peak is the best closed-loop SET rate redis-benchmark measured at -P 1
in the same run; the open-loop load then offers half of it, with latency
counted from each request's intended send time (docs/benchmarks.md,
"ringkv bench"), against the same port the peak was measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

import harness

from cli.bench import driver
from cli.bench.config import BenchConfig
from cli.bench.conn import BenchError, ServerAddr
from cli.bench.keys import KeyDist
from cli.bench.report import Report
from cli.bench.workload import Workload


@dataclass(frozen=True, slots=True)
class HalfPeak:
    label: str
    peak: float
    report: Report | None
    error: str = ""


def measure(label: str, port: int, peak: float | None, *, seconds: float, connections: int,
            value_bytes: int, keys: int) -> HalfPeak:
    """SET at half of ``peak`` requests/s for ``seconds`` after a 1 s warm-up."""
    if not peak:
        return HalfPeak(label, 0.0, None, "no peak rate measured")
    config = BenchConfig(
        targets=(ServerAddr("127.0.0.1", port),), rate=peak / 2, duration_s=seconds,
        connections=connections, pipeline=1,
        workload=Workload(0.0, value_bytes, keys, KeyDist("uniform")))
    try:
        return HalfPeak(label, peak, driver.run(config))
    except BenchError as exc:
        return HalfPeak(label, peak, None, str(exc))


def p99_ms(result: HalfPeak) -> float | None:
    return None if result.report is None else result.report.latency_ms()["p99"]


def render(results: list[HalfPeak]) -> str:
    rows = []
    for r in results:
        if r.report is None:
            rows.append([r.label, harness.fmt_rate(r.peak / 2), "—", "—", "—", "—", "—", "—",
                         r.error])
            continue
        o, ms = r.report.outcome, r.report.latency_ms()
        failed = [f"{n:,} {what}" for what, n in (
            *sorted(o.errors.items()), ("dropped", o.dropped), ("timeouts", o.timeouts),
            ("never sent", o.unsent)) if n]
        rows.append([r.label, harness.fmt_rate(r.peak / 2), harness.fmt_rate(r.report.rate),
                     *(f"{ms[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
                     "; ".join([*failed, f"send lag p99 {o.lag.percentile(99) / 1000:.1f} ms"])])
    return harness.table(["target (SET, open loop)", "offered/s", "answered/s", "p50 ms",
                          "p90 ms", "p99 ms", "p99.9 ms", "max ms", "notes"], rows)
