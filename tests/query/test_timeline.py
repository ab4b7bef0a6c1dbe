"""The timeline's pure core: tree order, depth, self time, adjusters and their warnings, levels,
raw mode. No store, no server."""

from __future__ import annotations

import json

import pytest

from mlscope.conventions import LAYER_PATH, PROCESS_ORPHANED, PROCESS_PID, UnknownLevel, parse_levels
from mlscope.query.timeline import (
    ATTRIBUTE_COLUMN,
    SPAN_FIELDS_COLUMN,
    VIEWER_ATTRIBUTES,
    StringTable,
    Timeline,
    build_timeline,
    compact_json,
    self_time,
    span_fields_json,
    span_tree,
    timeline_json,
)
from tests.query.trace_fixtures import KNOWN, KNOWN_SHAPE, MS, T0, TRACE, columns_of, row, spans


def shape(timeline: Timeline) -> list[tuple[str, int, float]]:
    return [(item.span.name, item.depth, item.self_ns / MS) for item in timeline.spans]


def test_known_trace_in_pre_order_with_depth_and_self_time() -> None:
    timeline = build_timeline(TRACE, spans(KNOWN))
    assert shape(timeline) == KNOWN_SHAPE
    assert timeline.warnings == ()


def test_order_does_not_depend_on_input_order() -> None:
    assert shape(build_timeline(TRACE, spans(reversed(KNOWN)))) == KNOWN_SHAPE


def test_siblings_tie_on_start_by_span_id() -> None:
    rows = [row("0a", "", "root", 0, 10), row("0c", "0a", "c", 1, 2), row("0b", "0a", "b", 1, 3)]
    assert [item.span.name for item in build_timeline(TRACE, spans(rows)).spans] == ["root", "b", "c"]


@pytest.mark.parametrize(
    "children, expected_self_ms",
    [
        ([], 100),
        ([(10, 20), (30, 40)], 80),  # disjoint
        ([(10, 50), (20, 30)], 60),  # nested: the inner one adds nothing
        ([(10, 50), (40, 60)], 50),  # overlapping: counted once
        ([(-20, 10), (95, 130)], 85),  # sticking out: clipped to the parent
        ([(0, 100), (0, 100)], 0),
        ([(200, 300)], 100),  # entirely outside
    ],
)
def test_self_time_subtracts_the_union_of_children(children: list[tuple[int, int]], expected_self_ms: int) -> None:
    kids = [row(f"k{i}", "0p", "k", start, end) for i, (start, end) in enumerate(children)]
    parent, *kids = spans([row("0p", "", "p", 0, 100), *kids])
    assert self_time(parent, kids) == expected_self_ms * MS


def test_orphan_is_kept_as_a_root_with_a_warning() -> None:
    rows = KNOWN + [row("00000000000000e6", "00000000000000ff", "stray", 50, 60, "library")]
    timeline = build_timeline(TRACE, spans(rows))
    stray = [item for item in timeline.spans if item.span.name == "stray"]
    assert [(item.depth, item.span.parent_span_id) for item in stray] == [(0, "00000000000000ff")]
    assert timeline.warnings == ("span 00000000000000e6: parent 00000000000000ff not in trace",)
    # Roots are siblings by start time too: the orphan follows the pipeline's subtree.
    assert [item.span.name for item in timeline.spans][-1] == "stray"


def test_levels_filter_attaches_to_the_nearest_kept_ancestor() -> None:
    timeline = build_timeline(TRACE, spans(KNOWN), levels=frozenset({"application", "layer"}))
    # predict (model) is dropped: its layers hang from the pipeline. Self times stay those of
    # the whole trace.
    assert shape(timeline) == [("pipeline", 0, 15), ("conv1", 1, 30), ("relu", 1, 30), ("postprocess", 1, 5)]


def test_levels_filter_can_drop_the_root() -> None:
    timeline = build_timeline(TRACE, spans(KNOWN), levels=frozenset({"layer"}))
    assert [(item.span.name, item.depth) for item in timeline.spans] == [("conv1", 0), ("relu", 0)]


