// CPU implementation of the region-adjacency merge (see merge.h).
//
// Cost model: the heap work is small; what dominates is full-length dot products between a new
// region's feature sum and its neighbours' sums (reads of C doubles from cache or memory).
// Two things keep their number down:
//  * Every edge caches the dot product of its two regions' feature sums, so a neighbour shared
//    by both merged regions gets its new dot product by one addition (see merge()).
//  * A neighbour of only one of the merged regions gets an upper bound instead of a fresh dot
//    product: dot(Sa + Sb, Sc) <= dot(Sa, Sc) + |Sb| |Sc| (Cauchy-Schwarz). The edge enters the
//    heap keyed by the bound; only when a bound reaches the top of the heap is the exact value
//    computed and the edge re-keyed. Bounds are never below the exact value, so the merge order
//    is exactly that of eager recomputation; when a large region absorbs a small one the bounds
//    are tight and most of them are never resolved.
// Memory traffic is the other cost: single cells are read straight from the caller's array
// (float32 stays float32) and only multi-cell regions get a float64 sum, in slots recycled
// when regions die, so the working set stays cache-sized. Region ids are never reused (merge k
// creates id H*W + k). Buffers live in a per-thread workspace reused across calls.
#include "merge/merge.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "common/union_find.h"
#include "merge/edge_heap.h"

namespace hassod {
namespace {

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define HASSOD_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#else
#define HASSOD_MULTIVERSION
#endif

// Products of two floats are exact in double, and so are products of a float and a double sum
// of floats as far as the double sum itself is exact: mixing the caller's float32 cells with
// double region sums loses nothing against an all-double computation.
template <typename A, typename B>
HASSOD_MULTIVERSION double dot(const A* a, const B* b, std::int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return sum;
}

template <typename A>
HASSOD_MULTIVERSION void add_into(double* target, const A* source, std::int64_t n) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) target[i] += static_cast<double>(source[i]);
}

template <typename A, typename B>
HASSOD_MULTIVERSION void add_pair(double* target, const A* a, const B* b, std::int64_t n) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) target[i] = static_cast<double>(a[i]) + static_cast<double>(b[i]);
}

// Cosine of two feature sums from their dot product and norms, rounded to the comparison grid.
// A zero-norm sum has similarity 0 with everything.
std::int64_t quantized_cosine(double dot_product, double norm_a, double norm_b) {
  if (norm_a <= 0.0 || norm_b <= 0.0) return 0;
  double cosine = dot_product / (norm_a * norm_b);
  // Keep the integer conversion defined whatever the arithmetic did (NaN to 0).
  if (!(cosine >= -2.0 && cosine <= 2.0)) cosine = std::isnan(cosine) ? 0.0 : std::copysign(2.0, cosine);
  return static_cast<std::int64_t>(std::nearbyint(cosine * kSimilarityScale));
}

// A quantized value never below quantized_cosine of any dot product <= dot_bound. The margin
// covers rounding in the bound's own arithmetic; the cap is the largest possible cosine.
std::int64_t quantized_cosine_bound(double dot_bound, double norm_a, double norm_b) {
  if (norm_a <= 0.0 || norm_b <= 0.0) return 0;
  const double cosine = std::min(dot_bound / (norm_a * norm_b), 1.0) + 1e-9;
  return static_cast<std::int64_t>(std::ceil(cosine * kSimilarityScale));
}

// An adjacency between two regions. The dot product of their feature sums lies in
// [dot - error, dot + error]; error == 0 means dot is exact (up to rounding).
struct Edge {
  std::int32_t lo;
  std::int32_t hi;
  double dot;
  double error;
};

// Per-thread buffers, kept between calls (see the file comment).
struct Workspace {
  std::vector<double> sums;  // feature sums of multi-cell regions, one per storage slot
  std::vector<std::int32_t> free_slots;
  std::vector<double> norm;  // per region id
  std::vector<std::int32_t> slot;  // per region id; -1 for a single cell (read from the input)
  std::vector<Edge> edges;
  std::vector<std::vector<std::int32_t>> edges_of;  // edge ids per region; dead ones skipped
  EdgeHeap heap;
  std::vector<std::int32_t> gather_stamp;  // per region id: last merge that visited it
  std::vector<std::int32_t> gather_edge;   // the edge it keeps in that merge
  std::vector<char> gather_sides;          // 1: neighbour of a, 2: of b, 3: of both
  std::vector<std::int32_t> merged_edges;
  UnionFind forest;

