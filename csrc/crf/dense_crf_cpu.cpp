// CPU mean-field inference for the dense CRF (see crf.h).
//
// Layout: marginals are held pixel-major, one 64-byte aligned row of `lanes` floats per pixel (the
// labels padded with zeros to a multiple of 16, so a row is whole cache lines), which is the
// layout the lattice filters in. One iteration is
//   1. splat Q into both lattices (the kernel's normalisation is folded into the weights),
//   2. blur both lattices along their d+1 axes,
//   3. per pixel, slice both kernels, add, and take the normalised clip(P) * exp(s - max s);
// Each step writes every output from its inputs in a fixed order, so the result does not depend
// on the thread count; the per-pixel arithmetic works on 16-float Lines (crf/line.h), lane-wise or
// in fixed trees, so it does not depend on the SIMD width either (the CRF sources are compiled
// without floating-point contraction).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common/multiversion.h"
#include "common/parallel.h"
#include "crf/aligned_buffer.h"
#include "crf/crf.h"
#include "crf/line.h"

namespace hassod::crf {
namespace {

constexpr std::int64_t kPixelBlock = 256;
constexpr std::int64_t kVertexBlock = 512;
constexpr int kMaxIterations = 1000000;

std::int64_t padded_labels(std::int64_t num_labels) {
  return (num_labels + kLineFloats - 1) / kLineFloats * kLineFloats;
}

void check_positive(float value, const char* name) {
  if (!(std::isfinite(value) && value > 0.0f)) {
    std::ostringstream message;
    message << name << " must be a positive finite number, got " << value;
    throw std::invalid_argument(message.str());
  }
}

void check_params(const CrfParams& params) {
  if (!std::isfinite(params.gaussian_compat))
    throw std::invalid_argument("the Gaussian kernel's compat must be finite");
  if (!std::isfinite(params.bilateral_compat))
    throw std::invalid_argument("the bilateral kernel's compat must be finite");
  if (params.gaussian_compat != 0.0f)
    check_positive(params.gaussian_sxy, "the Gaussian kernel's sxy");
  if (params.bilateral_compat != 0.0f) {
    check_positive(params.bilateral_sxy, "the bilateral kernel's sxy");
    check_positive(params.bilateral_srgb, "the bilateral kernel's srgb");
  }
}

// Sum of a row of `lanes` floats (a multiple of 16), in every lane: its lines added lane by lane,
// then the lanes in a fixed tree.
inline Line row_sum(const float* row, std::int64_t lanes) {
  Line total = load_line(row);
  for (std::int64_t k = kLineFloats; k < lanes; k += kLineFloats) total += load_line(row + k);
  return sum_lanes(total);
}

// Clipped probabilities of pixels [begin, end), pixel-major with `lanes` floats per row (padding
// zero), into `clipped`. Returns false if a value is negative or not finite.
bool load_clipped(const float* probs, std::int64_t num_pixels, std::int64_t num_labels,
                  std::int64_t lanes, std::int64_t begin, std::int64_t end, float* clipped) {
  bool bad = false;
  for (std::int64_t p = begin; p < end; ++p)
    std::fill(clipped + (p - begin) * lanes + num_labels, clipped + (p - begin + 1) * lanes, 0.0f);
  for (std::int64_t k = 0; k < num_labels; ++k) {
    const float* source = probs + k * num_pixels;
    for (std::int64_t p = begin; p < end; ++p) {
      const float v = source[p];
      bad |= !(v >= 0.0f) | !(v <= std::numeric_limits<float>::max());
      clipped[(p - begin) * lanes + k] = std::min(std::max(v, kMinProbability), 1.0f);
    }
  }
  return !bad;
}

// Initial marginals: softmax(-unary) = clip(P) / sum clip(P), per pixel.
HASSOD_MULTIVERSION void normalise_rows(const float* clipped, float* q, std::int64_t lanes,
                                        std::int64_t count) {
  for (std::int64_t p = 0; p < count; ++p) {
    const float* c = clipped + p * lanes;
    float* row = q + p * lanes;
    const Line scale = broadcast(1.0f) / row_sum(c, lanes);
    for (std::int64_t k = 0; k < lanes; k += kLineFloats)
      store_line(row + k, load_line(c + k) * scale);
  }
}

// At most this many labels per pixel above the clip floor let clip(P) be stored sparsely.
// Upsampled one-hot masks (the discovery pipeline's input) have at most 4: the bilinear
// interpolation mixes 4 cells.
constexpr int kSparseLabels = 4;

// clip(P), whose rows the update reads every iteration: kept sparsely (the labels above the
// floor kMinProbability and their values) when every pixel allows it, else as dense rows. The
// rows handed out are the same floats either way.
class ClippedProbs {
 public:
  ClippedProbs(std::int64_t num_labels, std::int64_t lanes)
      : num_labels_(num_labels), lanes_(lanes) {
    floor_row_.assign(static_cast<std::size_t>(lanes), 0.0f);
    std::fill(floor_row_.begin(), floor_row_.begin() + num_labels, kMinProbability);
  }

