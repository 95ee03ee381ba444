"""Prometheus metrics of a node (DESIGN §12), served on ``metrics_port``.

Request counts and latency histograms are counted as requests finish
(labels: command, the consistency level as the command table labels it,
outcome), in plain Python (``RequestCounts``), and read at scrape time.
Everything else is rendered at scrape time from the node's status
snapshot (``ops.status``), the one INFO and ``ringkv status`` render too:
hint backlog per target, handoff and repair progress, SSTables and bytes per
level, compaction debt and stalls, WAL bytes and fsync time, bloom filter
usefulness, quorum failures, nodes up. The registry belongs to the node (no
global state); prometheus-client serves it from its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from http.server import ThreadingHTTPServer
from typing import TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from coordinator.client.commands import CommandSpec, level_label
from coordinator.data.hotkeys import printable
from coordinator.data.quorum import Consistency
from coordinator.histogram import BUCKETS, Histograms, Series, total
from coordinator.ops import metric_groups, status_page, web
from coordinator.ops.recent import Recent
from coordinator.ops.status import NodeSnapshot, StatusSource, StorageTotals

log = logging.getLogger("ringkv.metrics")


class RequestCounts:
    """Data commands counted and timed as they finish, in plain Python: a
    dict entry per (command, consistency, outcome) and a histogram per
    (command, consistency) (``coordinator.histogram``), read at scrape time
    (:meth:`families`). Also feeds the status page's recent rate and
    latency (``ops.recent``)."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, Consistency], str] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._created: dict[tuple[str, str, str], float] = {}
        self.latency: Histograms[tuple[str, str]] = Histograms()

    def observe(self, spec: CommandSpec, levels: Consistency, outcome: str,
                seconds: float) -> None:
        name = spec.name
        label = self._labels.get((name, levels))
        if label is None:
            label = self._labels[(name, levels)] = level_label(spec, levels)
        key = (name, label, outcome)
        count = self._counts.get(key)
        if count is None:
            self._created[key] = time.time()
            count = 0
        self._counts[key] = count + 1
        self.latency.observe((name, label), seconds)

    def totals(self) -> tuple[int, int, tuple[int, ...]]:
        """(commands, of them failed, cumulative latency buckets of all) since
        start: two readings a window apart give its error rate and p99
        (``ringkv rollout``'s gates). Safe from any thread, as :meth:`families`."""
        counts = list(self._counts.items())
        return (sum(c for _, c in counts), sum(c for (_, _, out), c in counts if out != "ok"),
                total(self.latency.series()))

    def families(self) -> Iterator[Metric]:
        """``ringkv_requests`` and ``ringkv_request_seconds`` now. Runs on
        the scrape thread: it copies each table in one step (atomic under
        the GIL) before reading it."""
        requests = CounterMetricFamily(
            "ringkv_requests", "Data commands by command, consistency level and outcome "
            "(ok, or the error class: noquorum, readonly, unavailable, error)",
            labels=["command", "consistency", "outcome"])
        created = dict(self._created)
        for key, count in list(self._counts.items()):
            requests.add_metric(list(key), count, created=created.get(key))
        yield requests
        yield histogram_family("ringkv_request_seconds", "Data command latency at the coordinator",
                               ["command", "consistency"], self.latency.series(),
                               list)


K = TypeVar("K", bound=Hashable)


def histogram_family(name: str, doc: str, labels: list[str], series: list[Series[K]],
                     values: Callable[[K], list[str]]) -> Metric:
    """A Prometheus histogram of plain-Python ``series`` (with their
    ``_created`` samples, as prometheus-client's Histogram has them)."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for s in series:
        label_values = values(s.key)
        family.add_metric(label_values, list(zip(_LE, s.cumulative, strict=True)), s.sum)
        family.samples.append(Sample(f"{name}_created", dict(zip(labels, label_values,
                                                                  strict=True)), s.created))
    return family


#: The ``le`` labels, as prometheus-client writes them (repr for these values).
_LE = [*(repr(b) for b in BUCKETS), "+Inf"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds ...
        ProcessCollector(registry=self.registry)
        self.requests = RequestCounts()
        self.observe = self.requests.observe  # the client server's hook
        self.recent = Recent(self.requests.latency)
        self._source: StatusSource | None = None
        self._server: ThreadingHTTPServer | None = None

    def collect(self, source: StatusSource) -> None:
        """Render the request counts and ``source``'s snapshot at every scrape."""
        self._source = source
        self.registry.register(NodeCollector(source, self.requests))

    def serve(self, addr: str, port: int) -> None:
        """``/metrics`` and the status page ``/`` on ``port`` (ops.web), and
        the status page's request samples, in daemon threads."""
        self._server = web.serve(addr, port, self.registry, self.page)
        threading.Thread(target=self.recent.run, name="metrics-recent", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics, status page on http://%s:%d/",
                 addr, port, addr, port)

    def stop(self) -> None:
        self.recent.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def page(self) -> str:
        source = self._source
        if source is None:
            return "<!DOCTYPE html><p>starting</p>"
        return status_page.render(source.snapshot(), source.health(), self.recent.intervals())


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


#: Anti-entropy totals exported as ``ringkv_repair_<name>``: name -> field.
REPAIR_FIGURES = {"partitions": "partitions", "keys_compared": "keys_compared",
                  "keys_differing": "keys_differing", "keys_repaired": "keys_repaired",
                  "bytes_sent": "bytes_sent",
                  "corrupt_fixed": "corrupt_fixed", "errors": "error_count"}


