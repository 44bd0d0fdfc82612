// Bindings of the dense CRF: NumPy in, NumPy out. Shapes and dtypes are checked here (the Python
// layer, hassod/crf.py, converts what it can beforehand); lattice construction and inference run
// with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "crf/crf.h"

namespace hassod::bindings {
namespace {

using hassod::crf::CrfParams;
using hassod::crf::CrfTask;
using hassod::crf::DenseCrf;

// An image checked at the boundary: C-contiguous (H, W, 3) uint8, at least one pixel.
struct ImageArg {
  py::array array;  // keeps the buffer alive while the GIL is released
  const std::uint8_t* data = nullptr;
  std::int64_t height = 0, width = 0;
};

ImageArg check_image(const py::array& image, const std::string& name) {
  if (image.ndim() != 3 || image.shape(2) != 3) {
    std::ostringstream message;
    message << name << " must have shape (H, W, 3), got " << image.ndim() << " dimensions";
    if (image.ndim() == 3) message << " with " << image.shape(2) << " channels";
    throw std::invalid_argument(message.str());
  }
  if (!py::isinstance<py::array_t<std::uint8_t>>(image))
    throw std::invalid_argument(name + " must be uint8 at the native boundary");
  if (!(image.flags() & py::array::c_style))
    throw std::invalid_argument(name + " must be C-contiguous at the native boundary");
  if (image.shape(0) < 1 || image.shape(1) < 1)
    throw std::invalid_argument(name + " must have at least one pixel");
  return ImageArg{image, static_cast<const std::uint8_t*>(image.data()), image.shape(0),
                  image.shape(1)};
}

// Probabilities checked at the boundary: C-contiguous (K, H, W) float32 matching the image.
struct ProbsArg {
  py::array array;
  const float* data = nullptr;
  std::int64_t num_labels = 0;
};

ProbsArg check_probs(const py::array& probs, const std::string& name, std::int64_t height,
                     std::int64_t width) {
  if (probs.ndim() != 3 || probs.shape(1) != height || probs.shape(2) != width) {
    std::ostringstream message;
    message << name << " must have shape (K, " << height << ", " << width
            << ") to match the image, got (";
    for (py::ssize_t i = 0; i < probs.ndim(); ++i) message << (i ? ", " : "") << probs.shape(i);
    message << ")";
    throw std::invalid_argument(message.str());
  }
  if (!py::isinstance<py::array_t<float>>(probs))
    throw std::invalid_argument(name + " must be float32 at the native boundary");
  if (!(probs.flags() & py::array::c_style))
    throw std::invalid_argument(name + " must be C-contiguous at the native boundary");
  if (probs.shape(0) < 1) throw std::invalid_argument(name + " must hold at least one label");
  return ProbsArg{probs, static_cast<const float*>(probs.data()), probs.shape(0)};
}

CrfParams make_params(float gaussian_sxy, float gaussian_compat, float bilateral_sxy,
                      float bilateral_srgb, float bilateral_compat) {
  CrfParams params;
  params.gaussian_sxy = gaussian_sxy;
  params.gaussian_compat = gaussian_compat;
  params.bilateral_sxy = bilateral_sxy;
  params.bilateral_srgb = bilateral_srgb;
  params.bilateral_compat = bilateral_compat;
  return params;
}

std::unique_ptr<DenseCrf> make_crf(const py::array& image, float gaussian_sxy,
                                   float gaussian_compat, float bilateral_sxy, float bilateral_srgb,
                                   float bilateral_compat, int num_threads) {
  const ImageArg checked = check_image(image, "image");
  const CrfParams params =
      make_params(gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat);
  py::gil_scoped_release release;
  return std::make_unique<DenseCrf>(checked.data, checked.height, checked.width, params,
                                    hassod::resolve_num_threads(num_threads));
}

py::array_t<float> infer(const DenseCrf& crf, const py::array& probs, int iterations,
                         int num_threads) {
  const ProbsArg checked = check_probs(probs, "probs", crf.height(), crf.width());
  py::array_t<float> q({static_cast<py::ssize_t>(checked.num_labels),
                        static_cast<py::ssize_t>(crf.height()),
                        static_cast<py::ssize_t>(crf.width())});
  float* out = q.mutable_data();
  {
    py::gil_scoped_release release;
    crf.infer(checked.data, checked.num_labels, iterations,
              hassod::resolve_num_threads(num_threads), out);
  }
  return q;
}

py::list infer_many(const DenseCrf& crf, const py::list& probs, int iterations, int num_threads) {
  std::vector<ProbsArg> checked;
  std::vector<py::array_t<float>> outputs;
  std::vector<hassod::crf::LabelSet> sets;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    checked.push_back(check_probs(probs[i].cast<py::array>(), "probs[" + std::to_string(i) + "]",
                                  crf.height(), crf.width()));
    outputs.emplace_back(std::vector<py::ssize_t>{
        static_cast<py::ssize_t>(checked.back().num_labels), static_cast<py::ssize_t>(crf.height()),
        static_cast<py::ssize_t>(crf.width())});
    sets.push_back(hassod::crf::LabelSet{checked.back().data, outputs.back().mutable_data(),
                                         checked.back().num_labels});
  }
  {
    py::gil_scoped_release release;
    crf.infer_many(sets, iterations, num_threads);
  }
  py::list out;
  for (auto& q : outputs) out.append(q);
  return out;
}

py::list dense_crf_batch(const py::list& images, const py::list& probs, int iterations,
                         float gaussian_sxy, float gaussian_compat, float bilateral_sxy,
                         float bilateral_srgb, float bilateral_compat, int num_threads) {
  if (images.size() != probs.size())
    throw std::invalid_argument("images and probs must have the same length");
  const CrfParams params =
      make_params(gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat);
  std::vector<ImageArg> checked_images;
  std::vector<ProbsArg> checked_probs;
  std::vector<py::array_t<float>> outputs;
  std::vector<CrfTask> tasks;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    checked_images.push_back(check_image(images[i].cast<py::array>(), "images" + index));
    const ImageArg& image = checked_images.back();
    checked_probs.push_back(
        check_probs(probs[i].cast<py::array>(), "probs" + index, image.height, image.width));
    const ProbsArg& prob = checked_probs.back();
    outputs.emplace_back(std::vector<py::ssize_t>{static_cast<py::ssize_t>(prob.num_labels),
                                                  static_cast<py::ssize_t>(image.height),
                                                  static_cast<py::ssize_t>(image.width)});
    tasks.push_back(CrfTask{image.data, prob.data, outputs.back().mutable_data(), image.height,
                            image.width, prob.num_labels});
  }
  {
    py::gil_scoped_release release;
    hassod::crf::dense_crf_batch(tasks, params, iterations, num_threads);
  }
  py::list out;
  for (auto& q : outputs) out.append(q);
  return out;
}

}  // namespace

