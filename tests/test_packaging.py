"""Packaging: the sdist holds what building and testing need, the sources parse as the oldest
Python that ``requires-python`` admits, setup.py's CMake driver rebuilds from a clean slate when
its inputs change and drops a stale CUDA module, and a missing or broken native module says
how to fix it. The checks here are cheap (no compiler runs)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from hassod._native import missing_build_message

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
    # No build tools needed: nothing runs, only the command lines are put together.
    monkeypatch.setattr(setup_py.shutil, "which", lambda name: f"/opt/bin/{name}")
    monkeypatch.setitem(sys.modules, "pybind11", types.SimpleNamespace(get_cmake_dir=str))
    monkeypatch.setenv("HASSOD_CUDA", "0")
    command.build_extension(cpu)
    assert steps == ["configure", "build"]
    assert not stale.exists()
    with pytest.raises(CompileError, match="skipped"):
        command.build_extension(cuda)  # reported as a skipped optional extension


@checkout_only
def test_an_editable_rebuild_without_cuda_removes_the_earlier_cuda_module(tmp_path, monkeypatch):
    from setuptools import Distribution

    setup_py = _load_setup_module()
    cpu = setup_py.CMakeExtension(setup_py.CPU_MODULE)
    cuda = setup_py.CMakeExtension(setup_py.CUDA_MODULE, optional=True)
    monkeypatch.chdir(tmp_path)  # the checkout: hassod/ holds the in-place modules
    distribution = Distribution(
        {"name": "hassod", "packages": ["hassod"], "ext_modules": [cpu, cuda]}
    )
    command = setup_py.CMakeBuild(distribution)
    command.inplace = True  # what setuptools sets for `pip install -e .`
    command.ensure_finalized()
    command.build_lib = str(tmp_path / "lib")
    command.build_temp = str(tmp_path / "temp")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    stale = tmp_path / "hassod" / f"_C_cuda{suffix}"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier HASSOD_CUDA=auto build's module")

    def fake_step(step, command_line, cwd):  # "builds" the CPU module only
        if step == "configure":
            (out_dir,) = [a.split("=", 1)[1] for a in command_line if "LIBRARY_OUTPUT" in a]
            Path(out_dir).mkdir(parents=True)
            Path(out_dir, f"_C{suffix}").write_bytes(b"")

    monkeypatch.setattr(setup_py, "run_step", fake_step)
    monkeypatch.setattr(setup_py.shutil, "which", lambda name: f"/opt/bin/{name}")
    monkeypatch.setitem(sys.modules, "pybind11", types.SimpleNamespace(get_cmake_dir=str))
    monkeypatch.setenv("HASSOD_CUDA", "0")
    command.run()
    assert (tmp_path / "hassod" / f"_C{suffix}").exists()
    assert not stale.exists()


@checkout_only
def test_a_failed_cmake_step_says_what_the_build_needs(tmp_path):
    setup_py = _load_setup_module()
    with pytest.raises(SystemExit, match=r"CMake configure step failed.*CMake >= 3\.18"):
        setup_py.run_step("configure", [sys.executable, "-c", "raise SystemExit(1)"], tmp_path)
    with pytest.raises(SystemExit, match=r"CMake build step failed.*C\+\+17 compiler"):
        setup_py.run_step("build", [str(tmp_path / "no-such-cmake")], tmp_path)


def _package_folder(tmp_path: Path, checkout: bool) -> Path:
    package = tmp_path / "src" / "hassod"
    package.mkdir(parents=True)
    if checkout:
        (package.parent / "setup.py").write_text("")
        (package.parent / "CMakeLists.txt").write_text("")
    return package


def test_missing_module_in_a_checkout_says_build_in_place_or_leave_the_folder(
    tmp_path, monkeypatch
):
    package = _package_folder(tmp_path, checkout=True)
    error = ImportError("cannot import name '_C'")
    monkeypatch.chdir(package.parent)
    message = missing_build_message(package, error)
    assert "source checkout" in message and "`pip install -e .`" in message
    assert "shadows the installed one" in message and "cannot import name '_C'" in message
    monkeypatch.chdir(tmp_path)  # imported from elsewhere: nothing is shadowed
    assert "shadows" not in missing_build_message(package, error)


def test_missing_module_in_an_installed_copy_says_reinstall(tmp_path):
    message = missing_build_message(_package_folder(tmp_path, checkout=False), ImportError("x"))
    assert "not built" in message and "`pip install .`" in message


def test_a_module_that_does_not_load_is_named_with_this_python(tmp_path):
    package = _package_folder(tmp_path, checkout=True)
    (package / "_C.cpython-30-x86_64-linux-gnu.so").write_bytes(b"built for another Python")
    message = missing_build_message(package, ImportError("cannot import name '_C'"))
    assert "_C.cpython-30-x86_64-linux-gnu.so" in message and "does not load" in message
    assert sys.version.split()[0] in message and "`pip install -e .`" in message


@checkout_only
def test_importing_a_checkout_without_its_module_fails_with_the_fix(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "hassod", checkout / "hassod", ignore=shutil.ignore_patterns("*.so"))
    for name in ("setup.py", "CMakeLists.txt"):
        shutil.copy(ROOT / name, checkout / name)
    (checkout / "hassod" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(b"\0")
    result = subprocess.run(
        [sys.executable, "-c", "import hassod._native as n; n.cpu_module()"],
        cwd=checkout,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "does not load with this Python" in result.stderr
    assert "`pip install -e .` in that checkout" in result.stderr


WORKER_SCRIPT = """
import os
from concurrent.futures import ProcessPoolExecutor

from hassod import discover_run

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=discover_run._process_context()) as pool:
        print("worker ran:", pool.submit(discover_run._process_alive, os.getpid()).result())
"""


def test_workers_import_the_installed_hassod_when_run_from_a_checkout(tmp_path):
    """`pip install .` then `hassod demo` from the checkout: the post-processing workers must
    not import the checkout's hassod/ (no compiled module there) instead of the installed one."""
    import hassod

    checkout = tmp_path / "checkout"
    (checkout / "hassod").mkdir(parents=True)
    (checkout / "hassod" / "__init__.py").write_text("CHECKOUT = True\n")
    (checkout / "hassod" / "discover.py").write_text("")
    script = tmp_path / "scripts" / "run_workers.py"  # not in the checkout, as bin/hassod
    script.parent.mkdir()
    script.write_text(WORKER_SCRIPT)
    installed = str(Path(hassod.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([installed, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "worker ran: True" in result.stdout


@pytest.mark.parametrize("where", ["postprocess", "reference"])
def test_the_pydensecrf_crf_without_pydensecrf2_says_how_to_get_it(where, monkeypatch):
    """pydensecrf2 is a dependency only on Python < 3.13 (it does not build on 3.13+)."""
    import numpy as np

    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    image = np.zeros((4, 4, 3), np.uint8)
    probs = np.full((2, 4, 4), 0.5, np.float32)
    with pytest.raises(ImportError, match=r"pydensecrf2 package.*Python < 3\.13.*native CRF"):
        if where == "postprocess":
            from hassod.postprocess import dense_crf

            dense_crf(image, probs, backend="pydensecrf")
        else:
            pytest.importorskip("torch")
            from hassod.reference.discover import reference_crf

            reference_crf(image, probs)


@checkout_only
def test_pydensecrf2_is_required_only_where_it_builds():
    text = PYPROJECT.read_text()
    assert re.search(r"""^\s*"pydensecrf2>=[\d.]+; python_version < '3\.13'",""", text, re.M)
