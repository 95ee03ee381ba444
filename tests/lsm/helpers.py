"""Shared test helpers: bounded polling instead of sleeps, table files."""

from __future__ import annotations

import time
from collections.abc import Callable

from lsm.fs import OsFileSystem
from lsm.keys import Entry
from lsm.options import Options
from lsm.sstable import TableBuilder


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> None:
    """Poll ``check`` until it returns true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def write_table(
    path: str, entries: list[Entry], options: Options, sorted_run: bool = False
) -> None:
    """A table of ``entries`` (in key order) at ``path``, synced."""
    f = OsFileSystem().create(path)
    builder = TableBuilder(f, options)
    if sorted_run:
        builder.add_sorted(entries)
    else:
        for entry in entries:
            builder.add(*entry)
    builder.finish()
    f.sync()
    f.close()
