"""The shadow proxy's findings: a live line every ``--interval`` seconds,
and the final report as text for people or one JSON document for scripts."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from cli.bench.histogram import Histogram
from cli.shadow.config import ShadowConfig
from cli.shadow.stats import Interval, ShadowStats

#: The percentiles every report gives, by JSON name.
PERCENTILES = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))
JSON_VERSION = 1


def latency_ms(h: Histogram) -> dict[str, float]:
    out = {name: h.percentile(q) / 1000 for name, q in PERCENTILES}
    out["max"] = h.max_us / 1000
    out["mean"] = round(h.mean_us() / 1000, 3)
    return out


def live_line(elapsed_s: float, tick: Interval, stats: ShadowStats) -> str:
    per_s = max(tick.seconds, 1e-9)

    def side(h: Histogram) -> str:
        if not h.total:
            return "-"
        return " ".join(f"{name} {h.percentile(q) / 1000:.3f}" for name, q in PERCENTILES)

    line = (f"[{elapsed_s:>5.0f}s] {tick.requests / per_s:>7,.0f} req/s, mirrored "
            f"{tick.mirrored / per_s:,.0f}/s | primary ms {side(tick.primary)} | ringkv ms "
            f"{side(tick.ringkv)} | mismatches +{tick.mismatched} "
            f"({sum(stats.mismatched.values()):,})")
    if tick.dropped or stats.pending:
        line += f" | dropped +{tick.dropped:,}, pending {stats.pending:,}"
    return line


@dataclass(frozen=True, slots=True)
class Report:
    config: ShadowConfig
    seconds: float
    stats: ShadowStats  # final: the proxy has stopped

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "version": JSON_VERSION,
            "primary": str(self.config.primary), "ringkv": str(self.config.shadow),
            "seconds": round(self.seconds, 3), "connections": s.connections,
            "requests": s.requests, "mirrored": s.mirrored, "matched": s.matched,
            "mismatched": sum(s.mismatched.values()), "stale": s.stale,
            "mismatched_by_command": _sorted(s.mismatched),
            "ringkv_errors": _sorted(s.shadow_errors), "refused": _sorted(s.refused),
            "abandoned": _sorted(s.abandoned), "dropped": _sorted(s.dropped),
            "unsupported": _sorted(s.unsupported), "not_compared": _sorted(s.not_compared),
            "unobserved_connections": _sorted(s.unobserved),
            "primary_failures": _sorted(s.primary_failures),
            "latency_ms": {"primary": latency_ms(s.primary), "ringkv": latency_ms(s.ringkv)},
            "mismatches": [{"command": m.command, "keys": list(m.keys), "primary": m.primary,
                            "ringkv": m.ringkv, "stale": m.stale} for m in s.samples],
        }

    def render(self) -> str:
        s, c = self.stats, self.config
        mismatched = sum(s.mismatched.values())
        lines = [
            f"shadow of primary {c.primary} by ringkv {c.shadow}: {self.seconds:,.1f} s, "
            f"{s.connections:,} client connections",
            f"requests: {s.requests:,} answered by the primary; {s.mirrored:,} mirrored to "
            f"ringkv, {sum(s.dropped.values()):,} dropped" + _detail(s.dropped),
            f"compared: {s.matched:,} matched, {mismatched:,} mismatched" + _detail(s.mismatched)
            + (f" ({s.stale:,} stale: ringkv may have missed a write)" if s.stale else "")
            + f", {sum(s.shadow_errors.values()):,} ringkv errors" + _detail(s.shadow_errors)
            + f", {sum(s.refused.values()):,} refused as unsupported" + _detail(s.refused),
            f"abandoned: {sum(s.abandoned.values()):,}" + _detail(s.abandoned),
            f"not mirrored: {sum(s.unsupported.values()):,} unsupported" + _detail(s.unsupported)
            + f", {sum(s.not_compared.values()):,} not compared" + _detail(s.not_compared),
        ]
        if s.unobserved:
            lines.append("connections passed through unobserved after: "
                         + _detail(s.unobserved).strip(" ()"))
        if s.primary_failures:
            lines.append("clients refused (primary unreachable): "
                         + _detail(s.primary_failures).strip(" ()"))
        lines.append("latency (ms)      p50       p99     p99.9       max")
        for name, h in (("primary", s.primary), ("ringkv", s.ringkv)):
            ms = latency_ms(h)
            lines.append(f"  {name:<9}" + "".join(
                f"{ms[k]:>10.3f}" for k in ("p50", "p99", "p99.9", "max")))
        if s.samples:
            lines.append(f"mismatches (first {len(s.samples)}):")
            for m in s.samples:
                keys = " ".join(m.keys) or "-"
                lines.append(f"  {m.command} {keys}: primary {m.primary}  ringkv {m.ringkv}"
                             + ("  (stale: ringkv may have missed a write)" if m.stale else ""))
        return "\n".join(lines)


def _sorted(counter: collections.Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items()))


def _detail(counter: collections.Counter[str]) -> str:
    if not counter:
        return ""
    return " (" + ", ".join(f"{label} {n:,}" for label, n in counter.most_common()) + ")"
