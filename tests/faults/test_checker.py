"""The harness's pure parts: set-full checker, error classification,
schedule text round trip (no processes)."""

from __future__ import annotations

import redis
from hypothesis import given

from tests.faults.checker import availability, set_full
from tests.faults.history import History, Op, classify
from tests.faults.schedule import Schedule, Step, schedules
from tests.faults.workload import decode_set, encode_set, union_of


def adds(*outcomes: tuple[str, str, str]) -> list[Op]:
    """(key, element, ok|fail|info|pending) -> invoke + completion ops."""
    h = History()
    for n, (key, element, kind) in enumerate(outcomes):
        op = h.invoke(n, "add", key, element, "n1")
        if kind != "pending":
            h.complete(op, kind)  # type: ignore[arg-type]
    return h.ops


def test_set_full_accepts_acked_present_and_indeterminate_either_way() -> None:
    ops = adds(("k", "0.1", "ok"), ("k", "0.2", "info"), ("k", "0.3", "info"),
               ("k", "0.4", "fail"), ("k", "0.5", "pending"))
    result = set_full(ops, {"k": {"0.1", "0.2", "0.5"}})
    assert result.valid, result.problems()
    assert (result.attempted, result.acked, result.failed, result.indeterminate,
            result.info_present) == (5, 1, 1, 3, 2)


def test_set_full_flags_lost_phantom_misplaced_and_failed_but_present() -> None:
    ops = adds(("k", "0.1", "ok"), ("k", "0.2", "fail"), ("j", "0.3", "ok"))
    result = set_full(ops, {"k": {"0.2", "0.3", "9.9"}, "j": set()})
    assert not result.valid
    assert sorted(result.lost) == [("j", "0.3"), ("k", "0.1")]
    assert result.failed_present == [("k", "0.2")]
    assert sorted(result.phantom) == [("k", "0.3"), ("k", "9.9")]
    assert "lost" in result.summary() and "phantom" in result.problems()


def test_availability_counts_completions_per_node() -> None:
    h = History()
    h.complete(h.invoke(0, "add", "k", "a", "n1"), "ok")
    h.complete(h.invoke(1, "add", "k", "b", "n3"), "fail")
    assert availability(h.ops, "add") == (1, 2)
    assert availability(h.ops, "add", nodes={"n3"}) == (0, 1)
    assert availability(h.ops, "add", processes=range(1)) == (1, 1)
    assert availability(h.ops, "add", since=h.now()) == (0, 0)


def test_classify_calls_only_provably_unsent_requests_failed() -> None:
    assert classify(redis.ResponseError(
        "NOQUORUM needed 2 acks, only 1 up, nothing sent (replicas: ...)")) == "fail"
    assert classify(redis.ResponseError("NOQUORUM needed 2 acks, got 1 (replicas: ...)")) == "info"
    assert classify(redis.ReadOnlyError("disk full or I/O error on n3")) == "info"
    assert classify(redis.ConnectionError(
        "Error 111 connecting to 127.0.0.2:7000. Connection refused.")) == "fail"
    assert classify(redis.ConnectionError("Connection closed by server.")) == "info"
    assert classify(redis.TimeoutError("Timeout reading from socket")) == "info"


def test_set_values_round_trip_and_union() -> None:
    assert decode_set(encode_set({"1.2", "0.1"})) == {"0.1", "1.2"}
    assert decode_set(b"") == set()
    assert union_of([b"0.1\n0.2", b"0.2\n1.1"]) == {"0.1", "0.2", "1.1"}


def test_schedule_text_names_each_step() -> None:
    s = Schedule(7, (Step("kill", 1, 0.5, 1.2), Step("cut", 2, 0.3, 2.0)), 1.0)
    assert s.text() == "seed=7 kill:n2@0.5+1.2 cut:n3@0.3+2 tail=1"
    assert Schedule.parse(s.text()) == s
    assert s.faults == {"kill", "cut"}


@given(schedules())
def test_schedule_text_round_trips(schedule: Schedule) -> None:
    assert Schedule.parse(schedule.text()) == schedule


def test_schedule_parse_errors_name_the_word() -> None:
    for text, word in (("kill:n2@0.5+1", "no seed="), ("seed=1 nuke:n1@1+1", "nuke"),
                       ("seed=1 kill:n9@1+1", "n9"), ("seed=1 oops", "oops")):
        try:
            Schedule.parse(text)
        except ValueError as exc:
            assert word in str(exc), exc
        else:
            raise AssertionError(f"{text!r} parsed")
