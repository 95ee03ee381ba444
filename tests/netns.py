"""Separate hosts on one machine: one network namespace per host, each with
its own address on a private bridge, for tests that need nodes to really be
different machines to each other (tests/integration/test_multihost.py).

    this test: 10.231.S.254 on bridge rkb<tag>
                                  ├── veth rkh<tag>h1 ── ns ringkv-<pid>-h1: eth0 10.231.S.1
                                  ├── veth rkh<tag>h2 ── ns ringkv-<pid>-h2: eth0 10.231.S.2
                                  └── ...

Every name carries the test process's pid, so runs side by side do not
collide; :func:`hosts` removes everything on exit, and at start it removes
what a run that died (its pid gone) left behind: namespaces with the
processes still in them, bridges and veths. The subnet ``10.231.S.0/24``
takes an ``S`` no address on this machine uses yet.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: ringkv-<pid>-h<k>: a namespace; rkb<pid hex>: a bridge; rkh<pid hex>h<k>: a veth.
_NS = re.compile(r"^ringkv-(\d+)-h\d+$")
_LINK = re.compile(r"^rk[bh]([0-9a-f]{6})")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "separate hosts need root to create network namespaces and a bridge"
    if shutil.which("ip") is None:
        return "separate hosts need the ip tool (apt-get install -y iproute2)"
    probe = f"ringkv-{os.getpid()}-h0"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Hosts:
    """``count`` hosts, 1-based like their addresses' last byte."""

    count: int
    subnet: str  # "10.231.S"
    tag: str  # the pid in 6 hex digits

    @property
    def bridge(self) -> str:
        return f"rkb{self.tag}"

    @property
    def gateway(self) -> str:
        """This (the test's) side of the bridge."""
        return f"{self.subnet}.254"

    def namespace(self, k: int) -> str:
        return f"ringkv-{int(self.tag, 16)}-h{k}"

    def veth(self, k: int) -> str:
        """Host ``k``'s cable to the bridge, seen from the bridge's side."""
        return f"rkh{self.tag}h{k}"

    def address(self, k: int) -> str:
        return f"{self.subnet}.{k}"

    def run_in(self, k: int) -> list[str]:
        """The prefix that runs a command on host ``k``."""
        return ["ip", "netns", "exec", self.namespace(k)]

    def unplug(self, k: int) -> None:
        """Host ``k``'s link goes down: nothing reaches it, it reaches nothing."""
        _ip("link", "set", self.veth(k), "down")

    def plug(self, k: int) -> None:
        _ip("link", "set", self.veth(k), "up")

    def build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for k in range(1, self.count + 1):
            ns = self.namespace(k)
            _ip("netns", "add", ns)
            _ip("link", "add", self.veth(k), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", self.veth(k), "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(k)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Kill what still runs in the namespaces, delete them and the bridge
        (their veths go with them). Never raises: it runs in ``finally``."""
        for k in range(1, self.count + 1):
            _remove_namespace(self.namespace(k))
        _ip("link", "del", self.bridge, check=False)
        for k in range(1, self.count + 1):
            _ip("link", "del", self.veth(k), check=False)


@contextmanager
def hosts(count: int) -> Iterator[Hosts]:
    """``count`` fresh hosts on one bridge, removed on exit whatever happened."""
    _remove_leftovers()
    h = Hosts(count, _free_subnet(), f"{os.getpid():06x}")
    try:
        h.build()
        yield h
    finally:
        h.destroy()


def _remove_leftovers() -> None:
    """What runs of this helper that died without cleaning up left behind."""
    listed = _ip("netns", "list", check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS.match(name)
        if m and not _alive(int(m.group(1))):
            _remove_namespace(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _LINK.match(name)
        if m and not _alive(int(m.group(1), 16)):
            _ip("link", "del", name, check=False)


def _remove_namespace(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> str:
    used = _ip("-4", "-o", "addr", "show", check=False).stdout
    taken = {int(s) for s in re.findall(r"inet 10\.231\.(\d+)\.", used)}
    start = os.getpid() % 250
    for step in range(250):
        s = (start + step) % 250
        if s not in taken:
            return f"10.231.{s}"
    raise RuntimeError("no free 10.231.S.0/24 subnet: 250 are in use")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                          timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done
