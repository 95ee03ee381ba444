"""Writing SSTables: the outputs of a compaction (input tables merged into
new ones, in a thread or in a child process) and of a flush
(:func:`write_tables`). The choice of what to compact is ``lsm.compaction``'s
(pure); this module does the writing.

Python runs one thread at a time, so a compaction on a background thread
takes its CPU time straight out of the writers' (the merge, block building
and bloom filters cost several microseconds per entry, paid again at every
level). With the database on a real file system the engine therefore runs
each compaction in a child interpreter (``python -m lsm.table_writer``): the
child reads the input tables, writes the outputs under file numbers the
parent reserved, and returns their metadata; the parent installs the result
in the manifest as before. Flushes stay on their thread (see lsm.jobs).
The parent never waits on the child while holding a lock that writers need.
The in-memory test file system cannot be shared with another process, so
there (and for compaction filters or merge operators that cannot be
pickled) the same code runs on the compaction thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from lsm import filenames
from lsm.errors import CorruptionError, DiskFullError, LSMError, StorageIOError
from lsm.fs import FileSystem, OsFileSystem, WritableFile
from lsm.iterators import CompactionStats, compaction_stream, merge_newest, merge_resolving
from lsm.keys import Entry
from lsm.manifest import FileMeta
from lsm.options import Options
from lsm.sstable import TableBuilder, TableReader

log = logging.getLogger("lsm.table_writer")

_ABORT_CHECK_EVERY = 1024
_POLL_S = 0.1


class Aborted(Exception):
    """The database is closing; the job's partial output is discarded."""


class ChildUnavailable(Exception):
    """The child could not load the job (e.g. an option holds a function
    defined in the embedding script's ``__main__``); run it in-process."""


@dataclass(frozen=True, slots=True)
class CompactionJob:
    dirname: str
    sources: tuple[tuple[int, ...], ...]  # newest first; each a chain of table numbers
    bottommost: bool
    first_number: int  # output file numbers reserved for this job
    reserved: int
    options: Options


@dataclass(frozen=True, slots=True)
class CompactionOutput:
    files: list[FileMeta]
    dropped_tombstones: int
    filtered: int
    merge_operands: int = 0  # folded into another entry
    nice: int = 0  # the niceness the compaction ran at


