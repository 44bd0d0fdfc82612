"""Native fully connected CRF (Krähenbühl & Koltun 2011), DESIGN.md section 3.

Mean-field inference with Gaussian and bilateral kernels filtered through permutohedral lattices
(Adams et al. 2010), computing what pydensecrf's ``DenseCRF2D`` computes when set up as::

    crf = DenseCRF2D(W, H, K)
    crf.setUnaryEnergy(unary_from_softmax(P))        # unary = -log(clip(P, 1e-5, 1))
    crf.addPairwiseGaussian(sxy=3, compat=7)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=image, compat=10)
    Q = crf.inference(10)

with pydensecrf's defaults: Potts compatibility, diagonal kernels, symmetric normalisation.
The probabilities are used as given, like pydensecrf does: they are clipped to [1e-5, 1] and not
renormalised, so rows that do not sum to 1 weigh the unary accordingly. Negative and non-finite
values are refused.

Results are float32 and equal pydensecrf's up to rounding (a few 1e-6 on photos; see
tests/test_crf.py); they do not depend on the number of threads.

Forms:

* :func:`dense_crf`: one image, one label set.
* :class:`CrfLattice`: one image's lattices, built once and reused for several label sets (the
  discovery pipeline runs one CRF per merge threshold on the same image); its
  :meth:`~CrfLattice.infer_many` runs label sets on parallel threads.
* :func:`shared_lattice`: the same reuse behind a per-call API (a one-entry cache).
* :func:`dense_crf_batch`: many images, one label set each, images on parallel threads.

CUDA: :func:`dense_crf` and :func:`dense_crf_batch` run on the GPU (:mod:`hassod.crf_torch`, a
whole batch at once) when the image or probabilities are CUDA tensors or ``device`` names a
CUDA device, and then return float32 tensors on that device; otherwise they run the native
CPU code and return numpy arrays.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hassod._checks import check_num_threads, cpu_tensor_values, is_torch_tensor, native_layout
from hassod._native import cpu_module

if TYPE_CHECKING:
    import torch

#: The authors' settings (pydensecrf's tutorial values, DESIGN.md section 3).
DEFAULT_ITERATIONS = 10
DEFAULT_GAUSSIAN: tuple[float, float] = (3.0, 7.0)  # (sxy, compat)
DEFAULT_BILATERAL: tuple[float, float, float] = (50.0, 5.0, 10.0)  # (sxy, srgb, compat)


_default_num_threads: int | None = None


def set_default_num_threads(num_threads: int | None) -> None:
    """Threads used when a call passes ``num_threads=None`` (None again: every hardware thread).

    Process pools that already keep every core busy (``hassod discover --workers``) set 1 in
    each worker so that the CRF does not oversubscribe the machine.
    """
    global _default_num_threads
    check_num_threads(num_threads)
    _default_num_threads = num_threads


def _threads(num_threads: int | None) -> int:
    return check_num_threads(_default_num_threads if num_threads is None else num_threads)


class CrfLattice:
    """One image's CRF kernels, built once, for inference over any number of label sets.

    Args:
        image: (H, W, 3) uint8 RGB.
        gaussian: ``(sxy, compat)`` of the Gaussian (smoothness) kernel over pixel positions,
            or None for none.
        bilateral: ``(sxy, srgb, compat)`` of the bilateral (appearance) kernel over positions
            and colours, or None for none.
        num_threads: threads that build the lattices; None uses every hardware thread.

    A kernel with ``compat == 0`` contributes nothing and is not built. Methods release the GIL
    and may be called from several Python threads at once.

    Attributes:
        gaussian: the Gaussian kernel's checked ``(sxy, compat)`` (``compat`` 0: none).
        bilateral: the bilateral kernel's checked ``(sxy, srgb, compat)``.
        shape: the image's (H, W).
        num_vertices: lattice vertices per kernel.

    Raises:
        ValueError: an image that is not (H, W, 3) uint8, or a bad kernel (naming it).
    """

    def __init__(
        self,
        image: np.ndarray | torch.Tensor,
        gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
        bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
        num_threads: int | None = None,
    ) -> None:
        image = as_crf_image(image)
        self.gaussian = _check_gaussian(gaussian)
        self.bilateral = _check_bilateral(bilateral)
        threads = _threads(num_threads)
        self._native = cpu_module().DenseCrf(
            image, *self.gaussian, *self.bilateral, num_threads=threads
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (H, W)."""
        return int(self._native.height), int(self._native.width)

    @property
    def num_vertices(self) -> dict[str, int]:
        """Lattice vertices per kernel (0 for a kernel that was not built)."""
        return {
            "gaussian": int(self._native.gaussian_vertices),
            "bilateral": int(self._native.bilateral_vertices),
        }

    def infer(
        self,
        probs: np.ndarray | torch.Tensor,
        iterations: int = DEFAULT_ITERATIONS,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Mean-field marginals for one label set.

        Args:
            probs: (K, H, W) label probabilities, K >= 1, finite and >= 0 (converted to
                float32; clipped to [1e-5, 1]; not renormalised).
            iterations: mean-field iterations (0 returns softmax(-unary)).
            num_threads: threads; None uses every hardware thread.

        Returns:
            (K, H, W) float32 Q; each pixel's values sum to 1 (all ones when K == 1).

        Raises:
            ValueError: probabilities that are not (K, H, W) of the lattice's image size,
                not real numbers, not finite or negative; a bad iteration or thread count.
        """
        probs = as_crf_probs(probs, self.shape)
        iterations = check_iterations(iterations)
        threads = _threads(num_threads)
        return self._native.infer(probs, iterations, threads)

    def infer_many(
        self,
        probs_list: Sequence,
        iterations: int = DEFAULT_ITERATIONS,
        num_threads: int | None = None,
    ) -> list[np.ndarray]:
        """:meth:`infer` for several label sets (numbers of labels may differ).

        With at least as many sets as threads, the sets run concurrently, one thread each
        (largest first); otherwise one after the other on all threads. Same results either way.

        Returns:
            One (K_i, H, W) float32 Q per label set, in input order.

        Raises:
            ValueError: as :meth:`infer`, naming the set (``probs_list[i]``).
        """
        arrays = [
            as_crf_probs(probs, self.shape, name=f"probs_list[{i}]")
            for i, probs in enumerate(probs_list)
        ]
        iterations = check_iterations(iterations)
        threads = _threads(num_threads)
        return self._native.infer_many(arrays, iterations, threads)

    def __repr__(self) -> str:
        height, width = self.shape
        return (
            f"CrfLattice({height}x{width}, gaussian={self.gaussian}, bilateral={self.bilateral}, "
            f"vertices={self.num_vertices})"
        )


def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    iterations: int = DEFAULT_ITERATIONS,
    gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
    bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray | torch.Tensor:
    """Dense CRF marginals of one label set on one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (K, H, W) label probabilities (see :meth:`CrfLattice.infer`).
        iterations, gaussian, bilateral, num_threads: see :class:`CrfLattice`.
        device: None runs on the GPU when ``image`` or ``probs`` is a CUDA tensor, else on the
            CPU; a CUDA device (``"cuda"``, ``torch.device``) forces the GPU path.

    Returns:
        (K, H, W) float32 Q: a numpy array from the CPU path, a tensor on the device from the
        GPU path.

    Raises:
        ValueError: an image that is not (H, W, 3) uint8; probabilities of another shape, not
            finite or negative; a bad kernel, iteration count or thread count (naming it); a
            ``device`` that is neither the CPU nor a CUDA device, or CUDA without a GPU.
    """
    gpu = _gpu_device(device, image, probs)
    if gpu is not None:
        from hassod.crf_torch import CrfBatch

        batch = CrfBatch([image], gaussian=gaussian, bilateral=bilateral, device=gpu)
        return batch.infer([probs], iterations=iterations)[0]
    lattice = CrfLattice(image, gaussian=gaussian, bilateral=bilateral, num_threads=num_threads)
    return lattice.infer(probs, iterations=iterations, num_threads=num_threads)


_shared_lock = threading.Lock()
_shared: tuple[np.ndarray, tuple, tuple, CrfLattice] | None = None


def shared_lattice(
    image: np.ndarray | torch.Tensor,
    gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
    bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
    num_threads: int | None = None,
) -> CrfLattice:
    """The :class:`CrfLattice` of ``image``, reused while the same image and kernels come back.

    A one-entry cache for callers that run several CRFs on one image through a per-call API
    (:func:`hassod.postprocess.dense_crf` once per merge threshold): the lattices are built on
    the first call and reused until an image or kernel parameters differ (compared exactly).
    The cached lattice (and the buffers of its largest label set) stays in memory until then or
    until :func:`clear_shared_lattice`. Thread-safe.
    """
    global _shared
    image = as_crf_image(image)
    gaussian, bilateral = _check_gaussian(gaussian), _check_bilateral(bilateral)
    with _shared_lock:
        if _shared is not None:
            cached_image, cached_gaussian, cached_bilateral, lattice = _shared
            if (
                cached_gaussian == gaussian
                and cached_bilateral == bilateral
                and np.array_equal(cached_image, image)
            ):
                return lattice
    lattice = CrfLattice(image, gaussian=gaussian, bilateral=bilateral, num_threads=num_threads)
    with _shared_lock:
        _shared = (image.copy(), gaussian, bilateral, lattice)
    return lattice


def clear_shared_lattice() -> None:
    """Drop the lattice kept by :func:`shared_lattice`."""
    global _shared
    with _shared_lock:
        _shared = None


def dense_crf_batch(
    images: Sequence,
    probs_list: Sequence,
    iterations: int = DEFAULT_ITERATIONS,
    gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
    bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
) -> list:
    """:func:`dense_crf` for many images (sizes may differ), images on parallel threads.

    Args:
        images: sequence of (H_i, W_i, 3) uint8 RGB images.
        probs_list: sequence of (K_i, H_i, W_i) probabilities, one per image.
        iterations, gaussian, bilateral, num_threads: as :func:`dense_crf`.
        device: None runs on the GPU when the first image or probabilities are CUDA tensors,
            else on the CPU; a CUDA device forces the GPU path, which runs the images in
            batches of about 4 million pixels (:func:`hassod.crf_torch.dense_crf_batch_torch`).

    Returns:
        list of (K_i, H_i, W_i) float32 Q: numpy arrays from the CPU path, tensors on the
        device from the GPU path.

    Raises:
        ValueError: as :func:`dense_crf`, naming the image; ``images`` and ``probs_list`` of
            different lengths.
    """
    images = list(images)
    probs_list = list(probs_list)
    gpu = _gpu_device(device, images[0] if images else None, probs_list[0] if probs_list else None)
    if gpu is not None:
        from hassod.crf_torch import dense_crf_batch_torch

        return dense_crf_batch_torch(
            images, probs_list, iterations, gaussian=gaussian, bilateral=bilateral, device=gpu
        )
    check_same_length(images, probs_list)
    checked_images = [as_crf_image(image, name=f"images[{i}]") for i, image in enumerate(images)]
    checked_probs = [
        as_crf_probs(probs, image.shape[:2], name=f"probs_list[{i}]")
        for i, (image, probs) in enumerate(zip(checked_images, probs_list))
    ]
    gaussian = _check_gaussian(gaussian)
    bilateral = _check_bilateral(bilateral)
    iterations = check_iterations(iterations)
    threads = _threads(num_threads)
    return cpu_module().dense_crf_batch(
        checked_images, checked_probs, iterations, *gaussian, *bilateral, num_threads=threads
    )


def check_same_length(images: Sequence, probs_list: Sequence) -> None:
    """A batch needs one probability array per image."""
    if len(images) != len(probs_list):
        raise ValueError(
            f"images and probs_list must have the same length, got {len(images)} and "
            f"{len(probs_list)}"
        )


def _gpu_device(device, *inputs):
    """The CUDA device to run on: ``device`` if it names one, else that of a CUDA tensor input.

    None means the native CPU path. torch is only consulted when it is already imported (no
    input can be a tensor otherwise), so the CPU path never imports it.
    """
    torch = sys.modules.get("torch")
    if device is not None:
        if torch is None:
            import torch
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be a CPU or CUDA device, got {device!r}") from error
        if chosen.type == "cpu":
            return None
        if chosen.type != "cuda":
            raise ValueError(f"device must be a CPU or CUDA device, got {device!r}")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return chosen
    if torch is None:
        return None
    for item in inputs:
        if isinstance(item, torch.Tensor) and item.is_cuda:
            return item.device
    return None


def _values(value, name: str) -> np.ndarray:
    if is_torch_tensor(value):  # CUDA tensors took the GPU path before this
        return cpu_tensor_values(value, name, "pass a CPU array or a CUDA tensor")
    return np.asarray(value)


def as_crf_image(image, name: str = "image") -> np.ndarray:
    """Validate an RGB image and return it as a C-contiguous (H, W, 3) uint8 array."""
    array = _values(image, name)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8 RGB (got {array.dtype}); scale to 0..255 and convert with "
            ".astype(np.uint8)"
        )
    check_image_shape(array.shape, name)
    return native_layout(array)


def check_image_shape(shape: tuple, name: str = "image") -> None:
    """An image must be (H, W, 3) with at least one pixel."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have at least one pixel, got shape {shape}")


