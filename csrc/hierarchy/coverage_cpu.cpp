// CPU implementation of coverage matrices, the coverage forest and dedup (see coverage.h).
#include "hierarchy/coverage.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HASSOD_X86_PACK 1
#endif

namespace hassod {
namespace {

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define HASSOD_POPCOUNT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v2", "default")))
#else
#define HASSOD_POPCOUNT_CLONES
#endif

constexpr std::uint64_t kLowBits = 0x7F7F7F7F7F7F7F7FULL;
constexpr std::uint64_t kHighBits = 0x8080808080808080ULL;
// Multiplying eight 0/1 bytes by this gathers byte k into bit 56 + k (no carries reach there).
constexpr std::uint64_t kGatherBytes = 0x0102040810204080ULL;

// Eight mask bytes (non-zero = inside) to eight bits, byte k to bit k.
inline std::uint64_t pack_eight(const std::uint8_t* bytes) {
  std::uint64_t x;
  std::memcpy(&x, bytes, 8);
  const std::uint64_t nonzero = (((x & kLowBits) + kLowBits) | x) & kHighBits;  // high bit per byte
  return ((nonzero >> 7) * kGatherBytes) >> 56;
}

// Packs `count` full 64-byte groups into words: one bit per byte, byte k to bit k.
void pack_words_portable(const std::uint8_t* source, std::uint64_t* target, std::int64_t count) {
  for (std::int64_t w = 0; w < count; ++w) {
    std::uint64_t word = 0;
    for (int byte = 0; byte < 8; ++byte) word |= pack_eight(source + 64 * w + 8 * byte) << (8 * byte);
    target[w] = word;
  }
}

#ifdef HASSOD_X86_PACK
__attribute__((target("avx512bw"))) void pack_words_avx512(const std::uint8_t* source,
                                                            std::uint64_t* target, std::int64_t count) {
  for (std::int64_t w = 0; w < count; ++w) {
    const __m512i bytes = _mm512_loadu_si512(static_cast<const void*>(source + 64 * w));
    target[w] = _mm512_test_epi8_mask(bytes, bytes);
  }
}

__attribute__((target("avx2"))) void pack_words_avx2(const std::uint8_t* source,
                                                      std::uint64_t* target, std::int64_t count) {
  const __m256i zero = _mm256_setzero_si256();
  for (std::int64_t w = 0; w < count; ++w) {
    const auto* group = reinterpret_cast<const __m256i*>(source + 64 * w);
    const auto low = static_cast<std::uint32_t>(
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256(group), zero)));
    const auto high = static_cast<std::uint32_t>(
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256(group + 1), zero)));
    target[w] = ~(static_cast<std::uint64_t>(high) << 32 | low);  // bits set for zero bytes, flipped
  }
}
#endif

using PackWords = void (*)(const std::uint8_t*, std::uint64_t*, std::int64_t);

// The widest packer this CPU runs, chosen once.
PackWords best_packer() {
#ifdef HASSOD_X86_PACK
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw")) return pack_words_avx512;
  if (__builtin_cpu_supports("avx2")) return pack_words_avx2;
#endif
  return pack_words_portable;
}

// Sets first_word / last_word from the packed words.
void find_word_ranges(PackedMasks& packed) {
  const auto k = static_cast<std::size_t>(packed.num_masks);
  packed.first_word.assign(k, 0);
  packed.last_word.assign(k, -1);
  for (std::size_t m = 0; m < k; ++m) {
    const std::uint64_t* words = packed.words.data() + static_cast<std::int64_t>(m) * packed.words_per_mask;
    std::int64_t first = 0, last = packed.words_per_mask - 1;
    while (first <= last && words[first] == 0) ++first;
    while (last >= first && words[last] == 0) --last;
    packed.first_word[m] = first;
    packed.last_word[m] = last;
  }
}

HASSOD_POPCOUNT_CLONES
std::int64_t and_popcount(const std::uint64_t* a, const std::uint64_t* b, std::int64_t n) {
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < n; ++i) count += __builtin_popcountll(a[i] & b[i]);
  return count;
}

}  // namespace

PackedMasks pack_masks(const std::uint8_t* masks, std::int64_t num_masks, std::int64_t num_pixels) {
  PackedMasks packed;
  packed.num_masks = num_masks;
  packed.num_pixels = num_pixels;
  packed.words_per_mask = (num_pixels + 63) / 64;
  packed.words.assign(static_cast<std::size_t>(num_masks * packed.words_per_mask), 0);
  static const PackWords pack_words = best_packer();
  const std::int64_t full_words = num_pixels / 64;
  for (std::int64_t k = 0; k < num_masks; ++k) {
    const std::uint8_t* source = masks + k * num_pixels;
    std::uint64_t* target = packed.words.data() + k * packed.words_per_mask;
    pack_words(source, target, full_words);
    for (std::int64_t p = full_words * 64; p < num_pixels; ++p)  // the tail, pixel by pixel
      if (source[p]) target[p / 64] |= std::uint64_t{1} << (p % 64);
  }
  find_word_ranges(packed);
  return packed;
}

