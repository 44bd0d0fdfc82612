"""``hassod train``: burn-in on the pseudo-labels, then Mean Teacher with adaptive targets.

One :class:`Trainer` runs iterations ``[start, config.total_iterations)``:

- burn-in (``iteration < config.iterations``): the student learns the pseudo-labels
  (multi-scale, flip, copy-paste, DropLoss), LR warm-up then constant;
- Mean Teacher (the ``config.mean_teacher.iterations`` that follow): the teacher is copied from
  the student, then updated as its EMA before each step; its detections (score > 0.7) on weak
  views, with levels from the coverage forest (cover 0.75), supervise the student's strong
  views; the loss is ``w_pseudo * L(pseudo-labels) + w_teacher * L(teacher targets, no mask)``
  with the cosine weights and LR of :mod:`hassod.detector.schedule`; the optimizer's momentum
  starts afresh, as in the authors' separate Mean Teacher job.

SGD with momentum, weight decay (none on normalisation weights), per-parameter gradient-norm
clipping (Detectron2's, as the authors), fp16 AMP with a GradScaler on CUDA, micro-batches
(gradient accumulation) when a share of the batch does not fit, DDP under ``torchrun``.
Checkpoints every ``checkpoint_period`` iterations, at the end and on SIGINT/SIGTERM;
``resume=True`` continues from the newest one exactly (the batches are a function of the
iteration, and RNG states are restored).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hassod._text import counted
from hassod.detector import checkpoint as ckpt
from hassod.detector import distributed, schedule
from hassod.detector.backbone import resolve_norm
from hassod.detector.config import TrainConfig, check_config, config_to_dict
from hassod.detector.data import PseudoLabels, TrainBatches, load_pseudo_labels, make_loader
from hassod.detector.mean_teacher import ema_update, skip_detections_below, teacher_targets
from hassod.detector.metrics import MetricsWriter
from hassod.detector.model import HassodDetector, build_detector

CHECKPOINT_DIR = "checkpoints"
# Steps skipped in a row for a non-finite loss after which the run counts as diverged.
MAX_NONFINITE_STEPS = 100


def rank_gpu(local_rank: int, visible: int) -> int:
    """The GPU index of a process under torchrun: its local rank, or 0 when it sees a single
    GPU (launchers that give each process its own through CUDA_VISIBLE_DEVICES)."""
    return local_rank if visible > 1 else 0


class Interrupted(RuntimeError):
    """Training stopped on a signal; a checkpoint of the last finished iteration was saved."""

    def __init__(self, message: str, result: TrainResult):
        super().__init__(message)
        self.result = result


class Diverged(RuntimeError):
    """Every one of the last MAX_NONFINITE_STEPS steps had a non-finite loss."""


@dataclass
class TrainResult:
    out_dir: Path
    start_iteration: int
    iterations_done: int  # finished iterations, the resumed ones included
    checkpoint: Path | None
    skipped_images: dict = field(default_factory=dict)
    first_losses: dict = field(default_factory=dict)
    last_losses: dict = field(default_factory=dict)
    seconds: float = 0.0
    data_report: dict = field(default_factory=dict)

    @property
    def iterations_per_second(self) -> float:
        done = self.iterations_done - self.start_iteration
        return done / self.seconds if self.seconds > 0 else 0.0


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as torch reads them.

    Raises:
        ValueError: a name torch does not know (``"gpu"``, ``"cuda:x"``), or a CUDA device
            without CUDA.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):  # torch's "Expected one of cpu, cuda, ipu, xpu, ..."
        raise ValueError(
            f"device must be auto, cpu, cuda or cuda:N (any torch device name), got {device!r}"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


class _Branches(torch.nn.Module):
    """Both student forward passes of one step in one module call, so DDP sees a single
    forward per backward (pseudo-label branch, then the teacher-target branch)."""

    def __init__(self, detector: HassodDetector):
        super().__init__()
        self.detector = detector

    def forward(self, images, targets, teacher_images=None, teacher_targets=None, drop_loss=True):
        pseudo = self.detector(images, targets, drop_loss=drop_loss) if images else {}
        taught = (
            self.detector(teacher_images, teacher_targets, drop_loss=False)
            if teacher_images
            else {}
        )
        return pseudo, taught


def _parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    norm_types = (
        torch.nn.GroupNorm,
        torch.nn.BatchNorm2d,
        torch.nn.SyncBatchNorm,
        torch.nn.LayerNorm,
    )
    norm_params, other = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            (norm_params if isinstance(module, norm_types) else other).append(param)
    return [
        {"params": other, "weight_decay": config.weight_decay},
        {"params": norm_params, "weight_decay": config.weight_decay_norm},
    ]


@torch.no_grad()
def clip_gradients_per_parameter(params, max_norm: float) -> torch.Tensor:
    """Clip each parameter's gradient to L2 norm ``max_norm`` on its own; returns the total
    norm of all gradients before clipping (for logging).

    This is what the authors' solver does (Detectron2's ``CLIP_TYPE: norm`` wraps the
    optimizer with a *per-parameter* ``clip_grad_norm_``), not one global norm over the
    model: a large gradient in one tensor does not shrink every other tensor's step.
    Each tensor is scaled by ``min(1, max_norm / (norm + 1e-6))`` as ``clip_grad_norm_``
    does. ``max_norm <= 0`` clips nothing.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = [torch.linalg.vector_norm(grad.float()) for grad in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        for grad, norm in zip(grads, norms):
            grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0).to(grad.dtype))
    return total


