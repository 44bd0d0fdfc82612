// hassod._C_cuda: the optional CUDA module. Imported lazily by hassod; absent on CPU builds.
//
// The kernels take raw device addresses: Python passes torch tensors' data_ptr() and the current
// stream's cuda_stream as ints, and allocates every output with torch (hassod/_cuda_hierarchy.py).
// Calls enqueue work and return without waiting, with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cuda/device_info.h"
#include "hierarchy/coverage_cuda.h"

namespace py = pybind11;

namespace {

template <typename T>
T* device_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void coverage_matrix_batch(const std::vector<std::uintptr_t>& masks, const std::vector<std::int64_t>& num_masks,
                           const std::vector<std::int64_t>& num_pixels, std::uintptr_t intersections, int device,
                           std::uintptr_t stream) {
  if (masks.size() != num_masks.size() || masks.size() != num_pixels.size())
    throw std::invalid_argument("masks, num_masks and num_pixels must have one entry per image");
  std::vector<hassod::cuda::DeviceMaskStack> stacks(masks.size());
  for (std::size_t i = 0; i < masks.size(); ++i)
    stacks[i] = {device_pointer<const std::uint8_t>(masks[i]), num_masks[i], num_pixels[i]};
  hassod::cuda::coverage_matrix_batch(stacks, device_pointer<std::int64_t>(intersections), device,
                                      as_stream(stream));
}

void build_forest_batch(std::uintptr_t intersections, const std::vector<std::int64_t>& num_masks, double cover,
                        std::uintptr_t parent, std::uintptr_t depth, std::uintptr_t level, int device,
                        std::uintptr_t stream) {
  const hassod::cuda::DeviceForest forest{device_pointer<std::int32_t>(parent), device_pointer<std::int32_t>(depth),
                                          device_pointer<std::int8_t>(level)};
  hassod::cuda::build_forest_batch(device_pointer<const std::int64_t>(intersections), num_masks, cover, forest,
                                   device, as_stream(stream));
}

}  // namespace

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
  m.def("coverage_matrix_batch", &coverage_matrix_batch, py::arg("masks"), py::arg("num_masks"),
        py::arg("num_pixels"), py::arg("intersections"), py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Pairwise intersections of a batch of (K_i, P_i) one-byte mask stacks (device addresses), "
        "written to `intersections`: (sum K_i^2,) int64, image after image, each (K_i, K_i) "
        "row-major with the areas on the diagonal. Enqueued on `stream` of CUDA device `device`.");
  m.def("build_forest_batch", &build_forest_batch, py::arg("intersections"), py::arg("num_masks"),
        py::arg("cover"), py::arg("parent"), py::arg("depth"), py::arg("level"), py::arg("device"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Coverage forests of a batch from its concatenated intersection matrices (the layout of "
        "coverage_matrix_batch): parent, depth int32 and level int8, (sum K_i,) each, image after "
        "image. Enqueued on `stream` of CUDA device `device`.");
}