  // Records the sparse form of `rows` (pixels [begin, end)); false if a pixel has too many
  // labels above the floor.
  bool compress(const float* rows, std::int64_t begin, std::int64_t end, std::uint8_t* count,
                std::int32_t* label, float* value) const {
    for (std::int64_t p = begin; p < end; ++p) {
      const float* row = rows + (p - begin) * lanes_;
      int found = 0;
      for (std::int64_t k = 0; k < num_labels_; ++k) {
        if (row[k] == kMinProbability) continue;
        if (found == kSparseLabels) return false;
        label[p * kSparseLabels + found] = static_cast<std::int32_t>(k);
        value[p * kSparseLabels + found] = row[k];
        ++found;
      }
      count[p] = static_cast<std::uint8_t>(found);
    }
    return true;
  }

  void use_sparse(const std::uint8_t* count, const std::int32_t* label, const float* value) {
    count_ = count;
    label_ = label;
    value_ = value;
  }
  void use_dense(const float* rows) { dense_ = rows; }

  // Rows of pixels [begin, end): into the dense storage, or expanded into `scratch`.
  const float* rows(std::int64_t begin, std::int64_t end, float* scratch) const {
    if (dense_ != nullptr) return dense_ + begin * lanes_;
    for (std::int64_t p = begin; p < end; ++p) {
      float* row = scratch + (p - begin) * lanes_;
      std::memcpy(row, floor_row_.data(), static_cast<std::size_t>(lanes_) * sizeof(float));
      for (int j = 0; j < count_[p]; ++j)
        row[label_[p * kSparseLabels + j]] = value_[p * kSparseLabels + j];
    }
    return scratch;
  }

