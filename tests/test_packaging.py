"""Packaging: the sdist holds what building and testing need, the sources parse as the oldest
Python that ``requires-python`` admits, and setup.py's CMake driver rebuilds from a clean slate
when its inputs change, drops a stale CUDA module and says what a failed build needs. The checks
here are cheap (no compiler runs)."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "setup.py"
PYPROJECT = ROOT / "pyproject.toml"
checkout_only = pytest.mark.skipif(
    not (SETUP.is_file() and PYPROJECT.is_file()), reason="not a source checkout"
)
SKIPPED_PARTS = {"__pycache__", ".benchmarks", "results", ".pytest_cache", ".ruff_cache"}


def _files_under(folder: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and not SKIPPED_PARTS & set(path.relative_to(ROOT).parts)
        and path.suffix not in (".pyc", ".so")
    }


def _load_setup_module():
    spec = importlib.util.spec_from_file_location("hassod_setup_py", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, runs no setup()
    return module


@checkout_only
def test_sdist_holds_what_the_build_and_the_tests_need(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # pyproject's SPDX license string
    subprocess.run(
        [sys.executable, str(SETUP), "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    listed = set((tmp_path / "hassod.egg-info" / "SOURCES.txt").read_text().split())
    cmake_sources = set(re.findall(r"\bcsrc/[\w/.-]+", (ROOT / "CMakeLists.txt").read_text()))
    assert cmake_sources, "CMakeLists.txt names no csrc/ sources?"
    needed = (
        {"CMakeLists.txt", "LICENSE", "README.md", "pyproject.toml", "setup.py"}
        | cmake_sources
        | _files_under("csrc")  # headers too
        | _files_under("tests")  # conftest.py and the helper modules, not only test_*.py
        | _files_under("benchmarks")  # the tests run benchmark scripts
        | {p for p in _files_under("hassod") if p.endswith(".py")}
    )
    assert sorted(needed - listed) == []
    assert [name for name in listed if name.endswith((".so", ".pyd", ".pyc"))] == []


def _minimum_python() -> tuple[int, int]:
    match = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', PYPROJECT.read_text(), re.M)
    assert match, "requires-python is not of the form >=3.N"
    return 3, int(match.group(1))


@checkout_only
def test_sources_parse_as_the_oldest_python_that_requires_python_admits():
    oldest = _minimum_python()
    target = re.search(r'^target-version\s*=\s*"py3(\d+)"', PYPROJECT.read_text(), re.M)
    assert target and (3, int(target.group(1))) == oldest, "ruff's target-version differs"
    files = [SETUP, *sorted(ROOT.glob("hassod/**/*.py")), *sorted(ROOT.glob("tests/*.py"))]
    files += sorted(ROOT.glob("benchmarks/*.py"))
    too_new = []
    for path in files:
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=oldest)
        except SyntaxError as error:
            too_new.append(f"{path.relative_to(ROOT)}:{error.lineno}: {error.msg}")
    assert too_new == []


@checkout_only
def test_a_build_folder_configured_with_other_inputs_starts_afresh(tmp_path):
    setup_py = _load_setup_module()
    build_dir = tmp_path / "temp" / "hassod._C"
    first = ["cmake", "/src", "-DCMAKE_MAKE_PROGRAM=/tmp/pip-build-env-1/bin/ninja"]
    setup_py.prepare_build_dir(build_dir, first)
    (build_dir / "CMakeCache.txt").write_text("CMAKE_MAKE_PROGRAM=/tmp/pip-build-env-1/bin/ninja")
    setup_py.prepare_build_dir(build_dir, list(first))
    assert (build_dir / "CMakeCache.txt").exists()  # same inputs: incremental rebuild
    second = ["cmake", "/src", "-DCMAKE_MAKE_PROGRAM=/tmp/pip-build-env-2/bin/ninja"]
    setup_py.prepare_build_dir(build_dir, second)
    assert not (build_dir / "CMakeCache.txt").exists()  # new pip build environment
    (build_dir / "CMakeCache.txt").write_text("left by a build before the stamp existed")
    (build_dir / setup_py.CONFIGURE_STAMP).unlink()
    setup_py.prepare_build_dir(build_dir, second)
    assert not (build_dir / "CMakeCache.txt").exists()


@checkout_only
def test_a_cuda_module_left_by_an_earlier_build_is_not_shipped(tmp_path, monkeypatch):
    from setuptools import Distribution
    from setuptools.errors import CompileError

    setup_py = _load_setup_module()
    cpu = setup_py.CMakeExtension(setup_py.CPU_MODULE)
    cuda = setup_py.CMakeExtension(setup_py.CUDA_MODULE, optional=True)
    command = setup_py.CMakeBuild(Distribution({"name": "hassod", "ext_modules": [cpu, cuda]}))
    command.ensure_finalized()
    command.build_lib = str(tmp_path / "lib")
    command.build_temp = str(tmp_path / "temp")
    stale = Path(command.get_ext_fullpath(setup_py.CUDA_MODULE))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier HASSOD_CUDA=auto build's module")
    steps = []
    monkeypatch.setattr(setup_py, "run_step", lambda step, *args: steps.append(step))
    monkeypatch.setenv("HASSOD_CUDA", "0")
    command.build_extension(cpu)
    assert steps == ["configure", "build"]
    assert not stale.exists()
    with pytest.raises(CompileError, match="skipped"):
        command.build_extension(cuda)  # reported as a skipped optional extension


@checkout_only
def test_a_failed_cmake_step_says_what_the_build_needs(tmp_path):
    setup_py = _load_setup_module()
    with pytest.raises(SystemExit, match=r"CMake configure step failed.*CMake >= 3\.18"):
        setup_py.run_step("configure", [sys.executable, "-c", "raise SystemExit(1)"], tmp_path)
    with pytest.raises(SystemExit, match=r"CMake build step failed.*C\+\+17 compiler"):
        setup_py.run_step("build", [str(tmp_path / "no-such-cmake")], tmp_path)