  // Large grids would pin their memory to the thread forever; let those go after the call.
  static constexpr std::size_t kKeepBytes = std::size_t{64} << 20;
  void release_if_large() {
    if (sums.capacity() * sizeof(double) + edges.capacity() * sizeof(Edge) > kKeepBytes)
      *this = Workspace();
  }
};

template <typename Scalar>
class RegionMerger {
 public:
  RegionMerger(Workspace& workspace, const Scalar* features, std::int64_t height,
               std::int64_t width, std::int64_t channels, bool rescaled = false)
      : w_(workspace),
        features_(features),
        height_(height),
        width_(width),
        channels_(channels),
        num_cells_(height * width),
        num_ids_(2 * height * width) {
    const auto ids = static_cast<std::size_t>(num_ids_);
    // Slots are recycled, so far fewer than H*W are ever live; grow on demand.
    w_.sums.clear();
    w_.free_slots.clear();
    w_.norm.assign(ids, 0.0);
    w_.slot.assign(ids, -1);
    w_.edges.clear();
    w_.edges_of.resize(ids);
    for (auto& list : w_.edges_of) list.clear();
    w_.heap.clear();
    w_.gather_stamp.assign(ids, -1);
    w_.gather_edge.resize(ids);
    w_.gather_sides.resize(ids);
    w_.forest.reset(num_ids_);
    compute_cell_norms();
    if (rescaled) needs_rescale_ = false;  // already scaled: merge with what the norms give
    if (!needs_rescale_) build_initial_graph();
  }

  // True when the features' magnitudes need a power-of-two rescale before merging.
  bool needs_rescale() const { return needs_rescale_; }

  ClusterResult run(const std::vector<double>& thresholds) {
    ClusterResult result;
    result.height = height_;
    result.width = width_;
    result.thresholds = thresholds;
    const std::size_t num_thresholds = thresholds.size();
    result.labels.resize(num_thresholds * static_cast<std::size_t>(num_cells_));
    result.num_regions.resize(num_thresholds);
    result.merges_before.resize(num_thresholds);
    result.stop_similarity = -std::numeric_limits<double>::infinity();

    auto snapshot = [&](std::size_t t) {
      result.num_regions[t] = canonical_labels(
          w_.forest, num_cells_, result.labels.data() + t * static_cast<std::size_t>(num_cells_));
      result.merges_before[t] = static_cast<std::int64_t>(result.merge_a.size());
    };

    std::size_t t = 0;
    while (t < num_thresholds) {
      if (!settle_top()) {  // one region per connected grid: nothing left to merge
        for (; t < num_thresholds; ++t) snapshot(t);
        break;
      }
      const EdgeKey best = w_.heap.top();
      const double similarity = static_cast<double>(best.similarity) / kSimilarityScale;
      if (similarity < thresholds[t]) {
        snapshot(t);
        if (t + 1 == num_thresholds) result.stop_similarity = similarity;
        ++t;
        continue;
      }
      result.merge_a.push_back(best.lo);
      result.merge_b.push_back(best.hi);
      result.merge_similarity.push_back(similarity);
      merge(best.lo, best.hi);
    }
    result.num_dot_products = num_dot_products_;
    return result;
  }

 private:
  double norm_of(std::int32_t id) const { return w_.norm[static_cast<std::size_t>(id)]; }
  std::int32_t slot_of(std::int32_t id) const { return w_.slot[static_cast<std::size_t>(id)]; }
  const Scalar* cell_of(std::int32_t id) const {
    return features_ + static_cast<std::size_t>(id) * static_cast<std::size_t>(channels_);
  }
  double* slot_sum(std::int32_t slot) {
    return w_.sums.data() + static_cast<std::size_t>(slot) * static_cast<std::size_t>(channels_);
  }
  std::int32_t take_slot() {
    if (!w_.free_slots.empty()) {
      const std::int32_t slot = w_.free_slots.back();
      w_.free_slots.pop_back();
      return slot;
    }
    const auto slot = static_cast<std::int32_t>(w_.sums.size() / static_cast<std::size_t>(channels_));
    w_.sums.resize(w_.sums.size() + static_cast<std::size_t>(channels_));
    return slot;
  }

