// Bindings of the hierarchy kernels (coverage matrices, forest, dedup, RLE decoding).
// Masks arrive as C-contiguous (K, P) uint8 (the Python layer flattens and views bool as
// uint8); every kernel runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/common.h"
#include "common/parallel.h"
#include "hierarchy/coverage.h"
#include "hierarchy/rle.h"

namespace hassod::bindings {
namespace {

struct MaskStack {
  py::array array;  // keeps the buffer alive while the GIL is released
  const std::uint8_t* data = nullptr;
  std::int64_t num_masks = 0;
  std::int64_t num_pixels = 0;
};

MaskStack check_masks(const py::array& masks, const std::string& name) {
  if (masks.ndim() != 2) throw std::invalid_argument(name + " must have shape (K, P) at the native boundary");
  if (!py::isinstance<py::array_t<std::uint8_t>>(masks))
    throw std::invalid_argument(name + " must be uint8 at the native boundary");
  if (!(masks.flags() & py::array::c_style))
    throw std::invalid_argument(name + " must be C-contiguous at the native boundary");
  return MaskStack{masks, static_cast<const std::uint8_t*>(masks.data()), masks.shape(0), masks.shape(1)};
}

using IntersectionArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

std::int64_t check_square(const IntersectionArray& intersections) {
  if (intersections.ndim() != 2 || intersections.shape(0) != intersections.shape(1))
    throw std::invalid_argument("intersections must be a square (K, K) matrix");
  return intersections.shape(0);
}

py::dict forest_to_dict(const Forest& forest) {
  const auto k = static_cast<py::ssize_t>(forest.parent.size());
  py::dict out;
  out["parent"] = to_numpy(forest.parent, {k});
  out["depth"] = to_numpy(forest.depth, {k});
  out["level"] = to_numpy(forest.level, {k});
  return out;
}

py::array_t<std::int64_t> coverage(const py::array& masks) {
  const MaskStack stack = check_masks(masks, "masks");
  std::vector<std::int64_t> intersections;
  {
    py::gil_scoped_release release;
    intersections = coverage_matrix(pack_masks(stack.data, stack.num_masks, stack.num_pixels));
  }
  return to_numpy(intersections, {stack.num_masks, stack.num_masks});
}

// RLE masks: each item is a compressed counts string (str or bytes) or an array of run lengths.
py::array_t<std::int64_t> coverage_runs(const py::list& items, std::int64_t num_pixels) {
  // Words of 64 pixels are counted as (num_pixels + 63) / 64: keep that sum from overflowing.
  if (num_pixels < 0 || num_pixels > (std::int64_t{1} << 56))
    throw std::invalid_argument("num_pixels must lie between 0 and 2^56");
  std::vector<std::vector<std::uint32_t>> runs;
  runs.reserve(items.size());
  for (const py::handle item : items) {
    if (py::isinstance<py::str>(item) || py::isinstance<py::bytes>(item)) {
      runs.push_back(decode_rle_string(item.cast<std::string>()));
    } else {  // run lengths: a 1-D array (copied in one go, not element by element)
      const auto lengths = py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>::ensure(item);
      if (!lengths || lengths.ndim() != 1)
        throw std::invalid_argument("RLE run lengths must be a 1-D array of uint32");
      runs.emplace_back(lengths.data(), lengths.data() + lengths.shape(0));
    }
  }
  const auto k = static_cast<py::ssize_t>(runs.size());
  std::vector<std::int64_t> intersections;
  {
    py::gil_scoped_release release;
    intersections = coverage_matrix(pack_runs(runs, num_pixels));
  }
  return to_numpy(intersections, {k, k});
}

py::dict forest(const IntersectionArray& intersections, double cover) {
  const std::int64_t k = check_square(intersections);
  Forest result;
  {
    py::gil_scoped_release release;
    result = build_forest(intersections.data(), k, cover);
  }
  return forest_to_dict(result);
}

py::list hierarchy_batch(const py::list& batch, double cover, int num_threads) {
  std::vector<MaskStack> stacks;
  stacks.reserve(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i)
    stacks.push_back(check_masks(batch[i].cast<py::array>(), "masks[" + std::to_string(i) + "]"));
  std::vector<std::vector<std::int64_t>> intersections(stacks.size());
  std::vector<Forest> forests(stacks.size());
  {
    py::gil_scoped_release release;
    parallel_for(stacks.size(), resolve_num_threads(num_threads), [&](std::size_t i) {
      const MaskStack& stack = stacks[i];
      intersections[i] = coverage_matrix(pack_masks(stack.data, stack.num_masks, stack.num_pixels));
      forests[i] = build_forest(intersections[i].data(), stack.num_masks, cover);
    });
  }
  py::list out;
  for (std::size_t i = 0; i < stacks.size(); ++i) {
    py::dict item = forest_to_dict(forests[i]);
    item["intersections"] = to_numpy(intersections[i], {stacks[i].num_masks, stacks[i].num_masks});
    out.append(item);
  }
  return out;
}

py::array_t<std::int32_t> dedup(const IntersectionArray& intersections, double iou) {
  const std::int64_t k = check_square(intersections);
  std::vector<std::int32_t> kept;
  {
    py::gil_scoped_release release;
    kept = dedup_masks(intersections.data(), k, iou);
  }
  return to_numpy(kept, {static_cast<py::ssize_t>(kept.size())});
}

py::array_t<std::uint32_t> decode_rle(const std::string& counts) {
  const std::vector<std::uint32_t> runs = decode_rle_string(counts);
  return to_numpy(runs, {static_cast<py::ssize_t>(runs.size())});
}

}  // namespace

void bind_hierarchy(py::module_& m) {
  m.def("coverage_matrix", &coverage, py::arg("masks"),
        "(K, K) int64 pairwise intersections of (K, P) uint8 masks; the diagonal holds areas.");
  m.def("coverage_matrix_runs", &coverage_runs, py::arg("runs"), py::arg("num_pixels"),
        "coverage_matrix() of RLE masks (compressed counts strings or run-length arrays).");
  m.def("build_forest", &forest, py::arg("intersections"), py::arg("cover"),
        "Coverage forest (parent, depth, level) from a (K, K) intersection matrix.");
  m.def("hierarchy_batch", &hierarchy_batch, py::arg("batch"), py::arg("cover"),
        py::arg("num_threads") = 0, "coverage_matrix() + build_forest() over many images.");
  m.def("dedup_masks", &dedup, py::arg("intersections"), py::arg("iou"),
        "Ascending indices of masks kept after dropping near-duplicates of earlier masks.");
  m.def("decode_rle", &decode_rle, py::arg("counts"), "Run lengths of a COCO compressed RLE string.");
  m.def("rle_pixel_count", &rle_string_pixels, py::arg("counts"),
        "Pixels covered by a COCO compressed RLE string's runs (their sum).");
}

}  // namespace hassod::bindings
