// Hierarchical adaptive clustering of a feature grid (DESIGN.md section 2): greedy merging of
// the most similar pair of 4-adjacent regions, with snapshots of the partition each time the
// best similarity falls below the next threshold.
#pragma once

#include <cstdint>
#include <vector>

namespace hassod {

// Similarities are rounded to a multiple of 2^-32 before they are compared, so that pairs equal
// up to floating-point rounding are exact ties and the tie rule decides between them. This makes
// the merge order independent of summation order (SIMD width, cached versus recomputed dot
// products) and equal to the NumPy reference, while staying far below float32 resolution.
constexpr double kSimilarityScale = 4294967296.0;  // 2^32

struct ClusterResult {
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::vector<double> thresholds;          // (T,) descending
  std::vector<std::int32_t> labels;        // (T, H, W) canonical labels, see canonical_labels
  std::vector<std::int32_t> num_regions;   // (T,)
  std::vector<std::int64_t> merges_before; // (T,) merges made before snapshot t
  // Merge k joins regions merge_a[k] < merge_b[k] into region H*W + k. Cells are regions
  // 0 .. H*W-1 (row-major).
  std::vector<std::int32_t> merge_a;
  std::vector<std::int32_t> merge_b;
  std::vector<double> merge_similarity;
  // Best adjacent similarity when the run stopped; -infinity if no adjacent pair was left.
  double stop_similarity = 0.0;
  std::int64_t num_dot_products = 0;  // full-length dot products computed
};

// features: (H, W, C) row-major, finite. thresholds: non-empty, sorted descending.
// Throws std::invalid_argument (ValueError in Python) on non-finite features.
template <typename Scalar>
ClusterResult cluster_features(const Scalar* features, std::int64_t height, std::int64_t width,
                               std::int64_t channels, const std::vector<double>& thresholds);

// Label map (row-major, num_cells entries) after the first `count` merges of a merge sequence in
// the numbering above. Labels are canonical: numbered 0, 1, ... in order of first appearance.
std::vector<std::int32_t> partition_from_merges(std::int64_t num_cells, const std::int32_t* merge_a,
                                                const std::int32_t* merge_b, std::int64_t count);

}  // namespace hassod