  // Dot product of two regions' feature sums, each read from its slot or from the input cell.
  double fresh_dot(std::int32_t a, std::int32_t b) {
    ++num_dot_products_;
    const std::int32_t slot_a = slot_of(a), slot_b = slot_of(b);
    if (slot_a >= 0 && slot_b >= 0) return dot(slot_sum(slot_a), slot_sum(slot_b), channels_);
    if (slot_a >= 0) return dot(slot_sum(slot_a), cell_of(b), channels_);
    if (slot_b >= 0) return dot(cell_of(a), slot_sum(slot_b), channels_);
    return dot(cell_of(a), cell_of(b), channels_);
  }

  EdgeKey key_of(std::int32_t edge_index) const {
    const Edge& edge = w_.edges[static_cast<std::size_t>(edge_index)];
    const double norm_lo = norm_of(edge.lo), norm_hi = norm_of(edge.hi);
    const bool bound = edge.error > 0.0;
    const std::int64_t similarity = bound
                                        ? quantized_cosine_bound(edge.dot + edge.error, norm_lo, norm_hi)
                                        : quantized_cosine(edge.dot, norm_lo, norm_hi);
    return EdgeKey{similarity, edge.lo, edge.hi, edge_index, bound};
  }

  // Resolves bounds until the top of the heap is exact. Returns false when the heap is empty.
  bool settle_top() {
    while (!w_.heap.empty()) {
      const EdgeKey top = w_.heap.top();
      if (!top.bound) return true;
      Edge& edge = w_.edges[static_cast<std::size_t>(top.edge)];
      if (edge.error > 0.0) {
        edge.dot = fresh_dot(edge.lo, edge.hi);
        edge.error = 0.0;
      }
      w_.heap.update(key_of(top.edge));
    }
    return false;
  }

  // Norms of the input cells. A non-finite squared norm flags a non-finite value, located
  // and reported by a second look at the cell. Squared norms far from 1 (float64 input beyond
  // about 1e100 or below 1e-100) would overflow or underflow the sums' dot products: flagged
  // for a rescaled run instead (see cluster_features).
  void compute_cell_norms() {
    constexpr double kLargest = 1e200, kSmallest = 1e-200;
    for (std::int32_t cell = 0; cell < num_cells_; ++cell) {
      const Scalar* values = cell_of(cell);
      const double norm2 = dot(values, values, channels_);
      if (!std::isfinite(norm2)) {
        throw_if_non_finite(cell, values);
        needs_rescale_ = true;  // finite values whose squares overflow
      } else if (norm2 > kLargest || (norm2 < kSmallest && norm2 > 0.0)) {
        needs_rescale_ = true;
      } else if (norm2 == 0.0 && std::any_of(values, values + channels_, [](Scalar v) { return v != 0; })) {
        needs_rescale_ = true;  // non-zero values whose squares underflow
      }
      w_.norm[static_cast<std::size_t>(cell)] = std::sqrt(norm2);
    }
  }

  void throw_if_non_finite(std::int32_t cell, const Scalar* values) const {
    for (std::int64_t c = 0; c < channels_; ++c) {
      if (!std::isfinite(static_cast<double>(values[c]))) {
        std::ostringstream message;
        message << "features contain a non-finite value (" << static_cast<double>(values[c])
                << ") at row " << cell / width_ << ", column " << cell % width_ << ", channel "
                << c;
        throw std::invalid_argument(message.str());
      }
    }
  }

  std::int32_t add_edge(std::int32_t lo, std::int32_t hi, double dot_product, double error) {
    const auto index = static_cast<std::int32_t>(w_.edges.size());
    w_.edges.push_back(Edge{lo, hi, dot_product, error});
    w_.edges_of[static_cast<std::size_t>(lo)].push_back(index);
    w_.edges_of[static_cast<std::size_t>(hi)].push_back(index);
    return index;
  }

