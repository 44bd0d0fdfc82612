// Bindings of the merge (clustering) kernels: NumPy in, NumPy out, nothing more. Shapes and
// dtypes are checked here (the Python layer converts what it can beforehand); every kernel
// runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "merge/merge.h"

namespace hassod::bindings {
namespace {

py::dict result_to_dict(const hassod::ClusterResult& r) {
  const auto num_thresholds = static_cast<py::ssize_t>(r.thresholds.size());
  const auto num_merges = static_cast<py::ssize_t>(r.merge_a.size());
  py::dict out;
  out["labels"] = to_numpy(r.labels, {num_thresholds, static_cast<py::ssize_t>(r.height),
                                      static_cast<py::ssize_t>(r.width)});
  out["thresholds"] = to_numpy(r.thresholds, {num_thresholds});
  out["num_regions"] = to_numpy(r.num_regions, {num_thresholds});
  out["merges_before"] = to_numpy(r.merges_before, {num_thresholds});
  out["merge_a"] = to_numpy(r.merge_a, {num_merges});
  out["merge_b"] = to_numpy(r.merge_b, {num_merges});
  out["merge_similarity"] = to_numpy(r.merge_similarity, {num_merges});
  out["stop_similarity"] = r.stop_similarity;
  out["num_dot_products"] = r.num_dot_products;
  return out;
}

// A feature grid checked at the boundary: C-contiguous (H, W, C) float32 or float64.
struct FeatureGrid {
  py::array array;  // keeps the buffer alive while the GIL is released
  const void* data = nullptr;
  bool is_double = false;
  std::int64_t height = 0, width = 0, channels = 0;
};

FeatureGrid check_features(const py::array& features, const std::string& name) {
  FeatureGrid grid;
  grid.array = features;
  if (features.ndim() != 3) {
    std::ostringstream message;
    message << name << " must have shape (H, W, C), got " << features.ndim() << " dimensions";
    throw std::invalid_argument(message.str());
  }
  const bool is_float = py::isinstance<py::array_t<float>>(features);
  const bool is_double = py::isinstance<py::array_t<double>>(features);
  if (!is_float && !is_double)
    throw std::invalid_argument(name + " must be float32 or float64 at the native boundary");
  if (!(features.flags() & py::array::c_style))
    throw std::invalid_argument(name + " must be C-contiguous at the native boundary");
  grid.is_double = is_double;
  grid.data = features.data();
  grid.height = features.shape(0);
  grid.width = features.shape(1);
  grid.channels = features.shape(2);
  return grid;
}

hassod::ClusterResult cluster_grid(const FeatureGrid& grid, const std::vector<double>& thresholds) {
  if (grid.is_double)
    return hassod::cluster_features(static_cast<const double*>(grid.data), grid.height, grid.width,
                                    grid.channels, thresholds);
  return hassod::cluster_features(static_cast<const float*>(grid.data), grid.height, grid.width,
                                  grid.channels, thresholds);
}

py::dict cluster(const py::array& features, const std::vector<double>& thresholds) {
  const FeatureGrid grid = check_features(features, "features");
  hassod::ClusterResult result;
  {
    py::gil_scoped_release release;
    result = cluster_grid(grid, thresholds);
  }
  return result_to_dict(result);
}

py::list cluster_batch(const py::list& batch, const std::vector<double>& thresholds,
                       int num_threads) {
  std::vector<FeatureGrid> grids;
  grids.reserve(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i)
    grids.push_back(check_features(batch[i].cast<py::array>(), "features[" + std::to_string(i) + "]"));
  std::vector<hassod::ClusterResult> results(grids.size());
  {
    py::gil_scoped_release release;
    hassod::parallel_for(grids.size(), hassod::resolve_num_threads(num_threads), [&](std::size_t i) {
      try {
        results[i] = cluster_grid(grids[i], thresholds);
      } catch (const std::invalid_argument& error) {
        throw std::invalid_argument("image " + std::to_string(i) + ": " + error.what());
      }
    });
  }
  py::list out;
  for (const auto& result : results) out.append(result_to_dict(result));
  return out;
}

py::array_t<std::int32_t> partition_from_merges(
    std::int64_t num_cells,
    const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& merge_a,
    const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& merge_b,
    std::int64_t count) {
  if (merge_a.ndim() != 1 || merge_b.ndim() != 1 || merge_a.shape(0) != merge_b.shape(0))
    throw std::invalid_argument("merge_a and merge_b must be 1-D arrays of equal length");
  if (num_cells <= 0) throw std::invalid_argument("num_cells must be positive");
  if (count < 0 || count > merge_a.shape(0))
    throw std::invalid_argument("count must lie between 0 and the number of merges");
  // Region ids (cells, then one per merge) are int32.
  if (num_cells + count > std::numeric_limits<std::int32_t>::max())
    throw std::invalid_argument("num_cells + count must stay below 2^31 (int32 region ids)");
  std::vector<std::int32_t> labels;
  {
    py::gil_scoped_release release;
    labels = hassod::partition_from_merges(num_cells, merge_a.data(), merge_b.data(), count);
  }
  return to_numpy(labels, {static_cast<py::ssize_t>(num_cells)});
}

}  // namespace

void bind_merge(py::module_& m) {
  m.attr("similarity_scale") = hassod::kSimilarityScale;
  m.def("cluster", &cluster, py::arg("features"), py::arg("thresholds"),
        "Hierarchical adaptive clustering of one (H, W, C) float32/float64 grid.");
  m.def("cluster_batch", &cluster_batch, py::arg("batch"), py::arg("thresholds"),
        py::arg("num_threads") = 0, "cluster() over a list of grids on several threads.");
  m.def("partition_from_merges", &partition_from_merges, py::arg("num_cells"), py::arg("merge_a"),
        py::arg("merge_b"), py::arg("count"),
        "Canonical label map after the first `count` merges of a merge sequence.");
}

}  // namespace hassod::bindings
