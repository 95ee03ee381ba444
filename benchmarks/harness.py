"""Shared plumbing for the benchmark scripts: fresh child processes, disk
accounting, machine description, tables, and the docs/benchmarks.md writer.

Benchmarks are not tests: they print figures, and numbers are only compared
as ratios inside one run on one machine (DESIGN §14).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs", "benchmarks.md")
MIB = 1 << 20

# Benchmark the working tree, not whatever ringkv happens to be installed.
if REPO not in sys.path:
    sys.path.insert(0, REPO)


# -- child processes ----------------------------------------------------------
def run_child(script: str, args: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter and return the JSON
    object it wrote to the file named by ``--result``. On failure or timeout
    the dict holds ``error`` (the child's stderr tail) instead."""
    fd, result_path = tempfile.mkstemp(prefix="bench-result-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, script, *args, "--result", result_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        with open(result_path, encoding="utf-8") as f:
            text = f.read()
        if proc.returncode != 0 or not text:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"exit {proc.returncode}: " + "\n".join(tail)}
        result: dict[str, Any] = json.loads(text)
        return result
    except subprocess.TimeoutExpired:
        # subprocess.run kills the child it started before raising.
        return {"error": f"timed out after {timeout_s:.0f} s"}
    finally:
        os.unlink(result_path)


def write_result(path: str, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)


@contextmanager
def work_dir(parent: str | None, keep: bool = False) -> Iterator[str]:
    """A fresh directory for one benchmark run, removed afterwards. By default
    it lives under the current directory (on the disk being measured, not on a
    tmpfs /tmp)."""
    base = os.path.abspath(parent or os.getcwd())
    os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(prefix=".bench-data-", dir=base)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# -- disk accounting -----------------------------------------------------------
def proc_io() -> dict[str, int]:
    """This process's (all threads') I/O counters from /proc/self/io."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                out[name.strip()] = int(value)
    except OSError:
        pass
    return out


def written_bytes() -> int | None:
    """Bytes this process sent towards storage so far (page-cache dirtying is
    counted when it happens, so unsynced writes count too); None if the
    kernel does not expose it."""
    io = proc_io()
    return io.get("write_bytes")


def wait_io_quiet(quiet_s: float = 1.0, limit_s: float = 120.0) -> float:
    """Wait until this process has written nothing for ``quiet_s`` (background
    flushes and compactions have gone idle), at most ``limit_s``; returns the
    seconds waited."""
    start = time.perf_counter()
    last = written_bytes()
    if last is None:
        return 0.0
    quiet_since = start
    while time.perf_counter() - start < limit_s:
        time.sleep(0.1)
        now = written_bytes() or 0
        if now != last:
            last = now
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since >= quiet_s:
            break
    return time.perf_counter() - start


def du_bytes(path: str) -> int:
    """Disk usage of a tree as ``du`` counts it (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # deleted by a background job meanwhile
                continue
    return total


def drop_from_page_cache(path: str) -> None:
    """Evict the files under ``path`` from the page cache (after syncing them,
    since dirty pages cannot be dropped) so the next read comes from disk."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                fd = os.open(full, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


# -- machine and versions --------------------------------------------------------
def _first_match(path: str, pattern: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            m = re.search(pattern, f.read(), re.MULTILINE)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def _mount_of(path: str) -> str:
    best, desc = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, desc = parts[1], f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    return desc


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "lsm"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (rev or "?") + (" + uncommitted lsm/ changes" if dirty else "")


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(data_dir: str, packages: Sequence[str]) -> dict[str, str]:
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    import sqlite3

    versions = {p: package_version(p) or "not installed" for p in packages}
    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "cpus": f"{len(os.sched_getaffinity(0))} usable (nproc), {os.cpu_count()} online",
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "ram": f"{int(mem_kib) / MIB:.1f} GiB" if mem_kib else "?",
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "filesystem": _mount_of(os.path.abspath(data_dir)),
        "ringkv": _git_rev(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


# -- output --------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to line up in a terminal as well."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def write_docs_section(title: str, body: str, path: str = DOCS) -> str:
    """Append ``## {title} — {today}`` to docs/benchmarks.md, or replace the
    section of that exact heading if one exists (a rerun on the same day).
    Returns the heading written."""
    heading = f"## {title} — {dt.date.today().isoformat()}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == heading), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return heading


def machine_block(info: dict[str, str], command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    return "\n".join(lines)


def command_line() -> str:
    rel = os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())
    return " ".join(["python3", rel, *sys.argv[1:]])


def publish(title: str, quick: bool, info: dict[str, str], text: str) -> None:
    """Write ``text`` with the machine block as today's ``title`` section of
    docs/benchmarks.md (``--write-docs``)."""
    title += " (--quick)" if quick else ""
    heading = write_docs_section(title, machine_block(info, command_line()) + "\n\n" + text)
    print(f"\nwrote '{heading}' to {os.path.relpath(DOCS)}")