def test_levels_filter_orders_siblings_from_different_dropped_parents_by_start() -> None:
    rows = [row("0r", "", "root", 0, 100, "model"),
            row("1a", "0r", "layer-a", 0, 50, "layer"), row("1b", "0r", "layer-b", 50, 100, "layer"),
            # skewed clock: a's kernel starts after b's
            row("2a", "1a", "kernel-a", 60, 70, "library"), row("2b", "1b", "kernel-b", 55, 58, "library")]
    timeline = build_timeline(TRACE, spans(rows), levels=frozenset({"model", "library"}))
    assert [(item.span.name, item.depth) for item in timeline.spans] == [
        ("root", 0), ("kernel-b", 1), ("kernel-a", 1)]


def test_a_span_sent_with_different_content_keeps_the_earliest_copy_with_a_warning() -> None:
    rows = [row("0a", "", "root", 0, 10), row("0b", "0a", "first", 1, 2), row("0b", "0a", "second", 3, 4),
            row("0b", "0a", "third", 1, 3)]
    for ordered in (rows, rows[::-1]):
        timeline = build_timeline(TRACE, spans(ordered))
        assert [item.span.name for item in timeline.spans] == ["root", "first"]
        assert timeline.warnings == ("span 0b: sent 3 times with different content; kept the earliest",)


@pytest.mark.parametrize(
    "rows, root, warning",
    [
        ([row("0a", "0b", "a", 0, 10), row("0b", "0a", "b", 1, 5)], "a",
         "span 0a: parent chain loops (0a -> 0b -> 0a); shown as a root"),
        ([row("0a", "0a", "a", 0, 10)], "a", "span 0a: parent chain loops (0a -> 0a); shown as a root"),
        ([row("0x", "0c", "x", 5, 6), row("0a", "0c", "a", 2, 10), row("0b", "0a", "b", 3, 9),
          row("0c", "0b", "c", 4, 8)], "a", "span 0a: parent chain loops (0c -> 0b -> 0a -> 0c); shown as a root"),
    ],
    ids=["two", "self", "tail-into-loop"],
)
def test_parent_cycles_are_broken_at_their_earliest_span(rows: list[dict], root: str, warning: str) -> None:
    # Loops are written child -> parent, as the adjuster walks them.
    timeline = build_timeline(TRACE, spans(rows))
    assert len(timeline.spans) == len(rows)
    assert [item.span.name for item in timeline.spans if item.depth == 0] == [root]
    assert timeline.warnings == (warning,)


def test_child_outside_its_parent_is_a_warning_not_an_error() -> None:
    rows = [row("0a", "", "root", 10, 20), row("0b", "0a", "early", 5, 15)]
    timeline = build_timeline(TRACE, spans(rows))
    assert shape(timeline) == [("root", 0, 5), ("early", 1, 10)]
    assert timeline.warnings == ("span 0b: outside the time of its parent 0a",)


def test_a_process_marked_as_outliving_its_parent_is_not_warned_about() -> None:
    rows = [row("0a", "", "root", 10, 20), row("0b", "0a", "helper", 12, 30, attributes={PROCESS_ORPHANED: "true"}),
            row("0c", "0a", "skewed", 15, 25)]
    timeline = build_timeline(TRACE, spans(rows))
    assert shape(timeline) == [("root", 0, 2), ("helper", 1, 18), ("skewed", 1, 10)]
    assert timeline.warnings == ("span 0c: outside the time of its parent 0a",)


def test_spans_without_a_known_level_count_as_application() -> None:
    rows = [row("0a", "", "otel", 0, 10, ""), row("0b", "0a", "odd", 1, 2, "kernel")]
    timeline = build_timeline(TRACE, spans(rows), levels=frozenset({"application"}))
    assert [item.span.level for item in timeline.spans] == ["application", "application"]
    assert timeline.warnings == ("span 0b: unknown level 'kernel', shown as application",)


def test_raw_returns_the_stored_rows_untouched() -> None:
    rows = [row("0b", "0a", "child", 1, 2, "kernel"), row("0a", "", "root", 0, 10), row("0b", "0a", "copy", 3, 4)]
    timeline = build_timeline(TRACE, spans(rows), raw=True)
    assert [(i.span.name, i.span.level, i.depth, i.self_ns) for i in timeline.spans] == [
        ("root", "application", 0, 10 * MS), ("child", "kernel", 0, MS), ("copy", "application", 0, MS)]
    assert timeline.warnings == ()


