"""``ringkv sst|wal|manifest|db``: offline inspection of a node's files.

Thin commands over :mod:`lsm.inspect`. Every command takes ``--json``;
commands that print keys or values take ``--hex``. Nothing is written and the
database LOCK is not taken, so they are safe next to a running node.

Exit codes: 0 everything checked out; 1 corruption found, or a file that is
not ours or cannot be read (one line per problem: ``FILE: offset N: reason``);
2 usage error (bad option, missing file).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from cli import decode
from lsm.errors import CorruptionError
from lsm.fs import FileSystem, OsFileSystem
from lsm.inspect import dbcheck as lib_db
from lsm.inspect import logs as lib_logs
from lsm.inspect import sst as lib_sst
from lsm.inspect import text
from lsm.inspect.common import READ_ERRORS, Exit, Problem, jsonable, parse_key

# Entry kinds whose bytes are a sibling set in a shard table (merge operands
# too, once the shard layer writes them).
_CARRIES_SIBLINGS = ("value", "merge")

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
hex_option = click.option(
    "--hex", "hex_", is_flag=True,
    help="Print keys and values as hex, and read KEY arguments as hex.",
)
existing = click.Path(exists=True, dir_okay=False)
decode_option = click.option(
    "--decode", "decode_as", type=click.Choice(decode.DECODERS), default="raw",
    show_default=True,
    help="ringkv: show keys as partition + key and values as sibling sets.",
)


def _fs() -> FileSystem:
    return OsFileSystem()


def _finish(code: Exit) -> None:
    click.get_current_context().exit(int(code))


def _emit(as_json: bool, hex_: bool, doc: Any, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(jsonable(doc, hex_), indent=2, ensure_ascii=False))
    else:
        for line in lines:
            click.echo(line)


def _fail(as_json: bool, problem: Problem) -> None:
    """Report a file that could not be inspected at all, and exit 1."""
    if as_json:
        click.echo(json.dumps({"path": problem.path, "ok": False,
                               "problem": jsonable(problem)}, indent=2))
    else:
        click.echo(problem.line(), err=True)
    _finish(Exit.CORRUPT)


def _key(text_: str | None, hex_: bool, name: str) -> bytes | None:
    if text_ is None:
        return None
    try:
        return parse_key(text_, hex_)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _size(fs: FileSystem, path: str) -> int:
    try:
        return fs.file_size(path)
    except READ_ERRORS:  # gone since click checked; verify reports it
        return 0


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


# -- sst ------------------------------------------------------------------------
@click.group()
def sst() -> None:
    """Inspect SSTables (NNNNNN.sst). Exit codes: 0 ok, 1 corruption found, 2 usage error."""


def _sst_files(fs: FileSystem, paths: tuple[str, ...]) -> list[str]:
    out = []
    for p in paths:
        if lib_logs.is_dir(fs, p):
            out += [f"{p.rstrip('/')}/{n}" for n in fs.listdir(p) if n.endswith(".sst")]
        else:
            out.append(p)
    return out


@sst.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True),
                metavar="FILE|DIR...")
@json_option
def identify(paths: tuple[str, ...], as_json: bool) -> None:
    """Say whether each FILE (or each *.sst in DIR) is a valid ringkv
    SSTable, and its format version."""
    fs = _fs()
    results = [lib_sst.identify(fs, p) for p in _sst_files(fs, paths)]
    _emit(as_json, False, results, [line for r in results for line in text.identity(r)])
    _finish(Exit.OK if all(r.is_sstable for r in results) else Exit.CORRUPT)


@sst.command()
@click.argument("files", nargs=-1, required=True, type=existing, metavar="FILE...")
@json_option
@hex_option
def properties(files: tuple[str, ...], as_json: bool, hex_: bool) -> None:
    """Entries, tombstones, key and seq ranges, block sizes, compression
    ratio and bloom bits per key of each table."""
    fs = _fs()
    docs: list[Any] = []
    lines: list[str] = []
    code = Exit.OK
    for f in files:
        try:
            r = lib_sst.properties(fs, f)
        except READ_ERRORS as exc:
            problem = Problem.of(exc, f)
            docs.append({"path": f, "ok": False, "problem": problem})
            if not as_json:
                click.echo(problem.line(), err=True)
            code = Exit.CORRUPT
            continue
        docs.append(dict(jsonable(r, hex_), ok=True))
        lines += text.props_report(r, hex_)
    _emit(as_json, hex_, docs, lines)
    _finish(code)


@sst.command()
@click.argument("file", type=existing)
@click.option("--from", "start", metavar="KEY", help="First key (inclusive).")
@click.option("--to", "end", metavar="KEY", help="Stop before this key (exclusive).")
@click.option("--prefix", metavar="P", help="Only keys starting with P.")
@click.option("--limit", type=click.IntRange(min=0), help="At most N entries.")
@json_option
@hex_option
@decode_option
def scan(file: str, *, start: str | None, end: str | None, prefix: str | None,
         limit: int | None, as_json: bool, hex_: bool, decode_as: str) -> None:
    """Entries of FILE in key order with their seq and kind (value or
    tombstone). Keys are text with \\xNN escapes, or hex with --hex;
    --decode ringkv shows a shard worker's partition, key and sibling set."""
    lo, hi = _key(start, hex_, "--from"), _key(end, hex_, "--to")
    pre = _key(prefix, hex_, "--prefix")
    try:
        reader = lib_sst.open_table(_fs(), file)
    except READ_ERRORS as exc:
        _fail(as_json, Problem.of(exc, file))
        return
    entries = []
    problem = None
    try:
        for e in lib_sst.scan(reader, lo, hi, pre, limit):
            ringkv = decode_as == "ringkv"
            if as_json:
                entries.append(
                    dict(jsonable(e, hex_), **jsonable(decode.entry_json(
                        e.key, e.value if e.kind in _CARRIES_SIBLINGS else None), hex_))
                    if ringkv else e
                )
            elif ringkv:
                shown = (f"{e.kind} {decode.value_text(e.value, hex_)}"
                         if e.kind in _CARRIES_SIBLINGS else e.kind)
                click.echo(f"{decode.key_text(e.key, hex_)} @{e.seq} {shown}")
            else:
                click.echo(text.scan_entry(e, hex_))
    except CorruptionError as exc:
        problem = Problem.of(exc, file)
    finally:
        reader.close()
    if as_json:
        _emit(True, hex_, {"path": file, "entries": entries, "problem": problem}, [])
    elif problem is not None:
        click.echo(problem.line(), err=True)
    _finish(Exit.OK if problem is None else Exit.CORRUPT)


