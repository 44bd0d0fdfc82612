"""Access to the compiled modules, with errors that say how to fix a missing build."""

from __future__ import annotations

from types import ModuleType

_cuda_module: ModuleType | None = None
_cuda_error: str | None = None


def cpu_module() -> ModuleType:
    """The CPU extension ``hassod._C``; raises ImportError with build instructions if absent."""
    try:
        from hassod import _C
    except ImportError as error:  # pragma: no cover - only on broken installs
        raise ImportError(
            "hassod's native module hassod._C is not built. Install the package with "
            "`pip install .` (or `pip install -e .`) from the repository root; "
            f"the import failed with: {error}"
        ) from error
    return _C


def cuda_module() -> ModuleType | None:
    """The optional CUDA extension ``hassod._C_cuda``, or None when it was not built."""
    global _cuda_module, _cuda_error
    if _cuda_module is None and _cuda_error is None:
        try:
            from hassod import _C_cuda

            _cuda_module = _C_cuda
        except ImportError as error:
            _cuda_error = str(error)
    return _cuda_module


def cuda_status() -> dict:
    """Whether the CUDA module was built and what the CUDA runtime reports."""
    module = cuda_module()
    if module is None:
        return {"built": False, "reason": _cuda_error}
    return {"built": True, **module.device_info()}
