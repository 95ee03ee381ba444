from __future__ import annotations

from lsm import compaction as policy
from lsm.manifest import FileMeta, VersionEdit
from lsm.options import Options
from lsm.version import LsmVersion


def meta(number: int, smallest: bytes, largest: bytes, size: int = 100, seq: int = 0) -> FileMeta:
    return FileMeta(
        number=number, size=size, smallest=smallest, largest=largest,
        smallest_seq=seq, largest_seq=seq, entries=1, tombstones=0,
    )


OPTS = Options(l0_compaction_trigger=2, level1_bytes=1000, level_fanout=10, num_levels=4)


def test_nothing_to_do_on_small_levels() -> None:
    v = LsmVersion.build([[meta(1, b"a", b"b")], [meta(2, b"a", b"z", size=500)], [], []])
    assert policy.pick_compaction(v, OPTS) is None


def test_level0_takes_every_file_and_overlapping_level1() -> None:
    v = LsmVersion.build([
        [meta(1, b"c", b"f", seq=1), meta(2, b"a", b"d", seq=2)],
        [meta(3, b"a", b"b"), meta(4, b"e", b"g"), meta(5, b"x", b"y")],
        [], [],
    ])
    task = policy.pick_compaction(v, OPTS)
    assert task is not None and task.level == 0
    assert [f.number for f in task.inputs] == [2, 1]  # newest first
    assert {f.number for f in task.next_inputs} == {3, 4}
    assert task.bottommost


def test_level_over_target_picks_round_robin_after_pointer() -> None:
    files = [meta(n, bytes([97 + 2 * n]), bytes([98 + 2 * n]), size=400) for n in range(1, 5)]
    v = LsmVersion.build([[], files, [meta(9, b"a", b"z")], []])
    first = policy.pick_compaction(v, OPTS)
    assert first is not None and first.level == 1 and first.inputs[0].number == 1
    after = policy.pick_compaction(v, OPTS, {1: first.inputs[0].largest})
    assert after is not None and after.inputs[0].number == 2
    assert [f.number for f in after.next_inputs] == [9]


def test_not_bottommost_when_deeper_level_overlaps() -> None:
    v = LsmVersion.build([[meta(1, b"a", b"c"), meta(2, b"b", b"d")], [],
                          [meta(3, b"c", b"c")], []])
    task = policy.pick_compaction(v, OPTS)
    assert task is not None and not task.bottommost


def test_trivial_move_and_result_edits_apply() -> None:
    v = LsmVersion.build([[], [meta(1, b"a", b"b", size=5000)], [], []])
    task = policy.pick_compaction(v, OPTS)
    assert task is not None and task.is_trivial_move
    moved = v.apply(policy.trivial_move_edit(task))
    assert [f.number for f in moved.levels[2]] == [1] and not moved.levels[1]

    v2 = LsmVersion.build([[meta(1, b"a", b"m", seq=5), meta(2, b"k", b"z", seq=6)], [], [], []])
    t2 = policy.pick_compaction(v2, OPTS)
    assert t2 is not None
    done = v2.apply(policy.result_edit(t2, [meta(7, b"a", b"z")]))
    assert not done.levels[0] and [f.number for f in done.levels[1]] == [7]


def test_manual_level0_step_takes_all_level0_files() -> None:
    v = LsmVersion.build([[meta(1, b"a", b"b"), meta(2, b"x", b"z")], [], [], []])
    task = policy.manual_step(v, 0, b"a", b"a", after=None, max_bytes=1)
    assert task is not None and len(task.inputs) == 2


def _steps(v: LsmVersion, level: int, max_bytes: int) -> list[tuple[list[int], list[int]]]:
    """The manual steps of ``level``, each (inputs, next_inputs), without running them."""
    out, after = [], None
    while True:
        task = policy.manual_step(v, level, None, None, after=after, max_bytes=max_bytes)
        if task is None:
            return out
        out.append(([f.number for f in task.inputs], [f.number for f in task.next_inputs]))
        after = max(f.largest for f in task.inputs)