  void build_initial_graph() {
    next_id_ = static_cast<std::int32_t>(num_cells_);
    for (std::int64_t row = 0; row < height_; ++row) {
      for (std::int64_t col = 0; col < width_; ++col) {
        const auto cell = static_cast<std::int32_t>(row * width_ + col);
        if (col + 1 < width_) w_.heap.push(key_of(add_edge(cell, cell + 1, fresh_dot(cell, cell + 1), 0.0)));
        if (row + 1 < height_) {
          const auto below = static_cast<std::int32_t>(cell + width_);
          w_.heap.push(key_of(add_edge(cell, below, fresh_dot(cell, below), 0.0)));
        }
      }
    }
  }

  // Gives `merged` the sum of a and b, reusing a slot of theirs when they have one.
  void combine_sums(std::int32_t a, std::int32_t b, std::int32_t merged) {
    std::int32_t slot_a = slot_of(a), slot_b = slot_of(b);
    std::int32_t slot;
    if (slot_a < 0 && slot_b < 0) {
      slot = take_slot();
      add_pair(slot_sum(slot), cell_of(a), cell_of(b), channels_);
    } else {
      if (slot_a < 0) std::swap(a, b), std::swap(slot_a, slot_b);  // a now owns a slot
      slot = slot_a;
      if (slot_b >= 0) {
        add_into(slot_sum(slot), slot_sum(slot_b), channels_);
        w_.free_slots.push_back(slot_b);
      } else {
        add_into(slot_sum(slot), cell_of(b), channels_);
      }
    }
    w_.slot[static_cast<std::size_t>(merged)] = slot;
    const double* sum = slot_sum(slot);
    w_.norm[static_cast<std::size_t>(merged)] = std::sqrt(dot(sum, sum, channels_));
  }

  // Merges a and b into a new region. Each neighbour keeps one edge, re-pointed at the merged
  // region and re-keyed in place; a neighbour of both keeps a's edge, whose dot product absorbs
  // b's (dot(Sa + Sb, Sc) = dot(Sa, Sc) + dot(Sb, Sc)), and b's edge goes. So no edge is ever
  // created after the first 2HW - H - W and the edge table stays cache-sized.
  void merge(std::int32_t a, std::int32_t b) {
    const std::int32_t merged = next_id_++;
    const std::int32_t stamp = merged;
    std::vector<std::int32_t>& merged_edges = w_.merged_edges;
    merged_edges.clear();
    auto visit = [&](std::int32_t from, char side) {
      for (const std::int32_t e : w_.edges_of[static_cast<std::size_t>(from)]) {
        if (!w_.heap.contains(e)) continue;  // removed earlier (a shared neighbour's duplicate)
        Edge& edge = w_.edges[static_cast<std::size_t>(e)];
        const std::int32_t other = edge.lo == from ? edge.hi : edge.lo;
        if (other == a || other == b) {  // the merged pair itself
          w_.heap.remove(e);
          continue;
        }
        const auto id = static_cast<std::size_t>(other);
        if (w_.gather_stamp[id] != stamp) {
          w_.gather_stamp[id] = stamp;
          w_.gather_edge[id] = e;
          w_.gather_sides[id] = side;
          merged_edges.push_back(e);
        } else {
          Edge& kept = w_.edges[static_cast<std::size_t>(w_.gather_edge[id])];
          kept.dot += edge.dot;
          kept.error += edge.error;
          w_.gather_sides[id] |= side;
          w_.heap.remove(e);
        }
      }
      w_.edges_of[static_cast<std::size_t>(from)].clear();
    };
    visit(a, 1);
    visit(b, 2);
    const double norm_a = norm_of(a), norm_b = norm_of(b);
    combine_sums(a, b, merged);
    w_.forest.attach(a, merged);
    w_.forest.attach(b, merged);

    for (const std::int32_t e : merged_edges) {
      Edge& edge = w_.edges[static_cast<std::size_t>(e)];
      const std::int32_t c = (edge.lo == a || edge.lo == b) ? edge.hi : edge.lo;
      // A neighbour of only one side misses the other side's term: bound it by
      // |S_other| |Sc| (Cauchy-Schwarz) until the edge reaches the top of the heap.
      const char sides = w_.gather_sides[static_cast<std::size_t>(c)];
      if (sides == 1) edge.error += norm_b * norm_of(c);
      if (sides == 2) edge.error += norm_a * norm_of(c);
      edge.lo = c;  // c < merged: the merged region has the newest id
      edge.hi = merged;
      // An entry that already ranks at least as high as the new key still ranks at least as
      // high as the true similarity: leave it in place as a bound (ids only grow, so its stale
      // pair never ranks below the new one) and save the sift.
      const EdgeKey fresh = key_of(e);
      if (higher_priority(fresh, w_.heap.key_of(e)))
        w_.heap.update(fresh);
      else
        w_.heap.mark_bound(e);
    }
    std::swap(w_.edges_of[static_cast<std::size_t>(merged)], merged_edges);
  }

