// Writes one recorded call's layer and op spans as OTLP Span messages: agents/torch_capture.py's
// `_write_layers` and `_write_ops` with agents/call_tree.py's pairing and placement, in C++, for
// the deferred worker (agents/deferred.py), where their Python holds the GIL the model's thread
// needs ~0.4-0.7 ms a ResNet-18 call. The Python stays the definition and the path everywhere
// else (inline spans, kineto ops, shapes, a custom id generator); tests/agents/test_span_writer.py
// checks both give the same spans.
//
// What a span is (name, kind, flags, status, attributes) comes encoded from Python
// (otlp_encoder.local_span_description); here only ids, parents and times are added, laid out
// as otlp_encoder.encode_local_span lays them out.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "recorded_ops.h"

namespace mlscope {
namespace {

// agents/call_tree.py: ENTER, RETURN, RAISE.
constexpr int64_t kEnter = 0;
constexpr int64_t kRaise = 2;

// agents/otlp_encoder.py: _SCOPE_SPANS_SPANS, _SPAN_TRACE_ID, _SPAN_SPAN_ID,
// _SPAN_PARENT_SPAN_ID, _SPAN_START, _SPAN_END.
constexpr char kScopeSpansSpans = 0x12;
constexpr char kTraceIdTag[] = {0x0a, 0x10};
constexpr char kSpanIdTag[] = {0x12, 0x08};
constexpr char kParentSpanIdTag[] = {0x22, 0x08};
constexpr char kStartTag = 0x39;
constexpr char kEndTag = 0x41;
constexpr size_t kFixedFields = 2 + 16 + 2 + 8 + 2 + 8 + 1 + 8 + 1 + 8;

struct Interval {
  int64_t start;
  int64_t end;
};

// agents/call_tree.py pair_calls, without payloads (the native path has no shapes).
struct Calls {
  std::vector<PyObject*> keys;
  std::vector<Interval> intervals;
  std::vector<int64_t> parents;
  std::vector<bool> failed;
};

Calls pair_calls(const py::list& events, int64_t end_ns) {
  Calls calls;
  std::vector<size_t> stack;
  for (const py::handle event : events) {
    PyObject* record = event.ptr();
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 3) {
      throw std::invalid_argument("a hook record is not a (key, time_ns, kind, payload) tuple");
    }
    PyObject* key = PyTuple_GET_ITEM(record, 0);
    const int64_t at = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 1));
    const int64_t kind = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 2));
    if (PyErr_Occurred()) {
      throw py::error_already_set();
    }
    if (kind == kEnter) {
      calls.parents.push_back(stack.empty() ? -1 : static_cast<int64_t>(stack.back()));
      calls.keys.push_back(key);
      calls.intervals.push_back({at, end_ns});
      calls.failed.push_back(true);
      stack.push_back(calls.keys.size() - 1);
      continue;
    }
    int64_t depth = static_cast<int64_t>(stack.size()) - 1;
    if (depth < 0 || calls.keys[stack[depth]] != key) {  // not the usual case
      int64_t found = -1;
      for (int64_t d = depth - 1; d >= 0; --d) {
        if (calls.keys[stack[d]] == key) {
          found = d;
          break;
        }
      }
      if (found < 0) {
        continue;  // an exit whose enter was not recorded
      }
      depth = found;
    }
    for (size_t unwound = depth + 1; unwound < stack.size(); ++unwound) {
      calls.intervals[stack[unwound]].end = at;
    }
    const size_t closed = stack[depth];
    calls.intervals[closed].end = at;
    calls.failed[closed] = kind == kRaise;
    stack.resize(depth);
  }
  return calls;
}

// agents/call_tree.py place_ops: each op under the innermost layer or op containing it.
struct Placement {
  std::vector<int64_t> layer_parent;
  std::vector<int64_t> op_parent;
  size_t inside = 0;
};

