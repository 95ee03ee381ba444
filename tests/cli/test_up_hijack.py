"""``ringkv up --data DIR`` and ``ringkv serve`` refuse paths another user
could have prepared: a data directory others can write or own, a cluster
secret or log planted as a symlink, a config others can rewrite. And no
file is written through a predictable temp name (real processes and files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import files
from tests.cluster import ROOT, port_block
from tests.processes import group_alive

pytestmark = pytest.mark.integration

NOBODY = 65534


def run_up(data: Path, timeout_s: float = 60.0) -> tuple[int | None, str]:
    """``ringkv up`` until it exits or says the cluster is up (then it is
    stopped: whatever it did is in its output and on disk)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--data", str(data), "--port",
         str(port_block(1)), "--nodes", "1", "--n", "1", "--workers", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:  # ends at EOF when `up` exits
            lines.append(line)
            if line.startswith("Connect with:"):
                return None, "".join(lines)  # it started the cluster
        return proc.wait(timeout_s), "".join(lines)
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)
        proc.stdout.close()


def test_a_data_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    data.mkdir()
    data.chmod(0o777)
    code, out = run_up(data)
    assert code == 1, out
    assert f"data directory {data} is writable by other users (mode 777)" in out
    assert f"chmod go-w {data}" in out
    assert os.listdir(data) == []  # nothing written into it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_data_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    code, out = run_up(data)
    assert code == 1, out
    assert f"data directory {data} belongs to uid {NOBODY}, not to this user" in out
    assert f"chown {os.geteuid()} {data}" in out


@pytest.mark.parametrize(("name", "what"), [("cluster.secret", "cluster secret"),
                                          ("node1.log", "log")])
def test_a_planted_symlink_is_refused(tmp_path: Path, name: str, what: str) -> None:
    """The hijack: a secret the attacker chose, linked in as cluster.secret,
    used to become the cluster's secret (the attacker then owns the peer
    port); a log linked to another file had the node's output appended to it."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.write_text("attacker-knows-this\n")
    (data / name).symlink_to(planted)
    code, out = run_up(data)
    assert code == 1, out
    assert f"{what} {data / name} is a symbolic link" in out
    assert planted.read_text() == "attacker-knows-this\n"
    assert not (data / "node1").exists()  # no node was started


def test_write_private_never_follows_a_planted_temp_symlink(tmp_path: Path) -> None:
    """``write_private`` used to write ``path + ".tmp"`` with O_CREAT|O_TRUNC,
    following a symlink planted there (straight into the attacker's file)
    and then renaming that symlink into place as the config."""
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    loot.chmod(0o666)
    config = tmp_path / "node1.toml"
    Path(f"{config}.tmp").symlink_to(loot)
    files.write_private(str(config), b'secret = "s3cret"\n')
    assert loot.read_bytes() == b""
    assert not config.is_symlink() and config.read_bytes() == b'secret = "s3cret"\n'
    assert config.stat().st_mode & 0o777 == 0o600
    # Only the planted link is left beside it: no temp file of ours.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loot", "node1.toml", "node1.toml.tmp"]


def test_serve_refuses_a_config_others_can_write(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "d"}"\n[cluster]\nsecret = "x"\n')
    config.chmod(0o664)
    done = subprocess.run([sys.executable, "-m", "cli", "serve", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"config {config} is writable by other users (mode 664)" in done.stderr
    assert not (tmp_path / "d").exists()