def as_crf_probs(probs, shape: tuple[int, int], name: str = "probs") -> np.ndarray:
    """Validate (K, H, W) probabilities for an (H, W) image; returns C-contiguous float32.

    Values are checked by the native code (finite, >= 0) without an extra pass over the data.
    """
    array = _values(probs, name)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real numbers (float or integer), got {array.dtype}")
    check_probs_shape(array.shape, shape, name)
    return native_layout(array, np.float32)


def check_probs_shape(shape: tuple, image_shape: tuple[int, int], name: str = "probs") -> None:
    """Probabilities must be (K, H, W) with K >= 1 and (H, W) the image's."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (K, H, W), got shape {shape}")
    if shape[1:] != tuple(image_shape):
        raise ValueError(
            f"{name} must have shape (K, {image_shape[0]}, {image_shape[1]}) to match the "
            f"image, got {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} must hold at least one label, got shape {shape}")


def check_iterations(iterations) -> int:
    """Validate the number of mean-field iterations (an integer >= 0)."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not 0 <= iterations <= 1_000_000:
        raise ValueError(f"iterations must be between 0 and 1000000, got {iterations}")
    return int(iterations)


def _check_gaussian(gaussian) -> tuple[float, float]:
    """(sxy, compat) as floats; None gives a zero compat (no kernel)."""
    if gaussian is None:
        return (1.0, 0.0)
    sxy, compat = _numbers(gaussian, 2, "gaussian", "(sxy, compat)")
    if compat != 0.0:
        _check_positive(sxy, "gaussian sxy")
    return (sxy, compat)


