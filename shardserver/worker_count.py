"""How many shard workers a node runs, and keeping that number fixed.

Worker i owns partitions ``i*Q/W <= p < (i+1)*Q/W`` and keeps them in its
own engine (``<workers dir>/worker-<i>``), so W decides which engine holds
which key. Started again with another W, a worker would open an engine that
holds partitions outside its range (unreadable there, and its compaction
filter would drop them as not held) while the partitions it now owns sit in
another engine. So the count a node first ran with is recorded in
``<workers dir>/WORKERS`` (one decimal line) and holds from then on:

* ``workers = 0`` (the default) means the recorded count, and for a new
  node :func:`default_worker_count`;
* any other value must equal the recorded count, or the node refuses to
  start (:class:`WorkerConfigError` naming both).

A node from before the file has ``worker-<i>`` directories and no file:
their number is its count, and it is recorded then.
"""

from __future__ import annotations

import os
import re

from shardserver.errors import WorkerConfigError
from shardserver.protocol.pool import default_worker_count

COUNT_FILE = "WORKERS"
_WORKER_DIR = re.compile(r"worker-(\d+)")


def recorded_workers(workers_dir: str) -> int | None:
    """The count recorded for the node whose workers live in ``workers_dir``
    (or inferred from its worker directories); None for a new node."""
    path = os.path.join(workers_dir, COUNT_FILE)
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return _counted_dirs(workers_dir)
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkerConfigError(f"cannot read {path}: {exc}") from None
    if not text.isdigit() or int(text) < 1:
        raise WorkerConfigError(f"{path}: expected a worker count >= 1, got {text[:40]!r}")
    return int(text)


def _counted_dirs(workers_dir: str) -> int | None:
    try:
        names = os.listdir(workers_dir)
    except FileNotFoundError:
        return None
    indices = [int(m.group(1)) for n in names if (m := _WORKER_DIR.fullmatch(n))]
    return max(indices) + 1 if indices else None


def resolve_workers(workers_dir: str, configured: int | None, partitions: int) -> int:
    """The node's worker count (module docstring), recorded on first use.
    ``configured`` 0 or None: the recorded count, or the default (at most
    one worker per partition)."""
    if configured is not None and not 0 <= configured <= partitions:
        raise WorkerConfigError(
            f"workers must be 0 (by cores) to {partitions} (one per partition), got {configured}"
        )
    recorded = recorded_workers(workers_dir)
    if recorded is not None and configured and configured != recorded:
        raise WorkerConfigError(
            f"workers = {configured}, but the data in {workers_dir} was written by "
            f"{recorded} workers: each keeps its partitions in its own engine, and a node "
            f"cannot change how many it runs; set workers = {recorded} (or 0)"
        )
    count = recorded or configured or min(default_worker_count(), partitions)
    if recorded is None or not os.path.exists(os.path.join(workers_dir, COUNT_FILE)):
        _record(workers_dir, count)
    return count


def _record(workers_dir: str, count: int) -> None:
    os.makedirs(workers_dir, 0o700, exist_ok=True)
    path = os.path.join(workers_dir, COUNT_FILE)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{count}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(workers_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