@sst.command()
@click.argument("file", type=existing)
@click.argument("key")
@json_option
@hex_option
def get(file: str, key: str, as_json: bool, hex_: bool) -> None:
    """The bloom filter's verdict on KEY and what a lookup in FILE finds.
    KEY is text with \\xNN escapes, or hex with --hex."""
    k = _key(key, hex_, "KEY") or b""
    try:
        reader = lib_sst.open_table(_fs(), file)
    except READ_ERRORS as exc:
        _fail(as_json, Problem.of(exc, file))
        return
    try:
        r = lib_sst.get(reader, k)
    finally:
        reader.close()
    _emit(as_json, hex_, r, text.get_result(r, hex_))
    _finish(Exit.OK if r.problem is None else Exit.CORRUPT)


@sst.command()
@click.argument("files", nargs=-1, required=True, type=existing, metavar="FILE...")
@json_option
def verify(files: tuple[str, ...], as_json: bool) -> None:
    """Check every block checksum, the key order within and across blocks,
    the index against the blocks, the filter against the keys and the
    totals against the properties. Reads one block at a time."""
    fs = _fs()
    results = []
    for f in files:
        with _progress(_size(fs, f), f) as progress:
            r = lib_sst.verify(fs, f, progress)
        results.append(r)
        if not as_json:
            for line in text.verify_result(r):
                click.echo(line)
    if as_json:
        _emit(True, False, [dict(jsonable(r), ok=r.ok) for r in results], [])
    _finish(Exit.OK if all(r.ok for r in results) else Exit.CORRUPT)