def _check_bilateral(bilateral) -> tuple[float, float, float]:
    """(sxy, srgb, compat) as floats; None gives a zero compat (no kernel)."""
    if bilateral is None:
        return (1.0, 1.0, 0.0)
    sxy, srgb, compat = _numbers(bilateral, 3, "bilateral", "(sxy, srgb, compat)")
    if compat != 0.0:
        _check_positive(sxy, "bilateral sxy")
        _check_positive(srgb, "bilateral srgb")
    return (sxy, srgb, compat)


def _numbers(values, count: int, name: str, form: str) -> tuple[float, ...]:
    try:
        items = tuple(values)
    except TypeError as error:
        raise ValueError(f"{name} must be a tuple {form} or None, got {values!r}") from error
    if len(items) != count:
        raise ValueError(f"{name} must be a tuple {form} or None, got {values!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise ValueError(f"{name} must hold numbers {form}, got {values!r}")
        value = float(item)
        if not math.isfinite(value):
            raise ValueError(f"{name} must hold finite numbers {form}, got {values!r}")
        out.append(value)
    return tuple(out)


def _check_positive(value: float, name: str) -> None:
    if not value > 0.0:
        raise ValueError(f"{name} must be positive, got {value}")
    if np.float32(value) == 0.0:  # the native code holds it as float32
        raise ValueError(f"{name} must be at least {np.finfo(np.float32).tiny:g}, got {value}")