 private:
  std::int64_t num_labels_, lanes_;
  std::vector<float> floor_row_;
  const float* dense_ = nullptr;
  const std::uint8_t* count_ = nullptr;
  const std::int32_t* label_ = nullptr;
  const float* value_ = nullptr;
};

struct SliceSource {
  const PairwiseKernel* kernel = nullptr;
  const float* blurred = nullptr;  // line-major vertex values (see PermutohedralLattice)
  std::int64_t line_stride = 0;
};

// The sliced sum over kernels and corners of L lines of one pixel's channels, in registers.
template <int L>
inline void slice_lines(const SliceSource* sources, int num_sources, std::int64_t p,
                        std::int64_t first_line, float* out) {
  Line acc[L];
  for (int l = 0; l < L; ++l) acc[l] = zero_line();
  for (int s = 0; s < num_sources; ++s) {
    const PermutohedralLattice& lattice = sources[s].kernel->lattice;
    const int corners = lattice.dims() + 1;
    const std::int32_t* vertex = lattice.entry_vertex().data() + p * corners;
    const float* weight = sources[s].kernel->slice_weight.data() + p * corners;
    for (int r = 0; r < corners; ++r) {
      const Line w = broadcast(weight[r]);
      const std::int64_t stride = sources[s].line_stride;
      const float* line = sources[s].blurred + first_line * stride +
                          static_cast<std::int64_t>(vertex[r]) * kLineFloats;
      for (int l = 0; l < L; ++l) acc[l] += w * load_line(line + l * stride);
    }
  }
  for (int l = 0; l < L; ++l) store_line(out + l * kLineFloats, acc[l]);
}

// Step 3 for pixels [begin, end): s = sum over kernels of the sliced blurred values, then
// Q = clip(P) * exp(s - max s) normalised over the real labels, into `out`. `clipped`, `out` and
// `work` hold end - begin rows, the row of pixel `begin` first.
// Slicing (memory bound) and the softmax (latency bound) run as two loops over the block, so
// that the processor overlaps pixels in each.
HASSOD_MULTIVERSION void update_rows(const SliceSource* sources, int num_sources,
                                     const float* clipped, float* out, std::int64_t num_labels,
                                     std::int64_t lanes, float* work, std::int64_t begin,
                                     std::int64_t end) {
  float mask[kLineFloats];
  for (std::int64_t k = 0; k < kLineFloats; ++k)
    mask[k] =
        k < num_labels - (lanes - kLineFloats) ? 0.0f : -std::numeric_limits<float>::infinity();
  const Line pad_mask = load_line(mask);
  for (std::int64_t p = begin; p < end; ++p) {
    float* sliced = work + (p - begin) * lanes;
    for (std::int64_t g = 0; g < lanes; g += 4 * kLineFloats) {
      switch (std::min<std::int64_t>(lanes - g, 4 * kLineFloats) / kLineFloats) {
        case 1:
          slice_lines<1>(sources, num_sources, p, g / kLineFloats, sliced + g);
          break;
        case 2:
          slice_lines<2>(sources, num_sources, p, g / kLineFloats, sliced + g);
          break;
        case 3:
          slice_lines<3>(sources, num_sources, p, g / kLineFloats, sliced + g);
          break;
        default:
          slice_lines<4>(sources, num_sources, p, g / kLineFloats, sliced + g);
          break;
      }
    }
  }
  for (std::int64_t p = begin; p < end; ++p) {
    const float* sliced = work + (p - begin) * lanes;
    // The maximum skips the padded lanes (pad_mask: 0 for labels, -inf for padding). Their
    // sliced sums are 0 and their c is 0, so they come out 0.
    Line top = load_line(sliced) + (lanes == kLineFloats ? pad_mask : zero_line());
    for (std::int64_t k = kLineFloats; k < lanes; k += kLineFloats)
      top = max_lines(top,
                      load_line(sliced + k) + (k + kLineFloats == lanes ? pad_mask : zero_line()));
    top = max_lanes(top);
    const float* c = clipped + (p - begin) * lanes;
    float* row = out + (p - begin) * lanes;
    Line total = zero_line();
    for (std::int64_t k = 0; k < lanes; k += kLineFloats) {
      const Line e =
          load_line(c + k) * exp_nonpositive(min_lines(load_line(sliced + k) - top, zero_line()));
      store_line(row + k, e);
      total += e;
    }
    const Line scale = broadcast(1.0f) / sum_lanes(total);
    for (std::int64_t k = 0; k < lanes; k += kLineFloats)
      store_line(row + k, load_line(row + k) * scale);
  }
}

std::vector<float> gaussian_features(std::int64_t height, std::int64_t width, float sxy) {
  std::vector<float> features(static_cast<std::size_t>(height * width * 2));
  for (std::int64_t y = 0; y < height; ++y)
    for (std::int64_t x = 0; x < width; ++x) {
      float* f = features.data() + (y * width + x) * 2;
      f[0] = static_cast<float>(x) / sxy;
      f[1] = static_cast<float>(y) / sxy;
    }
  return features;
}

std::vector<float> bilateral_features(const std::uint8_t* image, std::int64_t height,
                                      std::int64_t width, float sxy, float srgb) {
  std::vector<float> features(static_cast<std::size_t>(height * width * 5));
  for (std::int64_t y = 0; y < height; ++y)
    for (std::int64_t x = 0; x < width; ++x) {
      const std::int64_t p = y * width + x;
      float* f = features.data() + p * 5;
      f[0] = static_cast<float>(x) / sxy;
      f[1] = static_cast<float>(y) / sxy;
      for (int c = 0; c < 3; ++c) f[2 + c] = static_cast<float>(image[p * 3 + c]) / srgb;
    }
  return features;
}

}  // namespace

PairwiseKernel::PairwiseKernel(const std::vector<float>& features, std::int64_t num_points,
                               int dims, float compat, int num_threads)
    : lattice(features.data(), num_points, dims, num_threads) {
  // Symmetric normalisation: 1 / sqrt(filter of ones), as densecrf computes it.
  const std::vector<float> ones(static_cast<std::size_t>(num_points), 1.0f);
  std::vector<float> norm = lattice.filter_scalar(ones.data(), num_threads);
  for (float& value : norm)
    value = static_cast<float>(1.0 / std::sqrt(static_cast<double>(value) + 1e-20));
  const auto corners = static_cast<std::size_t>(dims + 1);
  const std::vector<float>& weight = lattice.entry_weight();
  splat_weight.resize(weight.size());
  for (std::size_t e = 0; e < weight.size(); ++e) splat_weight[e] = weight[e] * norm[e / corners];
  slice_weight.resize(weight.size());
  const float alpha = lattice.alpha();
  for (std::size_t e = 0; e < weight.size(); ++e)
    slice_weight[e] = weight[e] * alpha * norm[e / corners] * compat;
}

DenseCrf::DenseCrf(const std::uint8_t* image, std::int64_t height, std::int64_t width,
                   const CrfParams& params, int num_threads)
    : height_(height), width_(width) {
  if (height < 1 || width < 1)
    throw std::invalid_argument("the image must have at least one pixel");
  check_params(params);
  const std::int64_t n = height * width;
  // The two lattices are independent: built side by side when there are threads for both (the
  // vertex numbering of each is sequential work).
  const int threads = hassod::resolve_num_threads(num_threads);
  const int inner = std::max(1, threads / 2);
  hassod::parallel_for(2, threads, [&](std::size_t which) {
    if (which == 0 && params.bilateral_compat != 0.0f)
      bilateral_ = std::make_unique<PairwiseKernel>(
          bilateral_features(image, height, width, params.bilateral_sxy, params.bilateral_srgb), n,
          5, params.bilateral_compat, inner);
    if (which == 1 && params.gaussian_compat != 0.0f)
      gaussian_ =
          std::make_unique<PairwiseKernel>(gaussian_features(height, width, params.gaussian_sxy), n,
                                           2, params.gaussian_compat, inner);
  });
}

std::int64_t DenseCrf::gaussian_vertices() const {
  return gaussian_ ? gaussian_->lattice.num_vertices() : 0;
}

std::int64_t DenseCrf::bilateral_vertices() const {
  return bilateral_ ? bilateral_->lattice.num_vertices() : 0;
}

struct DenseCrf::Workspace {
  AlignedFloats clipped;                   // (N, lanes) clip(P), when it cannot be kept sparsely
  std::vector<std::uint8_t> sparse_count;  // (N) and (N, kSparseLabels): the sparse clip(P)
  std::vector<std::int32_t> sparse_label;
  std::vector<float> sparse_value;
  AlignedFloats q;               // (N, lanes)
  AlignedFloats vertices[2][2];  // per kernel, two line-major buffers of (M + 1) rows
};

DenseCrf::~DenseCrf() = default;

std::unique_ptr<DenseCrf::Workspace> DenseCrf::take_workspace() const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  if (pool_.empty()) return std::make_unique<Workspace>();
  std::unique_ptr<Workspace> workspace = std::move(pool_.back());
  pool_.pop_back();
  return workspace;
}

