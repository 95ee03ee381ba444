"""Golden tests of ``ringkv sst|wal|manifest|db`` on the checked-in fixtures.

Each case runs one command through click's CliRunner (from the repository
root, so paths print as ``fixtures/...``) and compares exit code, stdout and
stderr with ``tests/cli/golden/<case>.txt``. After an intended change of the
output, regenerate and review the diff:

    UPDATE_GOLDEN=1 python -m pytest tests/cli/test_inspect_golden.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from lsm.inspect import parse_key, render_bytes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

TABLES = ["good", "bad_magic", "truncated", "bad_block_crc", "out_of_order", "merge"]
WALS = ["fixtures/torn_tail.log", "fixtures/corrupt_mid.log", "fixtures/db/000014.log",
        "fixtures/good.sst", "fixtures/merge.log"]
DIRS = ["fixtures/db", "fixtures/db_missing_sst", "fixtures"]


def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []
    for t in TABLES:
        f = f"fixtures/{t}.sst"
        cases += [
            (f"sst-identify-{t}", ["sst", "identify", f]),
            (f"sst-properties-{t}", ["sst", "properties", f]),
            (f"sst-scan-{t}", ["sst", "scan", f]),
            (f"sst-get-{t}", ["sst", "get", f, "user:0050"]),
            (f"sst-verify-{t}", ["sst", "verify", f]),
            (f"sst-dump-{t}", ["sst", "dump", f]),
        ]
    cases += [
        ("sst-identify-dir", ["sst", "identify", "fixtures"]),
        ("sst-scan-range", ["sst", "scan", "fixtures/good.sst", "--from", "user:0040",
                            "--to", "user:0044"]),
        ("sst-scan-prefix-limit", ["sst", "scan", "fixtures/good.sst", "--prefix", "user:01",
                                   "--limit", "3"]),
        ("sst-scan-hex", ["sst", "scan", "fixtures/good.sst", "--hex", "--from", "7a"]),
        ("sst-get-tombstone", ["sst", "get", "fixtures/good.sst", "user:0005"]),
        ("sst-get-absent", ["sst", "get", "fixtures/good.sst", "user:9999"]),
        ("sst-get-binary", ["sst", "get", "fixtures/good.sst", "zz\\x00bin\\xff"]),
        ("sst-get-out-of-order", ["sst", "get", "fixtures/out_of_order.sst", "k05"]),
        ("sst-verify-all", ["sst", "verify", *(f"fixtures/{t}.sst" for t in TABLES)]),
        ("sst-usage-missing-file", ["sst", "verify", "fixtures/nope.sst"]),
        ("sst-usage-bad-hex", ["sst", "get", "fixtures/good.sst", "--hex", "xyz"]),
        ("sst-usage-bad-escape", ["sst", "scan", "fixtures/good.sst", "--from", "a\\q"]),
    ]
    for w in WALS:
        name = Path(w).name.replace(".", "_")
        cases += [(f"wal-dump-{name}", ["wal", "dump", w]),
                  (f"wal-verify-{name}", ["wal", "verify", w])]
    for d in DIRS:
        name = Path(d).name
        cases += [(f"manifest-dump-{name}", ["manifest", "dump", d]),
                  (f"db-check-{name}", ["db", "check", d])]
    cases.append(("manifest-dump-file", ["manifest", "dump", "fixtures/db/MANIFEST-000003"]))
    # Every case again with --json, except usage errors (their output is click's).
    cases += [(f"{n}.json", [*a, "--json"]) for n, a in list(cases) if "usage" not in n]
    return cases


CASES = _cases()


def _render(args: list[str], code: int, out: str, err: str) -> str:
    return f"$ ringkv {' '.join(args)}\nexit: {code}\n--- stdout\n{out}--- stderr\n{err}"


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.mark.usefixtures("at_root")
@pytest.mark.parametrize(("name", "args"), CASES, ids=[c[0] for c in CASES])
def test_golden(name: str, args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, prog_name="ringkv")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    got = _render(args, result.exit_code, result.stdout, result.stderr)
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(got, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1"
    assert got == path.read_text(encoding="utf-8")


def test_no_stale_golden_files() -> None:
    names = {f"{n}.txt" for n, _ in CASES}
    stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.name not in names)
    if UPDATE:
        for n in stale:
            (GOLDEN / n).unlink()
        return
    assert not stale


def test_exit_codes_follow_the_documented_scheme() -> None:
    codes = {}
    for name, _ in CASES:
        text = (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")
        codes[name] = int(re.search(r"^exit: (\d+)$", text, re.M).group(1))
        assert "Traceback" not in text, name
    assert codes["sst-verify-good"] == 0
    assert codes["sst-verify-merge"] == 0
    assert codes["wal-verify-merge_log"] == 0
    assert codes["wal-verify-torn_tail_log"] == 0  # a torn tail is not corruption
    for bad in ("bad_magic", "truncated", "bad_block_crc", "out_of_order"):
        assert codes[f"sst-verify-{bad}"] == 1
    assert codes["wal-verify-corrupt_mid_log"] == 1
    assert codes["db-check-db"] == 0
    assert codes["db-check-db_missing_sst"] == 1
    assert codes["sst-usage-missing-file"] == 2
    assert codes["sst-usage-bad-hex"] == 2


def _tree_digest(path: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(path))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             st.st_mtime_ns)
    return out


@pytest.mark.usefixtures("at_root")
def test_read_only() -> None:
    """No command writes to what it inspects (not even the LOCK file)."""
    before = _tree_digest(ROOT / "fixtures")
    runner = CliRunner()
    for _, args in CASES:
        runner.invoke(cli, args, prog_name="ringkv")
    assert _tree_digest(ROOT / "fixtures") == before


def test_fixtures_are_reproducible(tmp_path: Path) -> None:
    """make_fixtures.py rebuilds the checked-in files byte for byte."""
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", ROOT / "fixtures" / "make_fixtures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(str(tmp_path))
    for p in sorted((ROOT / "fixtures").rglob("*")):
        rel = p.relative_to(ROOT / "fixtures")
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in rel.parts:
            assert (tmp_path / rel).read_bytes() == p.read_bytes(), rel


def test_installed_console_script() -> None:
    """The installed ``ringkv`` entry point runs the same commands."""
    exe = shutil.which("ringkv")
    if exe is None:
        pytest.skip("ringkv console script not installed (pip install -e .)")
    ok = subprocess.run([exe, "sst", "verify", "fixtures/good.sst"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "fixtures/good.sst: OK (121 entries in 6 blocks, 3077 bytes)\n"
    bad = subprocess.run([exe, "db", "check", "fixtures/db_missing_sst"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert ("fixtures/db_missing_sst/000015.sst: missing: level 0 of MANIFEST-000003 "
            "references it") in bad.stdout
    assert "Traceback" not in bad.stderr
    usage = subprocess.run([exe, "wal", "dump"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=False)
    assert usage.returncode == 2


@pytest.mark.parametrize("raw", [b"", b"user:1", b"a\\b", b"\x00\xff\n", b"caf\xc3\xa9", b"\\x41"])
def test_rendered_keys_parse_back(raw: bytes) -> None:
    """A key copied from the output can be pasted back as an argument."""
    assert parse_key(render_bytes(raw)) == raw
    assert parse_key(render_bytes(raw, hex_=True), hex_=True) == raw
    assert all(0x20 <= ord(c) < 0x7F for c in render_bytes(raw))
