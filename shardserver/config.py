"""A worker's configuration: one typed record from the node to the process.

``ringkv serve`` turns the node config's storage knobs into
:class:`WorkerSettings` once; the supervisor makes each worker's
:class:`WorkerConfig` (its socket, engine directory and partitions, and
those settings) and writes it, as JSON, to the worker's stdin; the worker
decodes it into the same dataclass (``shardserver.protocol.records``). So
every knob has one name, one type and one default, here; the engine's
defaults are ``lsm.options.Options``'s. By hand::

    python -m shardserver.worker --config worker.json   # or --config - (stdin)
    {"socket_path": "/run/w0.sock", "data_dir": "/var/lib/w0", "partitions": [0, 32],
     "settings": {"fsync": "always"}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from lsm.options import Options
from shardserver.admission import DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_INFLIGHT_PER_CONN
from shardserver.errors import WorkerConfigError
from shardserver.layout import DEFAULT_TOMBSTONE_GRACE_MS, MAX_PARTITIONS
from shardserver.protocol import records
from shardserver.protocol.messages import PROTOCOL
from shardserver.protocol.pool import WORKER_MAX_FRAME_BYTES

_ENGINE = Options()


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What every worker of a node runs with."""

    fsync: Literal["always", "interval", "never"] = _ENGINE.fsync
    memtable_bytes: int = _ENGINE.memtable_bytes
    fsync_interval_ms: int = _ENGINE.fsync_interval_ms
    block_cache_bytes: int = _ENGINE.block_cache_bytes
    tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_inflight_per_conn: int = DEFAULT_MAX_INFLIGHT_PER_CONN
    max_frame_bytes: int = WORKER_MAX_FRAME_BYTES
    threads: int = 8
    #: With ``max_frame_bytes`` this bounds the bytes buffered for requests.
    max_connections: int = 256
    startup_delay_s: float = 0.0  # test kit: hold the readiness gate closed this long
    filter_refresh_s: float = 60.0
    log_level: str = "INFO"

    def options(self) -> Options:
        """The engine options these settings ask for."""
        return Options(fsync=self.fsync, memtable_bytes=self.memtable_bytes,
                       fsync_interval_ms=self.fsync_interval_ms,
                       block_cache_bytes=self.block_cache_bytes)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    socket_path: str
    data_dir: str
    partitions: tuple[int, int]  # [start, stop): the worker's range
    worker_id: str = "0"  # name used in logs
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    #: The shard protocol versions the node that spawns us speaks (oldest,
    #: newest); a node from before this field spoke 1 only.
    protocol: tuple[int, int] = (1, 1)

    @property
    def partition_range(self) -> range:
        return range(*self.partitions)

    def to_json(self) -> bytes:
        return json.dumps(records.to_wire(self)).encode()

    def negotiate(self) -> int:
        """The newest shard protocol both the node and this worker's build
        speak; WorkerConfigError naming both ranges when there is none (a
        worker restarted from a newer or older install than its node's)."""
        (node_lo, node_hi), (lo, hi) = self.protocol, PROTOCOL
        if max(node_lo, lo) > min(node_hi, hi):
            raise WorkerConfigError(
                f"no common shard protocol: the node speaks {node_lo}..{node_hi}, "
                f"this worker's build speaks {lo}..{hi}; restart the node so it "
                "and its workers run one release (ringkv rollout)")
        return min(node_hi, hi)

    @classmethod
    def from_json(cls, data: bytes) -> WorkerConfig:
        """Decoded and checked; WorkerConfigError names what is wrong."""
        try:
            config = records.from_wire(cls, json.loads(data), "worker config")
        except ValueError as exc:  # bad JSON, or records' ProtocolError
            raise WorkerConfigError(str(exc)) from None
        start, stop = config.partitions
        if not 1 <= config.protocol[0] <= config.protocol[1]:
            raise WorkerConfigError(f"worker config: protocol range {config.protocol} is empty")
        if not 0 <= start < stop <= MAX_PARTITIONS:
            raise WorkerConfigError(
                f"worker config: partitions [{start}, {stop}) out of 0-{MAX_PARTITIONS}")
        return config
