"""Prometheus metrics of a node (DESIGN §12), served on ``metrics_port``.

Request counts and latency histograms are recorded as requests finish
(labels: command, consistency level, outcome). Everything else is read
from the node when Prometheus scrapes, by a collector, so the figures are
the ones INFO shows: hint backlog per target, handoff and repair progress,
SSTables and bytes per level, compaction debt and stalls, WAL bytes and
fsync time, bloom filter usefulness, quorum failures, nodes up. The
registry belongs to the node (no global state); prometheus-client serves it
from its own thread, and the collector only reads snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.client.commands import CommandSpec, level_label
from coordinator.data.quorum import Consistency

if TYPE_CHECKING:
    from coordinator.node import Node

log = logging.getLogger("ringkv.metrics")

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ringkv_requests", "Data commands by command, consistency level and outcome",
            ["command", "consistency", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "ringkv_request_seconds", "Data command latency at the coordinator",
            ["command", "consistency"], buckets=BUCKETS, registry=self.registry,
        )
        self.registry.register(NodeCollector(node))

    def observe(self, spec: CommandSpec, levels: Consistency, outcome: str,
                seconds: float) -> None:
        label = level_label(spec, levels)
        self.requests.labels(spec.name, label, outcome).inc()
        self.latency.labels(spec.name, label).observe(seconds)

    def serve(self, addr: str, port: int) -> None:
        start_http_server(port, addr, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", addr, port)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield from self._cluster(node)
        yield from self._hints(node)
        yield from self._storage(list(node.local_stats))
        d = node.data.stats
        failures = CounterMetricFamily("ringkv_quorum_failures", "NOQUORUM answers by operation",
                                       labels=["op"])
        failures.add_metric(["read"], d.noquorum_reads)
        failures.add_metric(["write"], d.noquorum_writes)
        yield failures
        yield _counter("ringkv_read_repairs", "Replicas sent a merged set after a read",
                       d.read_repairs)
        yield _counter("ringkv_late_acks", "Replica acks after the client's reply", d.late_acks)
        yield _gauge("ringkv_connected_clients", "Client connections",
                     node.client_server.clients)
        yield _counter("ringkv_auth_failures", "Client AUTHs with a wrong password",
                       node.client_server.stats.auth_failures)
        yield from self._clock(node)

    def _clock(self, node: Node) -> Iterator[Metric]:
        c = node.clock.stats
        yield _gauge("ringkv_hlc_ahead_ms", "How far the node's HLC runs ahead of its wall clock",
                     node.clock.lead_ms())
        refused = CounterMetricFamily(
            "ringkv_clock_drift_refusals",
            "Timestamps past max_clock_drift_ms, refused or not adopted, by where they entered",
            labels=["source"])
        for source, value in (("client_context", c.contexts_refused),
                              ("replica_answer", c.peer_timestamps_ignored),
                              ("peer_write", c.peer_writes_refused),
                              ("gossip", c.gossip_refused), ("hint", c.hints_reset)):
            refused.add_metric([source], value)
        yield refused

    def _cluster(self, node: Node) -> Iterator[Metric]:
        ring = node.ring
        up = GaugeMetricFamily("ringkv_node_up", "1 if this node sees the node up",
                               labels=["node"])
        for n in ring.node_ids if ring else ():
            up.add_metric([n], 1.0 if node.is_up(n) else 0.0)
        yield up
        yield _gauge("ringkv_ring_epoch", "Ring epoch", ring.epoch if ring else 0)

    def _hints(self, node: Node) -> Iterator[Metric]:
        backlog = node.handoff.backlog()
        fams = {
            "partitions": GaugeMetricFamily("ringkv_hint_backlog_partitions",
                                            "Hinted partitions held per target", labels=["target"]),
            "expired": GaugeMetricFamily(
                "ringkv_hint_backlog_expired_partitions",
                "Hinted partitions past max_hint_window per target (data kept)", labels=["target"]),
            "writes": GaugeMetricFamily("ringkv_hint_backlog_writes",
                                        "Hinted writes held per target", labels=["target"]),
            "bytes": GaugeMetricFamily("ringkv_hint_backlog_bytes",
                                       "Hinted bytes held per target", labels=["target"]),
            "oldest_s": GaugeMetricFamily("ringkv_hint_oldest_seconds",
                                          "Age of the oldest hint per target", labels=["target"]),
        }
        for target, b in backlog.items():
            for field, fam in fams.items():
                fam.add_metric([target], b[field])
        yield from fams.values()
        h = node.handoff
        yield _gauge("ringkv_handoffs_running", "Handoffs streaming now", len(h.running))
        yield _counter("ringkv_handoffs_completed", "Handoffs finished", h.completed)
        yield _counter("ringkv_handoff_keys_sent", "Keys streamed by handoff", h.keys_sent)
        yield _counter("ringkv_handoff_bytes_sent", "Bytes streamed by handoff", h.bytes_sent)
        yield _counter("ringkv_hints_expired",
                       "Hints that passed max_hint_window (their data is kept)", node.hints.expired)
        yield _counter("ringkv_handoff_drops_refused",
                       "Drops of handed-off copies refused: writes arrived after the last pass",
                       h.drops_refused)
        yield _counter("ringkv_handoff_strays_found",
                       "Copies without a hint found by the sweep and hinted", h.strays_found)
        for name, value in node.repair_figures().items():
            yield _counter(f"ringkv_repair_{name}", f"Anti-entropy: {name.replace('_', ' ')}",
                           value)

    def _storage(self, stats: list[dict[str, Any]]) -> Iterator[Metric]:
        files = GaugeMetricFamily("ringkv_sstables", "SSTables per level", labels=["level"])
        size = GaugeMetricFamily("ringkv_sstable_bytes", "SSTable bytes per level",
                                 labels=["level"])
        per_level: dict[int, list[int]] = {}
        sums: dict[str, float] = {}
        for s in stats:
            e = s.get("engine", {})
            for lv in e.get("levels", []):
                acc = per_level.setdefault(lv["level"], [0, 0])
                acc[0] += lv["files"]
                acc[1] += lv["bytes"]
            for key in ("compaction_debt_bytes", "stall_s", "write_stalls", "wal_bytes",
                        "wal_syncs", "wal_sync_s", "bloom_checks", "bloom_negatives",
                        "memtable_bytes"):
                sums[key] = sums.get(key, 0) + e.get(key, 0)
        for level, (n, b) in sorted(per_level.items()):
            files.add_metric([str(level)], n)
            size.add_metric([str(level)], b)
        yield files
        yield size
        yield _gauge("ringkv_compaction_debt_bytes", "Bytes compaction still has to rewrite",
                     sums.get("compaction_debt_bytes", 0))
        yield _counter("ringkv_write_stall_seconds", "Time writes waited on compaction",
                       sums.get("stall_s", 0))
        yield _counter("ringkv_write_stalls", "Writes stopped by the L0 stop trigger",
                       sums.get("write_stalls", 0))
        yield _gauge("ringkv_wal_bytes", "Bytes in live WAL files", sums.get("wal_bytes", 0))
        yield _gauge("ringkv_memtable_bytes", "Bytes in memtables", sums.get("memtable_bytes", 0))
        yield _counter("ringkv_wal_syncs", "WAL fsyncs", sums.get("wal_syncs", 0))
        yield _counter("ringkv_wal_sync_seconds", "Time spent in WAL fsync",
                       sums.get("wal_sync_s", 0))
        yield _counter("ringkv_bloom_checks", "Bloom filter checks on point reads",
                       sums.get("bloom_checks", 0))
        yield _counter("ringkv_bloom_useful", "Bloom checks that spared a block read",
                       sums.get("bloom_negatives", 0))
