"""Messages between a coordinator and its shard workers (DESIGN §2).

Requests are frozen, slotted dataclasses; a reply is one ``Reply(status,
payload)``. The wire form of both lives in ``codec``; the table of ops, args
and payloads is in docs/formats/shard-protocol.md.

Reply payloads when ``status is Status.OK`` (any other status: a ``str``
message saying what went wrong)::

    Ping            {"ready": bool, ...}   (answered even while recovering)
    ReplicaWrite    None (the write was applied; the worker does not read the key)
    ReplicaWriteSet bytes: encode_siblings of the key's resulting sibling set
    ReplicaRead     bytes: encode_siblings of the stored set, or None if absent
    ScanPartition   {"items": [[key, siblings bytes], ...], "next": bytes | None,
                     "mark": int (the partition's write mark before this page)}
    DropPartition   None
    Flush           None
    Compact         None
    Stats           map: the fields of worker_stats.WorkerStats (a coordinator
                    answers {"workers": [...]}, its workers' latest)
    SetPartitions   None
    Gossip          plain msgpack map (peer-only; workers answer BAD_REQUEST)
    Admin           map: the admin API's reply record (peer-only; workers
                    answer BAD_REQUEST; coordinator/ops/admin_api.py)
    FlushAll        None (peer-only; workers answer BAD_REQUEST)
    Hello           map: the peer protocol both sides will speak (peer-only,
                    answered by the peer server itself; coordinator/cluster/peer_versions.py)
    Attach          map: {"worker": k}, sent by worker k of the answering node
                    once it serves the connection itself (peer protocol 5;
                    shardserver/direct.py)
    TreeLevel       bytes: 16 bytes (big-endian) per node asked for, in order
    BucketDigests   [[key, digest (8 bytes)], ...] in key order
    ReplicaRepairSet bytes: encode_siblings of the key's resulting sibling set
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from shardserver.protocol.versions import SiblingSet, Version

__all__ = [
    "OPS",
    "OP_OF",
    "MAX_KEY_BYTES",
    "MAX_PARTITION",
    "MAX_SCAN_LIMIT",
    "Compact",
    "DropPartition",
    "Admin",
    "Attach",
    "BucketDigests",
    "Flush",
    "FlushAll",
    "Gossip",
    "Hello",
    "Ping",
    "ReplicaRead",
    "ReplicaRepairSet",
    "ReplicaWrite",
    "ReplicaWriteSet",
    "Reply",
    "Request",
    "ScanPartition",
    "SetPartitions",
    "Stats",
    "Status",
    "TreeLevel",
    "WriteMode",
    "op_of",
]

#: Partitions are stored under a 2-byte prefix, so ids fit in 16 bits.
MAX_PARTITION = 0xFFFF
#: DESIGN §4: keys are 1..1024 bytes.
MAX_KEY_BYTES = 1024
#: One scan page returns at most this many keys.
MAX_SCAN_LIMIT = 10_000

WriteMode: TypeAlias = Literal["merge", "lww"]


class Status(enum.IntEnum):
    """Outcome of one request. Values are wire constants: never renumber."""

    OK = 0
    NOT_FOUND = 1  # the thing named does not exist (not used for absent keys)
    NOT_READY = 2  # worker still replaying its WAL, or shutting down
    OVERLOADED = 3  # too many requests in flight; retry elsewhere or later
    BAD_REQUEST = 4  # well-formed frame, but arguments the worker refuses
    READ_ONLY = 5  # disk full or I/O error: the engine refuses writes
    TIMEOUT = 6  # the request did not finish in time
    INTERNAL = 7  # bug or corruption; the message says which
    NOT_SERVED = 8  # this worker does not hold the partition
    UNAVAILABLE = 9  # partition temporarily unavailable (being dropped, ...)
    CONFLICT = 10  # a conditional request's condition failed (DropPartition.if_mark)


# --- requests ----------------------------------------------------------------


#: Shard protocol versions (oldest, newest) this build's coordinator and
#: worker speak. A node passes its range in the worker's config and the
#: worker answers pings with the version both speak (``WorkerConfig.negotiate``).
PROTOCOL = (1, 1)

@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness and readiness probe; answered even before the worker is ready."""


@dataclass(frozen=True, slots=True)
class ReplicaWrite:
    """Merge one version into a key's sibling set (``versions.merge``).

    ``mode``: ``"lww"`` for a plain SET/DEL, ``"merge"`` for VSET/VDEL.
    Both merge alike; ``"lww"`` also sets the version's floor to its own id
    (``versions.as_plain``), which is what a coordinator from before floors
    meant by it, and what a current one sends anyway.
    """

    partition: int
    key: bytes
    version: Version
    mode: WriteMode = "merge"
    #: Set by a coordinator writing to a fallback: the down primary this copy
    #: is held for (the hint's owner). Workers ignore it; the receiving node
    #: records the hint before the write is applied.
    hint_for: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaWriteSet:
    """Merge a whole sibling set into a key (read repair, handoff, anti-entropy)."""

    partition: int
    key: bytes
    siblings: SiblingSet


