#include "hierarchy/rle.h"

#include <stdexcept>

namespace hassod {

// Each count is a little-endian sequence of 5-bit groups in characters offset by 48; bit 0x20
// of a character says that another group follows, bit 0x10 of the last group is the sign.
// From the third count on, a count is stored as the difference to the count two places back.
std::vector<std::uint32_t> decode_rle_string(const std::string& counts) {
  std::vector<std::uint32_t> runs;
  std::vector<long long> values;
  std::size_t position = 0;
  while (position < counts.size()) {
    long long value = 0;
    int group = 0;
    bool more = true;
    while (more) {
      if (position >= counts.size()) throw std::invalid_argument("truncated RLE counts string");
      const int c = static_cast<unsigned char>(counts[position]) - 48;
      if (c < 0 || c > 63) throw std::invalid_argument("invalid character in RLE counts string");
      if (group > 11) throw std::invalid_argument("RLE count too long");  // 60 bits at most
      value |= static_cast<long long>(c & 0x1f) << (5 * group);
      more = (c & 0x20) != 0;
      ++position;
      ++group;
      if (!more && (c & 0x10)) value |= static_cast<long long>(~0ULL << (5 * group));  // sign-extend
    }
    if (values.size() > 2) value += values[values.size() - 2];
    if (value < 0 || value > 0xFFFFFFFFLL) throw std::invalid_argument("invalid RLE run length");
    values.push_back(value);
    runs.push_back(static_cast<std::uint32_t>(value));
  }
  return runs;
}

std::uint64_t rle_string_pixels(const std::string& counts) {
  std::uint64_t pixels = 0;
  for (const std::uint32_t run : decode_rle_string(counts)) pixels += run;
  return pixels;
}

}  // namespace hassod
