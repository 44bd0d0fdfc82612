// Fully connected CRF (Krähenbühl & Koltun 2011) with mean-field inference through permutohedral
// lattices, equivalent to pydensecrf's DenseCRF2D set up with
//   setUnaryEnergy(unary_from_softmax(P))           unary = -log(clip(P, 1e-5, 1))
//   addPairwiseGaussian(sxy, compat)                features (x, y) / sxy
//   addPairwiseBilateral(sxy, srgb, image, compat)  features (x / sxy, y / sxy, rgb / srgb)
// with its defaults: Potts compatibility (the filtered marginals times -compat), diagonal kernel,
// symmetric normalisation (each point's input and output scaled by 1 / sqrt(k_i), where k_i is
// the lattice filter of all ones), and the inference loop
//   Q = softmax(-unary);  repeat: Q = softmax(-unary + sum_kernels compat * filter(Q)).
// Since -unary = log(clip(P)), softmax(-unary + s) is clip(P) * exp(s) normalised, which is how
// it is computed here (no logarithms; the stabilising shift is max(s)).
//
// A DenseCrf holds one image's lattices and can run inference for any number of label sets.
// Inference is multi-threaded over vertices and pixels; every output is computed in a fixed order
// whatever the number of threads, so results do not depend on it.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "crf/permutohedral.h"

namespace hassod::crf {

// Kernel parameters; a kernel with compat == 0 contributes nothing and is not built.
struct CrfParams {
  float gaussian_sxy = 3.0f;
  float gaussian_compat = 7.0f;
  float bilateral_sxy = 50.0f;
  float bilateral_srgb = 5.0f;
  float bilateral_compat = 10.0f;
};

// Probabilities are clipped to [kMinProbability, 1] (pydensecrf's unary_from_softmax clip).
constexpr float kMinProbability = 1e-5f;

// One pairwise term: its lattice and the weights with the symmetric normalisation and the
// compatibility folded in.
struct PairwiseKernel {
  PairwiseKernel(const std::vector<float>& features, std::int64_t num_points, int dims,
                 float compat, int num_threads);
  PermutohedralLattice lattice;
  std::vector<float> splat_weight;  // entry order: barycentric weight * norm(point)
  std::vector<float>
      slice_weight;  // entry order: barycentric weight * alpha * norm(point) * compat
};

// One label set of DenseCrf::infer_many (pointers into caller-owned memory).
struct LabelSet {
  const float* probs = nullptr;  // (num_labels, height, width)
  float* q_out = nullptr;        // (num_labels, height, width)
  std::int64_t num_labels = 0;
};

class DenseCrf {
 public:
  // image: (height, width, 3) RGB, row-major. Throws std::invalid_argument on bad parameters.
  DenseCrf(const std::uint8_t* image, std::int64_t height, std::int64_t width,
           const CrfParams& params, int num_threads);
  ~DenseCrf();
  DenseCrf(const DenseCrf&) = delete;
  DenseCrf& operator=(const DenseCrf&) = delete;

  // probs: (num_labels, height, width) row-major, finite and >= 0 (values above 1 are clipped to
  // 1, as pydensecrf's clip does). Writes Q, (num_labels, height, width), to q_out. Throws
  // std::invalid_argument on a negative or non-finite probability. Safe to call concurrently.
  void infer(const float* probs, std::int64_t num_labels, int iterations, int num_threads,
             float* q_out) const;

  // infer() for several label sets: concurrently on one thread each when there are at least as
  // many sets as threads, else one after the other on all threads. Errors name the set
  // ("label set 2: ...").
  void infer_many(const std::vector<LabelSet>& sets, int iterations, int num_threads) const;

  std::int64_t height() const { return height_; }
  std::int64_t width() const { return width_; }
  // Lattice vertices of the Gaussian and bilateral kernels (0 for a kernel that was not built).
  std::int64_t gaussian_vertices() const;
  std::int64_t bilateral_vertices() const;

 private:
  struct Workspace;
  std::unique_ptr<Workspace> take_workspace() const;
  void give_back(std::unique_ptr<Workspace> workspace) const;

  std::int64_t height_ = 0;
  std::int64_t width_ = 0;
  std::unique_ptr<PairwiseKernel> gaussian_;
  std::unique_ptr<PairwiseKernel> bilateral_;
  // Buffers of finished calls, reused by later ones (a label set's buffers are tens of MB; fresh
  // pages would be zeroed by the kernel on every call). They live as long as the object.
  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Workspace>> pool_;
};

// One image of a batch (pointers into caller-owned memory).
struct CrfTask {
  const std::uint8_t* image = nullptr;
  const float* probs = nullptr;
  float* q_out = nullptr;
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::int64_t num_labels = 0;
};

// DenseCrf(image).infer(probs) for every task: images on separate threads when there are at
// least as many images as threads, else one image at a time on all threads. Errors name the
// image ("image 3: ...").
void dense_crf_batch(const std::vector<CrfTask>& tasks, const CrfParams& params, int iterations,
                     int num_threads);

}  // namespace hassod::crf