def test_manual_steps_are_bounded_and_walk_the_level_in_key_order() -> None:
    v = LsmVersion.build([
        [],
        [meta(1, b"a", b"b"), meta(2, b"c", b"d"), meta(3, b"e", b"f"), meta(4, b"g", b"h")],
        [meta(5, b"a", b"c"), meta(6, b"h", b"i")],
        [],
    ])
    # Files 1 and 2 overlap file 5 below: 300 bytes; adding 3 would make 400.
    assert _steps(v, 1, 300) == [([1, 2], [5]), ([3, 4], [6])]
    # A budget below one file still takes one file a step.
    assert _steps(v, 1, 1) == [([1], [5]), ([2], [5]), ([3], []), ([4], [6])]
    assert _steps(v, 1, 10_000) == [([1, 2, 3, 4], [5, 6])]


def test_manual_step_retakes_a_file_reaching_past_the_cursor() -> None:
    # Made meanwhile by a level-0 compaction: it straddles where the last step ended.
    v = LsmVersion.build([[], [meta(1, b"a", b"b"), meta(2, b"c", b"m")], [], []])
    task = policy.manual_step(v, 1, None, None, after=b"d", max_bytes=1)
    assert task is not None and [f.number for f in task.inputs] == [2]
    assert policy.manual_step(v, 1, None, None, after=b"m", max_bytes=1) is None


def test_bottom_steps_rewrite_the_deepest_level_in_place_in_bounded_steps() -> None:
    v = LsmVersion.build([[], [meta(1, b"a", b"z")],
                          [meta(2, b"a", b"b"), meta(3, b"c", b"d"), meta(4, b"e", b"f")], []])
    first = policy.bottom_step(v, None, None, after=None, max_bytes=200)
    assert first is not None and first.in_place and first.level == 2
    assert [f.number for f in first.inputs] == [2, 3] and first.output_level == 2
    second = policy.bottom_step(v, None, None, after=b"d", max_bytes=200)
    assert second is not None and [f.number for f in second.inputs] == [4]
    assert policy.bottom_step(v, None, None, after=b"f", max_bytes=200) is None
    # Only files overlapping the range.
    only = policy.bottom_step(v, b"c", b"c", after=None, max_bytes=10_000)
    assert only is not None and [f.number for f in only.inputs] == [3]


def test_level0_task_only_when_level0_reached_its_trigger() -> None:
    one = LsmVersion.build([[meta(1, b"a", b"b")], [meta(2, b"a", b"c")], [], []])
    assert policy.level0_task(one, OPTS) is None
    two = LsmVersion.build([[meta(1, b"a", b"b"), meta(3, b"x", b"y")], [meta(2, b"a", b"c")],
                            [], []])
    task = policy.level0_task(two, OPTS)
    assert task is not None and [f.number for f in task.next_inputs] == [2]


def test_version_lookup_and_overlap_checks() -> None:
    v = LsmVersion.build([[], [meta(1, b"a", b"c"), meta(2, b"e", b"g")], [], []])
    found = v.find_in_level(1, b"f")
    assert found is not None and found.number == 2
    assert v.find_in_level(1, b"d") is None
    assert v.find_in_level(1, b"z") is None
    v.check_levels("test")
    bad = LsmVersion.build([[], [meta(1, b"a", b"f"), meta(2, b"e", b"g")], [], []])
    try:
        bad.check_levels("test")
    except Exception as exc:
        assert "overlap" in str(exc)
    else:
        raise AssertionError("overlap not detected")
    v3 = v.apply(VersionEdit(deleted=((1, 1),)))
    assert [f.number for f in v3.levels[1]] == [2]


def test_debt_grows_with_excess() -> None:
    small = LsmVersion.build([[], [meta(1, b"a", b"b", size=500)], [], []])
    big = LsmVersion.build([[], [meta(1, b"a", b"b", size=5000)], [], []])
    assert policy.compaction_debt_bytes(small, OPTS) == 0
    assert policy.compaction_debt_bytes(big, OPTS) > 0
