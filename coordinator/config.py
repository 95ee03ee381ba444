"""Node configuration: TOML file, then command-line overrides, then checks.

Every setting has a default (the tables below are also the documentation's
source: docs/configuration.md), a TOML section and a type. Unknown keys and
wrong types are errors that name the key, so a typo never silently falls
back to a default.

    [node]     id, data_dir, zone, clock_offset_ms
        "bind", "advertise", "client_port", "peer_port", "seeds", "max_clients",
        "idle_timeout_s", "metrics_port", "max_reply_bytes", "max_node_reply_bytes",
    [cluster]  partitions, n, r, w, pr, pw, secret, request_timeout_ms,
               max_clock_drift_ms, max_peer_protocol
    [storage]  workers, fsync, fsync_interval_ms, max_value_bytes,
               memtable_bytes, block_cache_bytes, tombstone_grace_s
    [handoff]  enabled, max_hint_window_s, throttle_bytes_per_s, concurrency
    [repair]   aae_interval_s
    [security] requirepass, enable_flush
    [hotkeys]  tracked, window_s, top, hot_reads_per_s, coalesce, cache_ms
    [reads]    fanout, hedge, hedge_max_ratio
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from coordinator.errors import CoordinatorError

#: A bound past a day would let a timestamp win for that long.
MAX_CLOCK_DRIFT_MS = 86_400_000
#: Each worker is a process with its own engine, sockets and threads.
MAX_WORKERS = 256
#: Below this a request times out before a healthy replica on loopback answers.
MIN_REQUEST_TIMEOUT_MS = 10


class ConfigError(CoordinatorError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # [node]
    id: str = "node1"
    data_dir: str = "./ringkv-data/node1"
    zone: str = ""
    clock_offset_ms: int = 0  # fault injection: skew this node's HLC (tests only)
    reply_delay_ms: int = 0  # fault injection: hold this node's replica answers (tests only)
    # [network]
    bind: str = "127.0.0.1"
    advertise: str = ""  # the address peers and clients reach us at; "": bind
    client_port: int = 7379
    peer_port: int = 17379
    seeds: tuple[str, ...] = ()
    max_clients: int = 10000
    idle_timeout_s: float = 300.0
    metrics_port: int = 0  # Prometheus endpoint; 0: off
    max_reply_bytes: int = 64 << 20  # one MGET's values together
    max_node_reply_bytes: int = 256 << 20  # replies in flight over all connections
    # [cluster]
    partitions: int = 64
    n: int = 3
    r: int = 2
    w: int = 2
    pr: int = 0
    pw: int = 0
    secret: str = field(default="", repr=False)
    request_timeout_ms: int = 2000
    max_clock_drift_ms: int = 60_000  # timestamps further ahead are refused
    max_peer_protocol: int = 0  # 0: the newest this build speaks (rolling upgrades, tests)
    # [storage]
    workers: int = 0  # 0: as first run, else by cores (shardserver.worker_count)
    fsync: str = "interval"
    fsync_interval_ms: int = 1000
    max_value_bytes: int = 65536
    memtable_bytes: int = 8 << 20
    block_cache_bytes: int = 64 << 20
    tombstone_grace_s: int = 86400
    # [handoff]
    handoff_enabled: bool = True  # TOML: [handoff] enabled
    max_hint_window_s: int = 3 * 3600
    throttle_bytes_per_s: int = 10 << 20
    concurrency: int = 2
    # [repair]
    aae_interval_s: float = 60.0  # one partition every this many seconds
    # [security]
    requirepass: str = field(default="", repr=False)
    enable_flush: bool = False
    # [hotkeys]
    hotkeys_tracked: int = 256  # keys the heavy-hitters sketch counts at once
    hotkeys_window_s: float = 10.0
    hotkeys_top: int = 16  # keys INFO hotkeys and the metrics show
    hot_reads_per_s: float = 100.0  # a key read this often is hot (cached when cache_ms)
    coalesce_reads: bool = True  # TOML: [hotkeys] coalesce
    cache_ms: int = 0  # hot-key cache: 0 off
    # [reads]
    read_fanout: str = "all"  # TOML: [reads] fanout; all N replicas, or R first
    hedge_reads: bool = True  # TOML: [reads] hedge (fanout = "quorum" only)
    hedge_max_ratio: float = 0.1  # extra replica reads at most this share

    def advertised_host(self) -> str:
        """The address this node gives the cluster for its client and peer ports."""
        return self.advertise or self.bind


SECTIONS: dict[str, tuple[str, ...]] = {
    "node": ("id", "data_dir", "zone", "clock_offset_ms", "reply_delay_ms"),
    "network": (
        "bind", "advertise", "client_port", "peer_port", "seeds", "max_clients",
        "idle_timeout_s", "metrics_port", "max_reply_bytes", "max_node_reply_bytes",
    ),
    "cluster": (
        "partitions", "n", "r", "w", "pr", "pw", "secret", "request_timeout_ms",
        "max_clock_drift_ms", "max_peer_protocol",
    ),
    "storage": (
        "workers",
        "fsync",
        "fsync_interval_ms",
        "max_value_bytes",
        "memtable_bytes",
        "block_cache_bytes",
        "tombstone_grace_s",
    ),
    "handoff": ("enabled", "max_hint_window_s", "throttle_bytes_per_s", "concurrency"),
    "repair": ("aae_interval_s",),
    "security": ("requirepass", "enable_flush"),
    "hotkeys": ("tracked", "window_s", "top", "hot_reads_per_s", "coalesce", "cache_ms"),
    "reads": ("fanout", "hedge", "hedge_max_ratio"),
}
_TYPES = {f.name: f.type for f in fields(NodeConfig)}
_DEFAULTS = NodeConfig()
#: TOML keys whose field has another name (a bare "enabled" would be ambiguous).
_FIELD_OF: dict[tuple[str, str], str] = {
    ("handoff", "enabled"): "handoff_enabled",
    ("hotkeys", "tracked"): "hotkeys_tracked", ("hotkeys", "window_s"): "hotkeys_window_s",
    ("hotkeys", "top"): "hotkeys_top", ("hotkeys", "coalesce"): "coalesce_reads",
    ("reads", "fanout"): "read_fanout", ("reads", "hedge"): "hedge_reads",
}


def load(path: str | None, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``
    (flat keys, e.g. from command-line flags; ``None`` values are skipped)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        values.update(_flatten(doc, path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _TYPES:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    for level in ("r", "w"):
        # R and W left unset follow a smaller N (n = 1 alone is a valid config).
        if level not in values and isinstance(values.get("n"), int):
            values[level] = max(1, min(getattr(_DEFAULTS, level), values["n"]))
    config = NodeConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def _flatten(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, body in doc.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in body.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{path}: unknown key {section}.{key}")
            out[_FIELD_OF.get((section, str(key)), str(key))] = value
    return out


def _coerce(key: str, value: Any) -> Any:
    want = str(_TYPES[key])
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "tuple[str, ...]": isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value),
    }[want]
    if not ok:
        raise ConfigError(
            f"{key} must be {want.replace('tuple[str, ...]', 'a list of strings')}, "
            f"got {value!r:.60}"
        )
    if want == "tuple[str, ...]":
        return tuple(value)
    if want == "float":
        return float(value)
    return value


def validate(c: NodeConfig) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ConfigError(message)

    need(
        bool(c.id) and all(ch.isalnum() or ch in "-_." for ch in c.id),
        f"id must be letters, digits, '-', '_' or '.', got {c.id!r}",
    )
    for port in ("client_port", "peer_port", "metrics_port"):
        need(0 <= getattr(c, port) <= 65535, f"{port} must be 0..65535")
    need(c.aae_interval_s > 0, "aae_interval_s must be > 0")
    need(
        c.client_port != c.peer_port or c.client_port == 0, "client_port and peer_port must differ"
    )
    need(
        c.partitions >= 1 and c.partitions & (c.partitions - 1) == 0 and c.partitions <= 65536,
        f"partitions must be a power of two up to 65536, got {c.partitions}",
    )
    need(1 <= c.n <= 16, f"n must be 1..16, got {c.n}")
    for name in ("r", "w"):
        need(1 <= getattr(c, name) <= c.n, f"{name} must be 1..n ({c.n}), got {getattr(c, name)}")
    for name, of in (("pr", "r"), ("pw", "w")):
        need(
            0 <= getattr(c, name) <= getattr(c, of),
            f"{name} must be 0..{of} ({getattr(c, of)}), got {getattr(c, name)}",
        )
    need(
        c.fsync in ("always", "interval", "never"),
        f"fsync must be always, interval or never, got {c.fsync!r}",
    )
    need(0 <= c.workers <= MAX_WORKERS,
         f"workers must be 0..{MAX_WORKERS} (0: by cores), got {c.workers}")
    need(c.workers <= c.partitions,
         f"workers ({c.workers}) must be <= partitions ({c.partitions}): "
         "each worker holds at least one partition")
    need(1 <= c.max_value_bytes <= 1 << 26, "max_value_bytes must be 1..64 MiB")
    need(c.max_reply_bytes >= c.max_value_bytes,
         f"max_reply_bytes must be >= max_value_bytes ({c.max_value_bytes})")
    need(c.max_node_reply_bytes >= c.max_reply_bytes,
         f"max_node_reply_bytes must be >= max_reply_bytes ({c.max_reply_bytes})")
    need(c.request_timeout_ms >= MIN_REQUEST_TIMEOUT_MS,
         f"request_timeout_ms must be >= {MIN_REQUEST_TIMEOUT_MS}, got {c.request_timeout_ms}")
    for name in ("block_cache_bytes", "tombstone_grace_s", "max_hint_window_s"):
        need(getattr(c, name) >= 0, f"{name} must be >= 0, got {getattr(c, name)}")
    for name in (
        "fsync_interval_ms",
        "max_clients",
        "concurrency",
        "memtable_bytes",
        "throttle_bytes_per_s",
    ):
        need(getattr(c, name) > 0, f"{name} must be > 0, got {getattr(c, name)}")
    need(1 <= c.max_clock_drift_ms <= MAX_CLOCK_DRIFT_MS,
         f"max_clock_drift_ms must be 1..{MAX_CLOCK_DRIFT_MS} (one day), "
         f"got {c.max_clock_drift_ms}")
    need(c.idle_timeout_s >= 0, "idle_timeout_s must be >= 0 (0: never)")
    # The upper bound is the build's (coordinator.cluster.peer_versions.local_range).
    need(c.max_peer_protocol == 0 or c.max_peer_protocol >= 3,
         "max_peer_protocol must be 0 (the newest) or 3 or more: 3 is the oldest sealed "
         f"peer protocol, got {c.max_peer_protocol}")
    _check_hot_keys(c, need)
    for seed in c.seeds:
        host, _, port = seed.rpartition(":")
        need(bool(host) and port.isdigit(), f"seed {seed!r} must be host:port")
    _check_addresses(c)


def _check_hot_keys(c: NodeConfig, need: Callable[[bool, str], None]) -> None:
    need(c.reply_delay_ms >= 0, "reply_delay_ms must be >= 0")
    need(16 <= c.hotkeys_tracked <= 65536, "hotkeys.tracked must be 16..65536")
    need(1 <= c.hotkeys_top <= c.hotkeys_tracked, "hotkeys.top must be 1..hotkeys.tracked")
    need(c.hotkeys_window_s >= 1, "hotkeys.window_s must be >= 1")
    need(c.hot_reads_per_s > 0, "hotkeys.hot_reads_per_s must be > 0")
    need(0 <= c.cache_ms <= 60_000, "hotkeys.cache_ms must be 0..60000 (0: off)")
    need(c.read_fanout in ("all", "quorum"),
         f"reads.fanout must be all or quorum, got {c.read_fanout!r}")
    need(0 <= c.hedge_max_ratio <= 1, "reads.hedge_max_ratio must be 0..1")


def _check_addresses(c: NodeConfig) -> None:
    """The address the node advertises must reach it from its peers: not a
    wildcard (peers would dial themselves), and not loopback when a seed is
    another machine (it would dial its own loopback)."""
    if _ip(c.bind, "is_unspecified") and not c.advertise:
        raise ConfigError(
            f"bind {c.bind or repr(c.bind)} listens on every address, so it cannot tell "
            "peers where to connect: set network.advertise to this node's address on the "
            "cluster network")
    if c.advertise and _ip(c.advertise, "is_unspecified"):
        raise ConfigError(f"advertise must be an address peers can connect to, got {c.advertise}")
    if not _ip(c.advertised_host(), "is_loopback"):
        return
    for seed in c.seeds:
        host = seed.rpartition(":")[0].strip("[]")
        if _ip(host, "is_loopback") is False and not _ip(host, "is_unspecified"):
            raise ConfigError(
                f"seed {seed} is another machine, but this node would tell it to connect to "
                f"{c.advertised_host()} (its own loopback): set network.bind (or "
                "network.advertise) to this node's address on the cluster network")


def _ip(host: str, kind: str) -> bool | None:
    """``ipaddress``'s ``kind`` test of ``host`` ("" binds every address);
    None when it is a host name other than localhost."""
    literal = {"": "0.0.0.0", "localhost": "127.0.0.1"}.get(host, host)
    try:
        return bool(getattr(ipaddress.ip_address(literal), kind))
    except ValueError:
        return None


def with_overrides(config: NodeConfig, **changes: Any) -> NodeConfig:
    """A validated copy with ``changes`` applied (used by ``ringkv up``)."""
    new = replace(config, **changes)
    validate(new)
    return new
