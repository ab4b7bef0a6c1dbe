// The torch ops one thread runs, recorded through RecordFunction: the callbacks torch.profiler is
// built on, without kineto's per-event processing at stop (~1 ms a ResNet-18 call on CPU, where
// this recorder's stop is ~10 µs). Built by agents/op_recorder.py; used by agents/torch_capture.py.
//
// Per op, on the thread that runs it: a name copy and two steady_clock reads (CLOCK_MONOTONIC,
// the clock of Python's time.perf_counter_ns, so ops and layer hooks share one clock).
//
// Recording only top-level ops, it turns RecordFunction off on its thread while one runs, so the
// ops that op calls (aten::conv2d -> aten::convolution -> ... : 357 of ResNet-18's 426 a call)
// skip RecordFunction altogether instead of each paying ~1 µs to be ignored. Not when another
// observer (a torch.profiler) has callbacks: it would lose those ops.
#include <torch/extension.h>

#include <ATen/record_function.h>

#include "recorded_ops.h"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mlscope {
namespace {

struct ThreadRecorder {
  bool active = false;
  bool nested = false;       // keep the ops that ops call, not only the top-level ones
  bool mute_nested = false;  // RecordFunction off while a top-level op runs
  at::CallbackHandle handle = 0;
  std::vector<Op> ops;
  std::vector<int64_t> open;  // ops entered and not yet left: an index into ops, or -1 if not kept
};

thread_local ThreadRecorder recorder;

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::unique_ptr<at::ObserverContext> enter(const at::RecordFunction& fn) {
  ThreadRecorder& r = recorder;
  if (!r.nested && !r.open.empty()) {
    r.open.push_back(-1);
    return nullptr;
  }
  const int64_t parent = r.open.empty() ? -1 : r.open.back();
  r.open.push_back(static_cast<int64_t>(r.ops.size()));
  r.ops.push_back(Op{fn.name(), 0, 0, parent});
  if (r.mute_nested) {
    at::enableRecordFunction(false);
  }
  r.ops.back().start_ns = now_ns();  // after the copy: the op's own time starts here
  return nullptr;
}

void leave(const at::RecordFunction&, at::ObserverContext*) {
  const int64_t end = now_ns();
  ThreadRecorder& r = recorder;
  if (r.open.empty()) {  // entered before start(): RecordFunction calls leave only after enter
    return;
  }
  const int64_t op = r.open.back();
  r.open.pop_back();
  if (op >= 0) {
    r.ops[op].end_ns = end;
  }
  if (r.mute_nested && r.open.empty()) {
    at::enableRecordFunction(true);
  }
}

void start(bool nested) {
  ThreadRecorder& r = recorder;
  if (r.active) {
    throw std::runtime_error("the op recorder is already recording on this thread");
  }
  r.ops.clear();
  r.ops.reserve(nested ? 1024 : 128);  // ResNet-18: 426 ops a call, 69 of them top-level
  r.open.clear();
  r.nested = nested;
  r.mute_nested = !nested && !at::hasGlobalCallbacks() && !at::hasThreadLocalCallbacks();
  r.handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(enter, leave)
          .needsInputs(false)
          .needsOutputs(false)
          .needsIds(false)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::USER_SCOPE}));
  r.active = true;
}

// Stops recording on this thread and returns the ops recorded since start(), in the order they
// started. An op still open (stop called inside it) ends now.
RecordedOps stop() {
  ThreadRecorder& r = recorder;
  const int64_t stopped = now_ns();
  if (!r.active) {
    throw std::runtime_error("the op recorder is not recording on this thread");
  }
  at::removeCallback(r.handle);
  r.active = false;
  for (const int64_t op : r.open) {
    if (op >= 0) {
      r.ops[op].end_ns = stopped;
    }
  }
  if (r.mute_nested && !r.open.empty()) {
    at::enableRecordFunction(true);
  }
  r.open.clear();
  RecordedOps recorded{std::move(r.ops)};
  r.ops = {};
  return recorded;
}

bool recording() { return recorder.active; }

}  // namespace
}  // namespace mlscope

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace mlscope;
  m.doc() = "Records the torch ops one thread runs (RecordFunction callbacks) and writes spans.";
  m.def("start", &start, py::arg("nested"),
        "Starts recording the ops this thread runs: the top-level ones, or all with nested.");
  py::class_<RecordedOps>(m, "RecordedOps")
      .def("read", &RecordedOps::read, "(names, start_ns, end_ns, parents): parent -1 for a top-level op.")
      .def("__len__", [](const RecordedOps& recorded) { return recorded.ops.size(); });
  m.def("stop", &stop, "Stops recording on this thread; returns the RecordedOps.");
  m.def("recording", &recording, "Whether this thread is recording.");
  register_span_writer(m);
}
