"""Builds hassod's native modules with CMake (see CMakeLists.txt).

Environment variables:
  HASSOD_CUDA=auto|1|0   build the optional CUDA module when a CUDA compiler is found (auto,
                         the default), always (1) or never (0).
  CMAKE_ARGS             extra arguments for the CMake configure step.
  CMAKE_BUILD_PARALLEL_LEVEL   parallel compile jobs (default: number of CPUs).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent
CUDA_CHOICES = {"auto": "AUTO", "1": "ON", "on": "ON", "0": "OFF", "off": "OFF"}


class CMakeExtension(Extension):
    def __init__(self, name: str, optional: bool = False) -> None:
        super().__init__(name, sources=[], optional=optional)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if ext.name == CUDA_MODULE:
            # Built by the same CMake run as the CPU module, when CUDA is enabled and found.
            if not Path(self.get_ext_fullpath(ext.name)).exists():
                raise CompileError("the optional CUDA module was not built (CUDA off or not found)")
            return
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cuda_choice = os.environ.get("HASSOD_CUDA", "auto").strip().lower()
        if cuda_choice not in CUDA_CHOICES:
            raise SystemExit(f"HASSOD_CUDA must be one of auto, 1, 0; got {cuda_choice!r}")
        import pybind11

        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DHASSOD_CUDA={CUDA_CHOICES[cuda_choice]}",
        ]
        if _has_ninja():
            configure += ["-G", "Ninja"]
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


def _has_ninja() -> bool:
    try:
        subprocess.run(["ninja", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


CUDA_MODULE = "hassod._C_cuda"
setup(
    ext_modules=[CMakeExtension("hassod._C"), CMakeExtension(CUDA_MODULE, optional=True)],
    cmdclass={"build_ext": CMakeBuild},
)
