"""The pure timeline cores: enter/exit pairing and interval placement, on hand-made data."""

from __future__ import annotations

import pytest
from mlscope.agents.call_tree import (
    ENTER,
    RAISE,
    RETURN,
    Call,
    WallClockAnchor,
    innermost_containers,
    pair_calls,
    place_ops,
)


def test_calls_nest_in_enter_order_with_their_payloads() -> None:
    events = [
        ("root", 0, ENTER, "in-root"),
        ("a", 1, ENTER, None),
        ("a.x", 2, ENTER, None),
        ("a.x", 3, RETURN, "out-x"),
        ("a", 4, RETURN, None),
        ("b", 5, ENTER, None),
        ("b", 6, RETURN, None),
        ("root", 7, RETURN, "out-root"),
    ]
    assert pair_calls(events, end_ns=99) == [
        Call("root", 0, 7, -1, False, "in-root", "out-root"),
        Call("a", 1, 4, 0),
        Call("a.x", 2, 3, 1, False, None, "out-x"),
        Call("b", 5, 6, 0),
    ]


def test_a_module_called_twice_is_two_calls() -> None:
    events = [("block", 0, ENTER, None), ("relu", 1, ENTER, None), ("relu", 2, RETURN, None),
              ("relu", 3, ENTER, None), ("relu", 4, RETURN, None), ("block", 5, RETURN, None)]
    calls = pair_calls(events, end_ns=9)
    assert [(call.key, call.start_ns, call.end_ns, call.parent) for call in calls] == [
        ("block", 0, 5, -1), ("relu", 1, 2, 0), ("relu", 3, 4, 0)]


def test_a_raising_call_is_failed_and_its_caller_may_recover() -> None:
    events = [("outer", 0, ENTER, None), ("inner", 1, ENTER, None), ("inner", 2, RAISE, None),
              ("fallback", 3, ENTER, None), ("fallback", 4, RETURN, None), ("outer", 5, RETURN, None)]
    calls = pair_calls(events, end_ns=9)
    assert [(call.key, call.end_ns, call.parent, call.failed) for call in calls] == [
        ("outer", 5, -1, False), ("inner", 2, 0, True), ("fallback", 4, 0, False)]


def test_calls_without_an_exit_end_when_that_is_noticed() -> None:
    # No exit for "inner" (an exception the hooks did not see): outer's exit closes it, and
    # "root", never exited, ends at end_ns.
    events = [("root", 0, ENTER, None), ("outer", 1, ENTER, None), ("inner", 2, ENTER, None),
              ("outer", 5, RETURN, None), ("late", 6, ENTER, None)]
    calls = pair_calls(events, end_ns=9)
    assert [(call.key, call.end_ns, call.failed) for call in calls] == [
        ("root", 9, True), ("outer", 5, False), ("inner", 5, True), ("late", 9, True)]


def test_an_exit_without_its_enter_is_ignored() -> None:
    calls = pair_calls([("a", 1, ENTER, None), ("stray", 2, RETURN, None), ("a", 3, RETURN, None)], end_ns=9)
    assert calls == [Call("a", 1, 3, -1)]


def test_innermost_container_of_each_interval() -> None:
    intervals = [(0, 100), (10, 50), (20, 30), (60, 90), (95, 120), (200, 210)]
    assert innermost_containers(intervals) == [-1, 0, 1, 0, -1, -1]


def test_innermost_containers_do_not_depend_on_input_order() -> None:
    intervals = [(20, 30), (60, 90), (0, 100), (10, 50)]
    assert innermost_containers(intervals) == [3, 2, -1, 2]


def test_equal_intervals_nest_in_input_order_and_shared_edges_contain() -> None:
    assert innermost_containers([(5, 9), (5, 9), (5, 9)]) == [-1, 0, 1]
    assert innermost_containers([(0, 10), (0, 4), (4, 10)]) == [-1, 0, 0]


def test_ops_go_under_the_innermost_layer_or_op() -> None:
    layers = [(0, 100), (10, 50)]
    ops = [(12, 20), (13, 15), (60, 70), (200, 210), (10, 50)]
    placement = place_ops(layers, ops)
    assert placement.layer_parent == (-1, -1, 0, -1, 1)  # an op equal to a layer goes under it
    assert placement.op_parent == (4, 0, -1, -1, -1)
    assert placement.inside_layer == (True, True, True, False, True)
    assert placement.fraction_inside == pytest.approx(0.8)


def test_ops_inside_a_layer_through_an_op_listed_after_them() -> None:
    # Nested ops listed before the op that calls them, as a profiler may list them.
    placement = place_ops([(10, 50)], [(13, 14), (12, 20), (11, 30), (60, 70), (61, 62)])
    assert placement.op_parent == (1, 2, -1, -1, 3)
    assert placement.layer_parent == (-1, -1, 0, -1, -1)
    assert placement.inside_layer == (True, True, True, False, False)


def test_an_op_skewed_across_a_layer_edge_goes_to_the_layer_around_both() -> None:
    placement = place_ops([(0, 100), (10, 50)], [(45, 55)])
    assert placement.layer_parent == (0,)


def test_no_ops_is_fully_inside() -> None:
    assert place_ops([(0, 1)], []).fraction_inside == 1.0


def test_clock_maps_monotonic_readings_to_the_wall_clock() -> None:
    clock = WallClockAnchor(wall_ns=1_700_000_000_000_000_000, perf_ns=5_000)
    assert clock.wall(5_000) == 1_700_000_000_000_000_000
    assert clock.wall(7_500) == 1_700_000_000_000_002_500
