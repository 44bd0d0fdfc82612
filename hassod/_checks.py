"""Argument checks shared by the public API modules."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

MAX_THREADS = 1024


def native_layout(array, dtype=None) -> np.ndarray:
    """``array`` as the native code reads it: C-contiguous, aligned and in the machine's byte
    order (a copy only where one of these does not hold; ``np.ascontiguousarray`` leaves a
    misaligned or byte-swapped array as it is, which C++ must not read as doubles)."""
    array = np.asarray(array)
    dtype = np.dtype(array.dtype if dtype is None else dtype).newbyteorder("=")
    return np.require(array, dtype=dtype, requirements=["C", "A"])


def is_torch_tensor(value) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def real_number(value, name: str, expected: str) -> float:
    """``value`` as a float; a bool, a string or a non-number is a ValueError saying
    ``{name} must be {expected}`` (float() alone would take "0.4" and True)."""
    kind = str(getattr(value, "dtype", type(value).__name__))  # bool, numpy.bool_, torch.bool
    if isinstance(value, (str, bytes)) or "bool" in kind:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None


def is_finite_number(value) -> bool:
    """An int or a float, not a bool, and finite: a number as JSON or a config file holds it
    (NumPy scalars and strings are not; an int beyond float's range is not finite)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # JSON allows 10**400
        return False


def check_number(
    label: str,
    value,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """TypeError / ValueError saying ``{label} must be ...`` unless ``value`` is a finite int
    (``integer``) or number, not a bool, inside the limits (open or closed at each end)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if integer and not is_int:
        raise TypeError(f"{label} must be an integer, got {value!r}")
    if not (is_int or isinstance(value, float)):
        raise TypeError(f"{label} must be a number, got {value!r}")
    if not is_finite_number(value):
        raise ValueError(f"{label} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            expected = f"{'>' if low_open else '>='} {low}"
        elif low is None:
            expected = f"{'<' if high_open else '<='} {high}"
        else:
            expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{label} must be {expected}, got {value!r}")


def cpu_tensor_values(tensor, name: str, elsewhere: str):
    """A CPU tensor's values as a NumPy array: detached, bfloat16 widened to float32 (exact,
    NumPy has none). ``elsewhere`` ends the error for tensors on other devices."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} is on {tensor.device}; {elsewhere}")
    tensor = tensor.detach()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def check_index(value, name: str) -> int:
    """``value`` as an int (NumPy integers and 0-d integer tensors too, through
    ``__index__``); TypeError naming ``name`` for a bool, a float (1.5 would match nothing,
    1.0 index as 1 only by accident) or anything else that is not an integer."""
    if "bool" in str(getattr(value, "dtype", type(value).__name__)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def check_num_threads(num_threads) -> int:
    """Validate ``num_threads`` (None or 1 .. MAX_THREADS); returns 0 for None (all threads)."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    if not 1 <= num_threads <= MAX_THREADS:
        raise ValueError(f"num_threads must be between 1 and {MAX_THREADS}, got {num_threads}")
    return int(num_threads)


def mask_shape_error(name: str, shape) -> ValueError:
    """The error for a mask stack that is not (K, H, W) (NumPy and torch paths alike)."""
    return ValueError(f"{name} must have shape (K, H, W), got shape {tuple(shape)}")


def soft_mask_error(name: str, dtype) -> ValueError:
    """The error for masks that are neither bool nor integer (NumPy and torch paths alike)."""
    return ValueError(
        f"{name} must be bool or uint8 (non-zero = inside), got {dtype}; "
        "threshold soft masks first, e.g. masks >= 0.5"
    )
