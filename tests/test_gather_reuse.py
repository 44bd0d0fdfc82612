"""The gather-reuse analysis (benchmarks/gather_reuse.py): its counting against a brute-force
replay, its blur read orders against the blur's definition, and a small end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
_BENCHMARKS_DIR = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, _BENCHMARKS_DIR)

import gather_reuse  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_reuse_counts_like_a_brute_force_replay(seed):
    rng = np.random.default_rng(seed)
    reads = rng.integers(0, 30, size=200)
    row_bytes, window = 8, int(rng.integers(1, 40))
    stats = gather_reuse.reuse(reads, row_bytes, window * row_bytes)
    last_seen: dict[int, int] = {}
    re_reads = hits = 0
    for time, row in enumerate(reads.tolist()):
        if row in last_seen:
            re_reads += 1
            hits += time - last_seen[row] <= window
        last_seen[row] = time
    assert stats["reads"] == 200 and stats["rows"] == len(last_seen)
    assert stats["re_read_share"] == pytest.approx(re_reads / 200)
    assert stats["cache_hit_share"] == pytest.approx(hits / 200)
    assert stats["misses_per_row"] == pytest.approx((200 - hits) / len(last_seen))


def test_blur_reads_follow_the_blur_definition():
    # 4 vertices, 2 axes; 4 stands for a missing neighbour.
    neighbours = torch.tensor(
        [[[1, 4, 0, 2], [4, 3, 1, 4]], [[2, 2, 4, 0], [3, 4, 1, 1]]]  # axis 0, axis 1
    )
    single = gather_reuse.blur_reads(neighbours, [0]).tolist()
    assert single == [0, 1, 1, 3, 2, 0, 1, 3, 2]  # v, minus, plus per vertex, missing skipped
    paired = gather_reuse.blur_reads(neighbours, [0, 1]).tolist()
    # Vertex 0: axis 0 at 0 (0, 1), at its axis-1 minus 2 (2, 0, 1), at its axis-1 plus 3 (3, 2).
    assert paired[:7] == [0, 1, 2, 0, 1, 3, 2]


def test_script_runs_on_a_small_photo(tmp_path, capsys):
    out = tmp_path / "reuse.json"
    assert gather_reuse.main(["--photos", "astronaut", "--size", "48", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    splat = results["astronaut bilateral key order"]["splat"]
    assert 0 < splat["cache_hit_share"] <= splat["re_read_share"] < 1
    paired = results["astronaut bilateral blur, two axes per pass"]["misses_per_row"]
    single = results["astronaut bilateral blur, one axis per pass"]["misses_per_row"]
    assert 3 <= paired < single  # 3 passes read each row at least once, 6 passes 6 times
    assert "two axes per pass" in capsys.readouterr().out
