// Line: 16 floats, one 64-byte cache line of a row of values. The CRF's inner loops gather whole
// lines (rows are padded to a multiple of 16 floats and 64-byte aligned) and keep running sums in
// a few Lines, which GCC and Clang hold in vector registers whatever the target's SIMD width.
// Every operation is lane-wise and reductions over a Line's lanes use a fixed tree, so results do
// not depend on that width: the AVX-512, AVX2 and SSE2 builds and the portable struct below
// (other compilers, or -DHASSOD_PORTABLE_LINE) give bit-identical marginals.
#pragma once

#include <cstdint>
#include <cstring>

namespace hassod::crf {

constexpr int kLineFloats = 16;

#if (defined(__GNUC__) || defined(__clang__)) && !defined(HASSOD_PORTABLE_LINE)
typedef float Line __attribute__((vector_size(64)));
typedef std::int32_t LineBits __attribute__((vector_size(64)));

inline Line zero_line() { return Line{}; }
inline Line broadcast(float value) { return Line{} + value; }
inline Line max_lines(Line a, Line b) { return a > b ? a : b; }
inline Line min_lines(Line a, Line b) { return a < b ? a : b; }

// exp(x) for x <= 0: Cephes' single-precision polynomial (about 1 ulp), 0 below -87 where the
// result would leave the normal range.
inline Line exp_nonpositive(Line x) {
  const Line low = broadcast(-87.0f);
  const Line clamped = max_lines(x, low);
  const Line magic = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Line n = (clamped * broadcast(1.44269504088896341f) + magic) - magic;
  const Line r = (clamped - n * broadcast(0.693359375f)) - n * broadcast(-2.12194440e-4f);
  Line y = broadcast(1.9875691500e-4f);
  y = y * r + broadcast(1.3981999507e-3f);
  y = y * r + broadcast(8.3334519073e-3f);
  y = y * r + broadcast(4.1665795894e-2f);
  y = y * r + broadcast(1.6666665459e-1f);
  y = y * r + broadcast(5.0000001201e-1f);
  y = y * (r * r) + r + broadcast(1.0f);
  const LineBits bits = (__builtin_convertvector(n, LineBits) + 127) << 23;
  Line scale;
  std::memcpy(&scale, &bits, sizeof(Line));
  return x < low ? zero_line() : y * scale;
}
#else
struct Line {
  float v[kLineFloats];
  Line& operator+=(const Line& other) {
    for (int k = 0; k < kLineFloats; ++k) v[k] += other.v[k];
    return *this;
  }
  friend Line operator+(Line a, const Line& b) { return a += b; }
  friend Line operator-(Line a, const Line& b) {
    for (int k = 0; k < kLineFloats; ++k) a.v[k] -= b.v[k];
    return a;
  }
  friend Line operator*(Line a, const Line& b) {
    for (int k = 0; k < kLineFloats; ++k) a.v[k] *= b.v[k];
    return a;
  }
  friend Line operator/(Line a, const Line& b) {
    for (int k = 0; k < kLineFloats; ++k) a.v[k] /= b.v[k];
    return a;
  }
};
inline Line zero_line() { return Line{}; }
inline Line broadcast(float value) {
  Line line;
  for (int k = 0; k < kLineFloats; ++k) line.v[k] = value;
  return line;
}
inline Line max_lines(Line a, const Line& b) {
  for (int k = 0; k < kLineFloats; ++k) a.v[k] = a.v[k] > b.v[k] ? a.v[k] : b.v[k];
  return a;
}
inline Line min_lines(Line a, const Line& b) {
  for (int k = 0; k < kLineFloats; ++k) a.v[k] = a.v[k] < b.v[k] ? a.v[k] : b.v[k];
  return a;
}
inline Line exp_nonpositive(Line x) {  // the same arithmetic as above, lane by lane
  for (int k = 0; k < kLineFloats; ++k) {
    const float clamped = x.v[k] > -87.0f ? x.v[k] : -87.0f;
    const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    x.v[k] = x.v[k] < -87.0f ? 0.0f : y * scale;
  }
  return x;
}
#endif

inline Line load_line(const float* source) {
  Line line;
  std::memcpy(&line, source, sizeof(Line));
  return line;
}

inline void store_line(float* target, const Line& line) {
  std::memcpy(target, &line, sizeof(Line));
}

// Lane k of the result is lane k ^ W of `line` (W = 8, 4, 2, 1).
template <int W>
inline Line butterfly(const Line& line) {
#if defined(__clang__) && !defined(HASSOD_PORTABLE_LINE)
  return __builtin_shufflevector(line, line, 0 ^ W, 1 ^ W, 2 ^ W, 3 ^ W, 4 ^ W, 5 ^ W, 6 ^ W, 7 ^ W,
                                 8 ^ W, 9 ^ W, 10 ^ W, 11 ^ W, 12 ^ W, 13 ^ W, 14 ^ W, 15 ^ W);
#elif defined(__GNUC__) && !defined(HASSOD_PORTABLE_LINE)
  const LineBits lanes = {0 ^ W, 1 ^ W, 2 ^ W,  3 ^ W,  4 ^ W,  5 ^ W,  6 ^ W,  7 ^ W,
                          8 ^ W, 9 ^ W, 10 ^ W, 11 ^ W, 12 ^ W, 13 ^ W, 14 ^ W, 15 ^ W};
  return __builtin_shuffle(line, lanes);
#else
  Line out;
  for (int k = 0; k < kLineFloats; ++k) out.v[k] = line.v[k ^ W];
  return out;
#endif
}

// The sum of a Line's lanes in every lane, from a fixed tree: lane k plus lane k ^ 8, then the
// same with 4, 2 and 1, i.e. ((s0 + s2) + (s1 + s3)) with s_k = (v_k + v_k+8) + (v_k+4 + v_k+12).
inline Line sum_lanes(Line line) {
  line = line + butterfly<8>(line);
  line = line + butterfly<4>(line);
  line = line + butterfly<2>(line);
  return line + butterfly<1>(line);
}

// The largest of a Line's lanes in every lane.
inline Line max_lanes(Line line) {
  line = max_lines(line, butterfly<8>(line));
  line = max_lines(line, butterfly<4>(line));
  line = max_lines(line, butterfly<2>(line));
  return max_lines(line, butterfly<1>(line));
}

}  // namespace hassod::crf
