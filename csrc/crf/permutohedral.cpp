// Permutohedral lattice construction and filtering (see permutohedral.h).
//
// Construction runs in three steps: (1) per point, in parallel, the elevation onto the d+1
// dimensional hyperplane, the enclosing simplex (remainder-0 point and ranks) and the barycentric
// weights; (2) in point order, one thread inserts the simplex corners into a hash table, which
// numbers vertices by first appearance exactly as densecrf does (and marks each vertex's first
// entry, where the splat writes instead of adding); (3) in parallel, the two blur neighbours of
// every vertex along every lattice axis.
#include "crf/permutohedral.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "common/multiversion.h"
#include "common/parallel.h"
#include "crf/line.h"

namespace hassod::crf {
namespace {

constexpr int kMaxDims = 16;
// Lattice coordinates are integers held in float during construction: keep them well inside the
// range where float represents integers exactly (2^24).
constexpr float kMaxElevated = 4194304.0f;  // 2^22
constexpr std::int64_t kVertexBlock = 256;
constexpr std::int64_t kPointBlock = 1024;

// Open-addressing table of lattice keys (the first d coordinates of a vertex; the last one is
// minus their sum) with linear probing. Ids are handed out in insertion order.
class KeyTable {
 public:
  KeyTable(int dims, std::int64_t expected) : dims_(dims) {
    std::size_t capacity = 64;
    while (capacity < static_cast<std::size_t>(2 * expected)) capacity *= 2;
    resize_slots(capacity);
    keys_.reserve(static_cast<std::size_t>(expected) * static_cast<std::size_t>(dims));
  }

  std::int64_t size() const { return size_; }

  std::int32_t insert(const std::int32_t* key) {
    if (2 * static_cast<std::size_t>(size_ + 1) > slots_.size()) grow();
    std::size_t slot = home(key);
    while (true) {
      const std::int32_t id = slots_[slot];
      if (id < 0) {
        keys_.insert(keys_.end(), key, key + dims_);
        slots_[slot] = static_cast<std::int32_t>(size_);
        return static_cast<std::int32_t>(size_++);
      }
      if (equal(id, key)) return id;
      slot = (slot + 1) & mask_;
    }
  }

  std::int32_t find(const std::int32_t* key) const {
    std::size_t slot = home(key);
    while (true) {
      const std::int32_t id = slots_[slot];
      if (id < 0 || equal(id, key)) return id;
      slot = (slot + 1) & mask_;
    }
  }

  const std::int32_t* key(std::int64_t id) const {
    return keys_.data() + static_cast<std::size_t>(id) * static_cast<std::size_t>(dims_);
  }

 private:
  void resize_slots(std::size_t capacity) {
    slots_.assign(capacity, -1);
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
  }

  // Fibonacci hashing: the top bits of a multiplicative mix.
  std::size_t home(const std::int32_t* key) const {
    std::uint64_t h = 0;
    for (int i = 0; i < dims_; ++i)
      h = (h + static_cast<std::uint32_t>(key[i])) * 0x9E3779B97F4A7C15ULL;
    return static_cast<std::size_t>(h >> shift_) & mask_;
  }

  bool equal(std::int32_t id, const std::int32_t* key) const {
    return std::memcmp(this->key(id), key,
                       static_cast<std::size_t>(dims_) * sizeof(std::int32_t)) == 0;
  }

  void grow() {
    resize_slots(slots_.size() * 2);
    for (std::int64_t id = 0; id < size_; ++id) {
      std::size_t slot = home(key(id));
      while (slots_[slot] >= 0) slot = (slot + 1) & mask_;
      slots_[slot] = static_cast<std::int32_t>(id);
    }
  }

  int dims_;
  std::int64_t size_ = 0;
  std::vector<std::int32_t> keys_;
  std::vector<std::int32_t> slots_;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

// The same table for keys packed into 64 bits: d fields of 64 / d bits (at most 32), each a
// coordinate plus a bias. Used when every coordinate, and its blur neighbours', fits, which is
// the case for images and bandwidths of ordinary size; one compare per probe and keys stored in
// the slots make it several times faster than KeyTable.
class PackedKeyTable {
 public:
  PackedKeyTable(int dims, std::int64_t expected)
      : dims_(dims), bits_(field_bits(dims)), bias_(std::int64_t{1} << (bits_ - 1)) {
    std::size_t capacity = 64;
    while (capacity < static_cast<std::size_t>(2 * expected)) capacity *= 2;
    resize_slots(capacity);
    keys_.reserve(static_cast<std::size_t>(expected));
  }

