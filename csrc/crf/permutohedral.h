// Permutohedral lattice (Adams, Baek & Davis 2010) for Gaussian filtering of many values at once,
// built with the numerical conventions of Krähenbühl's densecrf (the code behind pydensecrf):
// the same elevation and scaling, nearest remainder-0 point rounded half to even, barycentric
// weights, blur weights (1/2, 1, 1/2) along each of the d+1 lattice axes, and vertices numbered in
// order of first appearance (points in order, simplex corners by remainder).
//
// The filter is split into its three steps so callers can fold their own per-point scalings into
// the weights and fuse the slicing step with their own work:
//   splat  vertex_values[v] = sum over entries e of v (in point order) of weight[e] * in[point(e)]
//   blur   d+1 passes, each new[v] = old[v] + (old[n1(v)] + old[n2(v)]) / 2, missing neighbour = 0
//   slice  out[p] = sum over the d+1 corners of p of weight * vertex_values[corner]
// Every step computes each output row from its inputs in a fixed order, so results never depend
// on the number of threads.
#pragma once

#include <cstdint>
#include <vector>

namespace hassod::crf {

class PermutohedralLattice {
 public:
  // features: (num_points, dims) row-major. Throws std::invalid_argument on non-finite features or
  // features so large that lattice coordinates would overflow.
  PermutohedralLattice(const float* features, std::int64_t num_points, int dims, int num_threads);

  int dims() const { return dims_; }
  std::int64_t num_points() const { return num_points_; }
  std::int64_t num_vertices() const { return num_vertices_; }

  // densecrf's slicing constant 1 / (1 + 2^-d).
  float alpha() const { return alpha_; }

  // Entry e = p * (d+1) + r is corner r of point p's simplex: its vertex and barycentric weight.
  const std::vector<std::int32_t>& entry_vertex() const { return entry_vertex_; }
  const std::vector<float>& entry_weight() const { return entry_weight_; }

  // [0, num_vertices) cut into `parts` consecutive ranges with about equal numbers of entries:
  // parts + 1 boundaries.
  std::vector<std::int64_t> balanced_vertex_ranges(int parts) const;

  // The filter's steps for values held in Lines of 16 floats (crf/line.h). Point values: `in`
  // holds num_points rows of `in_stride` floats, a multiple of 16. Vertex values are line-major:
  // line l of vertex v is vertex_values[l * line_stride + v * 16 ...], with line_stride at least
  // (num_vertices + 1) * 16; row num_vertices stands for missing neighbours and must be zero in
  // every line of every buffer. Each call covers a range of vertices, so callers choose how to
  // spread the work over threads.
  //
  // splat(): the contributions of points [point_begin, point_end), whose rows start at `rows`,
  // to the vertices in [vertex_begin, vertex_end), with one weight per entry (entry order). A
  // vertex's first entry (in point order) writes its row, later ones add to it, so a full splat
  // of a vertex range is one call or calls over consecutive point ranges in order. Every vertex
  // then sums its entries in point order (densecrf's order) whatever the ranges; the points
  // stream through once per call and the rows of the vertices they share stay in cache.
  void splat(const float* rows, std::int64_t in_stride, const float* entry_weights,
             float* vertex_values, std::int64_t line_stride, std::int64_t point_begin,
             std::int64_t point_end, std::int64_t vertex_begin, std::int64_t vertex_end) const;

  // blur_range(): pass `axis` (0..d) of one line of vertex values, from `values` into `result`,
  // for vertices [begin, end). A full blur is passes 0..d alternating between two buffers; the
  // result ends in the first buffer when d is odd.
  void blur_range(int axis, const float* values, float* result, std::int64_t begin,
                  std::int64_t end) const;

  // Plain filter of one scalar per point with the barycentric weights, as densecrf's
  // Permutohedral::compute: out[p] = alpha * sum_r w_r * blurred[corner_r].
  std::vector<float> filter_scalar(const float* in, int num_threads) const;

 private:
  int dims_ = 0;
  std::int64_t num_points_ = 0;
  std::int64_t num_vertices_ = 0;
  float alpha_ = 1.0f;
  std::vector<std::int32_t> entry_vertex_;    // (N, d+1)
  std::vector<float> entry_weight_;           // (N, d+1)
  std::vector<std::uint8_t> entry_first_;     // (N, d+1): 1 for the first entry of its vertex
  std::vector<std::int64_t> vertex_entries_;  // (M+1): entries of vertices [0, v)
  std::vector<std::int32_t> neighbours_;      // (d+1, M, 2): n1, n2; M when missing
};

}  // namespace hassod::crf