PackedMasks pack_runs(const std::vector<std::vector<std::uint32_t>>& runs, std::int64_t num_pixels) {
  PackedMasks packed;
  packed.num_masks = static_cast<std::int64_t>(runs.size());
  packed.num_pixels = num_pixels;
  packed.words_per_mask = (num_pixels + 63) / 64;
  packed.words.assign(static_cast<std::size_t>(packed.num_masks * packed.words_per_mask), 0);
  for (std::size_t k = 0; k < runs.size(); ++k) {
    std::uint64_t* target = packed.words.data() + static_cast<std::int64_t>(k) * packed.words_per_mask;
    std::int64_t position = 0;
    bool inside = false;  // runs alternate, starting with background
    for (const std::uint32_t length : runs[k]) {
      const std::int64_t end = position + length;
      if (end > num_pixels)
        throw std::invalid_argument("RLE runs cover more pixels than the mask size says");
      if (inside) {
        for (std::int64_t p = position; p < end;) {  // set whole words where possible
          const std::int64_t word = p / 64, bit = p % 64;
          const std::int64_t span = std::min<std::int64_t>(64 - bit, end - p);
          const std::uint64_t ones = span == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << span) - 1);
          target[word] |= ones << bit;
          p += span;
        }
      }
      position = end;
      inside = !inside;
    }
    if (position != num_pixels)
      throw std::invalid_argument("RLE runs do not cover exactly the mask size");
  }
  find_word_ranges(packed);
  return packed;
}

std::vector<std::int64_t> coverage_matrix(const PackedMasks& masks) {
  const std::int64_t k = masks.num_masks, words = masks.words_per_mask;
  std::vector<std::int64_t> intersections(static_cast<std::size_t>(k * k), 0);
  // Blocks of words small enough that all K masks' blocks stay in cache across the pairs.
  const std::int64_t block = std::max<std::int64_t>(64, (std::int64_t{1} << 15) / std::max<std::int64_t>(k, 1));
  for (std::int64_t start = 0; start < words; start += block) {
    const std::int64_t stop = std::min(start + block, words);
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int64_t first_i = std::max(start, masks.first_word[static_cast<std::size_t>(i)]);
      const std::int64_t last_i = std::min(stop - 1, masks.last_word[static_cast<std::size_t>(i)]);
      if (first_i > last_i) continue;
      const std::uint64_t* a = masks.words.data() + i * words;
      for (std::int64_t j = i; j < k; ++j) {
        const std::int64_t first = std::max(first_i, masks.first_word[static_cast<std::size_t>(j)]);
        const std::int64_t last = std::min(last_i, masks.last_word[static_cast<std::size_t>(j)]);
        if (first > last) continue;  // no shared words in this block
        const std::uint64_t* b = masks.words.data() + j * words;
        intersections[static_cast<std::size_t>(i * k + j)] += and_popcount(a + first, b + first, last - first + 1);
      }
    }
  }
  for (std::int64_t i = 0; i < k; ++i)
    for (std::int64_t j = 0; j < i; ++j)
      intersections[static_cast<std::size_t>(i * k + j)] = intersections[static_cast<std::size_t>(j * k + i)];
  return intersections;
}

namespace {

// |A∩B| / |A| as the authors compute it (float64 division); 0 for an empty A.
inline double coverage_ratio(std::int64_t intersection, std::int64_t area) {
  return area > 0 ? static_cast<double>(intersection) / static_cast<double>(area) : 0.0;
}

}  // namespace

Forest build_forest(const std::int64_t* intersections, std::int64_t num_masks, double cover) {
  Forest forest;
  const auto k = static_cast<std::size_t>(num_masks);
  forest.parent.assign(k, -1);
  forest.depth.assign(k, -1);
  forest.level.assign(k, 0);
  auto area = [&](std::int64_t i) { return intersections[i * num_masks + i]; };
  for (std::int64_t a = 0; a < num_masks; ++a) {
    std::int32_t best = -1;
    for (std::int64_t b = 0; b < num_masks; ++b) {
      if (b == a) continue;
      const std::int64_t shared = intersections[a * num_masks + b];
      const bool covers = coverage_ratio(shared, area(a)) >= cover && coverage_ratio(shared, area(b)) < cover;
      if (covers && (best < 0 || area(b) < area(best))) best = static_cast<std::int32_t>(b);
    }
    forest.parent[static_cast<std::size_t>(a)] = best;
  }
  // A parent is strictly larger than its child (cover*|A| <= |A∩B| < cover*|B|), so chains end.
  for (std::size_t a = 0; a < k; ++a) {
    std::int32_t depth = 0;
    for (std::int32_t p = forest.parent[a]; p >= 0; p = forest.parent[static_cast<std::size_t>(p)]) {
      if (forest.depth[static_cast<std::size_t>(p)] >= 0) {
        depth += forest.depth[static_cast<std::size_t>(p)] + 1;
        break;
      }
      ++depth;
      if (depth > num_masks) throw std::logic_error("coverage forest has a cycle");
    }
    forest.depth[a] = depth;
    forest.level[a] = static_cast<std::int8_t>(std::min(depth, 2));
  }
  return forest;
}

std::vector<std::int32_t> dedup_masks(const std::int64_t* intersections, std::int64_t num_masks,
                                      double iou) {
  std::vector<std::int32_t> kept;
  for (std::int64_t i = 0; i < num_masks; ++i) {
    const std::int64_t area_i = intersections[i * num_masks + i];
    bool duplicate = false;
    for (const std::int32_t j : kept) {
      const std::int64_t area_j = intersections[j * num_masks + j];
      const std::int64_t shared = intersections[i * num_masks + j];
      const std::int64_t united = area_i + area_j - shared;
      const double overlap = united > 0 ? static_cast<double>(shared) / static_cast<double>(united) : 1.0;
      if (overlap >= iou) {
        duplicate = true;
        break;
      }
    }
    if (!duplicate) kept.push_back(static_cast<std::int32_t>(i));
  }
  return kept;
}

}  // namespace hassod