  static int field_bits(int dims) { return std::min(32, 64 / dims); }

  // True if coordinates in [-limit, limit] fit, with room for the neighbours (+-dims).
  static bool fits(int dims, std::int64_t limit) {
    return limit + dims + 2 < (std::int64_t{1} << (field_bits(dims) - 1));
  }

  std::uint64_t pack(const std::int32_t* key) const {
    std::uint64_t packed = 0;
    for (int i = 0; i < dims_; ++i)
      packed |= static_cast<std::uint64_t>(key[i] + bias_) << (bits_ * i);
    return packed;
  }

  // The packed form of adding delta[i] to every coordinate (no field leaves its range).
  std::uint64_t offset(const std::int32_t* delta) const {
    std::uint64_t packed = 0;
    for (int i = 0; i < dims_; ++i)
      packed += static_cast<std::uint64_t>(static_cast<std::int64_t>(delta[i])) << (bits_ * i);
    return packed;
  }

  std::int64_t size() const { return static_cast<std::int64_t>(keys_.size()); }
  std::uint64_t key(std::int64_t id) const { return keys_[static_cast<std::size_t>(id)]; }

  std::int32_t insert(std::uint64_t key) {
    if (2 * (keys_.size() + 1) > slots_.size()) grow();
    std::size_t slot = home(key);
    while (true) {
      Slot& entry = slots_[slot];
      if (entry.id < 0) {
        entry = Slot{key, static_cast<std::int32_t>(keys_.size())};
        keys_.push_back(key);
        return entry.id;
      }
      if (entry.key == key) return entry.id;
      slot = (slot + 1) & mask_;
    }
  }

  std::int32_t find(std::uint64_t key) const {
    std::size_t slot = home(key);
    while (true) {
      const Slot& entry = slots_[slot];
      if (entry.id < 0 || entry.key == key) return entry.id;
      slot = (slot + 1) & mask_;
    }
  }

 private:
  struct Slot {
    std::uint64_t key = 0;
    std::int32_t id = -1;
  };

  void resize_slots(std::size_t capacity) {
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
  }

  std::size_t home(std::uint64_t key) const {
    return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ULL) >> shift_) & mask_;
  }

  void grow() {
    resize_slots(slots_.size() * 2);
    for (std::size_t id = 0; id < keys_.size(); ++id) {
      std::size_t slot = home(keys_[id]);
      while (slots_[slot].id >= 0) slot = (slot + 1) & mask_;
      slots_[slot] = Slot{keys_[id], static_cast<std::int32_t>(id)};
    }
  }