Placement place_ops(const std::vector<Interval>& layers, const std::vector<Interval>& ops) {
  std::vector<Interval> all(layers);
  all.insert(all.end(), ops.begin(), ops.end());
  std::vector<size_t> order(all.size());
  std::iota(order.begin(), order.end(), 0);
  // Start order, the longer first among equal starts, input order among equal intervals.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (all[a].start != all[b].start) {
      return all[a].start < all[b].start;
    }
    return all[a].end > all[b].end;
  });
  std::vector<int64_t> parents(all.size(), -1);
  std::vector<size_t> open;
  for (const size_t index : order) {
    while (!open.empty() && all[open.back()].end < all[index].end) {
      open.pop_back();
    }
    if (!open.empty()) {
      parents[index] = static_cast<int64_t>(open.back());
    }
    open.push_back(index);
  }
  const int64_t first_op = static_cast<int64_t>(layers.size());
  Placement placement{std::vector<int64_t>(ops.size(), -1), std::vector<int64_t>(ops.size(), -1)};
  std::vector<bool> inside(ops.size(), false);
  for (const size_t index : order) {
    const int64_t op = static_cast<int64_t>(index) - first_op;
    if (op < 0) {
      continue;
    }
    const int64_t parent = parents[index];
    if (parent >= first_op) {
      placement.op_parent[op] = parent - first_op;
      inside[op] = inside[parent - first_op];
    } else if (parent >= 0) {
      placement.layer_parent[op] = parent;
      inside[op] = true;
    }
  }
  placement.inside = std::count(inside.begin(), inside.end(), true);
  return placement;
}

