// CUDA coverage matrices and coverage forests over a batch of images (rules in coverage.h; the
// results are identical to the CPU path's).
//
// Every function takes device pointers on CUDA device `device`, enqueues its work on `stream`
// and returns without waiting for it. Outputs of a batch are concatenated, image after image:
// image i's (K_i, K_i) row-major int64 intersections start at element sum_{j<i} K_j^2 of
// `intersections`, its (K_i,) parent / depth / level at element sum_{j<i} K_j. Bad sizes raise
// std::invalid_argument; a failing CUDA call raises std::runtime_error with CUDA's error string.
// Errors of the kernels themselves surface at the caller's next synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace hassod::cuda {

// One image's masks: (num_masks, num_pixels) bytes, row-major, non-zero = inside (uint8 or bool).
struct DeviceMaskStack {
  const std::uint8_t* masks = nullptr;
  std::int64_t num_masks = 0;
  std::int64_t num_pixels = 0;
};

// Where build_forest_batch writes, each (sum_i K_i,) concatenated as above.
struct DeviceForest {
  std::int32_t* parent = nullptr;  // -1 for roots
  std::int32_t* depth = nullptr;   // 0 for roots
  std::int8_t* level = nullptr;    // min(depth, 2)
};

// Bit-packs every image's masks (pixel p in word p / 64, bit p % 64, as pack_masks) into a
// stream-ordered temporary buffer and writes all pairwise intersections |M_a ∩ M_b| (the
// diagonal holds the areas) to `intersections`, (sum_i K_i^2,) int64, 8-byte aligned.
void coverage_matrix_batch(const std::vector<DeviceMaskStack>& stacks, std::int64_t* intersections,
                           int device, cudaStream_t stream);

// Coverage forest and levels of every image from its intersection matrix (the layout
// coverage_matrix_batch writes), with build_forest's rule for `cover` in (0, 1].
void build_forest_batch(const std::int64_t* intersections, const std::vector<std::int64_t>& num_masks,
                        double cover, const DeviceForest& forest, int device, cudaStream_t stream);

}  // namespace hassod::cuda
