// CUDA coverage matrices and coverage forests (see coverage_cuda.h; the rules are coverage.h's).
//
// Three steps, each one launch per group of up to kMaxImagesPerLaunch images (blockIdx.y picks
// the image). The images' sizes and offsets travel in a __grid_constant__ kernel parameter, so
// nothing is uploaded and the only temporary buffer is the packed words.
//  1. pack_kernel: a warp turns 64 mask bytes into one 64-bit word with two __ballot_sync, each
//     lane reading one byte per ballot: 32 consecutive bytes per load, coalesced whatever the
//     masks' alignment or row length. Layout as pack_masks: pixel p in word p / 64, bit p % 64.
//  2. intersection_kernel: a block owns one 16 x 16 tile of mask pairs (the upper triangle of the
//     tile grid) of one image and a strided share of its 64-word chunks. It stages the two
//     tiles' chunks in shared memory, each thread popcounts one pair, and the partial sums are
//     added to the output with 64-bit integer atomics: exact, so no order dependence.
//  3. parent_kernel picks each mask's parent (one thread per mask) with build_forest's
//     comparisons; depth_kernel then walks each mask's parents.
#include "hierarchy/coverage_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace hassod::cuda {
namespace {

constexpr unsigned kFullWarp = 0xFFFFFFFFu;
constexpr int kWarpSize = 32;
constexpr int kWordBits = 64;

constexpr int kPackThreads = 256;
constexpr int kPackWarps = kPackThreads / kWarpSize;
constexpr int kWordsPerWarpStep = 8;  // words a warp packs per step: 16 byte loads in flight a lane

constexpr int kTile = 16;                        // masks per side of a pair tile
constexpr int kChunkWords = 64;                  // words of each mask staged per step
constexpr int kPairThreads = kTile * kTile;      // one thread per pair of the tile

constexpr int kForestThreads = 128;
constexpr int kMaxGridYZ = 65535;

// One image of a launch. Offsets count elements of the concatenated buffers.
struct ImageTask {
  const std::uint8_t* masks;   // (K, P) bytes; null when only the forest is built
  std::int64_t num_pixels;     // P
  std::int64_t words_per_mask; // ceil(P / 64)
  std::int64_t packed_offset;  // first word of the image in the packed buffer
  std::int64_t matrix_offset;  // first element of its (K, K) intersections
  std::int64_t mask_offset;    // first element of its parent / depth / level
  std::int32_t num_masks;      // K
};

constexpr int kMaxImagesPerLaunch = 64;

struct LaunchImages {
  ImageTask images[kMaxImagesPerLaunch];
  int count;
};
// Kernel parameters are limited to 4 KB; leave room for the kernels' other arguments.
static_assert(sizeof(LaunchImages) <= 3840, "LaunchImages must fit in the kernel parameter space");

// ---------------------------------------------------------------------------------------------
// Kernels

__global__ void __launch_bounds__(kPackThreads)
    pack_kernel(const __grid_constant__ LaunchImages batch, std::uint64_t* __restrict__ packed) {
  const ImageTask& image = batch.images[blockIdx.y];
  const std::int64_t words_per_mask = image.words_per_mask;
  const std::int64_t words = image.num_masks * words_per_mask;
  std::uint64_t* out = packed + image.packed_offset;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const std::int64_t warp = static_cast<std::int64_t>(blockIdx.x) * kPackWarps + threadIdx.x / kWarpSize;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kPackWarps * kWordsPerWarpStep;
  // `first` is the same for the whole warp, so every lane takes part in every ballot.
  for (std::int64_t first = warp * kWordsPerWarpStep; first < words; first += stride) {
    std::int64_t mask = first / words_per_mask;
    std::int64_t word = first - mask * words_per_mask;
    bool inside[2 * kWordsPerWarpStep];
#pragma unroll
    for (int i = 0; i < kWordsPerWarpStep; ++i) {
      const std::uint8_t* row = image.masks + mask * image.num_pixels;
      const std::int64_t pixel = word * kWordBits + lane;
      const bool valid = first + i < words;
      inside[2 * i] = valid && pixel < image.num_pixels && row[pixel] != 0;
      inside[2 * i + 1] = valid && pixel + kWarpSize < image.num_pixels && row[pixel + kWarpSize] != 0;
      if (++word == words_per_mask) {  // the next word starts the next mask
        word = 0;
        ++mask;
      }
    }
    std::uint64_t mine = 0;  // lane i keeps word first + i
#pragma unroll
    for (int i = 0; i < kWordsPerWarpStep; ++i) {
      const std::uint64_t low = __ballot_sync(kFullWarp, inside[2 * i]);
      const std::uint64_t high = __ballot_sync(kFullWarp, inside[2 * i + 1]);
      if (lane == i) mine = low | (high << kWarpSize);
    }
    if (lane < kWordsPerWarpStep && first + lane < words) out[first + lane] = mine;
  }
}

// Tile pair `pair` of the upper triangle (row <= col) of a tiles x tiles grid, row by row.
__device__ inline void tile_pair(std::int64_t pair, int tiles, int& row, int& col) {
  row = 0;
  while (pair >= tiles - row) {
    pair -= tiles - row;
    ++row;
  }
  col = row + static_cast<int>(pair);
}

// Words [start, start + kChunkWords) of the masks of tile `tile`, zeros past the masks' ends.
__device__ inline void stage_chunk(std::uint64_t (*staged)[kChunkWords + 1], const std::uint64_t* packed,
                                   const ImageTask& image, int tile, std::int64_t start) {
  for (int i = static_cast<int>(threadIdx.x); i < kTile * kChunkWords; i += kPairThreads) {
    const int m = i / kChunkWords, w = i % kChunkWords;
    const std::int64_t mask = static_cast<std::int64_t>(tile) * kTile + m;
    const std::int64_t word = start + w;
    staged[m][w] = mask < image.num_masks && word < image.words_per_mask
                       ? packed[image.packed_offset + mask * image.words_per_mask + word]
                       : 0;
  }
}

__global__ void __launch_bounds__(kPairThreads)
    intersection_kernel(const __grid_constant__ LaunchImages batch, const std::uint64_t* __restrict__ packed,
                        unsigned long long* __restrict__ intersections) {
  // +1 word per row: thread (r, c) reads column word w of row c, and an odd row stride puts the
  // 16 rows' words in different banks.
  __shared__ std::uint64_t row_words[kTile][kChunkWords + 1];
  __shared__ std::uint64_t col_words[kTile][kChunkWords + 1];
  const ImageTask& image = batch.images[blockIdx.y];
  const std::int64_t k = image.num_masks;
  const int tiles = static_cast<int>((k + kTile - 1) / kTile);
  const std::int64_t tile_pairs = static_cast<std::int64_t>(tiles) * (tiles + 1) / 2;
  const std::int64_t chunks = (image.words_per_mask + kChunkWords - 1) / kChunkWords;
  const int r = static_cast<int>(threadIdx.x) / kTile, c = static_cast<int>(threadIdx.x) % kTile;
  unsigned long long* out = intersections + image.matrix_offset;
  // The loop bounds depend on the block only, so every thread reaches each __syncthreads.
  for (std::int64_t pair = blockIdx.z; pair < tile_pairs; pair += gridDim.z) {
    int row_tile, col_tile;
    tile_pair(pair, tiles, row_tile, col_tile);
    const bool diagonal = row_tile == col_tile;  // a tile with itself: stage it once
    const std::uint64_t(*cols)[kChunkWords + 1] = diagonal ? row_words : col_words;
    unsigned long long sum = 0;
    for (std::int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
      stage_chunk(row_words, packed, image, row_tile, chunk * kChunkWords);
      if (!diagonal) stage_chunk(col_words, packed, image, col_tile, chunk * kChunkWords);
      __syncthreads();
#pragma unroll 16
      for (int w = 0; w < kChunkWords; ++w) sum += __popcll(row_words[r][w] & cols[c][w]);
      __syncthreads();
    }
    const std::int64_t a = static_cast<std::int64_t>(row_tile) * kTile + r;
    const std::int64_t b = static_cast<std::int64_t>(col_tile) * kTile + c;
    if (sum != 0 && a < k && b < k) {
      atomicAdd(out + a * k + b, sum);
      if (!diagonal) atomicAdd(out + b * k + a, sum);  // a diagonal tile's thread (c, r) does it
    }
  }
}

// build_forest's coverage_ratio: |A∩B| / |A| in float64 (division is IEEE round-to-nearest on
// the device as on the host), 0 for an empty A.
__device__ inline double coverage_ratio(std::int64_t intersection, std::int64_t area) {
  return area > 0 ? static_cast<double>(intersection) / static_cast<double>(area) : 0.0;
}

__global__ void __launch_bounds__(kForestThreads)
    parent_kernel(const __grid_constant__ LaunchImages batch, const std::int64_t* __restrict__ intersections,
                  double cover, std::int32_t* __restrict__ parent) {
  const ImageTask& image = batch.images[blockIdx.y];
  const std::int64_t k = image.num_masks;
  const std::int64_t* matrix = intersections + image.matrix_offset;
  for (std::int64_t a = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; a < k;
       a += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t area_a = matrix[a * k + a];
    std::int32_t best = -1;
    std::int64_t best_area = 0;
    for (std::int64_t b = 0; b < k; ++b) {
      if (b == a) continue;
      const std::int64_t shared = matrix[a * k + b];
      const std::int64_t area_b = matrix[b * k + b];
      const bool covers = coverage_ratio(shared, area_a) >= cover && coverage_ratio(shared, area_b) < cover;
      if (covers && (best < 0 || area_b < best_area)) {  // smallest area, lowest index on ties
        best = static_cast<std::int32_t>(b);
        best_area = area_b;
      }
    }
    parent[image.mask_offset + a] = best;
  }
}

__global__ void __launch_bounds__(kForestThreads)
    depth_kernel(const __grid_constant__ LaunchImages batch, const std::int32_t* __restrict__ parent,
                 std::int32_t* __restrict__ depth, std::int8_t* __restrict__ level) {
  const ImageTask& image = batch.images[blockIdx.y];
  const std::int32_t k = image.num_masks;
  const std::int32_t* parents = parent + image.mask_offset;
  for (std::int64_t a = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; a < k;
       a += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    // A parent is strictly larger than its child, so chains end; the bound only guards the loop.
    std::int32_t steps = 0;
    for (std::int32_t p = parents[a]; p >= 0 && steps <= k; p = parents[p]) ++steps;
    depth[image.mask_offset + a] = steps;
    level[image.mask_offset + a] = static_cast<std::int8_t>(min(steps, 2));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("hassod CUDA: ") + what + " failed: " + cudaGetErrorString(status));
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// A grid's x dimension: the blocks an image's work needs, at most `share` (kernels loop over the
// rest), at least 1.
unsigned grid_x(std::int64_t needed, std::int64_t share) {
  return static_cast<unsigned>(
      std::clamp<std::int64_t>(std::min(needed, share), 1, std::numeric_limits<int>::max()));
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Makes `device` current for the calling thread and restores the previous device.
class CurrentDevice {
 public:
  explicit CurrentDevice(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
    changed_ = device != previous_;
  }
  ~CurrentDevice() {
    if (changed_) cudaSetDevice(previous_);
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// Stream-ordered temporary device memory: freed on the stream after the work queued before it,
// so neither allocation nor release waits for the device.
struct StreamOrderedFree {
  cudaStream_t stream;
  void operator()(void* pointer) const noexcept { cudaFreeAsync(pointer, stream); }
};
template <typename T>
using DeviceBuffer = std::unique_ptr<T, StreamOrderedFree>;

template <typename T>
DeviceBuffer<T> allocate_on_stream(std::int64_t count, cudaStream_t stream) {
  void* pointer = nullptr;
  check(cudaMallocAsync(&pointer, static_cast<std::size_t>(count) * sizeof(T), stream), "cudaMallocAsync");
  return DeviceBuffer<T>(static_cast<T*>(pointer), StreamOrderedFree{stream});
}

int multiprocessor_count(int device) {
  int count = 0;
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return std::max(count, 1);
}

// Blocks that keep every multiprocessor busy for about two waves of 256-thread blocks.
std::int64_t target_blocks(int device) { return std::int64_t{16} * multiprocessor_count(device); }

// The batch cut into launches of at most kMaxImagesPerLaunch images with masks, offsets filled
// in; images without masks are left out (they own no element of any output).
struct BatchPlan {
  std::vector<LaunchImages> launches;
  std::int64_t total_words = 0;
  std::int64_t total_matrix = 0;
  std::int64_t total_masks = 0;
};

BatchPlan plan_batch(const std::vector<DeviceMaskStack>& stacks) {
  BatchPlan plan;
  for (std::size_t i = 0; i < stacks.size(); ++i) {
    const DeviceMaskStack& stack = stacks[i];
    const std::string name = "image " + std::to_string(i);
    if (stack.num_masks < 0 || stack.num_masks > std::numeric_limits<std::int32_t>::max())
      throw std::invalid_argument(name + ": the mask count must be between 0 and 2^31 - 1");
    if (stack.num_pixels < 0) throw std::invalid_argument(name + ": the pixel count must not be negative");
    if (stack.num_masks == 0) continue;
    ImageTask task{};
    task.masks = stack.masks;
    task.num_pixels = stack.num_pixels;
    task.words_per_mask = ceil_div(stack.num_pixels, kWordBits);
    task.packed_offset = plan.total_words;
    task.matrix_offset = plan.total_matrix;
    task.mask_offset = plan.total_masks;
    task.num_masks = static_cast<std::int32_t>(stack.num_masks);
    if (plan.launches.empty() || plan.launches.back().count == kMaxImagesPerLaunch) {
      plan.launches.emplace_back();
      plan.launches.back().count = 0;
    }
    LaunchImages& launch = plan.launches.back();
    launch.images[launch.count++] = task;
    plan.total_words += stack.num_masks * task.words_per_mask;
    plan.total_matrix += stack.num_masks * stack.num_masks;
    plan.total_masks += stack.num_masks;
  }
  return plan;
}

void check_aligned(const void* pointer, std::size_t alignment, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % alignment != 0)
    throw std::invalid_argument(std::string(name) + " must be aligned to " + std::to_string(alignment) +
                                " bytes");
}

}  // namespace

void coverage_matrix_batch(const std::vector<DeviceMaskStack>& stacks, std::int64_t* intersections,
                           int device, cudaStream_t stream) {
  const BatchPlan plan = plan_batch(stacks);
  for (std::size_t i = 0; i < stacks.size(); ++i)
    if (stacks[i].num_masks > 0 && stacks[i].num_pixels > 0 && stacks[i].masks == nullptr)
      throw std::invalid_argument("masks[" + std::to_string(i) + "] is a null pointer");
  if (plan.total_matrix == 0) return;
  if (intersections == nullptr) throw std::invalid_argument("intersections is a null pointer");
  check_aligned(intersections, alignof(unsigned long long), "intersections");

  CurrentDevice current(device);
  // The tile blocks add into the matrices, and images without pixels keep the zeros.
  check(cudaMemsetAsync(intersections, 0, static_cast<std::size_t>(plan.total_matrix) * sizeof(std::int64_t),
                        stream),
        "cudaMemsetAsync");
  if (plan.total_words == 0) return;
  const DeviceBuffer<std::uint64_t> packed = allocate_on_stream<std::uint64_t>(plan.total_words, stream);
  auto* out = reinterpret_cast<unsigned long long*>(intersections);
  const std::int64_t blocks = target_blocks(device);
  for (const LaunchImages& launch : plan.launches) {
    std::int64_t max_words = 0, max_chunks = 0, max_tile_pairs = 0;
    for (int i = 0; i < launch.count; ++i) {
      const ImageTask& image = launch.images[i];
      const std::int64_t tiles = ceil_div(image.num_masks, kTile);
      max_words = std::max(max_words, image.num_masks * image.words_per_mask);
      max_chunks = std::max(max_chunks, ceil_div(image.words_per_mask, kChunkWords));
      max_tile_pairs = std::max(max_tile_pairs, tiles * (tiles + 1) / 2);
    }
    if (max_words == 0) continue;  // these images have no pixels

    const dim3 pack_grid(grid_x(ceil_div(max_words, kPackWarps * kWordsPerWarpStep), blocks / launch.count),
                         static_cast<unsigned>(launch.count));
    pack_kernel<<<pack_grid, kPackThreads, 0, stream>>>(launch, packed.get());
    check_launch("pack_kernel");

    const auto pair_grid_z = static_cast<unsigned>(std::min<std::int64_t>(max_tile_pairs, kMaxGridYZ));
    const dim3 pair_grid(grid_x(max_chunks, blocks / (launch.count * std::int64_t{pair_grid_z})),
                         static_cast<unsigned>(launch.count), pair_grid_z);
    intersection_kernel<<<pair_grid, kPairThreads, 0, stream>>>(launch, packed.get(), out);
    check_launch("intersection_kernel");
  }
}

void build_forest_batch(const std::int64_t* intersections, const std::vector<std::int64_t>& num_masks,
                        double cover, const DeviceForest& forest, int device, cudaStream_t stream) {
  if (!(cover > 0.0 && cover <= 1.0)) throw std::invalid_argument("cover must be in (0, 1]");
  std::vector<DeviceMaskStack> stacks(num_masks.size());
  for (std::size_t i = 0; i < num_masks.size(); ++i) stacks[i].num_masks = num_masks[i];
  const BatchPlan plan = plan_batch(stacks);
  if (plan.total_masks == 0) return;
  if (intersections == nullptr || forest.parent == nullptr || forest.depth == nullptr || forest.level == nullptr)
    throw std::invalid_argument("intersections, parent, depth and level must not be null pointers");
  check_aligned(intersections, alignof(std::int64_t), "intersections");
  check_aligned(forest.parent, alignof(std::int32_t), "parent");
  check_aligned(forest.depth, alignof(std::int32_t), "depth");

  CurrentDevice current(device);
  for (const LaunchImages& launch : plan.launches) {
    std::int64_t max_masks = 0;
    for (int i = 0; i < launch.count; ++i) max_masks = std::max<std::int64_t>(max_masks, launch.images[i].num_masks);
    const dim3 grid(grid_x(ceil_div(max_masks, kForestThreads), kMaxGridYZ), static_cast<unsigned>(launch.count));
    parent_kernel<<<grid, kForestThreads, 0, stream>>>(launch, intersections, cover, forest.parent);
    check_launch("parent_kernel");
    depth_kernel<<<grid, kForestThreads, 0, stream>>>(launch, forest.parent, forest.depth, forest.level);
    check_launch("depth_kernel");
  }
}

}  // namespace hassod::cuda
