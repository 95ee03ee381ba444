"""Faults for a :class:`tests.cluster.Cluster` of real processes.

* kill -9 of a node's process group (coordinator and workers), restart;
* graceful restart (SIGTERM, start again);
* kill -9 of one shard worker (the node's supervisor restarts it);
* SIGSTOP/SIGCONT of a node's process group (a pause: GC, VM stall);
* a node cut off from the others' peer traffic: iptables DROP rules (see
  :class:`Network`) in a chain of our own, so healing is one flush and
  cleanup one delete. Rules name our nodes' addresses and peer ports, so
  clusters of other test runs are not touched, and our clients still reach
  every node: a cut-off node keeps taking client requests;
* disk full: a small tmpfs mounted over a node's data directory, filled up
  (:func:`tmpfs`, :func:`fill`).

:meth:`Nemesis.heal` undoes every fault; :func:`fault_cluster` removes
rules, pauses and processes on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.cluster import Cluster
from tests.faults.history import History


def cut_unavailable() -> str | None:
    """Why cut-offs cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "cut-off needs root for iptables (no TCP proxy fallback is built)"
    if shutil.which("iptables") is None or shutil.which("iptables-restore") is None:
        return "cut-off needs iptables and iptables-restore (apt-get install -y iptables)"
    probe = _iptables("-S", "INPUT", check=False)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.strip()[:200]}"
    return None


def mount_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "disk full needs root to mount a tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "disk full needs mount/umount"
    return None


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
    return done


class Network:
    """Cuts one node off from the others' peer traffic, with iptables.

    Every node has its own loopback address and dials its peers from it, so
    a cut of node X is, for every other node Y, DROP of

    * X -> Y's peer port and Y's peer port -> X (X's connections to Y),
    * Y -> X's peer port and X's peer port -> Y (Y's connections to X),

    new and established connections alike, in a chain of our own
    (``RINGKV-F-<pid>-<n>``, hooked into INPUT: loopback packets pass it on
    their way in) so healing is a flush and cleanup a delete. Rules name our
    nodes' addresses and peer ports, so other test runs are not touched, and
    clients and the harness (from 127.0.0.1) still reach every node: a
    cut-off node keeps taking client requests.
    """

    _made_count = itertools.count(1)

    def __init__(self, cluster: Cluster) -> None:
        # Unique per instance: two clusters of one test process must not
        # share (or clean up) each other's chains.
        self.chain = f"RINGKV-F-{os.getpid()}-{next(self._made_count)}"
        self.cluster = cluster
        self.cut: set[int] = set()
        self._made = False

    def open(self) -> None:
        if self._made:
            return
        self.close()  # leftovers of a crashed run with our pid
        _iptables("-N", self.chain)
        self._made = True
        _iptables("-I", "INPUT", "-j", self.chain)

    def rules(self, i: int) -> list[str]:
        me = self.cluster.members[i]
        assert self.cluster.own_addresses, "a cut needs one loopback address per node"
        out = []
        for j, other in enumerate(self.cluster.members):
            if j == i:
                continue
            for a, b in ((me, other), (other, me)):  # a dials b's peer port
                out.append(f"-A {self.chain} -p tcp -s {a.host} -d {b.host} "
                           f"--dport {b.peer_port} -j DROP")
                out.append(f"-A {self.chain} -p tcp -s {b.host} -d {a.host} "
                           f"--sport {b.peer_port} -j DROP")
        return out

    def isolate(self, i: int) -> None:
        """Cut node ``i`` off, all rules in one atomic ``iptables-restore``
        (one ``iptables`` call per rule would open the cut over ~50 ms)."""
        self.open()
        batch = "\n".join(["*filter", *self.rules(i), "COMMIT", ""])
        done = subprocess.run(["iptables-restore", "-w", "5", "--noflush"], input=batch,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"iptables-restore: {done.stderr.strip()}\n{batch}")
        self.cut.add(i)

    def heal(self) -> None:
        if self._made:
            _iptables("-F", self.chain)
        self.cut.clear()

    def close(self) -> None:
        while _iptables("-D", "INPUT", "-j", self.chain, check=False).returncode == 0:
            pass
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)
        self._made = False
        self.cut.clear()


