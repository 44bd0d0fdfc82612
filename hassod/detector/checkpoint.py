"""Training checkpoints: model, teacher, optimizer, AMP scaler, iteration, RNG states, config.

Files are written atomically (temporary file + rename) under ``OUT/checkpoints/``; the text
file ``OUT/checkpoints/last_checkpoint`` names the newest, which ``--resume`` continues from.
Everything is stored as tensors, numbers, strings and lists, so the files load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import torch

from hassod._io import atomic_write, describe_read_error, load_array_pickle, not_a_file
from hassod.detector.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    settings_unchecked,
)

FORMAT = "hassod-detector/1"
LAST = "last_checkpoint"


def rng_state() -> dict:
    """torch (CPU and this process's CUDA device) and Python ``random`` RNG states. (The data
    pipeline draws from generators keyed by iteration, not from global RNGs, so it needs no
    state.) Only the current device's CUDA state: a resume may see fewer GPUs, and each
    process of a distributed run keeps its own state (training.py gathers them per rank)."""
    state = {"torch": torch.get_rng_state(), "python": list(_listify(random.getstate()))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda)


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(
    path,
    *,
    config: TrainConfig,
    iteration: int,
    model: torch.nn.Module,
    teacher: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler=None,
    extra: dict | None = None,
    rng_per_rank: list | None = None,
) -> Path:
    """Write a checkpoint atomically; ``iteration`` is the number of finished iterations.

    ``rng`` holds this process's RNG states; ``rng_per_rank`` (when given) those of every
    process in rank order, so that each process of a multi-process run resumes its own
    stream (its RoI and anchor sampling)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": config_to_dict(config),
        "iteration": int(iteration),
        "model": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "rng_per_rank": rng_per_rank,
        "extra": extra or {},
    }
    # fsync before the rename: after a power cut the newest checkpoint is whole, or absent
    atomic_write(path, lambda temporary: torch.save(payload, temporary), fsync=True)
    return path


def mark_last(checkpoint_dir, path) -> None:
    """Record ``path`` as the newest checkpoint of ``checkpoint_dir`` (atomically)."""
    checkpoint_dir = Path(checkpoint_dir)
    name = Path(path).name + "\n"
    atomic_write(
        checkpoint_dir / LAST, lambda temporary: temporary.write_text(name, "utf-8"), fsync=True
    )


def last_checkpoint(checkpoint_dir) -> Path | None:
    """The newest checkpoint recorded in ``checkpoint_dir``, or None."""
    marker = Path(checkpoint_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(checkpoint_dir) / marker.read_text(encoding="utf-8").strip()
    return path if path.is_file() else None


def read_payload(path, map_location="cpu") -> dict:
    """The raw contents of a checkpoint file (``torch.load`` with ``weights_only``; a ``.pkl``,
    Detectron2's NumPy format, with an unpickler that admits arrays only)."""
    path = Path(path)
    if not path.is_file():
        # A run folder given for its checkpoint: name the newest one in it (training.py layout).
        newest = None
        if path.is_dir():  # a run folder, or its checkpoints/ folder
            newest = last_checkpoint(path / "checkpoints") or last_checkpoint(path)
        hint = f" (the run's newest checkpoint is {newest})" if newest is not None else ""
        raise FileNotFoundError(not_a_file(path, "checkpoint") + hint)
    try:
        payload = read_weights(path, map_location)
    except Exception as error:  # noqa: BLE001 - truncated or foreign files alike
        raise ValueError(f"cannot read checkpoint {path}: {describe_read_error(error)}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a checkpoint (it holds a {type(payload).__name__})")
    return payload


def read_weights(path: Path, map_location="cpu"):
    """A weight file's contents: ``torch.load`` with ``weights_only`` for torch's files
    (zip archives, whatever their suffix), an arrays-only unpickler for other ``.pkl`` files
    (Detectron2's NumPy format)."""
    import argparse

    if path.suffix == ".pkl":
        with path.open("rb") as handle:
            if handle.read(4) != b"PK\x03\x04":  # not torch.save's zip, as torch tells it
                handle.seek(0)
                return load_array_pickle(handle)
    # DINO's training checkpoints carry their argparse.Namespace: plain data, safe to admit.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; ``config`` comes back as a
    :class:`TrainConfig`."""
    return _hassod_payload(read_payload(path, map_location), path)


def _hassod_payload(payload: dict, path) -> dict:
    if payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a hassod detector checkpoint (format {FORMAT}) nor a Detectron2 "
            "checkpoint of the HASSOD detector"
        )
    payload = dict(payload)  # the caller's dict stays as it was
    stored = dict(payload["config"])
    # Runs checkpointed before batches were grouped by orientation resume as they ran ...
    stored["data"] = {"aspect_ratio_grouping": False, **(stored.get("data") or {})}
    # ... and those written before the Detectron2 anchors with torchvision's.
    stored["model"] = {"anchor_generator": "torchvision", **(stored.get("model") or {})}
    try:
        payload["config"] = config_from_dict(stored)
    except (TypeError, ValueError) as error:
        # A check added since the run was trained: its network still loads (training it
        # further is refused by the checks train() runs, naming the setting).
        warnings.warn(
            f"{path}: a stored training setting fails a check of this version ({error}); "
            "loaded as stored",
            stacklevel=2,
        )
        with settings_unchecked():
            payload["config"] = config_from_dict(stored)
    return payload


WEIGHTS = ("student", "teacher", "auto")  # which network of a checkpoint


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be auto, student or teacher, got {weights!r}")


def detector_from_checkpoint(path_or_payload, weights: str = "student", map_location="cpu"):
    """(detector in eval mode, TrainConfig) from a checkpoint: a ``hassod train`` one (a path
    or its loaded dict) or a Detectron2 one of the HASSOD detector, such as the authors'
    released model (a path; see :mod:`hassod.detector.detectron2_weights`).

    ``weights``: ``student`` (default: the network the authors evaluate after Mean Teacher,
    their ``model_student.pth``), ``teacher`` (the EMA) or ``auto`` (the teacher when the
    run reached the Mean Teacher phase, else the student).
    """
    from hassod.detector import detectron2_weights
    from hassod.detector.model import HassodDetector

    check_weights(weights)
    loaded = isinstance(path_or_payload, dict)
    payload = path_or_payload if loaded else read_payload(path_or_payload, map_location)
    if payload.get("format") != FORMAT and detectron2_weights.is_detectron2_checkpoint(payload):
        return detectron2_weights.convert_detectron2_detector(
            detectron2_weights.model_state(payload),
            weights,
            detectron2_weights.stored_settings(payload),  # a hassod export's own settings
        )
    if not loaded or not isinstance(payload.get("config"), TrainConfig):
        payload = _hassod_payload(payload, "the checkpoint" if loaded else path_or_payload)
    if weights == "teacher" and payload.get("teacher") is None:
        raise ValueError("this checkpoint has no teacher (the Mean Teacher phase did not start)")
    use_teacher = weights == "teacher" or (weights == "auto" and payload.get("teacher") is not None)
    config = payload["config"]
    model = HassodDetector(config.model, config.model.norm)
    model.load_state_dict(payload["teacher"] if use_teacher else payload["model"])
    model.eval()
    return model, config