def test_a_very_deep_trace_does_not_recurse() -> None:
    depth = 5000
    rows = [row(f"{i:016x}", f"{i - 1:016x}" if i else "", f"s{i}", i / 1000, 10_000 - i / 1000) for i in range(depth)]
    timeline = build_timeline(TRACE, spans(rows))
    assert [item.depth for item in timeline.spans] == list(range(depth))


@pytest.mark.parametrize(
    "text, expected",
    [(None, None), ("", None), ("model", {"model"}), ("Layer, hardware", {"layer", "hardware"}), ("model,", {"model"})],
)
def test_parse_levels(text: str | None, expected: set[str] | None) -> None:
    assert parse_levels(text) == (frozenset(expected) if expected is not None else None)


def test_parse_levels_names_the_unknown_level() -> None:
    with pytest.raises(UnknownLevel, match="'kernel'"):
        parse_levels("model,kernel")


def test_json_shape_follows_the_contract() -> None:
    columns = columns_of(KNOWN)
    tree = span_tree(columns["span_id"], columns["parent_span_id"], columns["start_ns"], columns["end_ns"])
    columns[SPAN_FIELDS_COLUMN] = span_fields_json(columns)
    document = json.loads(timeline_json(TRACE, columns, tree))
    assert document["trace_id"] == TRACE and document["warnings"] == []
    root = document["spans"][0]
    assert root == {
        "span_id": "00000000000000a1", "parent_span_id": "", "name": "pipeline", "kind": "internal",
        "service": "svc", "level": "application", "start_ns": T0, "end_ns": T0 + 100 * MS,
        "duration_ns": 100 * MS, "self_ns": 15 * MS, "depth": 0,
        "attributes": {"mlscope.model.name": "resnet18", "mlscope.framework.name": "pytorch"},
        "resource": {"service.name": "svc"},
        "events": [{"time_ns": T0, "name": "started", "attributes": {"step": 1}}],
        "links": [], "status": {"code": "unset", "message": ""}, "scope": {"name": "tests", "version": "1"},
    }


def _tree(rows: list[dict], **filters) -> tuple[dict, object]:
    columns = columns_of(rows)
    return columns, span_tree(columns["span_id"], columns["parent_span_id"], columns["start_ns"], columns["end_ns"],
                              **filters)


def test_max_depth_cuts_deeper_spans_and_keeps_whole_trace_self_times() -> None:
    columns, tree = _tree(KNOWN, max_depth=1)
    assert [(columns["name"][r], d, tree.self_ns[r] / MS) for r, d in zip(tree.order, tree.depths)] == [
        ("pipeline", 0, 15), ("predict", 1, 30), ("postprocess", 1, 5)]


def test_compact_form_interns_strings_and_keeps_numbers_exact() -> None:
    columns, tree = _tree(KNOWN)
    for key in VIEWER_ATTRIBUTES.values():  # as the reader computes them: '' where a span has none
        columns[ATTRIBUTE_COLUMN + key] = [""] * len(columns["span_id"])
    columns[ATTRIBUTE_COLUMN + PROCESS_PID][0] = "4242"
    compact = compact_json(TRACE, columns, tree)
    names = [compact["strings"][i] for i in compact["name"]]
    assert names == [name for name, _, _ in KNOWN_SHAPE]
    assert compact["parent"] == [-1, 0, 1, 1, 0] and compact["depth"] == [0, 1, 2, 2, 1]
    assert compact["origin_ns"] == str(T0) and compact["start_ns"] == [0, 10 * MS, 20 * MS, 40 * MS, 90 * MS]
    assert [compact["strings"][i] for i in compact["service"]] == ["svc"] * 5
    assert compact["self_ns"] == [15 * MS, 30 * MS, 30 * MS, 30 * MS, 5 * MS]
    assert max(compact["start_ns"] + compact["duration_ns"]) < 2**53
    by_key = compact["attributes"]
    assert [compact["strings"][i] if i >= 0 else None for i in by_key[PROCESS_PID]] == ["4242", None, None, None, None]
    assert by_key[LAYER_PATH] == [-1] * 5


def test_string_table_interns_in_order_of_first_use_and_marks_the_absent_value() -> None:
    table = StringTable()
    assert table.indexes(["b", "a", "b", ""]) == [0, 1, 0, 2]
    # An attribute column: '' is "no such attribute" (-1) even though '' is interned as a name.
    assert table.indexes(iter(["", "c", "a", ""]), absent="") == [-1, 3, 1, -1]
    assert table.strings == ["b", "a", "", "c"]