def _hot_keys(snap: NodeSnapshot) -> Iterator[Metric]:
    """The sketch's top keys (at most ``[hotkeys] top`` of them, so the
    label set stays bounded)."""
    rate = GaugeMetricFamily(
        "ringkv_hot_key_requests_per_second",
        "Requests per second of the most requested keys at this coordinator, by rank",
        labels=["rank", "key", "op"])
    for rank, h in enumerate(snap.hotkeys, 1):
        rate.add_metric([str(rank), printable(h.key), "read"], h.reads_per_s)
        rate.add_metric([str(rank), printable(h.key), "write"], h.writes_per_s)
    yield rate


class NodeCollector(Collector):
    """Renders the node's :class:`~coordinator.ops.status.NodeSnapshot` at
    scrape time."""

    def __init__(self, source: StatusSource, requests: RequestCounts) -> None:
        self.source = source
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        yield from self.requests.families()
        snap = self.source.snapshot()
        yield from self._cluster(snap)
        yield from self._hints(snap)
        yield from self._storage(snap.storage)
        d = snap.data
        yield from metric_groups.user_facing(self.source, snap)
        yield from metric_groups.safety(self.source, snap)
        yield from metric_groups.saturation(self.source, snap)
        yield histogram_family("ringkv_replica_call_seconds",
                               "Replica call latency from this coordinator, by node (the hop)",
                               ["node"], self.source.data.hops.series(), lambda node: [node])
        yield _counter("ringkv_read_repairs", "Replicas sent a merged set after a read",
                       d.read_repairs)
        yield _counter("ringkv_late_acks", "Replica acks after the client's reply", d.late_acks)
        yield _counter("ringkv_coalesced_reads", "GETs that joined a quorum read in flight",
                       d.coalesced_reads)
        yield _counter("ringkv_hot_key_cache_hits", "GETs answered by the hot-key cache",
                       d.cache_hits)
        yield _counter("ringkv_hot_key_cache_misses",
                       "GETs of hot keys the hot-key cache did not hold", d.cache_misses)
        yield _counter("ringkv_hedged_reads", "Replicas asked because one was slow to answer",
                       d.hedged_reads)
        yield _gauge("ringkv_connected_clients", "Client connections", snap.connected_clients)
        yield _counter("ringkv_auth_failures", "Client AUTHs with a wrong password",
                       snap.clients.auth_failures)
        yield from self._clock(snap)
        yield from _hot_keys(snap)

    def _clock(self, snap: NodeSnapshot) -> Iterator[Metric]:
        c = snap.clock
        yield _gauge("ringkv_hlc_ahead_ms", "How far the node's HLC runs ahead of its wall clock",
                     snap.hlc_ahead_ms)
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

    def _cluster(self, snap: NodeSnapshot) -> Iterator[Metric]:
        up = GaugeMetricFamily("ringkv_node_up", "1 if this node sees the node up",
                               labels=["node"])
        seen = {m.node: m.up for m in snap.members}
        for n in snap.ring_nodes:
            up.add_metric([n], 1.0 if seen.get(n) else 0.0)
        yield up
        yield _gauge("ringkv_ring_epoch", "Ring epoch", snap.ring_epoch)

    def _hints(self, snap: NodeSnapshot) -> Iterator[Metric]:
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
        r = snap.replication
        for target, b in r.backlog.items():
            for field, fam in fams.items():
                fam.add_metric([target], getattr(b, field))
        yield from fams.values()
        yield _gauge("ringkv_handoffs_running", "Handoffs streaming now", r.handoffs_running)
        yield _counter("ringkv_handoffs_completed", "Handoffs finished", r.handoffs_completed)
        yield _counter("ringkv_handoff_keys_sent", "Keys streamed by handoff", r.handoff_keys_sent)
        yield _counter("ringkv_handoff_bytes_sent", "Bytes streamed by handoff",
                       r.handoff_bytes_sent)
        yield _counter("ringkv_hints_expired",
                       "Hints that passed max_hint_window (their data is kept)", r.hints_expired)
        yield _counter("ringkv_handoff_drops_refused",
                       "Drops of handed-off copies refused: writes arrived after the last pass",
                       r.handoff_drops_refused)
        yield _counter("ringkv_handoff_strays_found",
                       "Copies without a hint found by the sweep and hinted",
                       r.handoff_strays_found)
        for name, field in REPAIR_FIGURES.items():
            yield _counter(f"ringkv_repair_{name}", f"Anti-entropy: {name.replace('_', ' ')}",
                           getattr(snap.repair, field))

    def _storage(self, s: StorageTotals) -> Iterator[Metric]:
        files = GaugeMetricFamily("ringkv_sstables", "SSTables per level", labels=["level"])
        size = GaugeMetricFamily("ringkv_sstable_bytes", "SSTable bytes per level",
                                 labels=["level"])
        for level, lv in sorted(s.levels.items()):
            files.add_metric([str(level)], lv.files)
            size.add_metric([str(level)], lv.bytes)
        yield files
        yield size
        yield _gauge("ringkv_compaction_debt_bytes", "Bytes compaction still has to rewrite",
                     s.compaction_debt_bytes)
        yield _counter("ringkv_write_stall_seconds", "Time writes waited on compaction", s.stall_s)
        yield _counter("ringkv_write_stalls", "Writes stopped by the L0 stop trigger",
                       s.write_stalls)
        yield _gauge("ringkv_wal_bytes", "Bytes in live WAL files", s.wal_bytes)
        yield _gauge("ringkv_memtable_bytes", "Bytes in memtables", s.memtable_bytes)
        yield _counter("ringkv_wal_syncs", "WAL fsyncs", s.wal_syncs)
        yield _counter("ringkv_wal_sync_seconds", "Time spent in WAL fsync", s.wal_sync_s)
        yield _counter("ringkv_bloom_checks", "Bloom filter checks on point reads", s.bloom_checks)
        yield _counter("ringkv_bloom_useful", "Bloom checks that spared a block read",
                       s.bloom_negatives)