  int dims_;
  int bits_;
  std::int64_t bias_;
  std::vector<Slot> slots_;
  std::vector<std::uint64_t> keys_;  // by id
  std::size_t mask_ = 0;
  int shift_ = 64;
};

constexpr std::int64_t kPrefetch = 8;  // vertices ahead to prefetch in the blur

// One entry's scatter for L lines of channels: target (+)= w * source.
template <int L>
inline void scatter_lines(const float* source, float weight, bool first, float* target,
                          std::int64_t line_stride) {
  const Line w = broadcast(weight);
  for (int l = 0; l < L; ++l) {
    const Line value = w * load_line(source + l * kLineFloats);
    float* line = target + l * line_stride;
    store_line(line, first ? value : load_line(line) + value);
  }
}

// scatter_points() for L lines of channels starting at channel `offset`.
template <int L>
inline void scatter_group(const float* rows, std::int64_t in_stride, std::int64_t offset,
                          const std::int32_t* entry_vertex, const std::uint8_t* entry_first,
                          const float* weights, int corners, std::int64_t point_begin,
                          std::int64_t point_end, float* out, std::int64_t line_stride,
                          std::int64_t begin, std::int64_t end) {
  float* first_line = out + (offset / kLineFloats) * line_stride;
  for (std::int64_t p = point_begin; p < point_end; ++p) {
    const float* source = rows + (p - point_begin) * in_stride + offset;
    for (std::int64_t e = p * corners; e < (p + 1) * corners; ++e) {
      const std::int64_t v = entry_vertex[e];
      if (v < begin || v >= end) continue;
      scatter_lines<L>(source, weights[e], entry_first[e] != 0, first_line + v * kLineFloats,
                       line_stride);
    }
  }
}

HASSOD_MULTIVERSION void scatter_points(const float* rows, std::int64_t in_stride,
                                        const std::int32_t* entry_vertex,
                                        const std::uint8_t* entry_first, const float* weights,
                                        int corners, std::int64_t point_begin,
                                        std::int64_t point_end, float* out,
                                        std::int64_t line_stride, std::int64_t begin,
                                        std::int64_t end) {
  // Groups of up to 4 lines, each a pass over the points (one pass unless in_stride > 64).
  for (std::int64_t g = 0; g < in_stride; g += 4 * kLineFloats) {
    const std::int64_t lines = std::min<std::int64_t>(in_stride - g, 4 * kLineFloats) / kLineFloats;
    auto group = [&](auto tag) {
      scatter_group<decltype(tag)::value>(rows, in_stride, g, entry_vertex, entry_first, weights,
                                          corners, point_begin, point_end, out, line_stride, begin,
                                          end);
    };
    switch (lines) {
      case 1:
        group(std::integral_constant<int, 1>{});
        break;
      case 2:
        group(std::integral_constant<int, 2>{});
        break;
      case 3:
        group(std::integral_constant<int, 3>{});
        break;
      default:
        group(std::integral_constant<int, 4>{});
        break;
    }
  }
}

HASSOD_MULTIVERSION void blur_rows(const float* values, float* result,
                                   const std::int32_t* neighbours, std::int64_t num_vertices,
                                   std::int64_t begin, std::int64_t end) {
  const Line half = broadcast(0.5f);
  for (std::int64_t v = begin; v < end; ++v) {
    if (v + kPrefetch < num_vertices) {
      __builtin_prefetch(values +
                         static_cast<std::int64_t>(neighbours[2 * (v + kPrefetch)]) * kLineFloats);
      __builtin_prefetch(values + static_cast<std::int64_t>(neighbours[2 * (v + kPrefetch) + 1]) *
                                      kLineFloats);
    }
    const Line n1 = load_line(values + static_cast<std::int64_t>(neighbours[2 * v]) * kLineFloats);
    const Line n2 =
        load_line(values + static_cast<std::int64_t>(neighbours[2 * v + 1]) * kLineFloats);
    store_line(result + v * kLineFloats, load_line(values + v * kLineFloats) + half * (n1 + n2));
  }
}

}  // namespace

