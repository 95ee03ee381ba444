"""A ringkv cluster of real processes on 127.0.0.1, for integration and fault
tests (and benchmarks): start, kill -9, stop, restart single nodes, wait
for conditions with bounded timeouts, and always clean up.

Each node is ``python -m cli serve --config nodeK.toml`` in its own session
(process group), so kill -9 of a node takes its workers with it, like a
machine that dies.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret"
T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_block(count: int, offsets: tuple[int, ...] = (0, 1000, 10000)) -> int:
    """A port P with P+o..P+o+count-1 free now for every offset o (the layout
    ``ringkv up`` uses: client, metrics and peer ports)."""
    rng = random.Random()
    # Every port below 32768, where Linux's ephemeral range starts
    # (net.ipv4.ip_local_port_range): a port in that range that is free now
    # can be taken a moment later by any outgoing connection on a busy
    # machine (CI once lost `ringkv up` to one at 54034).
    top = 32768 - max(offsets) - count
    for _ in range(200):
        base = rng.randrange(10000, top)
        wanted = [p for o in offsets for p in range(base + o, base + o + count)]
        socks = []
        try:
            for port in wanted:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block found")


def wait_for(what: str, check: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not true after {timeout}s (last: {last!r:.200})")
        time.sleep(interval)


@dataclass
class NodeProc:
    name: str
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    config: Path
    log: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    nodes: int = 3
    n: int = 3
    workers: int = 2
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: One loopback address per node (127.0.0.2, .3, ...): peers then connect
    #: from distinct sources, so a fault test can cut one node off by address.
    own_addresses: bool = False
    #: Nodes on separate hosts (tests/netns.py): node i's address, the same
    #: (client, peer, metrics) ports on every node, the command prefix that
    #: runs node i on its host, and settings of single nodes by name.
    addresses: tuple[str, ...] = ()
    ports: tuple[int, int, int] | None = None
    run_in: Callable[[int], list[str]] | None = None
    node_settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    members: list[NodeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = list(self.ports) * self.nodes if self.ports else free_ports(3 * self.nodes)
        for i in range(self.nodes):
            name = f"n{i + 1}"
            host = f"127.0.0.{i + 2}" if self.own_addresses else "127.0.0.1"
            self.members.append(NodeProc(
                name, *ports[3 * i:3 * i + 3], self.root / name,
                self.root / f"{name}.toml", self.root / f"{name}.log",
                self.addresses[i] if self.addresses else host,
            ))
        seeds = [f"{m.host}:{m.peer_port}" for m in self.members]
        for m in self.members:
            sections: dict[str, dict[str, Any]] = {
                "node": {"id": m.name, "data_dir": str(m.data_dir)},
                "network": {"bind": m.host, "seeds": seeds, "client_port": m.client_port,
                            "peer_port": m.peer_port, "metrics_port": m.metrics_port},
                "cluster": {"n": self.n, "r": min(2, self.n), "w": min(2, self.n),
                            "secret": SECRET, "request_timeout_ms": 2000},
                "storage": {"workers": self.workers},
                "security": {"enable_flush": True},
            }
            for more in (self.settings, self.node_settings.get(m.name, {})):
                for section, values in more.items():
                    sections.setdefault(section, {}).update(values)
            lines = []
            for section, values in sections.items():
                lines.append(f"[{section}]")
                lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
            m.config.write_text("\n".join(lines) + "\n")

    # -- processes ------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        for i in range(self.nodes):
            self.start_node(i, wait=False)
        for i in range(self.nodes):
            self.wait_serving(i, timeout)
        self.wait_all_up(timeout)

    def start_node(self, i: int, wait: bool = True, timeout: float = 60.0) -> None:
        m = self.members[i]
        assert not m.running, f"{m.name} already running"
        log = open(m.log, "ab")  # noqa: SIM115 - the child owns it now
        try:
            prefix = self.run_in(i) if self.run_in else []
            m.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "cli", "serve", "--config", str(m.config)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        if wait:
            self.wait_serving(i, timeout)

    def wait_serving(self, i: int, timeout: float = 60.0) -> None:
        m = self.members[i]

        def serving() -> bool:
            if not m.running:
                raise AssertionError(f"{m.name} exited; log:\n{self.log_tail(i)}")
            return bool(self.client(i).ping())

        wait_for(f"{m.name} answers PING", serving, timeout)

    def kill(self, i: int) -> None:
        """kill -9 of the node's whole process group (coordinator and workers)."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)
        self._reap_group(m)

    def stop_node(self, i: int, timeout: float = 20.0) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(10)
        self._reap_group(m)

    def _reap_group(self, m: NodeProc) -> None:
        if m.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(m.proc.pid, signal.SIGKILL)  # any worker left behind
        m.proc = None

    def close(self) -> None:
        for i in range(self.nodes):
            self.stop_node(i)

    # -- clients and views ----------------------------------------------------
    def client(self, i: int, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 10)
        if password := self.settings.get("security", {}).get("requirepass"):
            kwargs.setdefault("password", password)
        return redis.Redis(host=self.members[i].host, port=self.members[i].client_port, **kwargs)

    def info(self, i: int, section: str) -> dict[str, Any]:
        return dict(self.client(i).info(section))

    def up_count(self, i: int) -> int:
        return int(self.info(i, "cluster")["nodes_up"])

    def wait_all_up(self, timeout: float = 60.0) -> None:
        for i, m in enumerate(self.members):
            if m.running:
                want = sum(1 for x in self.members if x.running)
                wait_for(f"{m.name} sees {want} nodes up",
                         lambda i=i, w=want: self.up_count(i) == w, timeout)

    def state_seen(self, i: int, other: int) -> str:
        """'up' or 'down': node ``other`` as node ``i``'s failure detector sees it."""
        raw = self.info(i, "cluster")[f"node_{self.members[other].name}"]
        # redis-py parses "state=up,phi=0.1,..." into a dict
        return str(raw["state"]) if isinstance(raw, dict) else str(raw).split(",")[0][6:]

    def wait_seen(self, other: int, state: str, timeout: float = 30.0) -> None:
        """Every running node sees node ``other`` in ``state`` ('up' or 'down')."""
        name = self.members[other].name
        for i, m in enumerate(self.members):
            if m.running and i != other:
                wait_for(f"{m.name} sees {name} {state}",
                         lambda i=i: self.state_seen(i, other) == state, timeout)

    def log_tail(self, i: int, lines: int = 40) -> str:
        try:
            return "\n".join(self.members[i].log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _toml(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(map(_toml, v)) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def running_cluster(root: Path, **kwargs: Any) -> Iterator[Cluster]:
    c = Cluster(root, **kwargs)
    try:
        c.start()
        yield c
    finally:
        c.close()


def admin_repair(c: Cluster, i: int, partitions: list[int] | None = None) -> dict[str, Any]:
    """Anti-entropy on node ``i`` now (what ``ringkv repair --node`` sends)."""
    import asyncio

    from coordinator.cluster.peer import peer_client
    from shardserver.protocol import messages

    m = c.members[i]

    async def call() -> Any:
        client = peer_client(f"{m.host}:{m.peer_port}", "admin", SECRET.encode(), timeout_s=120)
        try:
            return await client.call(messages.Admin({"cmd": "repair", "partitions": partitions}),
                                     timeout=120)
        finally:
            await client.close()

    reply = asyncio.run(call())
    assert reply.ok, reply
    result: dict[str, Any] = reply.payload
    return result


def secret_file(c: Cluster) -> Path:
    """The cluster secret in a file, for the admin CLI's --secret-file."""
    path = c.root / "cluster.secret"
    if not path.exists():
        path.write_text(SECRET + "\n")
    return path


def scrape(c: Cluster, i: int) -> dict[str, float]:
    """Node ``i``'s Prometheus metrics: ``name{labels}`` -> value."""
    url = f"http://{c.members[i].host}:{c.members[i].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def ring_of(c: Cluster, i: int = 0) -> Any:
    """The ring node ``i`` saved (its ``ring.msgpack``)."""
    from coordinator import files
    from coordinator.cluster.ring import decode_ring

    doc = files.read_doc(str(c.members[i].data_dir / "ring.msgpack"))
    assert doc is not None, f"{c.members[i].name} has no ring yet"
    return decode_ring(doc["ring"])


def local_read_many(c: Cluster, i: int, keys: list[bytes], q: int = 64) -> dict[bytes, Any]:
    """The sibling sets node ``i`` itself stores for ``keys``, read straight
    from its workers' sockets (no coordinator, no quorum)."""
    import asyncio

    from coordinator.cluster.ring import partition_of
    from shardserver.protocol.client import ShardClient
    from shardserver.protocol.pool import partition_ranges

    ranges = partition_ranges(q, c.workers)
    run = c.members[i].data_dir / "run"

    async def read() -> dict[bytes, Any]:
        clients = [ShardClient(str(run / f"worker-{w}.sock"), timeout_s=30)
                   for w in range(c.workers)]
        try:
            async def one(key: bytes) -> Any:
                p = partition_of(key, q)
                w = next(w for w, r in enumerate(ranges) if p in r)
                return await clients[w].read(p, key)

            out: dict[bytes, Any] = {}
            for start in range(0, len(keys), 1000):
                chunk = keys[start:start + 1000]
                for key, got in zip(chunk, await asyncio.gather(*map(one, chunk)), strict=True):
                    out[key] = got
            return out
        finally:
            for cl in clients:
                await cl.close()

    return asyncio.run(read())


def local_read(c: Cluster, i: int, key: bytes, q: int = 64) -> Any:
    return local_read_many(c, i, [key], q)[key]


def local_write(c: Cluster, i: int, key: bytes, value: bytes, q: int = 64) -> None:
    """Store a plain (last-writer-wins) version of ``key`` on node ``i`` only,
    straight through its worker's socket: a replica the others lack."""
    import asyncio

    from coordinator.cluster.ring import partition_of
    from coordinator.data.reconcile import plain_write
    from shardserver.protocol.client import ShardClient
    from shardserver.protocol.hlc import HLC
    from shardserver.protocol.pool import partition_ranges
    from shardserver.protocol.vclock import make_actor

    p = partition_of(key, q)
    worker = next(w for w, r in enumerate(partition_ranges(q, c.workers)) if p in r)
    path = c.members[i].data_dir / "run" / f"worker-{worker}.sock"
    version = plain_write(make_actor("test", 1), HLC().now(), value)

    async def write() -> None:
        async with ShardClient(str(path), timeout_s=10) as client:
            await client.write(p, key, version, "lww")

    asyncio.run(write())