void DenseCrf::give_back(std::unique_ptr<Workspace> workspace) const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  pool_.push_back(std::move(workspace));
}

void DenseCrf::infer(const float* probs, std::int64_t num_labels, int iterations, int num_threads,
                     float* q_out) const {
  if (num_labels < 1) throw std::invalid_argument("at least one label is needed");
  if (iterations < 0 || iterations > kMaxIterations)
    throw std::invalid_argument("iterations must be between 0 and 1000000");
  const int threads = hassod::resolve_num_threads(num_threads);
  const std::int64_t n = height_ * width_;
  const std::int64_t lanes = padded_labels(num_labels);

  // Hands the buffers back to the pool however this call ends.
  struct Lease {
    const DenseCrf& owner;
    std::unique_ptr<Workspace> workspace;
    ~Lease() { owner.give_back(std::move(workspace)); }
  } lease{*this, take_workspace()};
  Workspace& ws = *lease.workspace;
  ws.q.reserve(static_cast<std::size_t>(n * lanes));
  float* q = ws.q.data();
  ws.sparse_count.resize(static_cast<std::size_t>(n));
  ws.sparse_label.resize(static_cast<std::size_t>(n * kSparseLabels));
  ws.sparse_value.resize(static_cast<std::size_t>(n * kSparseLabels));
  ClippedProbs clipped(num_labels, lanes);

  // Initial marginals and the sparse clip(P); a block flags a bad probability (reported below
  // with its position) or a pixel with too many labels for the sparse form.
  const std::int64_t num_blocks = (n + kPixelBlock - 1) / kPixelBlock;
  std::vector<char> bad_block(static_cast<std::size_t>(num_blocks), 0);
  std::vector<char> dense_block(static_cast<std::size_t>(num_blocks), 0);
  hassod::parallel_for_blocks(n, kPixelBlock, threads, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> rows(static_cast<std::size_t>((end - begin) * lanes));
    if (!load_clipped(probs, n, num_labels, lanes, begin, end, rows.data()))
      bad_block[static_cast<std::size_t>(begin / kPixelBlock)] = 1;
    normalise_rows(rows.data(), q + begin * lanes, lanes, end - begin);
    if (!clipped.compress(rows.data(), begin, end, ws.sparse_count.data(), ws.sparse_label.data(),
                          ws.sparse_value.data()))
      dense_block[static_cast<std::size_t>(begin / kPixelBlock)] = 1;
  });
  for (std::int64_t b = 0; b < num_blocks; ++b) {
    if (!bad_block[static_cast<std::size_t>(b)]) continue;
    for (std::int64_t k = 0; k < num_labels; ++k)
      for (std::int64_t p = b * kPixelBlock; p < std::min(n, (b + 1) * kPixelBlock); ++p) {
        const float v = probs[k * n + p];
        if (v >= 0.0f && v <= std::numeric_limits<float>::max()) continue;
        std::ostringstream message;
        message << "probabilities must be finite and >= 0, got " << v << " at label " << k
                << ", pixel (" << p / width_ << ", " << p % width_ << ")";
        throw std::invalid_argument(message.str());
      }
  }
  if (num_labels == 1) {
    std::fill(q_out, q_out + n, 1.0f);  // softmax over a single label
    return;
  }
  if (std::find(dense_block.begin(), dense_block.end(), 1) != dense_block.end()) {
    ws.clipped.reserve(static_cast<std::size_t>(n * lanes));
    float* rows = ws.clipped.data();
    hassod::parallel_for_blocks(n, kPixelBlock, threads, [&](std::int64_t begin, std::int64_t end) {
      load_clipped(probs, n, num_labels, lanes, begin, end, rows + begin * lanes);
    });
    clipped.use_dense(rows);
  } else {
    clipped.use_sparse(ws.sparse_count.data(), ws.sparse_label.data(), ws.sparse_value.data());
  }

  // The kernels that take part, bilateral (the larger lattice) first, with their buffers.
  const std::int64_t lines = lanes / kLineFloats;
  const PairwiseKernel* kernels[2];
  float* buffers[2][2];
  std::int64_t line_strides[2];
  int num_kernels = 0;
  for (const PairwiseKernel* kernel : {bilateral_.get(), gaussian_.get()}) {
    if (kernel == nullptr || iterations == 0) continue;
    const std::int64_t m = kernel->lattice.num_vertices();
    const std::int64_t stride = (m + 1) * kLineFloats;
    for (int b = 0; b < 2; ++b) {
      AlignedFloats& buffer = ws.vertices[num_kernels][b];
      buffer.reserve(static_cast<std::size_t>(lines * stride));
      for (std::int64_t l = 0; l < lines; ++l)  // the missing-neighbour rows
        std::fill(buffer.data() + l * stride + m * kLineFloats, buffer.data() + (l + 1) * stride,
                  0.0f);
      buffers[num_kernels][b] = buffer.data();
    }
    line_strides[num_kernels] = stride;
    kernels[num_kernels++] = kernel;
  }
  SliceSource sources[2];
  for (int i = 0; i < num_kernels; ++i) {
    sources[i].kernel = kernels[i];
    sources[i].line_stride = line_strides[i];
  }

  // Work units: blocks of vertices (of each kernel, and for the blur of each line).
  struct VertexBlock {
    int kernel;
    std::int64_t line, begin, end;
  };
  auto vertex_blocks = [&](int axis, bool per_line) {  // the kernels that have pass `axis`
    std::vector<VertexBlock> blocks;
    for (int i = 0; i < num_kernels; ++i) {
      if (axis > kernels[i]->lattice.dims()) continue;
      const std::int64_t m = kernels[i]->lattice.num_vertices();
      for (std::int64_t l = 0; l < (per_line ? lines : 1); ++l)
        for (std::int64_t begin = 0; begin < m; begin += kVertexBlock)
          blocks.push_back(VertexBlock{i, l, begin, std::min(m, begin + kVertexBlock)});
    }
    return blocks;
  };
  // Splat units: per kernel, vertex ranges with equal numbers of entries, one per thread.
  std::vector<VertexBlock> splat_blocks;
  for (int i = 0; i < num_kernels; ++i) {
    const std::vector<std::int64_t> bounds = kernels[i]->lattice.balanced_vertex_ranges(threads);
    for (int t = 0; t < threads; ++t)
      if (bounds[static_cast<std::size_t>(t)] < bounds[static_cast<std::size_t>(t) + 1])
        splat_blocks.push_back(VertexBlock{i, 0, bounds[static_cast<std::size_t>(t)],
                                           bounds[static_cast<std::size_t>(t) + 1]});
  }
  // target[i]: the buffer the next splat of kernel i fills; its blur ends in the same buffer
  // after an even number of passes, else in the other, and the splat after that fills the
  // buffer the slicing does not read.
  int target[2] = {0, 0}, result[2] = {0, 0};
  auto splat_all = [&]() {
    hassod::parallel_for(splat_blocks.size(), threads, [&](std::size_t u) {
      const VertexBlock& block = splat_blocks[u];
      const PairwiseKernel& kernel = *kernels[block.kernel];
      kernel.lattice.splat(q, lanes, kernel.splat_weight.data(),
                           buffers[block.kernel][target[block.kernel]], line_strides[block.kernel],
                           0, n, block.begin, block.end);
    });
  };
  // The blur runs line by line, each line's passes over a buffer that stays in cache: whole
  // (kernel, line) units on separate threads when there are enough lines, else each pass
  // spread over vertex blocks.
  const bool blur_by_units = threads == 1 || lines >= threads;
  std::vector<std::vector<VertexBlock>> pass_blocks;
  int max_axis = 0;
  for (int i = 0; i < num_kernels; ++i) max_axis = std::max(max_axis, kernels[i]->lattice.dims());
  if (!blur_by_units)
    for (int j = 0; j <= max_axis; ++j) pass_blocks.push_back(vertex_blocks(j, true));
  // On one thread the update of each block of pixels splats its new marginals at once (the
  // splat needs every pixel in order, which several threads cannot share): Q never leaves the
  // cache until the last iteration.
  const bool fused = threads == 1;
  std::vector<float> work(static_cast<std::size_t>(fused ? 3 * kPixelBlock * lanes : 0));

  if (num_kernels > 0) splat_all();
  for (int it = 0; it < iterations && num_kernels > 0; ++it) {
    for (int i = 0; i < num_kernels; ++i) {
      result[i] = (target[i] + kernels[i]->lattice.dims() + 1) % 2;
      sources[i].blurred = buffers[i][result[i]];
    }
    if (blur_by_units) {
      hassod::parallel_for(
          static_cast<std::size_t>(num_kernels * lines), threads, [&](std::size_t u) {
            const int i = static_cast<int>(static_cast<std::int64_t>(u) / lines);
            const std::int64_t offset = (static_cast<std::int64_t>(u) % lines) * line_strides[i];
            const PermutohedralLattice& lattice = kernels[i]->lattice;
            for (int j = 0; j <= lattice.dims(); ++j)
              lattice.blur_range(j, buffers[i][(target[i] + j) % 2] + offset,
                                 buffers[i][(target[i] + j + 1) % 2] + offset, 0,
                                 lattice.num_vertices());
          });
    } else {
      for (int j = 0; j <= max_axis; ++j) {
        const std::vector<VertexBlock>& blocks = pass_blocks[static_cast<std::size_t>(j)];
        hassod::parallel_for(blocks.size(), threads, [&](std::size_t u) {
          const VertexBlock& block = blocks[u];
          const int i = block.kernel;
          const std::int64_t offset = block.line * line_strides[i];
          kernels[i]->lattice.blur_range(j, buffers[i][(target[i] + j) % 2] + offset,
                                         buffers[i][(target[i] + j + 1) % 2] + offset, block.begin,
                                         block.end);
        });
      }
    }
    for (int i = 0; i < num_kernels; ++i) target[i] = 1 - result[i];
    const bool last = it + 1 == iterations;
    if (fused && !last) {
      float* rows = work.data() + kPixelBlock * lanes;
      float* scratch = work.data() + 2 * kPixelBlock * lanes;
      for (std::int64_t begin = 0; begin < n; begin += kPixelBlock) {
        const std::int64_t end = std::min(n, begin + kPixelBlock);
        update_rows(sources, num_kernels, clipped.rows(begin, end, scratch), rows, num_labels,
                    lanes, work.data(), begin, end);
        for (int i = 0; i < num_kernels; ++i)
          kernels[i]->lattice.splat(rows, lanes, kernels[i]->splat_weight.data(),
                                    buffers[i][target[i]], line_strides[i], begin, end, 0,
                                    kernels[i]->lattice.num_vertices());
      }
      continue;
    }
    hassod::parallel_for_blocks(n, kPixelBlock, threads, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> block_work(static_cast<std::size_t>(2 * (end - begin) * lanes));
      float* scratch = block_work.data() + (end - begin) * lanes;
      update_rows(sources, num_kernels, clipped.rows(begin, end, scratch), q + begin * lanes,
                  num_labels, lanes, block_work.data(), begin, end);
    });
    if (!last) splat_all();
  }

  hassod::parallel_for_blocks(n, kPixelBlock, threads, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t k = 0; k < num_labels; ++k)
      for (std::int64_t p = begin; p < end; ++p) q_out[k * n + p] = q[p * lanes + k];
  });
}

