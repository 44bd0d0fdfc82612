"""The device scripts (benchmarks/*.sh) parse, and every file they name exists: a mistake in
them costs a device session's limited time, so it is caught here first."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))


def test_there_are_scripts():
    assert {path.name for path in SCRIPTS} >= {"gpu_all.sh", "gpu_crf.sh", "gpu_common.sh"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_parses_and_names_existing_files(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:tests|benchmarks)/[\w./-]+\.(?:py|sh))\b", text))
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"{script.name} names missing files: {missing}"
