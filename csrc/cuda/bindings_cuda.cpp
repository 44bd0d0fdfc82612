// hassod._C_cuda: the optional CUDA module. Imported lazily by hassod; absent on CPU builds.
#include <pybind11/pybind11.h>

#include "cuda/device_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "hassod native core (CUDA kernels)";
  m.def("device_info", []() {
    const hassod::cuda::DeviceInfo info = hassod::cuda::query_devices();
    py::dict out;
    out["device_count"] = info.device_count;
    out["runtime_version"] = info.runtime_version;
    out["driver_version"] = info.driver_version;
    out["error"] = info.error;
    return out;
  });
}