PermutohedralLattice::PermutohedralLattice(const float* features, std::int64_t num_points, int dims,
                                           int num_threads)
    : dims_(dims), num_points_(num_points) {
  if (dims < 1 || dims > kMaxDims) throw std::invalid_argument("lattice dimension must be 1..16");
  if (num_points < 1) throw std::invalid_argument("the lattice needs at least one point");
  const int d = dims;
  const int corners = d + 1;
  if (num_points * corners > static_cast<std::int64_t>(INT32_MAX))
    throw std::invalid_argument("too many points for the lattice");
  const auto entries = static_cast<std::size_t>(num_points * corners);
  alpha_ = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));

  // Diagonal of the elevation matrix, scaled to the filter's standard deviation (densecrf's
  // scale_factor, Adams et al. 2010 p. 5-6): rounded to float as densecrf stores it.
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * corners);
  float scale[kMaxDims];
  for (int i = 0; i < d; ++i)
    scale[i] =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
  const float down = 1.0f / static_cast<float>(corners);
  const auto up = static_cast<float>(corners);

  // Step 1: enclosing simplex of every point.
  std::vector<std::int32_t> remainder0(static_cast<std::size_t>(num_points) *
                                       static_cast<std::size_t>(d));
  std::vector<std::int8_t> ranks(static_cast<std::size_t>(num_points) *
                                 static_cast<std::size_t>(d));
  entry_weight_.assign(entries, 0.0f);
  const auto num_blocks = static_cast<std::size_t>((num_points + kPointBlock - 1) / kPointBlock);
  std::vector<char> bad_block(num_blocks, 0);
  std::vector<std::int32_t> block_extent(num_blocks, 0);  // largest |remainder-0 coordinate|
  hassod::parallel_for_blocks(
      num_points, kPointBlock, num_threads, [&](std::int64_t begin, std::int64_t end) {
        float elevated[kMaxDims + 1], rem0[kMaxDims + 1], bary[kMaxDims + 2];
        int rank[kMaxDims + 1];
        std::int32_t extent = 0;
        for (std::int64_t p = begin; p < end; ++p) {
          const float* f = features + p * d;
          float running = 0.0f;
          for (int j = d; j > 0; --j) {
            const float cf = f[j - 1] * scale[j - 1];
            elevated[j] = running - static_cast<float>(j) * cf;
            running += cf;
          }
          elevated[0] = running;
          bool finite = true;
          for (int i = 0; i <= d; ++i) finite = finite && std::fabs(elevated[i]) < kMaxElevated;
          if (!finite) {
            bad_block[static_cast<std::size_t>(begin / kPointBlock)] = 1;
            continue;
          }
          // Nearest remainder-0 point: each coordinate rounded (half to even) to a multiple of d+1.
          // Adding and subtracting 1.5 * 2^23 rounds a float below 2^22 in magnitude to an integer.
          float sum = 0.0f;
          for (int i = 0; i <= d; ++i) {
            const float v = (down * elevated[i] + 12582912.0f) - 12582912.0f;
            rem0[i] = v * up;
            sum += v;
          }
          // Rank of each coordinate's offset from that point (ties go to the later coordinate).
          float offset[kMaxDims + 1];
          for (int i = 0; i <= d; ++i) {
            offset[i] = elevated[i] - rem0[i];
            rank[i] = 0;
          }
          for (int i = 0; i < d; ++i)
            for (int j = i + 1; j <= d; ++j) {  // branch-free: the outcome is unpredictable
              const int later = offset[i] < offset[j] ? 1 : 0;
              rank[i] += later;
              rank[j] += 1 - later;
            }
          // Bring the point back onto the plane when the rounded coordinates do not sum to zero.
          const int shift = static_cast<int>(sum);
          for (int i = 0; i <= d; ++i) {
            rank[i] += shift;
            if (rank[i] < 0) {
              rank[i] += corners;
              rem0[i] += up;
            } else if (rank[i] >= corners) {
              rank[i] -= corners;
              rem0[i] -= up;
            }
          }
          // Barycentric coordinates (Adams et al. 2010 p. 10).
          for (int i = 0; i <= d + 1; ++i) bary[i] = 0.0f;
          for (int i = 0; i <= d; ++i) {
            const float v = (elevated[i] - rem0[i]) * down;
            bary[d - rank[i]] += v;
            bary[d - rank[i] + 1] -= v;
          }
          bary[0] += 1.0f + bary[d + 1];
          for (int r = 0; r <= d; ++r)
            entry_weight_[static_cast<std::size_t>(p * corners + r)] = bary[r];
          for (int i = 0; i < d; ++i) {
            const auto coordinate = static_cast<std::int32_t>(rem0[i]);
            remainder0[static_cast<std::size_t>(p * d + i)] = coordinate;
            ranks[static_cast<std::size_t>(p * d + i)] = static_cast<std::int8_t>(rank[i]);
            extent = std::max(extent, coordinate < 0 ? -coordinate : coordinate);
          }
        }
        block_extent[static_cast<std::size_t>(begin / kPointBlock)] = extent;
      });
  if (std::find(bad_block.begin(), bad_block.end(), 1) != bad_block.end())
    throw std::invalid_argument(
        "lattice features are not finite or too large (is a kernel's bandwidth far too small?)");

  // Steps 2 and 3 with packed keys when they fit (the usual case), else with wide keys.
  entry_vertex_.resize(entries);
  entry_first_.assign(entries, 0);
  const std::int64_t extent = *std::max_element(block_extent.begin(), block_extent.end()) +
                              static_cast<std::int64_t>(corners);
  // Corner r of a simplex adds r to the coordinates of rank <= d - r and r - (d+1) to the others.
  auto corner_key = [&](std::int64_t p, int r, std::int32_t* key) {
    const std::int32_t* rem = remainder0.data() + p * d;
    const std::int8_t* rank = ranks.data() + p * d;
    for (int i = 0; i < d; ++i) key[i] = rem[i] + (rank[i] <= d - r ? r : r - corners);
  };
  // Blur neighbours along axis j: the vertex minus / plus the axis' direction (d+1) e_j - 1 in
  // the plane, i.e. every coordinate -1 / +1 except coordinate j at +d / -d.
  auto axis_delta = [&](int j, int sign, std::int32_t* delta) {
    for (int k = 0; k < d; ++k) delta[k] = -sign;
    if (j < d) delta[j] = sign * d;
  };
  std::int64_t m = 0;
  if (PackedKeyTable::fits(d, extent)) {
    PackedKeyTable table(d, num_points / 8);  // grows as needed; small tables stay in cache
    std::uint64_t previous[kMaxDims + 1] = {}, current[kMaxDims + 1];
    std::int32_t key[kMaxDims];
    for (std::int64_t p = 0; p < num_points; ++p) {  // in point order: ids by first appearance
      for (int r = 0; r <= d; ++r) {
        corner_key(p, r, key);
        current[r] = table.pack(key);
        const auto e = static_cast<std::size_t>(p * corners + r);
        // Neighbouring points often share their simplex: corner r as the previous point's.
        if (p > 0 && current[r] == previous[r]) {
          entry_vertex_[e] = entry_vertex_[e - static_cast<std::size_t>(corners)];
          continue;
        }
        const std::int64_t before = table.size();
        entry_vertex_[e] = table.insert(current[r]);
        entry_first_[e] = table.size() > before ? 1 : 0;
      }
      std::copy(current, current + corners, previous);
    }
    m = table.size();
    neighbours_.resize(static_cast<std::size_t>(corners * m * 2));
    std::uint64_t offsets[kMaxDims + 1][2];
    for (int j = 0; j <= d; ++j)
      for (int side = 0; side < 2; ++side) {
        std::int32_t delta[kMaxDims];
        axis_delta(j, side == 0 ? 1 : -1, delta);
        offsets[j][side] = table.offset(delta);
      }
    hassod::parallel_for_blocks(
        m, kVertexBlock, num_threads, [&](std::int64_t begin, std::int64_t end) {
          for (std::int64_t v = begin; v < end; ++v)
            for (int j = 0; j <= d; ++j)
              for (int side = 0; side < 2; ++side) {
                const std::int32_t id = table.find(table.key(v) + offsets[j][side]);
                neighbours_[static_cast<std::size_t>((j * m + v) * 2 + side)] =
                    id < 0 ? static_cast<std::int32_t>(m) : id;
              }
        });
  } else {
    KeyTable table(d, num_points);
    std::int32_t key[kMaxDims];
    for (std::int64_t p = 0; p < num_points; ++p)
      for (int r = 0; r <= d; ++r) {
        corner_key(p, r, key);
        const std::int64_t before = table.size();
        const auto e = static_cast<std::size_t>(p * corners + r);
        entry_vertex_[e] = table.insert(key);
        entry_first_[e] = table.size() > before ? 1 : 0;
      }
    m = table.size();
    neighbours_.resize(static_cast<std::size_t>(corners * m * 2));
    hassod::parallel_for_blocks(
        m, kVertexBlock, num_threads, [&](std::int64_t begin, std::int64_t end) {
          std::int32_t neighbour[kMaxDims], delta[kMaxDims];
          for (std::int64_t v = begin; v < end; ++v)
            for (int j = 0; j <= d; ++j)
              for (int side = 0; side < 2; ++side) {
                axis_delta(j, side == 0 ? 1 : -1, delta);
                for (int k = 0; k < d; ++k) neighbour[k] = table.key(v)[k] + delta[k];
                const std::int32_t id = table.find(neighbour);
                neighbours_[static_cast<std::size_t>((j * m + v) * 2 + side)] =
                    id < 0 ? static_cast<std::int32_t>(m) : id;
              }
        });
  }
  num_vertices_ = m;

  // Entries per vertex (for balanced ranges).
  vertex_entries_.assign(static_cast<std::size_t>(m + 1), 0);
  for (const std::int32_t v : entry_vertex_) ++vertex_entries_[static_cast<std::size_t>(v) + 1];
  for (std::int64_t v = 0; v < m; ++v)
    vertex_entries_[static_cast<std::size_t>(v + 1)] +=
        vertex_entries_[static_cast<std::size_t>(v)];
}

