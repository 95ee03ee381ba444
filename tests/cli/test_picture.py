"""The partition map of ``ringkv status`` / ``ring`` (cli.picture), drawn
from hand-made ring replies: markers, wrapping and colour."""

from __future__ import annotations

import click
import pytest

from cli import picture
from coordinator.errors import RingError
from coordinator.ops import admin_api as api
from tests.cli.maps import map_rows

# Q=16 owned round robin by a..d: partition p's primaries are the owners of
# p, p+1, p+2, so a (owner of 0, 4, ...) is a replica of 2 and 3 and holds
# nothing of 1.
OWNERS = tuple("abcd"[p % 4] for p in range(16))


def reply(down: tuple[str, ...] = (), owners: tuple[str, ...] = OWNERS,
          key: int | None = None) -> api.RingReply:
    nodes = tuple(api.RingMember(n, None, "down" if n in down else "up", 4, 12) for n in "abcd")
    placement = None if key is None else api.KeyPlacement(key, (), (), ())
    return api.RingReply(1, len(owners), 3, nodes, owners, placement)


def draw(r: api.RingReply, width: int = 80, colour: bool = False) -> list[str]:
    health = picture.health_of(r)
    return picture.partition_map(health, "abcd", width=width, colour=colour,
                                 key_partition=r.key.partition if r.key else None)


def test_markers_follow_the_preference_lists() -> None:
    got = map_rows(draw(reply()))
    assert got["a"] == "P.rr" * 4
    assert got["b"] == "rP.r" * 4
    assert got["d"] == ".rrP" * 4
    assert got["under-rep"] == "." * 16
    assert "key" not in got


def test_a_down_node_is_marked_and_its_partitions_under_replicated() -> None:
    got = map_rows(draw(reply(down=("c",))))
    assert got["c"] == "xxX." * 4
    assert got["a"] == "P.rr" * 4  # the others keep their markers
    # Every partition c is a primary of (3 of each 4) has fewer than N up.
    assert got["under-rep"] == "!!!." * 4


def test_the_key_row_marks_one_partition() -> None:
    got = map_rows(draw(reply(key=9)))
    assert got["key"] == " " * 9 + "^" + " " * 6
    owners = tuple("abcd"[p % 4] for p in range(64))
    narrow = map_rows(draw(reply(owners=owners, key=50), width=40))
    assert narrow["key"].index("^") == 50 and len(narrow["key"]) == 64


def test_wraps_at_the_width_in_whole_ticks() -> None:
    owners = tuple("abcd"[p % 4] for p in range(64))
    lines = draw(reply(owners=owners), width=40)
    assert max(map(len, lines)) <= 40
    rulers = [line for line in lines if line.startswith("partitions")]
    # 40 columns less an 11-column label leave 29: three ticks of 8.
    assert [r.split()[1] for r in rulers] == ["0", "24", "48"]
    got = map_rows(lines)
    assert {len(v) for k, v in got.items()} == {64}
    assert got["a"] == "P.rr" * 16


def test_one_block_when_the_ring_fits() -> None:
    lines = draw(reply(), width=80)
    assert sum(1 for line in lines if line.startswith("partitions")) == 1
    assert "partitions 0       8" in lines


def test_colour_only_when_asked() -> None:
    plain = "\n".join(draw(reply(down=("c",))))
    assert "\x1b[" not in plain
    painted = draw(reply(down=("c",)), colour=True)
    assert any("\x1b[31m" in line for line in painted)  # red for the down node
    assert map_rows([click.unstyle(line) for line in painted]) == map_rows(
        draw(reply(down=("c",))))


def test_a_reply_that_does_not_hold_together_is_an_error() -> None:
    with pytest.raises(RingError, match="not a member"):
        picture.health_of(reply(owners=("a",) * 15 + ("zz",)))


def test_share_of_the_ring() -> None:
    assert picture.share(16, 64) == "25.0%"
    assert picture.share(0, 0) == "-"
