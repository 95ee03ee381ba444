"""Offline inspection of a node's files: the library behind ``ringkv sst|wal|
manifest|db`` (LevelDB's and RocksDB's dump tools are library code with a thin
main too).

Modules:

* :mod:`lsm.inspect.sst` — identify, properties, scan, get, verify, dump of one
  SSTable, streaming one data block at a time (bounded memory);
* :mod:`lsm.inspect.logs` — WAL records and torn tails; manifest edits and
  the levels they produce;
* :mod:`lsm.inspect.dbcheck` — a whole database directory;
* :mod:`lsm.inspect.text` — text rendering of every result; ``common.jsonable``
  gives the JSON form.

Everything is read-only: files are opened for reading through the
:class:`~lsm.fs.FileSystem`, the LOCK file is never taken and no cache is
filled. Exit codes are :class:`~lsm.inspect.common.Exit`: 0 ok, 1 corruption
found (or a file that is not ours), 2 usage.
"""

from __future__ import annotations

from lsm.inspect.common import Exit, Problem, jsonable, parse_key, render_bytes

__all__ = ["Exit", "Problem", "jsonable", "parse_key", "render_bytes"]
