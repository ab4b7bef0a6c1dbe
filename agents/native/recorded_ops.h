// The ops one recording holds: written by op_recorder.cpp, read by span_writer.cpp (or turned
// into Python lists by `read`).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mlscope {

struct Op {
  std::string name;
  int64_t start_ns;
  int64_t end_ns;
  int64_t parent;  // index of the op that called it, -1 for a top-level op
};

// What one recording holds, handed to Python as is: turning it into Python objects (`read`)
// is left to whoever reads it, off the traced thread.
struct RecordedOps {
  std::vector<Op> ops;

  py::tuple read() const {
    py::list names(ops.size()), starts(ops.size()), ends(ops.size()), parents(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      names[i] = py::str(op.name);
      starts[i] = py::int_(op.start_ns);
      ends[i] = py::int_(op.end_ns);
      parents[i] = py::int_(op.parent);
    }
    return py::make_tuple(names, starts, ends, parents);
  }
};

// Adds span_writer.cpp's SpanWriter to the module.
void register_span_writer(py::module_& m);

}  // namespace mlscope
