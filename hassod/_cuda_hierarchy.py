"""The CUDA path of :mod:`hassod.hierarchy`: CUDA torch tensors in, CUDA torch tensors out.

:mod:`hassod.hierarchy` sends CUDA tensors here. The kernels (``csrc/hierarchy/coverage_cuda.cu``
in the optional module ``hassod._C_cuda``) take raw device addresses and run on the current torch
stream of the masks' device; every output is allocated here with torch, so it lives in torch's
caching allocator and is ordered on that stream like any torch operation (nothing here waits for
the device). Results are identical to the CPU path: intersections (K, K) int64, parent and depth
(K,) int32, level (K,) int8, on the masks' device.

torch is imported only once a CUDA tensor has arrived.
"""

from __future__ import annotations

from collections.abc import Sequence

from hassod._checks import is_torch_tensor, mask_shape_error, soft_mask_error
from hassod._native import cpu_module, cuda_module, cuda_status


def is_cuda_tensor(value) -> bool:
    """True for a torch tensor on a CUDA device, without importing torch."""
    return is_torch_tensor(value) and value.device.type == "cuda"


def coverage_matrix(masks):
    """``(intersections, areas)`` of (K, H, W) CUDA masks: (K, K) and (K,) int64 on their device."""
    stacks = [_flat_masks(masks, "masks")]
    (intersections,) = _split_square(_coverage(stacks), _sizes(stacks))
    return intersections, intersections.diagonal().clone()


def build_forest(intersections, cover: float) -> dict:
    """``parent``, ``depth``, ``level`` from a checked C-contiguous (K, K) int64 CUDA matrix."""
    parent, depth, level = _forest(intersections, [intersections.shape[0]], cover)
    return {"parent": parent, "depth": depth, "level": level}


def hierarchy_batch(batch: Sequence, cover: float) -> list[dict]:
    """:func:`hassod.build_hierarchy_batch` of CUDA mask stacks, all on one device, in one pass:
    one launch sequence packs, intersects and builds the forests of the whole batch."""
    stacks = [_flat_masks(masks, f"batch[{i}]") for i, masks in enumerate(batch)]
    devices = {stack.device for stack in stacks}
    if len(devices) > 1:
        raise ValueError(
            f"a batch of CUDA masks must be on one device, got {sorted(map(str, devices))}"
        )
    sizes = _sizes(stacks)
    intersections = _coverage(stacks)
    parent, depth, level = _forest(intersections, sizes, cover)
    fields = zip(
        _split_square(intersections, sizes), *(_split(x, sizes) for x in (parent, depth, level))
    )
    return [
        {"intersections": matrix, "parent": p, "depth": d, "level": lv}
        for matrix, p, d, lv in fields
    ]


def dedup_masks(intersections, iou: float):
    """:func:`hassod.dedup_masks` of a checked (K, K) int64 CUDA matrix. The greedy scan is
    sequential over the K masks, so it runs on a CPU copy of the (small) matrix; returns (K',)
    int64 indices on the matrix's device."""
    import torch

    kept = cpu_module().dedup_masks(intersections.cpu().numpy(), iou)
    return torch.from_numpy(kept).to(device=intersections.device, dtype=torch.int64)


def is_integer_tensor(tensor) -> bool:
    """True for a torch tensor of an integer dtype (bool excluded, as NumPy's np.integer)."""
    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == _torch().bool)


def as_int64(tensor):
    """A C-contiguous int64 copy (or the tensor itself, if it already is one) on its device."""
    return tensor.detach().to(_torch().int64).contiguous()


def native_module():
    """``hassod._C_cuda``; RuntimeError saying why and how to build it when it is absent."""
    module = cuda_module()
    if module is None:
        raise RuntimeError(
            "these masks are CUDA tensors, but hassod's CUDA module hassod._C_cuda is not built "
            f"({cuda_status()['reason']}). Rebuild with `HASSOD_CUDA=1 pip install .` on a "
            "machine with nvcc, or pass CPU tensors (masks.cpu())."
        )
    return module


def _torch():
    import torch

    return torch


def _flat_masks(masks, name: str):
    """(K, H, W) CUDA masks as a contiguous (K, H*W) bool or uint8 tensor (a view if possible)."""
    if not is_cuda_tensor(masks):
        where = masks.device if is_torch_tensor(masks) else "the CPU"
        raise ValueError(f"{name} is on {where}; a batch with CUDA masks must be all CUDA tensors")
    if masks.ndim != 3:
        raise mask_shape_error(name, masks.shape)
    masks = masks.detach()
    torch = _torch()
    if masks.dtype not in (torch.bool, torch.uint8):
        if not is_integer_tensor(masks):
            raise soft_mask_error(name, masks.dtype)
        masks = masks != 0
    count, height, width = masks.shape
    return masks.contiguous().view(count, height * width)


def _sizes(stacks) -> list[int]:
    return [int(stack.shape[0]) for stack in stacks]


def _launch_target(tensor) -> tuple[int, int]:
    """The device index and the address of its current torch stream, for the native calls."""
    return tensor.device.index, _torch().cuda.current_stream(tensor.device).cuda_stream


def _coverage(stacks):
    """Concatenated intersections of (K_i, P_i) stacks on one device: (sum K_i^2,) int64."""
    torch = _torch()
    sizes = _sizes(stacks)
    out = torch.empty(sum(k * k for k in sizes), dtype=torch.int64, device=stacks[0].device)
    native_module().coverage_matrix_batch(
        [stack.data_ptr() for stack in stacks],
        sizes,
        [int(stack.shape[1]) for stack in stacks],
        out.data_ptr(),
        *_launch_target(out),
    )
    return out


def _forest(intersections, sizes: list[int], cover: float):
    """(parent, depth, level), each (sum K_i,), from concatenated C-contiguous intersections."""
    torch = _torch()
    total = sum(sizes)
    device = intersections.device
    parent = torch.empty(total, dtype=torch.int32, device=device)
    depth = torch.empty(total, dtype=torch.int32, device=device)
    level = torch.empty(total, dtype=torch.int8, device=device)
    native_module().build_forest_batch(
        intersections.data_ptr(),
        sizes,
        cover,
        parent.data_ptr(),
        depth.data_ptr(),
        level.data_ptr(),
        *_launch_target(intersections),
    )
    return parent, depth, level


def _split(flat, sizes: list[int]) -> list:
    return list(flat.split(sizes))


def _split_square(flat, sizes: list[int]) -> list:
    return [block.view(k, k) for block, k in zip(flat.split([k * k for k in sizes]), sizes)]
