// COCO run-length encodings: the compressed "counts" string of pycocotools, decoded to runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hassod {

// Decodes a COCO compressed RLE string (pycocotools' rleFrString format) into run lengths,
// alternating background / foreground, starting with background, column-major pixel order.
std::vector<std::uint32_t> decode_rle_string(const std::string& counts);

// The pixels a compressed RLE string's runs cover (their sum), without returning the runs:
// checking a results file's masks against their sizes.
std::uint64_t rle_string_pixels(const std::string& counts);

}  // namespace hassod
