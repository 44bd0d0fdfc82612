// Helpers shared by the binding files: NumPy arrays from C++ vectors, boundary checks.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

namespace hassod::bindings {

namespace py = pybind11;

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& values, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * sizeof(T));
  return out;
}

void bind_merge(py::module_& m);
void bind_hierarchy(py::module_& m);
void bind_crf(py::module_& m);

}  // namespace hassod::bindings
