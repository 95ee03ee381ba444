"""The admin API: typed requests and replies of the operator commands a node
answers over the authenticated peer channel (``ops.admin``), and the CLI's
way to send one (``cli.admin``).

On the wire an admin request stays a msgpack map, ``Admin({"cmd": name,
...fields, "node": id?})``, and a reply the map of its record's fields
(``shardserver.protocol.records``); each side decodes what it receives into
these dataclasses at the boundary. ``node`` asks the receiving node to
forward the request to that node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.data.hotkeys import HotKey
from coordinator.repair.reports import HintBacklog, RepairReport
from shardserver.protocol import records
from shardserver.protocol.errors import ProtocolError

# -- requests --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """This node's status; with ``cluster``, every up node's own too."""

    cluster: bool = False


@dataclass(frozen=True, slots=True)
class RingRequest:
    key: bytes | None = None  # also where this key lives


@dataclass(frozen=True, slots=True)
class CompactRequest:
    partition: int | None = None  # only this partition
    worker: int | None = None  # only this worker


@dataclass(frozen=True, slots=True)
class FlushRequest:
    pass


@dataclass(frozen=True, slots=True)
class DrainRequest:
    off: bool = False  # undrain: take client writes again, peers route to it again


@dataclass(frozen=True, slots=True)
class RepairRequest:
    partitions: tuple[int, ...] | None = None  # None: every partition this node replicates
    partition: int | None = None  # one partition (older CLIs)


@dataclass(frozen=True, slots=True)
class RepairPlanRequest:
    pass


@dataclass(frozen=True, slots=True)
class HintsRequest:
    pass


@dataclass(frozen=True, slots=True)
class RemoveRequest:
    remove: str  # the id of the node to take out for good


@dataclass(frozen=True, slots=True)
class TransfersRequest:
    pass


@dataclass(frozen=True, slots=True)
class ReadOnlyRequest:
    """The operator's kill switch (``ops.read_only``) on or off on this node."""

    on: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RestartRequest:
    """Stop cleanly, then run again with the same command line (``ringkv
    rollout``): the process executes itself, so it keeps its pid under
    ``ringkv up``, systemd or a shell, and picks up the installed code.
    Refused, naming the cause, when its config would not start again."""


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """The node's request figures since start (two readings make a window)."""


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """The rollout lease (``ops.rollout_lease``) for ``holder`` for
    ``ttl_s`` (granted or renewed), or with ``release`` given up."""

    holder: str
    ttl_s: float = 30.0
    release: bool = False


@dataclass(frozen=True, slots=True)
class HotKeysRequest:
    """This node's most requested keys; with ``cluster``, every up node's."""

    cluster: bool = False


AdminRequest = (
    StatusRequest | RingRequest | CompactRequest | FlushRequest | DrainRequest | RepairRequest
    | RepairPlanRequest | HintsRequest | RemoveRequest | TransfersRequest | ReadOnlyRequest
    | RestartRequest | LoadRequest | HotKeysRequest | LeaseRequest
)

#: Wire name of each request.
COMMAND_OF: dict[type[Any], str] = {
    StatusRequest: "status", RingRequest: "ring", CompactRequest: "compact",
    FlushRequest: "flush", DrainRequest: "drain", RepairRequest: "repair",
    RepairPlanRequest: "repair_plan", HintsRequest: "hints", RemoveRequest: "remove",
    TransfersRequest: "transfers", ReadOnlyRequest: "read_only", RestartRequest: "restart",
    LoadRequest: "load", HotKeysRequest: "hotkeys", LeaseRequest: "rollout_lease",
}
_REQUESTS = {name: cls for cls, name in COMMAND_OF.items()}


class AdminError(Exception):
    """A request the node refuses; the message is shown to the operator."""


def encode_request(request: AdminRequest, node: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"cmd": COMMAND_OF[type(request)]}
    payload.update((k, v) for k, v in records.to_wire(request).items() if v is not None)
    if node is not None:
        payload["node"] = node
    return payload


def decode_request(payload: object) -> AdminRequest:
    """The request of an ``Admin`` payload (its ``node`` already handled);
    AdminError naming what is wrong."""
    if not isinstance(payload, dict):
        raise AdminError("an admin request is a map")
    cls = _REQUESTS.get(payload.get("cmd"))  # type: ignore[arg-type]
    if cls is None:
        raise AdminError(f"unknown admin command {payload.get('cmd')!r}")
    args = {k: v for k, v in payload.items() if k not in ("cmd", "node")}
    try:
        request: AdminRequest = records.from_wire(cls, args, str(payload["cmd"]))
    except ProtocolError as exc:
        raise AdminError(str(exc)) from None
    return request


# -- replies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerView:
    state: str  # up or down, as this node's failure detector sees it
    status: str  # what the peer says of itself: up, leaving, removed
    phi: float
    client_addr: str
    peer_protocol: int = 0  # the newest peer protocol it speaks; 0: unknown
    release: str = ""  # its software version; "": unknown
    peer_addr: str = ""  # host:port of its peer port ("": not known yet)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    state: str  # up, draining or removed
    uptime_s: int
    ring_epoch: int
    peers: dict[str, PeerView]
    partitions_primary: int
    partitions_fallback: int
    hint_backlog: dict[str, HintBacklog]
    disk_bytes: int
    sstables: dict[str, int]
    compaction_debt_bytes: int
    read_only: tuple[str, ...]
    workers: int
    workers_ready: int
    last_repair_ms: int
    read_only_mode: str | None = None  # the kill switch: why client writes are off
    peer_protocols: tuple[int, ...] = ()  # (oldest, newest) peer protocol it offers
    release: str = ""  # its software version


