"""``ringkv serve`` (one node) and ``ringkv up`` (a local cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import click
import uvloop

from coordinator import files
from coordinator.cluster.peer_versions import local_range
from coordinator.cluster.ring import DEFAULT_Q
from coordinator.config import SECTIONS, ConfigError, NodeConfig, load
from coordinator.errors import CoordinatorError
from coordinator.node import Node
from coordinator.ops.admin import RestartCheck
from lsm.options import FsyncMode
from shardserver.config import WorkerSettings
from shardserver.errors import WorkerConfigError
from shardserver.protocol import heap
from shardserver.protocol.pool import default_worker_count, usable_cores
from shardserver.supervisor import Supervisor, socket_path
from shardserver.worker_count import recorded_workers

#: A unix socket path must fit in sun_path: 108 bytes on Linux, with the NUL.
_SUN_PATH_MAX = 107


def socket_dir(config: NodeConfig) -> tuple[str, bool]:
    """Where the workers' sockets go, and whether that is a directory made
    for this run: ``<data_dir>/run``, unless the longest socket path there
    would not fit sun_path; then a fresh directory ``/tmp/ringkv-XXXX``
    (0700, made by mkdtemp, so nobody can have planted it), removed on exit."""
    path = os.path.join(os.path.abspath(config.data_dir), "run")
    # The count may come from the data dir (worker_count); the partitions bound it.
    longest = socket_path(path, (config.workers or config.partitions) - 1)
    if len(os.fsencode(longest)) <= _SUN_PATH_MAX:
        return path, False
    short = tempfile.mkdtemp(prefix="ringkv-", dir="/tmp")
    logging.info("worker sockets in %s: %s would be %d bytes, past the %d of a unix socket "
                 "path", short, longest, len(os.fsencode(longest)), _SUN_PATH_MAX)
    return short, True


def worker_settings(config: NodeConfig) -> WorkerSettings:
    """The node config's storage knobs, as every worker of the node gets them."""
    return WorkerSettings(
        fsync=cast(FsyncMode, config.fsync),  # one of them: config.validate checked it
        memtable_bytes=config.memtable_bytes,
        fsync_interval_ms=config.fsync_interval_ms, block_cache_bytes=config.block_cache_bytes,
        tombstone_grace_ms=config.tombstone_grace_s * 1000,
    )


def build_node(config: NodeConfig, sockets: str, *, insecure_no_secret: bool = False,
               restart_check: RestartCheck = lambda: None) -> Node:
    pool = Supervisor(
        os.path.join(config.data_dir, "workers"),
        sockets,
        config.partitions,
        config.workers,
        settings=worker_settings(config),
    )
    return Node.open(config, pool, insecure_no_secret=insecure_no_secret,
                     restart_check=restart_check)