class Nemesis:
    """Injects faults into one cluster and remembers what to undo."""

    def __init__(self, cluster: Cluster, history: History | None = None) -> None:
        self.cluster = cluster
        self.history = history
        self.network = Network(cluster)
        self.can_cut = cut_unavailable() is None and cluster.own_addresses
        self.paused: set[int] = set()
        self.stopped: set[int] = set()

    def _note(self, what: str) -> None:
        if self.history is not None:
            self.history.note(what)

    def name(self, i: int) -> str:
        return self.cluster.members[i].name

    def kill(self, i: int) -> None:
        self._note(f"kill -9 {self.name(i)}")
        self.paused.discard(i)
        self.cluster.kill(i)
        self.stopped.add(i)

    def stop(self, i: int) -> None:
        self._note(f"stop {self.name(i)}")
        self.resume(i)
        self.cluster.stop_node(i)
        self.stopped.add(i)

    def start(self, i: int, timeout: float = 60.0) -> None:
        self._note(f"start {self.name(i)}")
        self.cluster.start_node(i, wait=True, timeout=timeout)
        self.stopped.discard(i)

    def pause(self, i: int) -> None:
        proc = self.cluster.members[i].proc
        assert proc is not None, f"{self.name(i)} is not running"
        self._note(f"SIGSTOP {self.name(i)}")
        os.killpg(proc.pid, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        proc = self.cluster.members[i].proc
        if i in self.paused and proc is not None:
            self._note(f"SIGCONT {self.name(i)}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
        self.paused.discard(i)

    def cut(self, i: int) -> None:
        if not self.can_cut:
            raise RuntimeError("cannot cut nodes off here: "
                               f"{cut_unavailable() or 'nodes share one address'}")
        self._note(f"cut off {self.name(i)}")
        self.network.isolate(i)

    def uncut(self) -> None:
        if self.network.cut:
            self._note("network healed")
        self.network.heal()

    def worker_pids(self, i: int) -> list[int]:
        proc = self.cluster.members[i].proc
        if proc is None:
            return []
        try:
            text = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill_worker(self, i: int, which: int = 0) -> None:
        """kill -9 of one shard worker; its supervisor restarts it."""
        pids = self.worker_pids(i)
        if not pids:
            return
        pid = pids[which % len(pids)]
        self._note(f"kill -9 worker pid {pid} of {self.name(i)}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def heal(self, timeout: float = 60.0) -> None:
        """Undo every fault: network, pauses, stopped nodes (started again)."""
        self.uncut()
        for i in sorted(self.paused):
            self.resume(i)
        for i, m in enumerate(self.cluster.members):
            if not m.running:
                self.stopped.add(i)
        for i in sorted(self.stopped):
            self.start(i, timeout)

    def close(self) -> None:
        """Remove rules and resume paused processes (no restarts): for finally."""
        try:
            self.network.close()
        finally:
            for i in sorted(self.paused):
                self.resume(i)


def set_option(cluster: Cluster, i: int, section: str, key: str, value: int | str) -> None:
    """Set ``[section] key = value`` in node ``i``'s config file (it applies
    when the node next starts), e.g. ``[node] clock_offset_ms`` for skew."""
    path = cluster.members[i].config
    line = f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"'
    out: list[str] = []
    current = None
    done = False
    for text in path.read_text().splitlines():
        if text.startswith("["):
            if current == section and not done:
                out.append(line)
                done = True
            current = text.strip("[] ")
        elif current == section and text.split("=")[0].strip() == key:
            if not done:
                out.append(line)
                done = True
            continue
        out.append(text)
    if not done:
        out += ([] if current == section else [f"[{section}]"]) + [line]
    path.write_text("\n".join(out) + "\n")


@contextmanager
def fault_cluster(root: Path, node_settings: dict[int, dict[str, dict[str, int | str]]]
                  | None = None, **kwargs: Any) -> Iterator[Nemesis]:
    """A started :class:`Cluster` with one loopback address per node, and its
    :class:`Nemesis`; ``node_settings`` are config settings of single nodes.
    On exit every rule, pause and process is gone."""
    cluster = Cluster(root, own_addresses=True, **kwargs)
    for i, sections in (node_settings or {}).items():
        for section, values in sections.items():
            for key, value in values.items():
                set_option(cluster, i, section, key, value)
    nemesis = Nemesis(cluster)
    try:
        cluster.start()
        yield nemesis
    finally:
        try:
            nemesis.close()
        finally:
            cluster.close()


@contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted at ``path`` (created if missing),
    unmounted (lazily if still busy) on exit. Mode 0700, as a data directory
    must be (a tmpfs root is 1777 by default, which a node refuses)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs",
                    str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a file in ``directory`` until at most ``leave_bytes`` are free."""
    path = directory / name
    chunk = b"\0" * (1 << 20)
    with path.open("ab", buffering=0) as f:
        while True:
            free = shutil.disk_usage(directory).free
            if free <= leave_bytes:
                break
            try:
                f.write(chunk[: max(4096, min(len(chunk), free - leave_bytes))])
            except OSError:  # ENOSPC: full
                break
    return path
