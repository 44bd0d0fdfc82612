// The hassod._C module: one pybind11 module, one binding file per operation family.
#include "bindings/common.h"
#include "common/parallel.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "hassod native core (CPU)";
  hassod::bindings::bind_merge(m);
  hassod::bindings::bind_hierarchy(m);
  hassod::bindings::bind_crf(m);
  m.def("hardware_threads", []() { return hassod::resolve_num_threads(0); });
}