void DenseCrf::infer_many(const std::vector<LabelSet>& sets, int iterations,
                          int num_threads) const {
  const int threads = hassod::resolve_num_threads(num_threads);
  // Largest sets first, so that concurrent sets finish close together.
  std::vector<std::size_t> order(sets.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return sets[a].num_labels > sets[b].num_labels;
  });
  std::vector<std::exception_ptr> errors(sets.size());
  auto run = [&](std::size_t i, int inner_threads) {
    try {
      infer(sets[i].probs, sets[i].num_labels, iterations, inner_threads, sets[i].q_out);
    } catch (const std::invalid_argument& error) {
      errors[i] = std::make_exception_ptr(
          std::invalid_argument("label set " + std::to_string(i) + ": " + error.what()));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  if (sets.size() >= static_cast<std::size_t>(threads)) {
    hassod::parallel_for(order.size(), threads, [&](std::size_t u) { run(order[u], 1); });
  } else {
    for (const std::size_t i : order) run(i, threads);
  }
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

void dense_crf_batch(const std::vector<CrfTask>& tasks, const CrfParams& params, int iterations,
                     int num_threads) {
  const int threads = hassod::resolve_num_threads(num_threads);
  // Every image runs; the error reported is that of the first failing image, whatever the
  // thread count.
  std::vector<std::exception_ptr> errors(tasks.size());
  auto run = [&](std::size_t i, int inner_threads) {
    const CrfTask& task = tasks[i];
    try {
      const DenseCrf crf(task.image, task.height, task.width, params, inner_threads);
      crf.infer(task.probs, task.num_labels, iterations, inner_threads, task.q_out);
    } catch (const std::invalid_argument& error) {
      errors[i] = std::make_exception_ptr(
          std::invalid_argument("image " + std::to_string(i) + ": " + error.what()));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  if (tasks.size() >= static_cast<std::size_t>(threads)) {
    hassod::parallel_for(tasks.size(), threads, [&](std::size_t i) { run(i, 1); });
  } else {
    for (std::size_t i = 0; i < tasks.size(); ++i) run(i, threads);
  }
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace hassod::crf