def _raise_fd_limit(config: NodeConfig) -> None:
    """Room for max_clients connections plus peers, workers and files (Redis
    raises its soft limit the same way); capped by the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = config.max_clients + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            logging.warning("open file limit %d is below max_clients + 256 = %d", new, want)


async def run_node(config: NodeConfig, *, insecure_no_secret: bool = False,
                   restart_check: RestartCheck = lambda: None) -> bool:
    """Serve until SIGTERM/SIGINT (False) or until the admin API asked for a
    restart (True: the caller executes the process again)."""
    _raise_fd_limit(config)
    sockets, temporary = socket_dir(config)
    try:
        node = build_node(config, sockets, insecure_no_secret=insecure_no_secret,
                          restart_check=restart_check)
        await _run(node, config)
        return node.restart_requested
    finally:
        if temporary:
            shutil.rmtree(sockets, ignore_errors=True)


def restart_self() -> NoReturn:
    """Replace this process with ``python -m cli`` and the same arguments
    (``ringkv serve --config …`` as it was started, whether as the ``ringkv``
    script or ``python -m cli``): same pid, environment and working
    directory, so ``ringkv up``, systemd or a shell keep supervising it,
    and the code that runs next is the code installed now."""
    argv = [sys.executable, "-m", "cli", *sys.argv[1:]]
    logging.info("executing %s", " ".join(argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


async def _run(node: Node, config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(node: Node) -> None:
        heap.settle()
        print(f"ringkv node {config.id}: clients on {config.bind}:{node.client_server.port}, "
              f"peers on {config.bind}:{node.peer_server.port}", flush=True)

    await node.run(stop, ready)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML node config (docs/configuration.md); flags override it.")
@click.option("--id", "node_id", help="Node id (node.id).")
@click.option("--data-dir", help="Data directory (node.data_dir).")
@click.option("--bind", help="Address to listen on (network.bind).")
@click.option("--advertise", help="Address other nodes and clients reach this one at "
                                  "(network.advertise; default: --bind).")
@click.option("--port", "client_port", type=int, help="Client (Redis) port.")
@click.option("--peer-port", type=int, help="Port for other nodes.")
@click.option("--seed", "seeds", multiple=True, help="Peer host:port to join through (repeat).")
@click.option("--workers", type=int,
              help="Shard worker processes (0: as the node first ran, else by cores).")
@click.option("--insecure-no-secret", is_flag=True,
              help="Run without a cluster secret: anyone who reaches the peer port can "
                   "read, write, drop data and run admin commands. For throwaway tests only.")
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: str | None, log_level: str, insecure_no_secret: bool,
          **flags: Any) -> None:
    """Run one node: coordinator plus its shard workers, until SIGTERM or Ctrl-C.

    The config must set [cluster] secret (the same on every node): the
    peer port obeys whoever proves it.
    """
    flags["id"] = flags.pop("node_id")
    flags["seeds"] = flags["seeds"] or None  # no --seed: keep the file's seeds
    try:
        config = _checked_config(config_path, flags, insecure_no_secret)
    except CoordinatorError as exc:
        raise click.ClickException(str(exc)) from None

    def restart_check() -> str | None:
        """The check above, again, before the node executes itself."""
        try:
            _checked_config(config_path, flags, insecure_no_secret)
        except CoordinatorError as exc:
            return str(exc)
        return None

    os.umask(0o077)  # files the node and its workers create: owner only
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s {config.id} %(name)s: %(message)s",
    )
    if not config.secret:
        logging.warning(
            "INSECURE: running without a cluster secret (--insecure-no-secret): anyone who "
            "reaches %s:%d can read, write and drop data and run admin commands",
            config.bind, config.peer_port)
    try:
        restart = uvloop.run(run_node(config, insecure_no_secret=insecure_no_secret,
                                      restart_check=restart_check))
    except (CoordinatorError, WorkerConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot start node {config.id}: {exc}") from None
    if restart:
        restart_self()


def _checked_config(config_path: str | None, flags: dict[str, Any],
                    insecure_no_secret: bool) -> NodeConfig:
    """The node's config from its file and flags, as ``serve`` starts it:
    CoordinatorError (ConfigError, UnsafePathError) naming what is wrong."""
    if config_path is not None and os.path.exists(config_path):
        # It holds the secret: whoever may rewrite it owns the cluster.
        files.check_owned(config_path, os.stat(config_path), "config", root_ok=True)
    config = load(config_path, flags)
    if not config.secret and not insecure_no_secret:
        raise ConfigError(
            f"node {config.id} has no cluster secret: without one, anyone who reaches peer "
            f"port {config.peer_port} can read, write and drop data and run admin commands. "
            "Set [cluster] secret in the config, the same on every node (for example the "
            "output of: python3 -c 'import secrets; print(secrets.token_hex(32))'), "
            "or pass --insecure-no-secret for a throwaway test node"
        )
    local_range(config.max_peer_protocol)  # else the router refuses it once workers run
    return config


# --- ringkv up ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """What ``ringkv up`` starts: node i has client port ``port + i``, peer
    port ``port + 10000 + i`` and metrics on ``port + 1000 + i``; every node
    lists every peer as a seed."""

    nodes: int
    data: str
    port: int
    replicas: int
    workers: int
    partitions: int
    secret: str
    settings: tuple[Setting, ...] = ()  # --set, over what ringkv up writes

    @property
    def n(self) -> int:
        return min(self.replicas, self.nodes)

    def node_dir(self, i: int) -> str:
        return os.path.join(self.data, f"node{i + 1}")

    def node_workers(self, i: int) -> int:
        """``--workers``, else 0 (the count a node's data was written with)
        for a node that ran before, else the default for this node's share
        of the cores: the nodes of one machine share its cores."""
        if self.workers or recorded_workers(os.path.join(self.node_dir(i), "workers")):
            return self.workers
        return default_worker_count(max(1, usable_cores() // self.nodes))

    def toml(self, i: int) -> str:
        doc = tomllib.loads(self._toml(i))
        for s in self.settings:
            if s.node in (None, i + 1):
                doc.setdefault(s.section, {})[s.key] = s.value
        lines = ["# written by `ringkv up`; see docs/configuration.md"]
        for section, values in doc.items():
            lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
        return "\n".join(lines) + "\n"

    def _toml(self, i: int) -> str:
        seeds = ", ".join(f'"127.0.0.1:{self.port + 10000 + j}"' for j in range(self.nodes))
        return f"""[node]
id = "node{i + 1}"
data_dir = "{self.node_dir(i)}"

[network]
bind = "127.0.0.1"
client_port = {self.port + i}
peer_port = {self.port + 10000 + i}
metrics_port = {self.port + 1000 + i}
seeds = [{seeds}]

[cluster]
partitions = {self.partitions}
n = {self.n}
r = {min(2, self.n)}
w = {min(2, self.n)}
secret = "{self.secret}"

[storage]
workers = {self.node_workers(i)}

[security]
enable_flush = true
"""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    return repr(v)


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``--set [nodeK:]SECTION.KEY=VALUE`` of ``ringkv up``."""

    node: int | None  # K of nodeK, or None: every node
    section: str
    key: str
    value: Any


def _settings(ctx: click.Context, param: click.Parameter,
              given: tuple[str, ...]) -> tuple[Setting, ...]:
    out = []
    for text in given:
        node = None
        target, sep, raw = text.partition("=")
        if ":" in target:
            prefix, target = target.split(":", 1)
            if not (prefix.startswith("node") and prefix[4:].isdigit()):
                raise click.BadParameter(f"{text!r}: a node is named nodeK, got {prefix!r}")
            node = int(prefix[4:])
        section, _, key = target.partition(".")
        if not sep or key not in SECTIONS.get(section, ()):
            raise click.BadParameter(
                f"{text!r} is not SECTION.KEY=VALUE with a key of docs/configuration.md")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: a string
        out.append(Setting(node, section, key, value))
    return tuple(out)


def _check_free(ports: list[int]) -> None:
    """Refuse to start over another process's ports (its PINGs would look
    like ours). Binds as the servers will (SO_REUSEADDR, as asyncio and
    http.server set it), so the TIME-WAIT connections a cluster stopped a
    moment ago leaves behind do not count as in use; a listener does."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise click.ClickException(
                    f"port {port} on 127.0.0.1 is in use ({exc.strerror}); "
                    "pick another --port or stop what runs there"
                ) from None


def ping_port(port: int) -> bool:
    """True if a Redis-protocol server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _nodes_up(port: int) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"INFO cluster\r\n")
            data = b""
            deadline = time.monotonic() + 2
            while b"nodes_up:" not in data or not data.endswith(b"\r\n"):
                if time.monotonic() > deadline:
                    return 0
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("nodes_up:"):
            return int(line.split(":", 1)[1])
    return 0