@dataclass(frozen=True, slots=True)
class NodeUnreachable:
    node: str
    state: str  # down, unreachable or error
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    asked: str
    nodes: tuple[NodeStatus | NodeUnreachable, ...]  # by node id


@dataclass(frozen=True, slots=True)
class RingMember:
    node: str
    zone: str | None
    state: str
    owned: int
    replicated: int


@dataclass(frozen=True, slots=True)
class TargetView:
    node: str
    primary: bool
    hint_for: str | None


@dataclass(frozen=True, slots=True)
class KeyPlacement:
    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]
    targets: tuple[TargetView, ...]  # whom a request asks now


@dataclass(frozen=True, slots=True)
class RingReply:
    epoch: int
    q: int
    n: int
    nodes: tuple[RingMember, ...]
    owners: tuple[str, ...]
    key: KeyPlacement | None = None


@dataclass(frozen=True, slots=True)
class StorageBrief:
    sstables: dict[str, int]
    bytes: int
    l0_files: int
    levels_over_target: int


@dataclass(frozen=True, slots=True)
class CompactReply:
    node: str
    partition: int | None
    seconds: float
    before: StorageBrief
    after: StorageBrief


@dataclass(frozen=True, slots=True)
class FlushReply:
    node: str
    flushed_workers: int


@dataclass(frozen=True, slots=True)
class DrainReply:
    node: str
    flushed_workers: int
    state: str  # draining, or up after an undrain


@dataclass
class RepairReply(RepairReport):
    node: str = ""


@dataclass(frozen=True, slots=True)
class RepairPlanReply:
    node: str
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HintView:
    partition: int
    owner: str
    age_s: int
    idle_s: int
    expired: bool
    writes: int
    bytes: int


@dataclass(frozen=True, slots=True)
class HintsReply:
    node: str
    backlog: dict[str, HintBacklog]
    hints: tuple[HintView, ...]
    delivered: int
    expired: int


@dataclass(frozen=True, slots=True)
class RemoveReply:
    node: str
    removed: str
    already_removed: bool
    was_up: bool
    epoch_before: int
    epoch: int
    partitions_changed: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransferView:
    partition: int
    owner: str
    keys_sent: int
    bytes_sent: int
    passes: int
    running_s: float


@dataclass(frozen=True, slots=True)
class TransfersReply:
    node: str
    running: tuple[TransferView, ...]
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class ReadOnlyReply:
    node: str
    on: bool
    changed: bool  # False: it was so already
    reason: str
    since_ms: int  # when it was turned on; 0 when off


@dataclass(frozen=True, slots=True)
class RestartReply:
    node: str
    pid: int  # the process that executes itself again (the same pid after)


@dataclass(frozen=True, slots=True)
class LoadReply:
    node: str
    at_ms: int  # wall clock of the reading
    commands: int  # data commands finished since start
    errors: int  # of them answered with an error
    quorum_failures: int  # NOQUORUM answers since start
    latency_buckets: tuple[int, ...]  # cumulative, per coordinator.histogram.BUCKETS, then +Inf
    under_replicated: int  # partitions with fewer than N primaries up, as this node sees it
    started_ms: int = 0  # wall clock when this process started (counters count from it)


@dataclass(frozen=True, slots=True)
class LeaseReply:
    node: str
    granted: bool  # the asker holds it now (False after a release)
    holder: str  # who holds it now ("": nobody)
    expires_ms: int  # wall clock when it runs out (0: nobody holds it)


@dataclass(frozen=True, slots=True)
class HotKeysReply:
    node: str
    window_s: float
    keys: tuple[HotKey, ...]  # most requested first


@dataclass(frozen=True, slots=True)
class ClusterHotKeys:
    asked: str
    nodes: tuple[HotKeysReply | NodeUnreachable, ...]  # by node id


AdminReply = (
    NodeStatus | ClusterStatus | RingReply | CompactReply | FlushReply | DrainReply
    | RepairReply | RepairPlanReply | HintsReply | RemoveReply | TransfersReply | ReadOnlyReply
    | RestartReply | LoadReply | HotKeysReply | ClusterHotKeys | LeaseReply
)


def reply_type(request: AdminRequest) -> type[Any]:
    """The reply record ``request`` gets."""
    if isinstance(request, StatusRequest):
        return ClusterStatus if request.cluster else NodeStatus
    if isinstance(request, HotKeysRequest):
        return ClusterHotKeys if request.cluster else HotKeysReply
    return _REPLIES[type(request)]


_REPLIES: dict[type[Any], type[Any]] = {
    RingRequest: RingReply, CompactRequest: CompactReply, FlushRequest: FlushReply,
    DrainRequest: DrainReply, RepairRequest: RepairReply, RepairPlanRequest: RepairPlanReply,
    HintsRequest: HintsReply, RemoveRequest: RemoveReply, TransfersRequest: TransfersReply,
    ReadOnlyRequest: ReadOnlyReply, RestartRequest: RestartReply, LoadRequest: LoadReply,
    LeaseRequest: LeaseReply,
}