def _chunks(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` consecutive pieces whose sizes differ by at most one (none empty
    while there are at least ``parts`` items: under DDP a part with no pseudo-label image would
    leave the mask head without gradients and the reducer waiting)."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[start:stop] for start, stop in zip(bounds, bounds[1:])]


def _to_device(images, targets, device):
    images = [image.to(device, non_blocking=True) for image in images]
    if targets is None:
        return images, None
    moved = [
        {key: value.to(device, non_blocking=True) for key, value in target.items()}
        for target in targets
    ]
    return images, moved


class Trainer:
    """Owns the student, the teacher, the optimizer and the data of one training run.

    Args:
        config: settings; ``config.model.norm`` ``auto`` is resolved here (frozen BN with
            backbone weights, GroupNorm without) and stored resolved in checkpoints.
        labels: the pseudo-labels (:func:`hassod.detector.data.load_pseudo_labels`).
        out_dir: where checkpoints, ``metrics.csv``, ``config.json`` go.
        backbone_weights: self-supervised ResNet file (ignored when resuming).
        resume: continue from ``out_dir``'s newest checkpoint (a new run, with a warning,
            while it has none); a warning names data that differ from those the checkpoint
            recorded (:func:`dataset_changes`). Without it, an ``out_dir`` that holds a
            checkpoint is refused (ValueError): a second run would replace its checkpoints and
            metrics.
        init_from: a ``hassod train`` checkpoint whose student weights (``model``) start this
            run at iteration 0 with a fresh optimizer -- e.g. a burn-in run's
            ``model_final.pth``, so that ``iterations=0`` runs the Mean Teacher phase alone, as
            the authors' second job does. The model settings (architecture, normalisation)
            come from that checkpoint. Ignored when ``resume`` finds a checkpoint of this run
            (so the same command can be re-run with ``resume=True`` after an interruption).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (under torchrun: ``cuda:LOCAL_RANK``).
        distributed: None (join when torchrun says WORLD_SIZE > 1), True, False.
    """

    def __init__(
        self,
        config: TrainConfig,
        labels: PseudoLabels,
        out_dir,
        *,
        backbone_weights=None,
        resume: bool = False,
        init_from=None,
        device: str = "auto",
        progress: bool = True,
        distributed_mode: bool | None = None,
    ):
        check_config(config)
        self.out_dir = Path(out_dir)
        self.labels = labels
        self.progress = progress
        device = resolve_device(device)
        self.dist = distributed.init_distributed(device.type, distributed_mode)
        if device.type == "cuda" and self.dist.enabled and device.index is None:
            device = torch.device("cuda", rank_gpu(self.dist.local_rank, torch.cuda.device_count()))
        if device.type == "cuda":
            # set_device needs an index ("cuda" alone is refused by recent torch).
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        else:
            # Early gradients are full of denormal floats, which make CPU convolutions ~10x
            # slower (measured: 3.5 s -> 0.35 s for a first cpu-small step); flushing them to
            # zero changes nothing that matters for training. (Process-wide setting.)
            torch.set_flush_denormal(True)
        self.device = device

        payload = None
        initial_state = None
        path = check_run_folder(self.out_dir, resume)
        if resume and path is None and self.dist.is_main:
            # Detectron2's --resume too: one command both starts and continues a run.
            warnings.warn(
                f"--resume: no checkpoint in {self.out_dir / CHECKPOINT_DIR} yet; starting "
                "a new run",
                stacklevel=2,
            )
        if path is not None:
            payload = ckpt.load_checkpoint(path, map_location="cpu")
            config = _resumed_config(payload["config"], config)
            backbone_weights = None
            changes = dataset_changes(payload.get("extra", {}).get("dataset"), labels.source)
            if changes and self.dist.is_main:
                warnings.warn(
                    f"--resume: the run in {self.out_dir} was trained on other data: "
                    f"{'; '.join(changes)}; training goes on with the data given",
                    stacklevel=2,
                )
        elif init_from is not None:
            if backbone_weights is not None:
                raise ValueError(
                    "--init-from and --backbone-weights exclude each other: the checkpoint "
                    "holds the whole detector"
                )
            # The student of a hassod checkpoint, or a Detectron2 one's (the authors' model).
            source, source_config = ckpt.detector_from_checkpoint(init_from, "student")
            config = dataclasses.replace(config, model=source_config.model)
            initial_state = source.state_dict()
        else:
            norm = resolve_norm(config.model.norm, backbone_weights is not None)
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, norm=norm))
        self.config = config
        if self.dist.world_size > 1 and config.model.norm == "bn":
            warnings.warn(
                "norm=bn under DDP normalises per process; syncbn synchronises", stacklevel=2
            )

        torch.manual_seed(config.seed)
        if payload is None and initial_state is None:
            model = build_detector(config.model, backbone_weights)
        else:
            model = HassodDetector(config.model, config.model.norm)
        if initial_state is not None:
            model.load_state_dict(initial_state)
        model.to(device)
        self.model = model
        self.teacher = None
        self.optimizer = torch.optim.SGD(
            _parameter_groups(model, config), lr=config.base_lr, momentum=config.momentum
        )
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_iteration = 0
        self.skipped: dict[str, str] = {}
        self._metrics_pending: dict | None = None
        if payload is not None:
            self._restore(payload)
        else:
            # a different sampling stream per process, after identical model initialisation
            torch.manual_seed(config.seed + 1 + self.dist.rank)

        if self.dist.enabled:
            if config.model.norm == "syncbn":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            with warnings.catch_warnings():
                # recent torch deprecates broadcast_buffers, yet its warning advises keeping
                # False until the replacement can skip the initial sync; buffers (BN
                # statistics) stay per process, as in the authors' DDP wrapping
                warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated")
                self.wrapped = torch.nn.parallel.DistributedDataParallel(
                    _Branches(model),
                    device_ids=[device.index] if device.type == "cuda" else None,
                    broadcast_buffers=False,
                )
        else:
            self.wrapped = _Branches(model)
        self.batches = TrainBatches(labels, config, self.dist.rank, self.dist.world_size)
        self._stop_signal = None
        self.nonfinite_in_a_row = 0  # the same on every process: they skip together

    # ----------------------------------------------------------------- state
    def _restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        if payload.get("teacher") is not None:
            self.teacher = self._new_teacher()
            self.teacher.load_state_dict(payload["teacher"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.start_iteration = int(payload["iteration"])
        self.skipped = dict(payload.get("extra", {}).get("skipped_images", {}))
        self._metrics_pending = payload.get("extra", {}).get("metrics_pending")
        states = payload.get("rng_per_rank") or [payload["rng"]]
        if len(states) == self.dist.world_size:
            ckpt.set_rng_state(states[self.dist.rank])
        else:
            ckpt.set_rng_state(payload["rng"])
            warnings.warn(
                f"the checkpoint was written by {counted(len(states), 'process', 'processes')}, "
                f"this run has {self.dist.world_size}: training continues, but not bit-for-bit",
                stacklevel=2,
            )

    def _new_teacher(self) -> HassodDetector:
        teacher = copy.deepcopy(self.model)
        skip_detections_below(teacher, self.config.mean_teacher.score_threshold)
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        return teacher

    def save(
        self, iteration: int, name: str | None = None, metrics_pending: dict | None = None
    ) -> Path | None:
        """Checkpoint after ``iteration`` finished iterations (rank 0 writes; every process
        must call it: the RNG states of all processes are gathered into the file);
        ``metrics_pending``: the metrics of the unfinished logging period."""
        path = None
        rng_per_rank = distributed.all_gather_objects(ckpt.rng_state(), self.dist)
        if self.dist.is_main:
            directory = self.out_dir / CHECKPOINT_DIR
            path = directory / (name or f"iter_{iteration:07d}.pth")
            ckpt.save_checkpoint(
                path,
                config=self.config,
                iteration=iteration,
                model=self.model,
                teacher=self.teacher,
                optimizer=self.optimizer,
                scaler=self.scaler,
                extra={
                    "skipped_images": dict(self.skipped),
                    "dataset": dict(self.labels.source),  # compared on --resume
                    "world_size": self.dist.world_size,
                    "metrics_pending": metrics_pending or {},
                },
                rng_per_rank=rng_per_rank,
            )
            ckpt.mark_last(directory, path)
        distributed.barrier(self.dist)
        return path

    # ------------------------------------------------------------------ steps
    def _micro_parts(self, count: int) -> int:
        micro = self.config.micro_batch
        return max(1, math.ceil(count / micro)) if micro else 1

    def _accumulating(self, last: bool):
        """No gradient all-reduce for a micro-batch part other than the last. DDP decides in
        the forward pass, so the part's forward and backward both run inside."""
        if self.dist.enabled and not last:
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp
        )

    def step(self, iteration: int, batch: dict) -> dict:
        """One optimisation step of ``iteration`` on ``batch`` (a :class:`TrainBatches` item).

        Returns the step's metrics (losses per branch, weights, LR, gradient norm).
        """
        config = self.config
        lr = schedule.learning_rate(iteration, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        pseudo_weight, teacher_weight = schedule.branch_weights(iteration, config)
        metrics = {"lr": lr, "pseudo_weight": pseudo_weight, "teacher_weight": teacher_weight}
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if iteration == config.iterations:
            # Mean Teacher starts without burn-in's momentum, as the authors' separate job
            # (a new Detectron2 run that loads only the weights) does.
            self.optimizer.state.clear()
        if iteration < config.iterations:
            images, targets = batch["images"], batch["targets"]
            teacher_images, taught = [], []
            drop_loss = True
        else:
            images, targets = batch["labeled"]
            teacher_images, taught = self._teacher_branch(iteration, batch, metrics)
            drop_loss = config.mean_teacher.drop_loss
        parts = self._micro_parts(max(len(images), len(teacher_images)))
        if images:  # every part trains the pseudo-label branch (and with it every head, as DDP
            parts = min(parts, len(images))  # expects), the teacher images spread over them
        image_parts, target_parts = _chunks(images, parts), _chunks(targets, parts)
        teacher_parts, taught_parts = _chunks(teacher_images, parts), _chunks(taught, parts)
        sums: dict[str, float] = {}
        total_value = 0.0
        for index in range(parts):
            part_images, part_targets = _to_device(
                image_parts[index], target_parts[index], self.device
            )
            part_teacher = [
                image.to(self.device, non_blocking=True) for image in teacher_parts[index]
            ]
            with self._accumulating(last=index == parts - 1):
                with self._autocast():
                    pseudo, taught_losses = self.wrapped(
                        part_images,
                        part_targets,
                        part_teacher,
                        taught_parts[index],
                        drop_loss=drop_loss,
                    )
                share = len(part_images) / max(len(images), 1)
                teacher_share = len(part_teacher) / max(len(teacher_images), 1)
                loss = sum(pseudo.values()) * (pseudo_weight * share) if pseudo else 0.0
                if taught_losses:
                    loss = loss + sum(
                        value for key, value in taught_losses.items() if key != "loss_mask"
                    ) * (teacher_weight * teacher_share)
                if not torch.is_tensor(loss):
                    continue
                self.scaler.scale(loss).backward()
            total_value += float(loss.detach())
            for key, value in pseudo.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * share
            for key, value in taught_losses.items():
                name = f"teacher_{key}"
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * teacher_share
        metrics.update(sums)
        metrics["total_loss"] = total_value
        # Every process skips, or none: the gradients were averaged over all of them, and a
        # step taken on some replicas only (or a loss scale updated there) splits the model.
        if not distributed.all_true(math.isfinite(total_value), self.dist, self.device):
            self.optimizer.zero_grad(set_to_none=True)
            metrics["grad_norm"] = float("nan")
            self.nonfinite_in_a_row += 1
            warnings.warn(f"iteration {iteration}: non-finite loss, step skipped", stacklevel=2)
            return metrics
        self.nonfinite_in_a_row = 0
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        metrics["grad_norm"] = float(clip_gradients_per_parameter(params, config.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return metrics

    def _teacher_branch(self, iteration: int, batch: dict, metrics: dict):
        mean_teacher = self.config.mean_teacher
        if self.teacher is None or iteration == self.config.iterations:
            if self.teacher is None:
                self.teacher = self._new_teacher()
            ema_update(self.teacher, self.model, 0.0)  # copy the student at phase start
        else:
            ema_update(self.teacher, self.model, mean_teacher.ema_keep_rate)
        weak = [image.to(self.device, non_blocking=True) for image in batch["unlabeled_weak"]]
        strong = batch["unlabeled_strong"]
        if not weak:
            return [], []
        with torch.no_grad(), self._autocast():
            detections = self.teacher(weak)
        sizes = [tuple(image.shape[-2:]) for image in weak]
        targets = teacher_targets(
            detections, sizes, mean_teacher.score_threshold, mean_teacher.cover
        )
        targets = [{"boxes": t["boxes"].float(), "levels": t["levels"]} for t in targets]
        metrics["teacher_targets_per_image"] = sum(t["boxes"].shape[0] for t in targets) / len(
            targets
        )
        return list(strong), targets

    # ------------------------------------------------------------------- loop
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            self._stop_signal = signum

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def fit(self) -> TrainResult:
        """Run the remaining iterations; raises :class:`Interrupted` after saving on a signal."""
        config = self.config
        total = config.total_iterations
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            import json

            (self.out_dir / "config.json").write_text(
                json.dumps(config_to_dict(config), indent=2), encoding="utf-8"
            )
        writer = MetricsWriter(
            self.out_dir, len(config.model.cascade_ious), self.start_iteration, self.dist.is_main
        )
        writer.restore(self._metrics_pending)
        if writer.tensorboard_note and self.progress:
            print(f"hassod train: {writer.tensorboard_note}", file=sys.stderr)
        result = TrainResult(
            self.out_dir,
            self.start_iteration,
            self.start_iteration,
            None,
            data_report=self.labels.report,
        )
        loader = make_loader(
            self.batches,
            self.start_iteration,
            total,
            config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        bar = None
        if self.progress and self.dist.is_main:
            from hassod._progress import progress_bar

            bar = progress_bar(
                total=total,
                initial=self.start_iteration,
                unit="it",
                dynamic_ncols=True,
                desc="train",
            )
        previous = self._install_signal_handlers()
        started = time.perf_counter()
        iteration = self.start_iteration
        stop = False
        try:
            batches = iter(loader)
            while iteration < total:
                fetch = time.perf_counter()
                try:
                    batch = next(batches)
                except Exception:
                    if self._stop_signal is not None:  # workers died on the same Ctrl-C
                        break
                    raise
                data_seconds = time.perf_counter() - fetch
                for name, reason in batch.get("skipped", []):
                    self.skipped.setdefault(name, reason)
                step_start = time.perf_counter()
                metrics = self.step(iteration, batch)
                if self.nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
                    last = ckpt.last_checkpoint(self.out_dir / CHECKPOINT_DIR)
                    raise Diverged(
                        f"the run diverged: iterations {iteration + 1 - self.nonfinite_in_a_row}"
                        f"-{iteration} all had non-finite losses and were skipped; the last "
                        f"checkpoint is {last if last is not None else 'none'} (resume from it "
                        "with a lower learning rate, or check the pseudo-labels)"
                    )
                metrics["seconds_per_iteration"] = time.perf_counter() - step_start + data_seconds
                metrics["data_seconds"] = data_seconds
                # a signal may reach the processes in different iterations: all stop together
                metrics["stop_requested"] = float(self._stop_signal is not None)
                metrics = distributed.all_reduce_mean(metrics, self.dist, self.device)
                stop = metrics.pop("stop_requested") > 0
                if not result.first_losses:
                    result.first_losses = dict(metrics)
                result.last_losses = dict(metrics)
                writer.add(metrics)
                iteration += 1
                phase = "burn_in" if iteration <= config.iterations else "mean_teacher"
                if iteration % config.log_period == 0 or iteration in (config.iterations, total):
                    writer.write(iteration - 1, phase)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['total_loss']:.3f}",
                        lr=f"{metrics['lr']:.2g}",
                        refresh=False,
                    )
                if stop:
                    break
                if iteration % config.checkpoint_period == 0 and iteration < total:
                    result.checkpoint = self.save(iteration, metrics_pending=writer.pending())
            if stop or self._stop_signal is not None:
                result.checkpoint = self.save(iteration, metrics_pending=writer.pending())
                result.iterations_done = iteration
                result.seconds = time.perf_counter() - started
                result.skipped_images = dict(self.skipped)
                cause = self._stop_signal if self._stop_signal is not None else "to another process"
                raise Interrupted(
                    f"interrupted by signal {cause} after iteration {iteration}; "
                    f"saved {result.checkpoint}; run again with --resume to continue",
                    result,
                )
            result.checkpoint = self.save(iteration, "model_final.pth")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if bar is not None:
                bar.close()
            writer.close()
        result.iterations_done = iteration
        result.seconds = time.perf_counter() - started
        result.skipped_images = dict(self.skipped)
        return result

    def close(self) -> None:
        distributed.shutdown(self.dist)


def _resumed_config(stored: TrainConfig, requested: TrainConfig) -> TrainConfig:
    """On resume the stored settings win (what was trained does not change), except the I/O
    settings: checkpoint and log periods and the number of loader workers."""
    return dataclasses.replace(
        stored,
        checkpoint_period=requested.checkpoint_period,
        log_period=requested.log_period,
        data=dataclasses.replace(stored.data, num_workers=requested.data.num_workers),
    )


def dataset_changes(recorded: dict | None, current: dict) -> list[str]:
    """How the data of a resumed run (``current``, :attr:`PseudoLabels.source`) differ from
    those its checkpoint recorded: pseudo-labels of other content (compared by size and
    SHA-256, so a moved or renamed copy is the same), another image folder, another number of
    usable images. Empty for a checkpoint without the record (written before it existed)."""
    if not recorded or not current:
        return []

    def counts(source: dict) -> str:
        images = counted(source.get("images", 0), "image")
        return f"{images}, {counted(source.get('annotations', 0), 'annotation')}"

    changes = []
    content = ("pseudo_json_bytes", "pseudo_json_sha256")
    same_json = all(recorded.get(key) == current.get(key) for key in content)
    if not same_json:
        changes.append(
            f"pseudo-labels {current.get('pseudo_json')} ({counts(current)}) are not the "
            f"run's {recorded.get('pseudo_json')} ({counts(recorded)})"
        )
    if recorded.get("images_dir") != current.get("images_dir"):
        changes.append(
            f"image folder {current.get('images_dir')} (the run's: {recorded.get('images_dir')}; "
            "exact if it holds the same images)"
        )
    if same_json and recorded.get("images") != current.get("images"):
        found = counted(current.get("images", 0), "usable image")
        changes.append(f"{found} (the run's: {recorded.get('images')})")
    return changes


def check_run_folder(out_dir, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a new run), or ValueError when ``out_dir`` is a
    file or already holds a run that ``resume`` does not continue (a second run would replace
    its checkpoints and metrics)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the run")
    existing = ckpt.last_checkpoint(out_dir / CHECKPOINT_DIR)
    if existing is not None and not resume:
        raise ValueError(
            f"{out_dir} already holds a run (checkpoint {existing.name}): --resume continues "
            "it; choose another --out for a new run"
        )
    if existing is None and out_dir.is_dir():
        other = _foreign_entry(out_dir)
        if other is not None:  # a run would write its config.json and metrics.csv over theirs
            raise ValueError(
                f"--out {out_dir} holds files that are not a training run's (e.g. {other!r}); "
                "choose a new or empty folder for the run"
            )
    return existing if resume else None


# What a run's folder holds before its first checkpoint, with how each file begins.
_RUN_FILES = {"config.json": b'{\n  "model": {', "metrics.csv": b"iteration,phase,"}
_RUN_FOLDERS = (CHECKPOINT_DIR, "tensorboard")


def _foreign_entry(out_dir: Path) -> str | None:
    """The name of something in ``out_dir`` a run did not write, or None."""
    from hassod._io import foreign_file, is_leftover

    for entry in sorted(out_dir.iterdir()):
        if (entry.name in _RUN_FOLDERS and entry.is_dir()) or is_leftover(entry.name):
            continue
        signature = _RUN_FILES.get(entry.name)
        if signature is None or not entry.is_file() or foreign_file(entry, (signature,)):
            return entry.name
    return None


def train(
    config: TrainConfig,
    pseudo_json: str | os.PathLike,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    **options: Any,
) -> TrainResult:
    """Train the detector on a pseudo-label JSON. ``options`` are :class:`Trainer`'s keywords
    (``backbone_weights``, ``resume``, ``init_from``, ``device``, ``progress``,
    ``distributed_mode``).

    Returns a :class:`TrainResult`; raises TypeError / ValueError for a bad setting (naming
    it), :class:`hassod.detector.data.DataError` for unusable input, :class:`Interrupted`
    (after saving) on SIGINT/SIGTERM and :class:`Diverged` after ``MAX_NONFINITE_STEPS``
    steps in a row skipped for a non-finite loss.
    """
    check_config(config)  # a NaN LR or a zero log period would fail only after training
    check_run_folder(out_dir, options.get("resume", False))  # before reading a large JSON
    labels = load_pseudo_labels(pseudo_json, image_root)
    trainer = Trainer(config, labels, out_dir, **options)
    try:
        return trainer.fit()
    finally:
        trainer.close()