def reserve_count(input_bytes: int, options: Options) -> int:
    """Output numbers to reserve: outputs rarely exceed the input size, and a
    filter that grows values gets twice that plus slack."""
    return 2 * (input_bytes // options.target_file_bytes) + 8


def write_tables(
    fs: FileSystem,
    dirname: str,
    options: Options,
    entries: Iterable[Entry],
    *,
    split: bool,
    next_number: Callable[[], int],
    should_abort: Callable[[], bool],
) -> list[FileMeta]:
    """Write ``entries`` to new tables (split at the target file size when
    ``split``), sync them and their directory. On failure, remove what was
    written and re-raise."""
    target = options.target_file_bytes if split else 1 << 62
    outputs: list[FileMeta] = []
    paths: list[str] = []
    builder: TableBuilder | None = None
    out: WritableFile | None = None
    number = 0
    try:
        if not split and isinstance(entries, list) and entries:
            # A flush: the memtable's sorted list goes into one table.
            number = next_number()
            path = filenames.table_path(dirname, number)
            paths.append(path)
            out = fs.create(path)
            builder = TableBuilder(out, options)
            builder.add_sorted(entries)
            if should_abort():
                raise Aborted
            entries = []
        for n, (key, seq, kind, value) in enumerate(entries):
            if builder is None or out is None:
                if should_abort():
                    raise Aborted
                number = next_number()
                path = filenames.table_path(dirname, number)
                paths.append(path)
                out = fs.create(path)
                builder = TableBuilder(out, options)
            builder.add(key, seq, kind, value)
            if n % _ABORT_CHECK_EVERY == 0 and should_abort():
                raise Aborted
            if builder.estimated_size() >= target:
                outputs.append(_finish(builder, out, number))
                builder = out = None
        if builder is not None and out is not None:
            outputs.append(_finish(builder, out, number))
            builder = out = None
        fs.sync_dir(dirname)
    except BaseException:
        if out is not None:
            out.discard_buffer()
            with contextlib.suppress(LSMError):
                out.close()
        for path in paths:
            remove_quietly(fs, path)
        raise
    return outputs


def _finish(builder: TableBuilder, f: WritableFile, number: int) -> FileMeta:
    props = builder.finish()
    f.sync()
    f.close()
    return FileMeta(
        number=number,
        size=props.file_bytes,
        smallest=props.smallest_key,
        largest=props.largest_key,
        smallest_seq=props.smallest_seq,
        largest_seq=props.largest_seq,
        entries=props.entries,
        tombstones=props.tombstones,
        merges=props.merge_operands,
    )


def remove_quietly(fs: FileSystem, path: str) -> None:
    try:
        fs.remove(path)
    except FileNotFoundError:
        pass
    except StorageIOError as exc:  # leftover files are removed on the next open
        log.warning("could not remove %s: %s", path, exc)


def execute(
    job: CompactionJob,
    fs: FileSystem,
    open_table: Callable[[int], TableReader],
    should_abort: Callable[[], bool],
) -> CompactionOutput:
    """Merge the job's inputs into new tables (in whichever process runs it)."""

    def chain(numbers: tuple[int, ...]) -> Iterator[Entry]:
        for number in numbers:
            yield from open_table(number).iter()

    numbers = iter(range(job.first_number, job.first_number + job.reserved))

    def next_number() -> int:
        try:
            return next(numbers)
        except StopIteration:
            raise LSMError(f"compaction needed more than {job.reserved} output files") from None

    stats = CompactionStats()
    sources: list[Iterable[Entry]] = [chain(s) for s in job.sources]
    op = job.options.merge_operator
    merged = (merge_newest(sources) if op is None
              else merge_resolving(sources, op, job.bottommost, stats))
    stream = compaction_stream(
        merged,
        job.bottommost,
        job.options.compaction_filter,
        stats,
    )
    files = write_tables(
        fs, job.dirname, job.options, stream,
        split=True, next_number=next_number, should_abort=should_abort,
    )
    return CompactionOutput(files, stats.dropped_tombstones, stats.filtered, stats.merge_operands)


def can_run_in_child(job: CompactionJob) -> bool:
    if type(job.options.fs) is not OsFileSystem:
        return False
    try:
        pickle.dumps(job)  # a compaction filter or clock defined in a script may not be
    except Exception:  # any pickling failure means: stay in this process
        return False
    return True


def run_in_child(
    job: CompactionJob, should_abort: Callable[[], bool]
) -> CompactionOutput:
    """Run ``job`` in a child interpreter (``python -m lsm.table_writer``); kill
    it and clean up if ``should_abort`` turns true meanwhile. Errors come back
    as the engine's own types. A plain subprocess rather than
    multiprocessing, so the embedding program's ``__main__`` is never
    re-imported."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # -P: no current directory on sys.path, so the child imports this very
    # lsm package (via PYTHONPATH) even when the cwd holds another one.
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "lsm.table_writer", str(os.getpid()),
         str(job.options.compaction_nice)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    request: bytes | None = pickle.dumps(job)
    with proc:  # closes the pipes and reaps the child on every path
        try:
            while True:
                try:
                    out, _ = proc.communicate(request, timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    request = None
                    if should_abort():
                        raise Aborted from None
            if proc.returncode != 0 or not out:
                raise StorageIOError(f"compaction process died with exit code {proc.returncode}")
            status, payload = pickle.loads(out)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            fs = OsFileSystem()
            for number in range(job.first_number, job.first_number + job.reserved):
                path = filenames.table_path(job.dirname, number)
                if fs.exists(path):
                    remove_quietly(fs, path)
            raise
    if status == "ok":
        assert isinstance(payload, CompactionOutput)
        return payload
    if status == "unloadable":
        raise ChildUnavailable(payload)
    raise _rebuild_error(payload)


def _child_main() -> None:
    # The parent's pid comes first: a child whose parent was killed (its
    # reparenting changes getppid()) stops and removes what it wrote, so it
    # cannot write into a directory that a restarted engine now owns.
    parent = int(sys.argv[1])
    # Lower our priority before anything else costs CPU (the job's unpickling
    # imports the filter's and merge operator's modules).
    nice = os.nice(int(sys.argv[2]))

    def orphaned() -> bool:
        return os.getppid() != parent

    try:
        job: CompactionJob = pickle.loads(sys.stdin.buffer.read())
    except Exception as exc:  # unpicklable options: tell the parent to run it itself
        if not orphaned():
            _reply(("unloadable", f"{type(exc).__name__}: {exc}"))
        return
    fs = OsFileSystem()
    readers: dict[int, TableReader] = {}

    def open_table(number: int) -> TableReader:
        reader = readers.get(number)
        if reader is None:
            reader = TableReader.open(fs, filenames.table_path(job.dirname, number), number)
            readers[number] = reader
        return reader

    try:
        out = replace(execute(job, fs, open_table, orphaned), nice=nice)
        if orphaned():  # finished after all: nobody will install the outputs
            for f in out.files:
                remove_quietly(fs, filenames.table_path(job.dirname, f.number))
            return
        result: tuple[str, object] = ("ok", out)
    except Aborted:  # orphaned; write_tables removed the outputs
        return
    except CorruptionError as exc:
        result = ("err", ("corruption", exc.path, exc.offset, exc.reason))
    except DiskFullError as exc:
        result = ("err", ("diskfull", str(exc), exc.errno))
    except StorageIOError as exc:
        result = ("err", ("io", str(exc), exc.errno))
    except Exception as exc:  # a bug: report it instead of dying silently
        result = ("err", ("other", f"{type(exc).__name__}: {exc}", None))
    finally:
        for reader in readers.values():
            reader.close()
    _reply(result)


def _reply(result: tuple[str, object]) -> None:
    try:
        sys.stdout.buffer.write(pickle.dumps(result))
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the parent is gone; nobody to tell
        # Point stdout at /dev/null so that the flush at exit stays quiet
        # (the recipe of the Python docs for SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _rebuild_error(payload: Any) -> LSMError:
    kind, *rest = payload
    if kind == "corruption":
        return CorruptionError(*rest)
    if kind == "diskfull":
        return DiskFullError(*rest)
    if kind == "io":
        return StorageIOError(*rest)
    return LSMError(f"compaction process failed: {rest[0]}")


if __name__ == "__main__":
    # Run the copy imported as lsm.table_writer, so that pickled results name
    # lsm.table_writer classes rather than __main__ ones.
    from lsm.table_writer import _child_main as child_main

    child_main()
