"""Discovery's CRF step for a batch of images on one device (``hassod discover --crf torch``).

The same computation as :func:`hassod.postprocess.crf_candidates`, per image and threshold,
with every image and threshold of a batch in one :class:`hassod.crf_torch.CrfBatch`: one-hot
partitions upsampled on the device, the CRF, each region's agreement (IoU of the masks before and
after), and the agreeing regions' marginals upsampled to the original size and thresholded at
0.5. Only those boolean masks leave the device; the mask filters, the ensemble and the encoding
stay per image on the CPU (:func:`hassod.postprocess.finish_partition`).

On a GPU the bilinear resizes and the CRF round differently from the CPU path in the last bits,
so a pixel whose marginal is within about 1e-6 of 0.5 can land on the other side: the masks
agree with the CPU path's to an IoU of 1 - O(1e-4) (tests/test_batched_crf.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hassod.crf_torch import CrfBatch
from hassod.postprocess import CrfCandidates, CrfParams, FilterParams, upsampled_masks


def crf_candidates_batch(
    crf_images: Sequence[np.ndarray],
    partitions: Sequence[Sequence[np.ndarray]],
    original_sizes: Sequence[tuple[int, int]],
    crf: CrfParams | None = None,
    filters: FilterParams | None = None,
    device: str | torch.device = "cuda",
    max_batch_elements: int = 400_000_000,
) -> list[list[CrfCandidates]]:
    """:func:`hassod.postprocess.crf_candidates` for every image and partition of a batch.

    Args:
        crf_images: (S, S, 3) uint8 images resized to the CRF's fixed size (sizes may differ
            between images).
        partitions: per image, its (h, w) region-id maps 0..R-1 (one per merge threshold; every
            image brings the same number).
        original_sizes: per image, the (height, width) the masks are returned at.
        crf, filters: the CRF kernels and iterations; ``filters.keep_iou`` (None: defaults).
        device: where the CRF runs.
        max_batch_elements: CRF batches hold at most this many pixels x label columns (at
            least one image; the default peaks near 25 GB); images are grouped by their
            number of labels, which keeps the padding small, and a batch that runs out of
            device memory is split in two.

    Returns:
        Per image, per partition, the :class:`~hassod.postprocess.CrfCandidates` (numpy, CPU).
    """
    if not (len(crf_images) == len(partitions) == len(original_sizes)):
        raise ValueError(
            "crf_images, partitions and original_sizes must have the same length, got "
            f"{len(crf_images)}, {len(partitions)} and {len(original_sizes)}"
        )
    if not crf_images:
        return []
    crf = CrfParams() if crf is None else crf
    filters = FilterParams() if filters is None else filters
    device = torch.device(device)
    # Label columns are padded to a CRF batch's largest count per threshold, and the batch's
    # memory grows with pixels x columns (about 60 bytes per pixel and column at its peak):
    # images with similar counts go together (sorted by their total), in chunks of at most
    # max_batch_elements pixel-columns; a chunk that still runs out of memory is halved.
    counts = [[int(np.max(labels)) + 1 for labels in partition] for partition in partitions]
    order = sorted(range(len(crf_images)), key=lambda i: -sum(counts[i]))
    results: list = [None] * len(crf_images)

    def elements(chunk: list[int]) -> int:
        pixels = sum(int(crf_images[j].shape[0]) * int(crf_images[j].shape[1]) for j in chunk)
        columns = sum(max(counts[j][t] for j in chunk) for t in range(len(counts[chunk[0]])))
        return pixels * columns

    def run(chunk: list[int]) -> None:
        try:
            found = _chunk_candidates(
                [crf_images[j] for j in chunk],
                [partitions[j] for j in chunk],
                [original_sizes[j] for j in chunk],
                crf,
                filters,
                device,
            )
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            found = None
        if found is None:
            # Outside the except block: its traceback held the failed attempt's frames, and
            # with them its tensors, which the halves need freed.
            torch.cuda.empty_cache()
            run(chunk[: len(chunk) // 2])
            run(chunk[len(chunk) // 2 :])
            return
        for index, candidates in zip(chunk, found):
            results[index] = candidates

    chunk: list[int] = []
    for i in order:
        if chunk and elements([*chunk, i]) > max_batch_elements:
            run(chunk)
            chunk = []
        chunk.append(i)
    run(chunk)
    return results


def _chunk_candidates(crf_images, partitions, original_sizes, crf, filters, device) -> list:
    batch = CrfBatch(crf_images, device=device, **crf.torch_settings)
    before = [
        [_upsampled_one_hot(labels, batch.shapes[i], device) for labels in partitions[i]]
        for i in range(len(crf_images))
    ]
    after = batch.infer(before, iterations=crf.iterations)
    return [
        [
            _candidates(b, a, original_sizes[i], filters.keep_iou)
            for b, a in zip(before[i], after[i])
        ]
        for i in range(len(crf_images))
    ]


def _upsampled_one_hot(labels, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """As postprocess.upsample(one_hot(labels), size), on ``device``."""
    labels = torch.as_tensor(np.asarray(labels), device=device).long()
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {tuple(labels.shape)}")
    regions = int(labels.max()) + 1
    masks = torch.nn.functional.one_hot(labels, regions).permute(2, 0, 1).float()
    return torch.nn.functional.interpolate(masks[None], size=size, mode="bilinear")[0]


def _candidates(
    before: torch.Tensor, after: torch.Tensor, original_size: tuple[int, int], keep_iou: float
) -> CrfCandidates:
    first, second = before >= 0.5, after >= 0.5
    # One transfer (and one wait for the device) for both counts.
    intersection, union = (
        torch.stack([(first & second).sum(dim=(1, 2)), (first | second).sum(dim=(1, 2))])
        .cpu()
        .numpy()
    )
    agreement = np.divide(intersection, union, out=np.zeros(len(union)), where=union > 0)
    kept = np.flatnonzero(agreement >= keep_iou)
    masks = upsampled_masks(after[torch.from_numpy(kept).to(after.device)], original_size)
    return CrfCandidates(masks=masks, regions=kept, agreement=agreement)