  Workspace& w_;
  const Scalar* features_;
  bool needs_rescale_ = false;
  std::int64_t height_, width_, channels_, num_cells_, num_ids_;
  std::int32_t next_id_ = 0;
  std::int64_t num_dot_products_ = 0;
};

}  // namespace

template <typename Scalar>
ClusterResult cluster_features(const Scalar* features, std::int64_t height, std::int64_t width,
                               std::int64_t channels, const std::vector<double>& thresholds) {
  if (height <= 0 || width <= 0 || channels <= 0)
    throw std::invalid_argument("features must have a non-empty (H, W, C) shape");
  if (height * width > std::numeric_limits<std::int32_t>::max() / 4)
    throw std::invalid_argument("feature grid too large: H*W must be below 2^29 cells");
  if (thresholds.empty()) throw std::invalid_argument("thresholds must not be empty");
  thread_local Workspace workspace;
  ClusterResult result;
  RegionMerger<Scalar> merger(workspace, features, height, width, channels);
  if (!merger.needs_rescale()) {
    result = merger.run(thresholds);
  } else {
    // Cosines are scale-invariant and power-of-two scaling is exact, so run on a copy whose
    // largest magnitude is about 1. A cell whose values are below ~1e-154 of the largest then
    // has a squared norm that underflows to 0 and counts as a zero vector (similarity 0), as
    // in the reference on such a grid; grids spanning that much are not features anyway.
    const auto count = static_cast<std::size_t>(height * width * channels);
    double largest = 0.0;
    for (std::size_t i = 0; i < count; ++i)
      largest = std::max(largest, std::abs(static_cast<double>(features[i])));
    // ldexp per value, not a product with 2^-ilogb: for subnormal grids that factor is
    // above the largest double.
    const int shift = -std::ilogb(largest);
    std::vector<double> scaled(count);
    for (std::size_t i = 0; i < count; ++i)
      scaled[i] = std::ldexp(static_cast<double>(features[i]), shift);
    result = RegionMerger<double>(workspace, scaled.data(), height, width, channels, true)
                 .run(thresholds);
  }
  workspace.release_if_large();
  return result;
}

template ClusterResult cluster_features<float>(const float*, std::int64_t, std::int64_t,
                                               std::int64_t, const std::vector<double>&);
template ClusterResult cluster_features<double>(const double*, std::int64_t, std::int64_t,
                                                std::int64_t, const std::vector<double>&);

std::vector<std::int32_t> partition_from_merges(std::int64_t num_cells, const std::int32_t* merge_a,
                                                const std::int32_t* merge_b, std::int64_t count) {
  const std::int64_t num_ids = num_cells + count;
  UnionFind forest;
  forest.reset(num_ids);
  std::vector<char> merged_already(static_cast<std::size_t>(num_ids), 0);
  for (std::int64_t k = 0; k < count; ++k) {
    const auto merged = static_cast<std::int32_t>(num_cells + k);
    if (merge_a[k] == merge_b[k])
      throw std::invalid_argument("merge sequence merges a region with itself");
    for (const std::int32_t id : {merge_a[k], merge_b[k]}) {
      if (id < 0 || id >= merged)
        throw std::invalid_argument("merge sequence refers to a region that does not exist yet");
      if (merged_already[static_cast<std::size_t>(id)])
        throw std::invalid_argument("merge sequence merges a region that was already merged");
      merged_already[static_cast<std::size_t>(id)] = 1;
      forest.attach(id, merged);
    }
  }
  std::vector<std::int32_t> labels(static_cast<std::size_t>(num_cells));
  canonical_labels(forest, num_cells, labels.data());
  return labels;
}

}  // namespace hassod