void bind_crf(py::module_& m) {
  py::class_<DenseCrf>(m, "DenseCrf",
                       "One image's dense CRF lattices (Gaussian and bilateral kernels), reusable "
                       "for inference over several label sets.")
      .def(py::init(&make_crf), py::arg("image"), py::arg("gaussian_sxy"),
           py::arg("gaussian_compat"), py::arg("bilateral_sxy"), py::arg("bilateral_srgb"),
           py::arg("bilateral_compat"), py::arg("num_threads") = 0)
      .def("infer", &infer, py::arg("probs"), py::arg("iterations"), py::arg("num_threads") = 0,
           "Mean-field marginals Q, (K, H, W) float32, of (K, H, W) float32 probabilities.")
      .def("infer_many", &infer_many, py::arg("probs"), py::arg("iterations"),
           py::arg("num_threads") = 0,
           "infer() for a list of label sets, concurrently when there are enough of them.")
      .def_property_readonly("height", &DenseCrf::height)
      .def_property_readonly("width", &DenseCrf::width)
      .def_property_readonly("gaussian_vertices", &DenseCrf::gaussian_vertices)
      .def_property_readonly("bilateral_vertices", &DenseCrf::bilateral_vertices);
  m.def("dense_crf_batch", &dense_crf_batch, py::arg("images"), py::arg("probs"),
        py::arg("iterations"), py::arg("gaussian_sxy"), py::arg("gaussian_compat"),
        py::arg("bilateral_sxy"), py::arg("bilateral_srgb"), py::arg("bilateral_compat"),
        py::arg("num_threads") = 0,
        "DenseCrf(image).infer(probs) over lists of images and probabilities, on several threads.");
}

}  // namespace hassod::bindings
