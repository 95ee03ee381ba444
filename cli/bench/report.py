"""The outcome of a run, merged over generator processes: a typed record,
rendered as text for people and as one JSON document for scripts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cli.bench.config import BenchConfig
from cli.bench.stats import BenchTotals

#: The percentiles every report gives, by JSON name.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
#: A send lag p99 above this says the generator itself fell behind.
LAG_WARN_US = 2000
JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class Report:
    config: BenchConfig
    outcome: BenchTotals

    @property
    def open_loop(self) -> bool:
        return self.config.rate > 0

    @property
    def answered(self) -> int:
        o = self.outcome
        return o.ok + sum(o.errors.values())

    @property
    def rate(self) -> float:
        """Requests answered per second of the measurement window."""
        return self.answered / self.config.duration_s

    def latency_ms(self) -> dict[str, float]:
        o = self.outcome
        out = {name: o.latency.percentile(q) / 1000 for name, q in PERCENTILES}
        out["max"] = o.latency.max_us / 1000
        out["min"] = o.latency.min_us / 1000
        out["mean"] = round(o.latency.mean_us() / 1000, 3)
        return out

    def to_json(self) -> dict[str, Any]:
        c, o = self.config, self.outcome
        return {
            "version": JSON_VERSION,
            "config": {
                "targets": [str(t) for t in c.targets], "mode": "open" if self.open_loop
                else "closed", "rate": c.rate, "duration_s": c.duration_s,
                "warmup_s": c.warmup_s, "grace_s": c.grace_s, "connections": c.connections,
                "pipeline": c.pipeline, "processes": c.processes,
                "read_ratio": c.workload.read_ratio, "value_size": c.workload.value_size,
                "keys": c.workload.keys, "dist": str(c.workload.dist), "seed": c.seed,
                "preload": c.preload},
            "scheduled": o.scheduled, "sent": o.sent, "answered": self.answered,
            "ok": o.ok, "misses": o.misses, "errors": dict(sorted(o.errors.items())),
            "dropped": o.dropped, "timeouts": o.timeouts, "unsent": o.unsent,
            "disconnects": dict(sorted(o.disconnects.items())),
            "rate": round(self.rate, 1),
            "latency_ms": self.latency_ms(),
            "send_lag_ms": {"p50": o.lag.percentile(50) / 1000,
                            "p99": o.lag.percentile(99) / 1000,
                            "max": o.lag.max_us / 1000},
            "generator_cpu_s": round(o.cpu_s, 3),
            "histogram": o.latency.to_dict(),
        }

    def render(self) -> str:
        c, o, w = self.config, self.outcome, self.config.workload
        targets = ", ".join(str(t) for t in c.targets)
        mode = (f"open loop at {c.rate:,.0f} requests/s" if self.open_loop
                else "closed loop (as fast as answered)")
        lines = [
            f"{targets}: {c.connections} connections, pipeline {c.pipeline}, {mode}, "
            f"{c.duration_s:g} s after {c.warmup_s:g} s warm-up"
            + (f", {c.processes} processes" if c.processes > 1 else ""),
            f"workload: {w.describe()}" + (", keyspace preloaded" if c.preload else ""),
        ]
        target = f" ({self.rate / c.rate:.1%} of the target)" if self.open_loop else ""
        lines.append(f"requests: {o.scheduled:,} in the window, {self.answered:,} answered "
                     f"= {self.rate:,.1f}/s{target}; {o.ok:,} ok"
                     + (f" ({o.misses:,} GET misses)" if o.misses else ""))
        failed = [f"{n:,} {cls}" for cls, n in sorted(o.errors.items())]
        failed += [f"{n:,} {what}" for what, n in (("dropped (connection lost)", o.dropped),
                                                    ("timeouts", o.timeouts),
                                                    ("never sent", o.unsent)) if n]
        lines.append("failed: " + (", ".join(failed) if failed else "none"))
        if o.disconnects:
            lines.append("connections lost: " + ", ".join(
                f"{n}x {why}" for why, n in sorted(o.disconnects.items())))
        ms = self.latency_ms()
        since = "intended send time" if self.open_loop else "send time"
        lines.append(f"latency (ms, ok replies, from the {since}): " + ("  ".join(
            f"{name} {ms[name]:.3f}" for name in ("p50", "p90", "p99", "p99.9", "max"))
            + f"  (mean {ms['mean']:.3f})" if o.ok else "no ok replies"))
        window = c.warmup_s + c.duration_s
        lines.append(f"generator: send lag p99 {o.lag.percentile(99) / 1000:.3f} ms, "
                     f"max {o.lag.max_us / 1000:.3f} ms; CPU {o.cpu_s / window:.2f} cores")
        if self.open_loop and o.lag.percentile(99) > LAG_WARN_US:
            lines.append("warning: batches went out late (send lag p99 over 2 ms): the "
                         "server pushed back or the generator is short of CPU; the "
                         "latencies include that wait")
        return "\n".join(lines)


def build_report(config: BenchConfig, outcomes: list[BenchTotals]) -> Report:
    return Report(config, BenchTotals.merge(outcomes))
