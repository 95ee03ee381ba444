"""``ringkv sst scan --decode ringkv`` on a table a shard store wrote."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from cli.main import cli
from lsm.keys import KIND_MERGE
from lsm.options import Options
from shardserver.protocol.vclock import VClock, make_actor
from shardserver.protocol.versions import (
    Context,
    Version,
    encode_siblings,
    new_version_for_context,
    plain_version,
)
from shardserver.storage import ShardStore
from tests.lsm.helpers import write_table
from tests.lsm.merge_ops import AppendOperator


def _version(actor: str, hlc: int, value: bytes | None) -> Version:
    return plain_version(make_actor(actor, 1), hlc, value)


def test_scan_decodes_partition_key_and_siblings(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "w0")
    store = ShardStore.open(path, range(0, 8), Options())
    try:
        store.write(3, b"user:1", _version("n1", 5 << 16, b"hello"), mode="lww")
        store.write(3, b"user:2", _version("n2", 6 << 16, None), mode="lww")
        seen = Context(VClock.of({make_actor("n1", 1): 5 << 16}), (5 << 16, make_actor("n1", 1)))
        store.write(3, b"user:3", new_version_for_context(seen, make_actor("n3", 1), 7 << 16, b"x"),
                    mode="merge")
        store.flush()
    finally:
        store.close()
    (table,) = [n for n in os.listdir(path) if n.endswith(".sst")]
    runner = CliRunner()
    out = runner.invoke(cli, ["sst", "scan", "--decode", "ringkv", os.path.join(path, table)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("p=3 user:1 @")
    # a plain write: no context (clock), its own write is the dot and the floor
    assert "1 sibling [n1#1 hlc=5.0 clock={} plain hello]" in lines[0]
    assert lines[1].startswith("p=3 user:2 @") and "tombstone" in lines[1]
    # a context write: the clock and the floor its client saw
    assert "1 sibling [n3#1 hlc=7.0 clock={n1#1:327680} floor=n1#1@5.0 x]" in lines[2]
    doc = json.loads(runner.invoke(
        cli, ["sst", "scan", "--decode", "ringkv", "--json", os.path.join(path, table)]
    ).output)
    first = doc["entries"][0]
    assert first["partition"] == 3 and first["user_key"] == "user:1"
    assert first["siblings"][0]["value"] == "hello" and not first["siblings"][0]["tombstone"]
    assert first["siblings"][0]["floor"] == [5 << 16, "n1#1"]
    raw = runner.invoke(cli, ["sst", "scan", os.path.join(path, table)])
    assert raw.output.splitlines()[0].startswith("\\x00\\x03user:1 @")


def test_scan_decodes_merge_operands_too(tmp_path: str) -> None:
    """A merge entry's operand is a sibling set as well (what the shard
    layer's merge operator will write); --decode shows it with its kind."""
    path = os.path.join(tmp_path, "000001.sst")
    operand = encode_siblings((_version("n1", 7 << 16, b"blind"),))
    write_table(path, [(b"\x00\x03user:9", 11, KIND_MERGE, operand)],
                Options(merge_operator=AppendOperator()))
    runner = CliRunner()
    out = runner.invoke(cli, ["sst", "scan", "--decode", "ringkv", path])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(
        "p=3 user:9 @11 merge 1 sibling [n1#1 hlc=7.0 clock={} plain blind]")
    doc = json.loads(runner.invoke(cli, ["sst", "scan", "--decode", "ringkv", "--json", path])
                     .output)
    assert doc["entries"][0]["kind"] == "merge"
    assert doc["entries"][0]["siblings"][0]["value"] == "blind"
