"""Packaging: the sdist holds what building and testing need, and the sources parse as the
oldest Python that ``requires-python`` admits. The checks here are cheap (no compiler runs)."""

from __future__ import annotations

import ast
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
