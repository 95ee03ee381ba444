"""The metrics of the on-call dashboard's data-safety and saturation groups
that are not in the snapshot's older families (``ops.metrics``): partition
health (under-replicated, losses to quorum loss), quorum failures by cause,
anti-entropy's last run, per-partition request counts, the replica hop's
latency, pending requests, worker queues and processes, the disk, the WAL's
replay estimate and read-only state. All rendered at scrape time, on the
scrape thread, from counters the hot path bumps in plain Python."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordinator.data.quorum import CAUSES
from coordinator.ops.status import NodeSnapshot, StatusSource

#: A conservative rate at which a worker replays its WAL on open, for the
#: replay estimate (the engine replays a few times faster on an idle disk).
WAL_REPLAY_BYTES_PER_S = 32 << 20


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def safety(source: StatusSource, snap: NodeSnapshot) -> Iterator[Metric]:
    health = source.health()
    up = GaugeMetricFamily("ringkv_partition_replicas_up",
                           "Primaries of the partition this node sees up", labels=["partition"])
    losses = GaugeMetricFamily(
        "ringkv_partition_losses_to_quorum_loss",
        "More primary losses before W or R primaries are out of reach (0: already)",
        labels=["partition"])
    for p in health.partitions:
        up.add_metric([str(p.partition)], p.replicas_up)
        losses.add_metric([str(p.partition)], p.losses_to_quorum_loss)
    yield up
    yield losses
    yield _gauge("ringkv_partitions_under_replicated",
                 "Partitions with fewer than N primaries up", health.under_replicated)
    yield _gauge("ringkv_partitions_at_quorum_risk",
                 "Partitions at most one primary loss from losing W or R", health.at_quorum_risk)
    failures = CounterMetricFamily("ringkv_quorum_failures",
                                   "NOQUORUM answers by operation and cause",
                                   labels=["op", "cause"])
    for op in ("read", "write"):
        for cause in CAUSES:
            failures.add_metric([op, cause], snap.noquorum.get((op, cause), 0))
    yield failures
    yield _gauge("ringkv_repair_last_run_timestamp_seconds",
                 "When anti-entropy last finished a partition (0: never)",
                 snap.last_repair_ms / 1000)


def user_facing(source: StatusSource, snap: NodeSnapshot) -> Iterator[Metric]:
    per_partition = CounterMetricFamily("ringkv_partition_requests",
                                        "Keys read or written through this node, by partition",
                                        labels=["partition"])
    for p, count in sorted(dict(source.data.partition_requests).items()):
        per_partition.add_metric([str(p)], count)
    yield per_partition
    refused = CounterMetricFamily(
        "ringkv_refused_requests",
        "Requests answered with an error before they ran, by reason", labels=["reason"])
    c = snap.clients
    for reason, value in (("overloaded", c.overloaded_refused),
                          ("protocol_error", c.protocol_errors),
                          ("value_too_large", c.values_discarded),
                          ("auth", c.auth_failures)):
        refused.add_metric([reason], value)
    yield refused
    yield CounterMetricFamily("ringkv_rejected_connections",
                              "Connections refused at max_clients", value=c.rejected_connections)


def saturation(source: StatusSource, snap: NodeSnapshot) -> Iterator[Metric]:
    yield _gauge("ringkv_pending_requests", "Client requests read and not yet answered",
                 snap.pending_requests)
    yield _gauge("ringkv_reply_bytes_in_flight",
                 "Reply budget charged now (max_node_reply_bytes bounds it)",
                 snap.reply_bytes_in_flight)
    queue = GaugeMetricFamily("ringkv_worker_inflight_calls",
                              "Calls sent to a worker and not yet answered", labels=["worker"])
    cpu = CounterMetricFamily("ringkv_worker_cpu_seconds", "A worker process's CPU time",
                              labels=["worker"])
    mem = GaugeMetricFamily("ringkv_worker_resident_memory_bytes",
                            "A worker process's resident memory", labels=["worker"])
    for w in source.workers_usage():
        label = [str(w.worker)]
        queue.add_metric(label, w.inflight)
        cpu.add_metric(label, w.cpu_s)
        mem.add_metric(label, w.resident_bytes)
    yield queue
    yield cpu
    yield mem
    yield _gauge("ringkv_disk_free_bytes", "Free bytes on the data directory's file system",
                 snap.disk.free_bytes)
    yield _gauge("ringkv_disk_size_bytes", "Size of the data directory's file system",
                 snap.disk.size_bytes)
    yield _gauge("ringkv_read_only_engines",
                 "Worker engines refusing writes (disk full or I/O error)",
                 len(snap.storage.read_only))
    yield _gauge("ringkv_read_only_mode",
                 "1 while the operator's kill switch refuses client writes (ringkv readonly)",
                 int(snap.read_only_mode is not None))
    yield _gauge("ringkv_wal_replay_estimate_seconds",
                 "Estimated time to replay the live WALs after a crash",
                 snap.storage.wal_bytes / WAL_REPLAY_BYTES_PER_S)