@click.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 16))
@click.option("--data", default="./ringkv-data", show_default=True,
              type=click.Path(file_okay=False), help="Data directory of the cluster.")
@click.option("--port", default=7379, show_default=True, type=click.IntRange(1, 55000),
              help="Client port of the first node; node i listens on port+i, "
                   "and on port+10000+i for peers.")
@click.option("--n", "replicas", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Replication factor N.")
@click.option("--workers", default=0, type=click.IntRange(0, 64),
              help="Shard workers per node (default: the node's cores share minus one for "
                   "its coordinator, at least 1; a node that ran before keeps its count).")
@click.option("--partitions", default=DEFAULT_Q, show_default=True, type=int,
              help="Ring partitions Q: a power of two, at least ~10 per node at the "
                   "largest planned size; fixed once the cluster is created "
                   "(docs/configuration.md).")
@click.option("--set", "settings", multiple=True, callback=_settings,
              metavar="[nodeK:]SECTION.KEY=VALUE",
              help="A setting of every node's config (or of node K's), over what ringkv up "
                   "writes; repeatable, e.g. --set hotkeys.cache_ms=50 "
                   "--set node3:node.reply_delay_ms=100.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for startup.")
def up(timeout: float, **opts: Any) -> None:
    """Run a local cluster on 127.0.0.1 until Ctrl-C (data kept in --data)."""
    data, nodes, port = opts["data"], opts["nodes"], opts["port"]
    os.umask(0o077)  # configs, logs and data: owner only
    try:
        files.private_dir(data)
        layout = Layout(secret=_cluster_secret(os.path.join(data, "cluster.secret")), **opts)
    except CoordinatorError as exc:
        raise click.ClickException(str(exc)) from None
    _check_free([p for i in range(nodes) for p in (port + i, port + 1000 + i, port + 10000 + i)])
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    log_paths = [os.path.join(data, f"node{i + 1}.log") for i in range(nodes)]
    try:
        for i in range(nodes):
            cfg = os.path.join(data, f"node{i + 1}.toml")
            files.write_private(cfg, layout.toml(i).encode())  # it holds the secret
            _check_config(cfg)
            try:
                fd = files.open_private_log(log_paths[i])
            except CoordinatorError as exc:
                raise click.ClickException(str(exc)) from None
            log = open(fd, "ab")  # noqa: SIM115 - closed in the finally below
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--config", cfg],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))
        _wait_up(procs, log_paths, port, timeout)
        n = layout.n
        click.echo(f"ringkv: {nodes} nodes up on 127.0.0.1 (N={n}, R={min(2, n)}, "
                   f"W={min(2, n)}), data in {data}")
        for i in range(nodes):
            click.echo(f"  node{i + 1}  redis-cli -p {port + i}    "
                       f"status http://127.0.0.1:{port + 1000 + i}/    "
                       f"log {data}/node{i + 1}.log")
        click.echo(f"Connect with: redis-cli -p {port}   Ctrl-C stops the cluster.")
        _wait_for_signal(procs, [os.path.join(data, f"node{i + 1}.toml") for i in range(nodes)])
    finally:
        _stop_all(procs)
        for log in logs:
            log.close()


def _check_config(path: str) -> None:
    """Refuse a bad flag (``--partitions 1000``) before any node starts,
    with the config's own message."""
    try:
        load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _cluster_secret(path: str) -> str:
    """The secret of the cluster in ``path`` (mode 0600), made on first use.
    One that another user owns or could write, or a symlink, is refused:
    whoever planted it would know the secret."""
    try:
        stored = files.read_private(path, "cluster secret")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    secret = (stored or b"").decode("utf-8", "replace").strip()
    if not secret:
        secret = secrets.token_hex(32)
        files.write_private(path, (secret + "\n").encode())
    return secret


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _wait_up(
    procs: list[subprocess.Popen[bytes]], logs: list[str], port: int, timeout: float
) -> None:
    nodes = len(procs)
    deadline = time.monotonic() + timeout
    shown = -1
    with click.progressbar(length=nodes, label="starting nodes", file=sys.stderr) as bar:
        while True:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise click.ClickException(
                        f"node{i + 1} exited with {p.returncode}: {_last_line(logs[i])} "
                        f"(log: {logs[i]})")
            ready = sum(1 for i in range(nodes) if ping_port(port + i))
            if ready == nodes and all(_nodes_up(port + i) == nodes for i in range(nodes)):
                bar.update(nodes - max(shown, 0))
                return
            if ready != shown:
                bar.update(max(0, ready - max(shown, 0)))
                shown = ready
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"cluster not up after {timeout:.0f}s ({ready}/{nodes} nodes answer)")
            time.sleep(0.2)


def _wait_for_signal(procs: list[subprocess.Popen[bytes]], configs: list[str]) -> None:
    """Until Ctrl-C/SIGTERM, or until every node is gone. A node that dies
    is reported and the others keep serving: that is what a failure looks
    like, and the quickest way to try one is to kill a node of ``up``."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reported: set[int] = set()
    while not stopping:
        for i, p in enumerate(procs):
            if p.poll() is not None and i not in reported:
                reported.add(i)
                click.echo(f"node{i + 1} exited with {p.returncode}; the others keep serving. "
                           f"Start it again with: ringkv serve --config {configs[i]}", err=True)
        if len(reported) == len(procs):
            click.echo("every node has exited", err=True)
            return
        time.sleep(0.5)  # polls child exits; signals set `stopping`
    click.echo("stopping...", err=True)


def _stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 20.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
