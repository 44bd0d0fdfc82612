"""Access to the compiled modules, with errors that say how to fix a missing build."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

_cuda_module: ModuleType | None = None
_cuda_error: str | None = None


def cpu_module() -> ModuleType:
    """The CPU extension ``hassod._C``; raises ImportError with build instructions if absent."""
    try:
        from hassod import _C
    except ImportError as error:
        raise ImportError(missing_build_message(Path(__file__).resolve().parent, error)) from error
    return _C


def missing_build_message(package_dir: Path, error: BaseException) -> str:
    """Why ``hassod._C`` did not import from ``package_dir``, and how to fix it."""
    built = sorted(path.name for path in package_dir.glob("_C.*") if path.suffix in (".so", ".pyd"))
    checkout = (package_dir.parent / "setup.py").is_file() and (
        package_dir.parent / "CMakeLists.txt"
    ).is_file()
    if built:
        # Present but unloadable: built for another Python, or against libraries since changed.
        text = (
            f"hassod's native module hassod._C ({', '.join(built)} in {package_dir}) does not "
            f"load with this Python ({sys.version.split()[0]}): {error}. Rebuild it with this "
            "Python: "
        )
        fix = "`pip install -e .` in that checkout" if checkout else "`pip install .` again"
        return text + fix + " (add --force-reinstall --no-deps if pip says it is installed)."
    text = f"hassod's native module hassod._C is not built in {package_dir} ({error}). "
    if checkout:
        text += "That folder is a source checkout: build the module there with `pip install -e .`"
        if Path.cwd().resolve() == package_dir.parent:
            text += (
                ", or, if you installed hassod with `pip install .`, run Python from another "
                "folder: the checkout's hassod/ in the current folder shadows the installed one"
            )
        return text + "."
    return text + "Reinstall hassod from its source folder with `pip install .`."


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