std::vector<std::int64_t> PermutohedralLattice::balanced_vertex_ranges(int parts) const {
  std::vector<std::int64_t> bounds(static_cast<std::size_t>(parts) + 1, num_vertices_);
  bounds[0] = 0;
  const std::int64_t total = vertex_entries_.back();
  for (int i = 1; i < parts; ++i) {
    const std::int64_t target = total * i / parts;
    bounds[static_cast<std::size_t>(i)] =
        std::lower_bound(vertex_entries_.begin(), vertex_entries_.end(), target) -
        vertex_entries_.begin();
    bounds[static_cast<std::size_t>(i)] =
        std::min(bounds[static_cast<std::size_t>(i)], num_vertices_);
  }
  return bounds;
}

void PermutohedralLattice::splat(const float* rows, std::int64_t in_stride,
                                 const float* entry_weights, float* vertex_values,
                                 std::int64_t line_stride, std::int64_t point_begin,
                                 std::int64_t point_end, std::int64_t vertex_begin,
                                 std::int64_t vertex_end) const {
  scatter_points(rows, in_stride, entry_vertex_.data(), entry_first_.data(), entry_weights,
                 dims_ + 1, point_begin, point_end, vertex_values, line_stride, vertex_begin,
                 vertex_end);
}

void PermutohedralLattice::blur_range(int axis, const float* values, float* result,
                                      std::int64_t begin, std::int64_t end) const {
  blur_rows(values, result, neighbours_.data() + static_cast<std::size_t>(axis * num_vertices_ * 2),
            num_vertices_, begin, end);
}