@dataclass(frozen=True, slots=True)
class ReplicaRead:
    partition: int
    key: bytes


@dataclass(frozen=True, slots=True)
class ScanPartition:
    """One page of a partition's keys in order, starting after ``after``."""

    partition: int
    after: bytes | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class DropPartition:
    """Delete partitions ``partition .. partition + count - 1`` (all served by
    the worker) in one compaction of their key range. With ``if_mark`` (one
    partition only), only if the partition's write mark (ScanPartition's
    reply) is still that and no write to it is in flight; else CONFLICT."""

    partition: int
    count: int = 1
    if_mark: int | None = None


@dataclass(frozen=True, slots=True)
class Flush:
    """Flush the memtable to an SSTable."""


@dataclass(frozen=True, slots=True)
class Compact:
    """Compact one partition's key range, or everything when ``partition`` is None."""

    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    pass


@dataclass(frozen=True, slots=True)
class Gossip:
    """Peer-only (coordinator to coordinator): membership state, a plain
    msgpack map; the reply carries the answering node's state. Workers
    answer BAD_REQUEST."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Admin:
    """Peer-only: an operator command for the receiving node (``ringkv
    status``, ``compact``, ...), ``payload = {"cmd": name, ...args}``; the
    reply is a plain map. Workers answer BAD_REQUEST."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Hello:
    """Peer-only, the first request of a peer connection (protocol 4 on):
    ``{"versions": [lo, hi], "node": id, "release": str}``; the answer says
    the same of the other side plus ``"use"``, the version both speak.
    Workers answer BAD_REQUEST, as does a peer from before it (protocol 3)."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Attach:
    """Peer-only, protocol 5: ``{"worker": k}``, the connection's last
    request to the peer coordinator, which hands the connection over to its
    worker ``k``; from the answer on, that worker serves it directly
    (replica reads and writes only; ``shardserver/direct.py``). Workers
    answer BAD_REQUEST on their own sockets."""

    payload: Any


@dataclass(frozen=True, slots=True)
class FlushAll:
    """Peer-only: FLUSHALL's part on the receiving node: drop every
    partition of its own workers (each node knows its own worker split).
    Workers answer BAD_REQUEST."""


@dataclass(frozen=True, slots=True)
class TreeLevel:
    """Anti-entropy: values of the Merkle nodes ``indices`` at ``depth`` of
    the partition's tree (``merkle``: 0 is the root, ``DEPTH`` the leaves);
    the worker builds the tree by a scan first if it has none."""

    partition: int
    depth: int
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BucketDigests:
    """Anti-entropy: ``(key, digest)`` of every key of the partition in the
    given leaf buckets (tombstone-only sets past their grace left out)."""

    partition: int
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReplicaRepairSet:
    """Anti-entropy's fix of a corrupt copy: merge like ``ReplicaWriteSet``,
    except that a stored version with the identity ``(hlc, actor)`` of an
    incoming one but another value is replaced by the incoming one."""

    partition: int
    key: bytes
    siblings: SiblingSet


@dataclass(frozen=True, slots=True)
class SetPartitions:
    """The partitions this worker holds now (compaction drops the others)."""

    partitions: tuple[int, ...]


Request: TypeAlias = (
    Ping
    | ReplicaWrite
    | ReplicaWriteSet
    | ReplicaRead
    | ScanPartition
    | DropPartition
    | Flush
    | Compact
    | Stats
    | SetPartitions
    | Gossip
    | Admin
    | FlushAll
    | TreeLevel
    | BucketDigests
    | ReplicaRepairSet
    | Hello
    | Attach
)

#: Op code on the wire for each request type.
OP_OF: dict[type[Any], str] = {
    Ping: "ping",
    ReplicaWrite: "write",
    ReplicaWriteSet: "write_set",
    ReplicaRead: "read",
    ScanPartition: "scan",
    DropPartition: "drop",
    Flush: "flush",
    Compact: "compact",
    Stats: "stats",
    SetPartitions: "set_partitions",
    Gossip: "gossip",
    Admin: "admin",
    FlushAll: "flush_all",
    TreeLevel: "tree_level",
    BucketDigests: "bucket_digests",
    ReplicaRepairSet: "repair_set",
    Hello: "hello",
    Attach: "attach",
}
OPS: dict[str, type[Any]] = {op: cls for cls, op in OP_OF.items()}


def op_of(request: Request) -> str:
    return OP_OF[type(request)]


# --- replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Outcome of one request; ``payload`` per request type (module docstring)."""

    status: Status
    payload: Any = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def message(self) -> str:
        """Error text of a failed reply ('' when OK or when none was sent)."""
        if self.status is Status.OK or not isinstance(self.payload, str):
            return ""
        return self.payload

    @classmethod
    def error(cls, status: Status, message: str) -> Reply:
        return cls(status, message)