uint64_t new_span_id() {
  thread_local std::mt19937_64 random{(static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) {  // 0 is the invalid span id
    id = random();
  }
  return id;
}

void put_big_endian(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

void put_little_endian(std::string& out, uint64_t value) {
  for (int shift = 0; shift < 64; shift += 8) {
    out.push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

void put_varint(std::string& out, uint64_t value) {
  while (value > 0x7f) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

// One ScopeSpans.spans field, as otlp_encoder.encode_local_span writes it.
py::bytes encode_span(const std::string& trace_id, uint64_t span_id, uint64_t parent_span_id, int64_t start_ns,
                      int64_t end_ns, const std::string& description) {
  std::string out;
  const size_t message = kFixedFields + description.size();
  out.reserve(message + 4);
  out.push_back(kScopeSpansSpans);
  put_varint(out, message);
  out.append(kTraceIdTag, 2);
  out.append(trace_id);
  out.append(kSpanIdTag, 2);
  put_big_endian(out, span_id);
  out.append(kParentSpanIdTag, 2);
  put_big_endian(out, parent_span_id);
  out.push_back(kStartTag);
  put_little_endian(out, static_cast<uint64_t>(start_ns));
  out.push_back(kEndTag);
  put_little_endian(out, static_cast<uint64_t>(end_ns));
  out.append(description);
  return py::bytes(out);
}

// The spans of one capture's calls. Layer descriptions come from a dict the capture keeps,
// {id(module): (description, description when the forward raised)}, whose entries the capture
// drops when a module dies (so an id is never another module's); a module missing from it (one
// called from outside the model's tree) is described by `describe_layer(module)`. Op
// descriptions are asked once per op name of `describe_op(name)` and kept here.
class SpanWriter {
 public:
  SpanWriter(py::dict layer_descriptions, py::object describe_layer, py::object describe_op)
      : layer_descriptions_(std::move(layer_descriptions)),
        describe_layer_(std::move(describe_layer)),
        describe_op_(std::move(describe_op)) {}

  // (spans, share of ops inside a layer): `events` are the layer hooks' records, `ops` the
  // native recorder's (or None), times perf_counter_ns, `wall_offset_ns` added to map them
  // to the wall clock; `trace_id` 16 bytes; every span descends from `parent_span_id`.
  py::tuple write(const py::list& events, int64_t end_perf_ns, int64_t wall_offset_ns, const RecordedOps* ops,
                  bool nested_ops, const py::bytes& trace_id_bytes, uint64_t parent_span_id) {
    const std::string trace_id = trace_id_bytes;
    if (trace_id.size() != 16) {
      throw std::invalid_argument("a trace id is 16 bytes");
    }
    const Calls calls = pair_calls(events, end_perf_ns);
    py::list spans;
    std::vector<uint64_t> layer_ids(calls.keys.size());
    for (size_t call = 0; call < calls.keys.size(); ++call) {
      layer_ids[call] = new_span_id();
      const int64_t parent = calls.parents[call];
      const Interval& interval = calls.intervals[call];
      spans.append(encode_span(trace_id, layer_ids[call], parent >= 0 ? layer_ids[parent] : parent_span_id,
                               interval.start + wall_offset_ns, interval.end + wall_offset_ns,
                               layer_description(calls.keys[call], calls.failed[call])));
    }
    if (ops == nullptr) {
      return py::make_tuple(spans, py::none());
    }
    std::vector<Interval> op_intervals;
    op_intervals.reserve(ops->ops.size());
    for (const Op& op : ops->ops) {
      op_intervals.push_back({op.start_ns, op.end_ns});
    }
    const Placement placement = place_ops(calls.intervals, op_intervals);
    std::vector<uint64_t> op_ids(ops->ops.size(), 0);
    for (size_t op = 0; op < ops->ops.size(); ++op) {
      const int64_t layer = placement.layer_parent[op], parent_op = placement.op_parent[op];
      if (!nested_ops && parent_op >= 0) {
        continue;
      }
      op_ids[op] = new_span_id();
      const uint64_t parent = layer >= 0 ? layer_ids[layer] : parent_op >= 0 ? op_ids[parent_op] : parent_span_id;
      spans.append(encode_span(trace_id, op_ids[op], parent, op_intervals[op].start + wall_offset_ns,
                               op_intervals[op].end + wall_offset_ns, op_description(ops->ops[op].name)));
    }
    const double inside = ops->ops.empty() ? 1.0 : static_cast<double>(placement.inside) / ops->ops.size();
    return py::make_tuple(spans, inside);
  }

 private:
  std::string layer_description(PyObject* module, bool failed) {
    py::object key = py::reinterpret_steal<py::object>(PyLong_FromVoidPtr(module));
    PyObject* found = PyDict_GetItemWithError(layer_descriptions_.ptr(), key.ptr());  // borrowed
    py::object pair;
    if (found != nullptr) {
      pair = py::reinterpret_borrow<py::object>(found);
    } else if (PyErr_Occurred()) {
      throw py::error_already_set();
    } else {
      pair = describe_layer_(py::reinterpret_borrow<py::object>(module));
    }
    return pair.cast<py::tuple>()[failed ? 1 : 0].cast<std::string>();
  }

  const std::string& op_description(const std::string& name) {
    auto found = op_descriptions_.find(name);
    if (found == op_descriptions_.end()) {
      found = op_descriptions_.emplace(name, describe_op_(py::str(name)).cast<std::string>()).first;
    }
    return found->second;
  }

  py::dict layer_descriptions_;
  py::object describe_layer_;
  py::object describe_op_;
  std::unordered_map<std::string, std::string> op_descriptions_;
};

}  // namespace

void register_span_writer(py::module_& m) {
  py::class_<SpanWriter>(m, "SpanWriter")
      .def(py::init<py::dict, py::object, py::object>(), py::arg("layer_descriptions"), py::arg("describe_layer"),
           py::arg("describe_op"))
      .def("write", &SpanWriter::write, py::arg("events"), py::arg("end_perf_ns"), py::arg("wall_offset_ns"),
           py::arg("ops").none(true), py::arg("nested_ops"), py::arg("trace_id"), py::arg("parent_span_id"),
           "(spans, share of ops inside a layer or None): one encoded ScopeSpans.spans field per span.");
}

}  // namespace mlscope
