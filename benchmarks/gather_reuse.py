"""How well a GPU cache can serve the batched CRF's gathers (hassod.crf_torch lattices).

Usage:
    python benchmarks/gather_reuse.py [--photos astronaut coffee] [--size 480] [--columns 96]

The Triton splat reads, for each lattice vertex in turn, the label rows of the points that
touch it; the fused slice reads, for each point in turn, the rows of its simplex corners. Each
row is read several times (d+1 vertices share a point; many points share a vertex). Whether
the re-reads come from cache depends on how far apart they fall in the access order. This
script replays each access order on one image and reports, per kernel, the share of reads that
are re-reads (the most a cache could serve) and the share that come within ``--cache-mb`` of
traffic (rows of ``--columns`` float32) after their previous read: the number of reads in
between bounds the distinct rows in between, so a re-read within the window hits any
least-recently-used cache of that size. Two vertex numberings are compared: by sorted key (what
hassod.crf_torch builds) and by first appearance in pixel order (densecrf's). The blur's reads
are replayed for one lattice axis per pass and for two (crf_triton.blur_pair), giving the rows
per vertex that must come from beyond the cache over all passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from hassod.crf_torch import CrfBatch, _Lattice

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402
from photos import skimage_photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def first_appearance_numbering(lattice: _Lattice) -> torch.Tensor:
    """(M,) entry vertices renumbered by the first point (in pixel order) that touches them."""
    first_entry = lattice.by_vertex[lattice.vertex_crow[:-1]]  # stable sort: smallest first
    new_id = torch.empty_like(first_entry)
    new_id[torch.argsort(first_entry)] = torch.arange(first_entry.numel())
    return new_id[lattice.entry_vertex]


def splat_reads(entry_vertex: torch.Tensor) -> np.ndarray:
    """Points read by the splat: every vertex's entries, vertices in number order."""
    corners = entry_vertex.shape[1]
    by_vertex = torch.sort(entry_vertex.reshape(-1), stable=True).indices
    return (by_vertex // corners).numpy()


def blur_reads(neighbours: torch.Tensor, axes: list[int]) -> np.ndarray:
    """Vertex rows read by one blur launch over ``axes`` (one, or two fused as in
    crf_triton.blur_pair), vertices in number order; missing neighbours are not read."""
    num_vertices = neighbours.shape[2]
    centre = torch.arange(num_vertices)
    rows = [centre]
    if len(axes) == 2:  # the first axis at the vertex and at its second-axis neighbours
        rows = [centre, neighbours[axes[1], 0], neighbours[axes[1], 1]]
    reads = []
    for row in rows:
        present = row < num_vertices
        safe = torch.where(present, row, 0)
        for candidate in (row, neighbours[axes[0], 0][safe], neighbours[axes[0], 1][safe]):
            reads.append(torch.where(present, candidate, num_vertices))
    reads = torch.stack(reads, dim=1).reshape(-1)
    return reads[reads < num_vertices].numpy()


def reuse(reads: np.ndarray, row_bytes: int, cache_bytes: float) -> dict:
    """Re-read share and the share of reads re-read within ``cache_bytes`` of traffic."""
    order = np.argsort(reads, kind="stable")
    times, rows = order, reads[order]
    again = rows[1:] == rows[:-1]
    gaps = (times[1:] - times[:-1])[again]
    window = cache_bytes / row_bytes
    return {
        "reads": int(reads.size),
        "rows": int(np.unique(reads).size),
        "re_read_share": float(again.sum() / reads.size),
        "cache_hit_share": float((gaps <= window).sum() / reads.size),
        "median_gap_reads": float(np.median(gaps)) if gaps.size else 0.0,
        # Reads a cache of that size cannot serve, per distinct row (1.0: each row once).
        "misses_per_row": float((reads.size - (gaps <= window).sum()) / np.unique(reads).size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="+", default=["astronaut", "coffee", "chelsea"])
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--columns", type=int, default=96, help="label columns per row")
    parser.add_argument("--cache-mb", type=float, default=16.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "gather_reuse.json"
    )
    args = parser.parse_args(argv)
    from skimage.transform import resize

    row_bytes = 4 * args.columns
    results = {}
    for name in args.photos:
        photo = skimage_photo(name)[..., :3]
        image = (resize(photo, (args.size, args.size)) * 255).astype(np.uint8)
        batch = CrfBatch([image], device="cpu")
        for kernel_name, kernel in batch.kernels.items():
            lattice = kernel.lattice
            numberings = {
                "key order": lattice.entry_vertex,
                "first appearance": first_appearance_numbering(lattice),
            }
            for numbering, entry_vertex in numberings.items():
                key = f"{name} {kernel_name} {numbering}"
                results[key] = {
                    "splat": reuse(splat_reads(entry_vertex), row_bytes, args.cache_mb * 1e6),
                    "slice": reuse(
                        entry_vertex.reshape(-1).numpy(), row_bytes, args.cache_mb * 1e6
                    ),
                }
                splat, slice_ = results[key]["splat"], results[key]["slice"]
                print(
                    f"{key:45s} splat re-reads {splat['re_read_share']:.3f} within "
                    f"{args.cache_mb:g} MB {splat['cache_hit_share']:.3f} | slice re-reads "
                    f"{slice_['re_read_share']:.3f} within {slice_['cache_hit_share']:.3f}"
                )
            # The blur reads vertex rows in vertex order: the numbering is the lattice's own.
            axes = lattice.neighbours.shape[0]
            for label, groups in (
                ("one axis per pass", [[a] for a in range(axes)]),
                (
                    "two axes per pass",
                    [list(range(a, min(a + 2, axes))) for a in range(0, axes, 2)],
                ),
            ):
                stats = [
                    reuse(blur_reads(lattice.neighbours, group), row_bytes, args.cache_mb * 1e6)
                    for group in groups
                ]
                key = f"{name} {kernel_name} blur, {label}"
                misses = sum(stat["misses_per_row"] for stat in stats)
                results[key] = {"passes": stats, "misses_per_row": misses}
                print(
                    f"{key:45s} {len(groups)} passes, rows read from beyond the cache per "
                    f"vertex {misses:.2f} (plus {len(groups)} written)"
                )
    settings = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    report = {"machine": describe_machine(), "args": settings, "results": results}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
