"""What machine a benchmark ran on, for the reports."""

from __future__ import annotations

import os
import platform


def describe_machine() -> dict:
    """CPU model, core count, Python and NumPy versions."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def write_report(path, report: dict) -> None:
    """Write a benchmark report as indented JSON, atomically, creating the folder."""
    import json

    from hassod._io import atomic_open

    with atomic_open(path, "w", encoding="utf-8", parents=True) as handle:
        handle.write(json.dumps(report, indent=2) + "\n")
