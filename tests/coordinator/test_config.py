from __future__ import annotations

import os

import pytest

from coordinator.config import (
    _FIELD_OF,
    SECTIONS,
    ConfigError,
    NodeConfig,
    load,
    with_overrides,
)
from shardserver.worker_count import resolve_workers


def write(tmp_path: str, text: str) -> str:
    path = os.path.join(tmp_path, "node.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def test_defaults_are_valid_and_every_field_has_a_section() -> None:
    c = load(None)
    assert c == NodeConfig()
    assert c.workers == 0  # by cores, or the node's recorded count
    listed = [_FIELD_OF.get((sec, k), k) for sec, keys in SECTIONS.items() for k in keys]
    assert sorted(listed) == sorted(f for f in NodeConfig.__dataclass_fields__)


def test_file_then_flags(tmp_path: str) -> None:
    path = write(
        tmp_path,
        """
[node]
id = "n2"
[network]
client_port = 7400
seeds = ["127.0.0.1:17379", "127.0.0.1:17380"]
idle_timeout_s = 5
[cluster]
w = 3
pw = 1
""",
    )
    c = load(path, {"client_port": 7500, "id": None})
    assert (c.id, c.client_port, c.w, c.pw, c.idle_timeout_s) == ("n2", 7500, 3, 1, 5.0)
    assert c.seeds == ("127.0.0.1:17379", "127.0.0.1:17380")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nodes]\nid = 'x'\n", "unknown section [nodes]"),
        ("[node]\nname = 'x'\n", "unknown key node.name"),
        ("[network]\nclient_port = 'x'\n", "client_port must be int"),
        ("[cluster]\nw = 4\n", "w must be 1..n (3), got 4"),
        ("[cluster]\npartitions = 48\n", "partitions must be a power of two"),
        ("[storage]\nfsync = 'sometimes'\n", "fsync must be always, interval or never"),
        ("[network]\nseeds = ['nohost']\n", "seed 'nohost' must be host:port"),
        ("[security]\nenable_flush = 1\n", "enable_flush must be bool"),
        ("[network]\nmax_reply_bytes = 1000\n",
         "max_reply_bytes must be >= max_value_bytes (65536)"),
        ("[cluster]\nmax_clock_drift_ms = 0\n", "max_clock_drift_ms must be 1..86400000"),
        ("[cluster]\nmax_clock_drift_ms = 86400001\n", "max_clock_drift_ms must be 1..86400000"),
        ("[node\n", "not valid TOML"),
        ("[cluster]\npartitions = 8\n[storage]\nworkers = 16\n",
         "workers (16) must be <= partitions (8)"),
        ("[cluster]\npartitions = 1024\n[storage]\nworkers = 300\n",
         "workers must be 0..256 (0: by cores), got 300"),
        ("[cluster]\npartitions = 0\n", "partitions must be a power of two up to 65536, got 0"),
        ("[cluster]\nrequest_timeout_ms = 5\n", "request_timeout_ms must be >= 10, got 5"),
        ("[storage]\nblock_cache_bytes = -1\n", "block_cache_bytes must be >= 0, got -1"),
        ("[storage]\ntombstone_grace_s = -5\n", "tombstone_grace_s must be >= 0, got -5"),
        ("[handoff]\nmax_hint_window_s = -1\n", "max_hint_window_s must be >= 0, got -1"),
        ("[storage]\nmemtable_bytes = -1\n", "memtable_bytes must be > 0, got -1"),
        ("[handoff]\nthrottle_bytes_per_s = 0\n", "throttle_bytes_per_s must be > 0, got 0"),
        ("[cluster]\nn = 1\nr = 2\n", "r must be 1..n (1), got 2"),
        ("[cluster]\nn = 2\nw = 3\n", "w must be 1..n (2), got 3"),
        ("[hotkeys]\ncache_ms = -1\n", "hotkeys.cache_ms must be 0..60000 (0: off)"),
        ("[hotkeys]\ntop = 300\n", "hotkeys.top must be 1..hotkeys.tracked"),
        ("[reads]\nfanout = 'some'\n", "reads.fanout must be all or quorum, got 'some'"),
        ("[node]\nreply_delay_ms = -5\n", "reply_delay_ms must be >= 0"),
    ],
)
def test_errors_name_the_key(tmp_path: str, text: str, message: str) -> None:
    with pytest.raises(
        ConfigError,
        match=message.replace("[", r"\[")
        .replace("(", r"\(")
        .replace(")", r"\)")
        .replace("..", r"\.\."),
    ):
        load(write(tmp_path, text))


def test_missing_file_and_unknown_override(tmp_path: str) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(os.path.join(tmp_path, "nope.toml"))
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load(None, {"colour": "blue"})
    with pytest.raises(ConfigError, match="pw must be"):
        with_overrides(NodeConfig(), pw=3)


def test_the_storage_defaults_are_the_workers_own() -> None:
    """The node config documents the engine's defaults; the worker config
    holds them (from lsm.options): the two must not drift apart."""
    from cli.serve import worker_settings
    from shardserver.config import WorkerSettings

    assert worker_settings(NodeConfig()) == WorkerSettings()


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"bind": "0.0.0.0"}, "bind 0.0.0.0 listens on every address"),
        ({"bind": ""}, "bind '' listens on every address"),
        ({"bind": "0.0.0.0", "advertise": "0.0.0.0"}, "advertise must be an address peers"),
        ({"seeds": ("10.0.0.12:17379",)}, "seed 10.0.0.12:17379 is another machine"),
        ({"bind": "localhost", "seeds": ("10.0.0.12:17379",)}, "connect to localhost"),
        ({"bind": "10.0.0.11", "advertise": "127.0.0.1", "seeds": ("[fd00::12]:17379",)},
         "connect to 127.0.0.1 .its own loopback"),
    ],
)
def test_a_node_must_advertise_an_address_its_peers_reach(
        network: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, network)


def test_advertise_defaults_to_bind_and_may_be_a_host_name() -> None:
    assert load(None).advertised_host() == "127.0.0.1"
    on_all = load(None, {"bind": "0.0.0.0", "advertise": "db2.internal",
                         "seeds": ("db1.internal:17379",)})
    assert on_all.advertised_host() == "db2.internal"
    # Loopback with loopback (or named) seeds is a cluster on one machine.
    load(None, {"seeds": ("127.0.0.2:17379", "localhost:17380")})
    load(None, {"seeds": ("db1.internal:17379",)})

def test_unset_levels_follow_a_small_n(tmp_path: str) -> None:
    """n = 1 alone used to fail with "r must be 1..n (1), got 2": the
    defaults of R and W did not follow N. Explicit levels are still checked."""
    c = load(write(tmp_path, "[cluster]\nn = 1\n"))
    assert (c.n, c.r, c.w) == (1, 1, 1)
    c = load(write(tmp_path, "[cluster]\nn = 5\n"))
    assert (c.n, c.r, c.w) == (5, 2, 2)
    c = load(None, {"n": 1})
    assert (c.r, c.w) == (1, 1)


def test_auto_workers_never_exceed_partitions(tmp_path: str) -> None:
    c = load(None, {"partitions": 1})
    assert resolve_workers(os.path.join(tmp_path, "workers"), c.workers, c.partitions) == 1
