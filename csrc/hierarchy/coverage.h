// Mask coverage matrices and the coverage forest (DESIGN.md section 4).
//
// Masks are bit-packed once (64 pixels a word); every pairwise intersection |Mi ∩ Mj| is then
// a popcount of ANDed words. The forest follows the authors' rule exactly: B covers A when
// |A∩B|/|A| >= cover and |A∩B|/|B| < cover (float64 division, as NumPy does); A's parent is the
// smallest-area mask covering it, ties to the lowest index.
#pragma once

#include <cstdint>
#include <vector>

namespace hassod {

// Bit-packed masks: `words_per_mask` 64-bit words per mask, pixel p in word p / 64, bit p % 64.
struct PackedMasks {
  std::int64_t num_masks = 0;
  std::int64_t num_pixels = 0;
  std::int64_t words_per_mask = 0;
  std::vector<std::uint64_t> words;  // (num_masks, words_per_mask)
  // Per mask, the first and last word holding a set bit (first > last for an empty mask):
  // pairs are only ANDed where these ranges overlap, which skips most of the image for parts.
  std::vector<std::int64_t> first_word;
  std::vector<std::int64_t> last_word;
};

// masks: (K, P) bytes, non-zero = inside.
PackedMasks pack_masks(const std::uint8_t* masks, std::int64_t num_masks, std::int64_t num_pixels);

// Masks given as uncompressed runs (COCO RLE order: alternating background / foreground run
// lengths starting with background, over `num_pixels` pixels).
PackedMasks pack_runs(const std::vector<std::vector<std::uint32_t>>& runs, std::int64_t num_pixels);

// (K, K) intersections, row-major; the diagonal holds the areas.
std::vector<std::int64_t> coverage_matrix(const PackedMasks& masks);

struct Forest {
  std::vector<std::int32_t> parent;  // (K,) -1 for roots
  std::vector<std::int32_t> depth;   // (K,) 0 for roots
  std::vector<std::int8_t> level;    // (K,) min(depth, 2): whole, part, subpart
};

// From a (K, K) intersection matrix (diagonal = areas). An empty mask is a root that covers
// nothing (its coverage ratios are taken as 0).
Forest build_forest(const std::int64_t* intersections, std::int64_t num_masks, double cover);

// Indices (ascending) of masks to keep when near-identical masks repeat: going in index order,
// a mask is dropped when its IoU with an already kept mask is >= iou. Two empty masks have IoU 1.
std::vector<std::int32_t> dedup_masks(const std::int64_t* intersections, std::int64_t num_masks,
                                      double iou);

}  // namespace hassod