std::vector<float> PermutohedralLattice::filter_scalar(const float* in, int num_threads) const {
  // The same steps as splat_range / blur_range / slicing for one value per point, with densecrf's
  // order of operations (its sequential filter): splat w * in, blur old + (n1 + n2) / 2, slice
  // sum of (w * blurred) * alpha.
  const std::int64_t m = num_vertices_;
  const int corners = dims_ + 1;
  std::vector<float> buffers[2] = {std::vector<float>(static_cast<std::size_t>(m + 1), 0.0f),
                                   std::vector<float>(static_cast<std::size_t>(m + 1), 0.0f)};
  for (std::size_t e = 0; e < entry_vertex_.size(); ++e) {  // in point order
    float& target = buffers[0][static_cast<std::size_t>(entry_vertex_[e])];
    const float value = entry_weight_[e] * in[e / static_cast<std::size_t>(corners)];
    target = entry_first_[e] ? value : target + value;
  }
  for (int j = 0; j <= dims_; ++j) {
    const std::int32_t* neighbours = neighbours_.data() + static_cast<std::size_t>(j * m * 2);
    const float* values = buffers[j % 2].data();
    float* result = buffers[(j + 1) % 2].data();
    hassod::parallel_for_blocks(
        m, kVertexBlock, num_threads, [&](std::int64_t begin, std::int64_t end) {
          for (std::int64_t v = begin; v < end; ++v)
            result[v] =
                values[v] + 0.5f * (values[neighbours[2 * v]] + values[neighbours[2 * v + 1]]);
        });
  }
  const float* blurred = buffers[(dims_ + 1) % 2].data();
  std::vector<float> out(static_cast<std::size_t>(num_points_));
  hassod::parallel_for_blocks(num_points_, kPointBlock, num_threads,
                              [&](std::int64_t begin, std::int64_t end) {
                                for (std::int64_t p = begin; p < end; ++p) {
                                  float sum = 0.0f;
                                  for (int r = 0; r < corners; ++r) {
                                    const auto e = static_cast<std::size_t>(p * corners + r);
                                    sum += entry_weight_[e] * blurred[entry_vertex_[e]] * alpha_;
                                  }
                                  out[static_cast<std::size_t>(p)] = sum;
                                }
                              });
  return out;
}

}  // namespace hassod::crf