@sst.command()
@click.argument("file", type=existing)
@json_option
@hex_option
def dump(file: str, as_json: bool, hex_: bool) -> None:
    """Index entries (block handles, sizes, last keys), meta blocks, footer
    and properties of FILE."""
    try:
        r = lib_sst.dump(_fs(), file)
    except READ_ERRORS as exc:
        _fail(as_json, Problem.of(exc, file))
        return
    _emit(as_json, hex_, r, text.dump_result(r, hex_))
    _finish(Exit.OK)


# -- wal ------------------------------------------------------------------------
@click.group()
def wal() -> None:
    """Inspect write-ahead logs (NNNNNN.log). A torn tail (an append cut short
    by a crash) is reported but is not corruption: recovery drops it.
    Exit codes: 0 ok, 1 corruption found, 2 usage error."""


def _wal(file: str, as_json: bool, hex_: bool, records: bool) -> None:
    r = lib_logs.wal(_fs(), file, keep_records=records)
    doc = dict(jsonable(r, hex_), ok=r.ok)
    if not records:
        del doc["records"]
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in text.wal_report(r, hex_, records):
            click.echo(line)
    _finish(Exit.OK if r.ok else Exit.CORRUPT)


@wal.command("dump")
@click.argument("file", type=existing)
@json_option
@hex_option
def wal_dump(file: str, as_json: bool, hex_: bool) -> None:
    """Every record of FILE: its offset and batch, each operation's seq,
    kind, key and value size; then where a torn tail starts."""
    _wal(file, as_json, hex_, records=True)


@wal.command("verify")
@click.argument("file", type=existing)
@json_option
def wal_verify(file: str, as_json: bool) -> None:
    """Check every record checksum and batch of FILE; say where a torn
    tail starts."""
    _wal(file, as_json, False, records=False)


# -- manifest -------------------------------------------------------------------
@click.group()
def manifest() -> None:
    """Inspect the manifest (MANIFEST-NNNNNN). Exit codes: 0 ok, 1 corruption
    found, 2 usage error."""


@manifest.command("dump")
@click.argument("target", type=click.Path(exists=True), metavar="DIR|MANIFEST")
@json_option
@hex_option
def manifest_dump(target: str, as_json: bool, hex_: bool) -> None:
    """The version edits of the manifest CURRENT names in DIR (or of the
    MANIFEST file given) and the levels they add up to."""
    r = lib_logs.manifest(_fs(), target)
    _emit(as_json, hex_, dict(jsonable(r, hex_), ok=r.ok), text.manifest_report(r, hex_))
    _finish(Exit.OK if r.ok else Exit.CORRUPT)


# -- db -------------------------------------------------------------------------
@click.group()
def db() -> None:
    """Check a whole database directory. Exit codes: 0 ok, 1 corruption
    found, 2 usage error."""


@db.command("check")
@click.argument("directory", type=click.Path(exists=True, file_okay=False), metavar="DIR")
@json_option
@hex_option
def db_check(directory: str, as_json: bool, hex_: bool) -> None:
    """CURRENT names a readable manifest, every table it references exists
    and verifies, levels 1+ do not overlap, live WALs read cleanly; files
    nobody references are listed."""
    fs = _fs()
    with _progress(lib_db.table_bytes(fs, directory), directory) as progress:
        r = lib_db.check(fs, directory, progress)
    _emit(as_json, hex_, dict(jsonable(r, hex_), ok=r.ok), text.db_report(r, hex_))
    _finish(Exit.OK if r.ok else Exit.CORRUPT)


COMMANDS = (sst, wal, manifest, db)
__all__ = ["COMMANDS", "db", "manifest", "sst", "wal"]
