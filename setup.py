"""Builds hassod's native modules with CMake (see CMakeLists.txt).

Environment variables:
  HASSOD_CUDA=auto|1|0   build the optional CUDA module when a CUDA compiler is found (auto,
                         the default), always (1) or never (0).
  CMAKE_ARGS             extra arguments for the CMake configure step.
  CMAKE_BUILD_PARALLEL_LEVEL   parallel compile jobs (default: number of CPUs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent
CUDA_CHOICES = {"auto": "AUTO", "1": "ON", "on": "ON", "0": "OFF", "off": "OFF"}
CPU_MODULE = "hassod._C"
CUDA_MODULE = "hassod._C_cuda"
# Written into the CMake build folder: the configure inputs that folder was made with.
CACHED_ENV = ("CC", "CXX", "CUDACXX", "CUDAARCHS", "CMAKE_GENERATOR")
CONFIGURE_STAMP = "hassod-configure.json"
NEEDS = (
    "hassod needs CMake >= 3.18 and a C++17 compiler (GCC >= 8, Clang >= 7 or MSVC 2019); "
    "`pip install .` brings CMake itself unless build isolation is off "
    "(then `pip install 'cmake>=3.18' ninja pybind11`)"
)


class CMakeExtension(Extension):
    def __init__(self, name: str, optional: bool = False) -> None:
        super().__init__(name, sources=[], optional=optional)


class CMakeBuild(build_ext):
    def run(self) -> None:
        super().run()
        if self.inplace:  # editable installs: setuptools copies what was built into hassod/
            built = Path(self.build_lib) / self.get_ext_filename(CUDA_MODULE)
            package_dir = Path(self.get_finalized_command("build_py").get_package_dir("hassod"))
            if not built.exists():  # skipped this time: an earlier build's copy must go
                (package_dir / built.name).unlink(missing_ok=True)

    def build_extension(self, ext: Extension) -> None:
        if ext.name == CUDA_MODULE:
            # Built by the same CMake run as the CPU module, when CUDA is enabled and found.
            # The error marks the optional module as skipped; the CPU module is complete.
            if not Path(self.get_ext_fullpath(ext.name)).exists():
                raise CompileError(
                    "the optional CUDA module hassod._C_cuda was skipped (HASSOD_CUDA=0, or "
                    "no CUDA compiler found); the CPU module hassod._C is built and complete"
                )
            return
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cuda_choice = os.environ.get("HASSOD_CUDA", "auto").strip().lower()
        if cuda_choice not in CUDA_CHOICES:
            raise SystemExit(f"HASSOD_CUDA must be one of auto, 1, 0; got {cuda_choice!r}")
        cmake = shutil.which("cmake")
        if cmake is None:
            raise SystemExit(f"hassod: no `cmake` on PATH. {NEEDS}.")
        import pybind11

        extra_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
        configure = [
            cmake,
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DHASSOD_CUDA={CUDA_CHOICES[cuda_choice]}",
        ]
        ninja = shutil.which("ninja")
        chose_generator = "CMAKE_GENERATOR" in os.environ or any(
            arg.startswith("-G") for arg in extra_args
        )
        if ninja and not chose_generator:
            # The ninja path too: pip's isolated build environment, where it lives, is new
            # every time, and CMake would otherwise call the one it cached last time.
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        configure += extra_args
        build_dir = Path(self.build_temp).resolve() / ext.name
        # CMake caches what these chose on the first configure and ignores them later.
        env_inputs = [f"{name}={os.environ[name]}" for name in CACHED_ENV if name in os.environ]
        prepare_build_dir(build_dir, configure + env_inputs)
        # A CUDA module left by an earlier build must not ship with (or shadow) this one.
        Path(self.get_ext_fullpath(CUDA_MODULE)).unlink(missing_ok=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        run_step("configure", configure, build_dir)
        run_step("build", [cmake, "--build", ".", "--parallel", jobs], build_dir)


def prepare_build_dir(build_dir: Path, configure: list[str]) -> None:
    """Make ``build_dir`` ready for ``configure``: a folder configured with other inputs (another
    CMake, Python, generator, option, :data:`CACHED_ENV` variable or pip build environment,
    whose paths its CMake cache still holds) is emptied first, so a rebuild never runs on a
    stale cache."""
    stamp = build_dir / CONFIGURE_STAMP
    try:
        same = json.loads(stamp.read_text()) == configure
    except (OSError, ValueError):
        same = False
    if not same and build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(configure))


def run_step(step: str, command: list[str], cwd: Path) -> None:
    """Run one CMake step; on failure, one line that says what failed and what is needed."""
    try:
        subprocess.run(command, cwd=cwd, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        if step == "configure":  # its half-written cache must not be reused
            (cwd / CONFIGURE_STAMP).unlink(missing_ok=True)
        reason = error
        if isinstance(error, subprocess.CalledProcessError):
            reason = f"exit status {error.returncode}"
        raise SystemExit(
            f"hassod: the CMake {step} step failed ({reason}); CMake's messages above say why. "
            f"{NEEDS}. HASSOD_CUDA=0 builds without CUDA."
        ) from error


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    setup(
        ext_modules=[CMakeExtension(CPU_MODULE), CMakeExtension(CUDA_MODULE, optional=True)],
        cmdclass={"build_ext": CMakeBuild},
    )
