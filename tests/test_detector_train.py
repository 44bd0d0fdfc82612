"""Training: schedules, EMA, teacher targets, overfitting a tiny set, exact resume,
interrupts, logs, the DDP code path (gloo, world size 1) and the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from detector_checks import states_equal, tiny_config

import hassod
from hassod.detector import checkpoint as ckpt
from hassod.detector import distributed, schedule
from hassod.detector.data import load_pseudo_labels
from hassod.detector.mean_teacher import ema_update, teacher_targets
from hassod.detector.synthetic import write_dataset
from hassod.detector.training import Interrupted, Trainer, train


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synthetic"), count=4, size=96, seed=7)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


# ------------------------------------------------------------------------------- schedules
def test_learning_rate_warmup_constant_then_cosine():
    config = dataclasses.replace(
        tiny_config(iterations=100, mean_teacher=40), warmup_iters=10, warmup_factor=0.001
    )
    base = config.base_lr
    assert schedule.learning_rate(0, config) == pytest.approx(base * 0.001)
    assert schedule.learning_rate(5, config) == pytest.approx(base * (0.001 * 0.5 + 0.5))
    assert schedule.learning_rate(10, config) == base
    assert schedule.learning_rate(99, config) == base
    # Mean Teacher phase: cosine from base at t = 0 through base/2 at T/2 to 0 at T
    assert schedule.learning_rate(100, config) == base
    assert schedule.learning_rate(120, config) == pytest.approx(base / 2, abs=1e-15)
    assert schedule.learning_rate(140, config) == 0.0


def test_mean_teacher_warmup_follows_detectron2s_warmup_cosine():
    config = tiny_config(iterations=100, mean_teacher=40)
    config = dataclasses.replace(
        config,
        warmup_factor=0.001,
        mean_teacher=dataclasses.replace(config.mean_teacher, warmup_iters=20),
    )
    base = config.base_lr
    # linear from 0.001 * base to the cosine's value at t = 20 (base / 2), then the cosine
    assert schedule.learning_rate(100, config) == pytest.approx(base * 0.001)
    assert schedule.learning_rate(110, config) == pytest.approx(base * (0.001 + 0.499 / 2))
    assert schedule.learning_rate(120, config) == pytest.approx(base / 2)
    assert schedule.learning_rate(130, config) == pytest.approx(
        base * (1 + math.cos(0.75 * math.pi)) / 2
    )
    assert schedule.learning_rate(140, config) == 0.0
    assert schedule.branch_weights(100, config) == (1.0, 2.0)  # the weights do not warm up
    # a warm-up longer than the phase is cut to it: linear from 0.001 * base to c(40) = 0
    longer = dataclasses.replace(
        config, mean_teacher=dataclasses.replace(config.mean_teacher, warmup_iters=60)
    )
    assert schedule.learning_rate(120, longer) == pytest.approx(base * 0.001 * (1 - 20 / 40))
    assert schedule.learning_rate(130, longer) == pytest.approx(base * 0.001 * (1 - 30 / 40))
    # c(t) is clamped to [0, 1] outside [0, total]
    assert schedule.cosine_factor(-5, 40) == 1.0 and schedule.cosine_factor(50, 40) == 0.0


def test_branch_weights_cosine_schedule():
    config = tiny_config(iterations=100, mean_teacher=40)
    assert schedule.branch_weights(50, config) == (1.0, 0.0)
    assert schedule.branch_weights(100, config) == (1.0, 2.0)
    pseudo, teacher = schedule.branch_weights(120, config)
    assert pseudo == pytest.approx(0.5, abs=1e-15) and teacher == pytest.approx(2.5, abs=1e-15)
    assert schedule.branch_weights(140, config) == (0.0, 3.0)
    for t in range(41):
        pseudo, teacher = schedule.branch_weights(100 + t, config)
        assert pseudo + teacher == pytest.approx(3.0)


# ------------------------------------------------------------------------------------- EMA
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    teacher, student = _Tiny(), _Tiny()
    student.norm.running_mean.fill_(0.7)
    student.norm.num_batches_tracked.fill_(5)
    before = {k: v.clone().numpy() for k, v in teacher.state_dict().items()}
    keep = 0.9996
    ema_update(teacher, student, keep)
    for name, value in teacher.state_dict().items():
        source = student.state_dict()[name].numpy()
        if value.is_floating_point():
            expected = before[name] * np.float32(keep) + source * np.float32(1.0 - keep)
            assert np.array_equal(value.numpy(), expected.astype(np.float32)), name
        else:
            assert np.array_equal(value.numpy(), source), name
    ema_update(teacher, student, 0.0)
    assert states_equal(teacher.state_dict(), student.state_dict())


# -------------------------------------------------------------------------- teacher targets
def test_teacher_targets_threshold_and_recompute_levels():
    probs = torch.ones((4, 1, 28, 28))
    boxes = torch.tensor(
        [
            [0.0, 0.0, 40.0, 40.0],
            [5.0, 5.0, 20.0, 20.0],
            [50.0, 50.0, 60.0, 60.0],
            [8.0, 8.0, 14.0, 14.0],
        ]
    )
    detection = {
        "boxes": boxes,
        "scores": torch.tensor([0.95, 0.8, 0.6, 0.75]),
        "mask_probs": probs,
    }
    (target,) = teacher_targets([detection], [(64, 64)], score_threshold=0.7, cover=0.75)
    assert set(target) == {"boxes", "levels", "scores"}  # no masks: no mask loss
    assert target["boxes"].tolist() == boxes[[0, 1, 3]].tolist()
    # expected levels from the coverage forest of the pasted masks at cover 0.75: all-ones
    # masks cover the pixels whose centres lie inside their boxes (Detectron2's paste)
    masks = np.zeros((3, 64, 64), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes[[0, 1, 3]].int().tolist()):
        mask[y0:y1, x0:x1] = True
    expected = hassod.build_hierarchy(masks, cover=0.75).level
    assert target["levels"].tolist() == list(expected) == [0, 1, 2]
    (empty,) = teacher_targets([detection], [(64, 64)], score_threshold=0.99)
    assert empty["boxes"].shape == (0, 4) and empty["levels"].shape == (0,)


def test_teacher_targets_drop_empty_boxes_and_keep_the_rpn_loss_finite():
    """A box clipped to zero width or height is no target (Detectron2 drops empty annotation
    boxes): kept, it would make every anchor positive with an infinite RPN box loss."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 40.0, 40.0],
            [63.0, 5.0, 63.0, 20.0],  # zero width: clipped at the right border
            [5.0, 30.0, 20.0, 30.0],  # zero height
            [5.0, 5.0, 20.0, 20.0],
        ]
    )
    detection = {
        "boxes": boxes,
        "scores": torch.full((4,), 0.9),
        "mask_probs": torch.ones(4, 1, 28, 28),
    }
    (target,) = teacher_targets([detection], [(64, 64)], score_threshold=0.7, cover=0.75)
    assert target["boxes"].tolist() == boxes[[0, 3]].tolist()
    assert target["scores"].shape == (2,) and target["levels"].tolist() == [0, 1]

    model = hassod.detector.build_detector(tiny_config().model)
    model.train()
    torch.manual_seed(0)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)]
    degenerate = [{"boxes": boxes[1:2], "levels": torch.zeros(1, dtype=torch.int64)}]
    assert not math.isfinite(model(images, degenerate)["loss_rpn_box"].item())  # the hazard
    kept = [{"boxes": target["boxes"], "levels": target["levels"]}]
    assert all(math.isfinite(value.item()) for value in model(images, kept).values())


@pytest.mark.parametrize("low", [0.0, 0.4])
def test_teacher_detections_with_empty_masks_stay_as_whole_objects(low):
    # the authors keep every detection above the threshold; an empty mask is a root (level 0)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [5.0, 5.0, 20.0, 20.0], [2.0, 2.0, 9.0, 9.0]])
    probs = torch.ones((3, 1, 28, 28))
    probs[2] = low  # nothing at or above 0.5: empty pasted mask
    detection = {"boxes": boxes, "scores": torch.tensor([0.9, 0.9, 0.9]), "mask_probs": probs}
    (target,) = teacher_targets([detection], [(64, 64)], score_threshold=0.7, cover=0.75)
    assert target["boxes"].tolist() == boxes.tolist()
    assert target["levels"].tolist() == [0, 1, 0]


@pytest.mark.parametrize(("cover", "levels"), [(0.75, [0, 1]), (0.9, [0, 0])])
def test_teacher_target_levels_use_the_cover_given(cover, levels):
    """The levels come from the forest at ``cover`` (0.75 for the teacher, DESIGN.md 5), not
    the pseudo-labels' 0.9: a 10 x 20 box with 16 of its 20 rows inside a 20 x 20 one has
    coverage 0.8, a part at 0.75 and a whole at 0.9."""
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 4.0, 10.0, 24.0]])
    detection = {
        "boxes": boxes,
        "scores": torch.tensor([0.9, 0.9]),
        "mask_probs": torch.ones(2, 1, 28, 28),
    }
    (target,) = teacher_targets([detection], [(40, 40)], score_threshold=0.7, cover=cover)
    masks = np.zeros((2, 40, 40), dtype=bool)
    masks[0, 0:20, 0:20] = True
    masks[1, 4:24, 0:10] = True
    assert target["levels"].tolist() == levels
    assert target["levels"].tolist() == list(hassod.build_hierarchy(masks, cover=cover).level)


def test_hierarchy_levels_of_a_batch_equal_each_image_alone():
    from hassod.detector.mean_teacher import hierarchy_levels

    rng = np.random.default_rng(0)
    stacks = []
    for count in (0, 5, 12):
        masks = np.zeros((count, 40, 50), dtype=bool)
        for mask in masks:
            y0, x0 = rng.integers(0, 30), rng.integers(0, 40)
            mask[y0 : y0 + rng.integers(1, 20), x0 : x0 + rng.integers(1, 20)] = True
        stacks.append(torch.from_numpy(masks))
    levels = hierarchy_levels(stacks, 0.75)
    assert [lv.dtype for lv in levels] == [torch.int64] * 3
    for stack, got in zip(stacks, levels):
        expected = hassod.build_hierarchy(stack.numpy(), cover=0.75).level
        assert got.tolist() == [int(v) for v in expected]
    if torch.cuda.is_available():  # the GPU pass gives the same levels, on the device
        on_gpu = hierarchy_levels([stack.cuda() for stack in stacks], 0.75)
        assert all(g.is_cuda and g.cpu().tolist() == c.tolist() for g, c in zip(on_gpu, levels))


def test_gradients_are_clipped_per_parameter():
    from hassod.detector.training import clip_gradients_per_parameter

    big = torch.nn.Parameter(torch.zeros(2))
    small = torch.nn.Parameter(torch.zeros(2))
    big.grad = torch.tensor([3.0, 4.0])  # norm 5: scaled to norm 1
    small.grad = torch.tensor([0.3, 0.4])  # norm 0.5: untouched (a global clip would shrink it)
    total = clip_gradients_per_parameter([big, small], 1.0)
    assert total.item() == pytest.approx(math.hypot(5.0, 0.5), rel=1e-6)
    assert big.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    assert small.grad.tolist() == pytest.approx([0.3, 0.4], rel=1e-6)
    big.grad = torch.tensor([3.0, 4.0])
    clip_gradients_per_parameter([big], 0.0)  # 0: no clipping
    assert big.grad.tolist() == [3.0, 4.0]


# --------------------------------------------------------------------------------- training
def _trainer(synthetic, out_dir, config, **options):
    labels = load_pseudo_labels(*synthetic)
    return Trainer(config, labels, out_dir, progress=False, device="cpu", **options)


def test_overfit_thirty_iterations_lowers_the_loss(synthetic, tmp_path):
    config = dataclasses.replace(tiny_config(iterations=30, size=96, augment=False), warmup_iters=3)
    trainer = _trainer(synthetic, tmp_path, config)
    losses = [trainer.step(i, trainer.batches[i])["total_loss"] for i in range(30)]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    print(
        f"overfit: mean total loss of the first 4 iterations {first:.3f}, of the last 4 {last:.3f}"
    )
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.7 * first


@pytest.mark.parametrize(("pattern", "diverges"), [("nnn", True), ("nnfnnfnn", False)])
def test_a_run_of_non_finite_losses_stops_training(
    synthetic, tmp_path, monkeypatch, pattern, diverges
):
    """Steps with a non-finite loss are skipped; MAX_NONFINITE_STEPS of them in a row stop the
    run (Diverged, naming the iterations) instead of going on without learning."""
    import hassod.detector.training as training

    monkeypatch.setattr(training, "MAX_NONFINITE_STEPS", 3)
    config = tiny_config(iterations=len(pattern))
    trainer = _trainer(synthetic, tmp_path, config)
    branches = trainer.wrapped
    calls = iter(pattern)

    def losses(*args, **kwargs):
        pseudo, taught = branches(*args, **kwargs)
        if next(calls) == "n":
            name = next(iter(pseudo))
            pseudo = {**pseudo, name: pseudo[name] * float("nan")}
        return pseudo, taught

    monkeypatch.setattr(trainer, "wrapped", losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if diverges:
            with pytest.raises(training.Diverged, match="iterations 0-2 all had non-finite"):
                trainer.fit()
        else:
            assert trainer.fit().iterations_done == len(pattern)
    trainer.close()


def test_a_new_run_refuses_a_folder_of_other_files(synthetic, tmp_path):
    """A user's folder (their own config.json and metrics.csv, or the image folder) is not
    overwritten; a run's folder from before its first checkpoint is reused."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.csv").write_text("epoch,accuracy\n1,0.5\n")
    with pytest.raises(ValueError, match=r"holds files that are not a training run's \(e\.g\. "):
        _trainer(synthetic, mine, tiny_config(iterations=1))
    with pytest.raises(ValueError, match="not a training run's"):
        _trainer(synthetic, synthetic[1], tiny_config(iterations=1))  # the images folder
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    run = tmp_path / "run"
    trainer = _trainer(synthetic, run, tiny_config(iterations=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    trainer.close()
    shutil.rmtree(run / "checkpoints")  # as if stopped before its first checkpoint
    assert {"config.json", "metrics.csv"} <= {path.name for path in run.iterdir()}
    _trainer(synthetic, run, tiny_config(iterations=1)).close()  # its own files: accepted


def test_micro_batches_accumulate_one_step(synthetic, tmp_path):
    config = dataclasses.replace(tiny_config(iterations=2, mean_teacher=1), micro_batch=1)
    trainer = _trainer(synthetic, tmp_path, config)
    for iteration in range(3):
        metrics = trainer.step(iteration, trainer.batches[iteration])
        assert math.isfinite(metrics["total_loss"]) and metrics["grad_norm"] > 0
    assert "teacher_loss_cls_stage2" in metrics


def _run_to_end(synthetic, out_dir, config, resume=False):
    trainer = _trainer(synthetic, out_dir, config, resume=resume)
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def test_resume_reproduces_training_bit_for_bit(synthetic, tmp_path):
    config = dataclasses.replace(tiny_config(iterations=2, mean_teacher=2), checkpoint_period=3)
    full_trainer, full = _run_to_end(synthetic, tmp_path / "full", config)
    assert full.iterations_done == 4
    # a second run that stopped after iteration 3 (one Mean Teacher step) and resumes
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    stopped = tmp_path / "resumed" / "checkpoints" / "iter_0000003.pth"
    shutil.copy(tmp_path / "full" / "checkpoints" / "iter_0000003.pth", stopped)
    ckpt.mark_last(stopped.parent, stopped)
    resumed_trainer, resumed = _run_to_end(synthetic, tmp_path / "resumed", config, resume=True)
    assert resumed.start_iteration == 3 and resumed.iterations_done == 4
    assert resumed.last_losses["total_loss"] == full.last_losses["total_loss"]
    assert states_equal(resumed_trainer.model.state_dict(), full_trainer.model.state_dict())
    assert states_equal(resumed_trainer.teacher.state_dict(), full_trainer.teacher.state_dict())
    final = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "model_final.pth")
    assert final["iteration"] == 4 and final["teacher"] is not None
    rows = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [int(row["iteration"]) for row in rows] == [3]
    # the row's period began before the stop: it averages iterations 3 and 4, as the full run's
    full_rows = list(csv.DictReader((tmp_path / "full" / "metrics.csv").open()))
    assert [int(row["iteration"]) for row in full_rows] == [1, 3]
    for column in ("total_loss", "lr", "teacher_weight", "loss_mask", "teacher_loss_rpn_cls"):
        assert rows[0][column] == full_rows[1][column], column
    # a run folder given where a checkpoint file belongs: the message names its newest one
    for folder in (tmp_path / "resumed", tmp_path / "resumed" / "checkpoints"):
        with pytest.raises(FileNotFoundError, match=r"is a folder, not a file \(the run's newest"):
            ckpt.load_checkpoint(folder)


def test_each_process_resumes_its_own_rng_stream(synthetic, tmp_path, monkeypatch):
    config = tiny_config(iterations=2)
    trainer, result = _run_to_end(synthetic, tmp_path, config)
    payload = ckpt.load_checkpoint(result.checkpoint)
    assert len(payload["rng_per_rank"]) == 1
    # a checkpoint of two processes: rank 1 must get rank 1's torch RNG state back
    states = [ckpt.rng_state() for _ in range(2)]
    states[1]["torch"] = torch.Generator().manual_seed(123).get_state()
    ckpt.save_checkpoint(
        result.checkpoint,
        config=trainer.config,
        iteration=1,
        model=trainer.model,
        optimizer=trainer.optimizer,
        rng_per_rank=states,
    )
    monkeypatch.setattr(
        distributed,
        "init_distributed",
        lambda *args: distributed.DistInfo(rank=1, world_size=2, local_rank=1),
    )
    _trainer(synthetic, tmp_path, config, resume=True)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    monkeypatch.setattr(distributed, "init_distributed", lambda *args: distributed.DistInfo())
    with pytest.warns(UserWarning, match="not bit-for-bit"):
        _trainer(synthetic, tmp_path, config, resume=True)


def test_mean_teacher_phase_copies_then_averages_the_student(synthetic, tmp_path):
    config = tiny_config(iterations=1, mean_teacher=2)
    trainer = _trainer(synthetic, tmp_path, config)
    trainer.step(0, trainer.batches[0])
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.step(1, trainer.batches[1])
    assert states_equal(trainer.teacher.state_dict(), student_before)  # copied at phase start
    assert (metrics["pseudo_weight"], metrics["teacher_weight"]) == (1.0, 2.0)
    assert "teacher_loss_rpn_cls" in metrics and "teacher_loss_mask" not in metrics
    assert "teacher_targets_per_image" in metrics
    student_now = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.step(2, trainer.batches[2])
    keep = config.mean_teacher.ema_keep_rate
    name = "roi_heads.box_predictors.0.level_score.weight"
    expected = teacher_before[name] * keep + student_now[name] * (1.0 - keep)
    assert torch.equal(trainer.teacher.state_dict()[name], expected)


def test_mean_teacher_starts_from_a_burn_in_checkpoint(synthetic, tmp_path, capsys):
    from hassod.cli import main

    burn_in = tiny_config(iterations=2)
    burn_trainer, burned = _run_to_end(synthetic, tmp_path / "burn", burn_in)
    assert burned.checkpoint.name == "model_final.pth"
    # Mean Teacher alone (0 burn-in iterations), from the burn-in student; a different model
    # section in the requested settings is replaced by the checkpoint's architecture
    requested = tiny_config(iterations=0, mean_teacher=1)
    requested = dataclasses.replace(
        requested, model=dataclasses.replace(requested.model, box_head_dim=8)
    )
    trainer = _trainer(synthetic, tmp_path / "mt", requested, init_from=burned.checkpoint)
    assert trainer.config.model == burn_trainer.config.model
    assert states_equal(trainer.model.state_dict(), burn_trainer.model.state_dict())
    assert trainer.start_iteration == 0 and trainer.teacher is None
    trainer.step(0, trainer.batches[0])
    assert states_equal(trainer.teacher.state_dict(), burn_trainer.model.state_dict())
    with pytest.raises(ValueError, match="exclude each other"):
        _trainer(
            synthetic,
            tmp_path / "x",
            requested,
            init_from=burned.checkpoint,
            backbone_weights=burned.checkpoint,
        )
    # CLI: --init-from; re-running with --resume continues the run's own checkpoint instead
    json_path, images = synthetic
    out = tmp_path / "cli"
    command = [
        "train",
        str(json_path),
        str(images),
        "--out",
        str(out),
        "--preset",
        "cpu-small",
        "--quiet",
        "--device",
        "cpu",
        "--iterations",
        "0",
        "--mean-teacher-iterations",
        "1",
        "--init-from",
        str(burned.checkpoint),
    ]
    assert main(command) == 0
    final = ckpt.load_checkpoint(out / "checkpoints" / "model_final.pth")
    assert final["iteration"] == 1 and final["teacher"] is not None
    assert main([*command, "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    missing = ["--init-from", str(tmp_path / "none.pth")]
    fresh = [*command[:-2], *missing]
    fresh[fresh.index(str(out))] = str(tmp_path / "fresh")
    assert main(fresh) == 2
    assert "none.pth" in capsys.readouterr().err


def test_teacher_targets_train_the_student_branch(synthetic, tmp_path):
    config = dataclasses.replace(
        tiny_config(iterations=0, mean_teacher=1),
        mean_teacher=dataclasses.replace(
            tiny_config().mean_teacher,
            iterations=1,
            score_threshold=0.0,  # every detection of the untrained teacher
            labeled_batch=1,
            unlabeled_batch=2,
        ),
    )
    trainer = _trainer(synthetic, tmp_path, config)
    metrics = trainer.step(0, trainer.batches[0])
    assert metrics["teacher_targets_per_image"] > 0
    assert metrics["teacher_loss_level_stage0"] > 0
    assert math.isfinite(metrics["total_loss"])


def test_teacher_skipping_low_scores_gives_the_same_targets(synthetic, tmp_path):
    """The teacher produces no detections at or below the pseudo-label score: the targets
    above it (boxes, scores, levels from the pasted masks) are those of the full teacher."""
    import copy

    from hassod.detector.mean_teacher import skip_detections_below

    trainer = _trainer(synthetic, tmp_path, tiny_config(iterations=1))
    full = copy.deepcopy(trainer.model).eval()
    images = [image.float() for image in trainer.batches[0]["images"]]
    with torch.no_grad():
        detections = full(images)
    scores = torch.cat([d["scores"] for d in detections])
    assert scores.numel() > 4
    threshold = float(scores.median())  # about half of the detections go
    skipping = copy.deepcopy(full)
    skip_detections_below(skipping, threshold)
    assert skipping.roi_heads.config.score_thresh == threshold
    with torch.no_grad():
        fewer = skipping(images)
    sizes = [tuple(image.shape[-2:]) for image in images]
    expected = teacher_targets(detections, sizes, score_threshold=threshold)
    got = teacher_targets(fewer, sizes, score_threshold=threshold)
    assert sum(d["boxes"].shape[0] for d in fewer) < scores.numel()
    for ours, theirs in zip(got, expected):
        assert ours["boxes"].shape[0] == theirs["boxes"].shape[0]
        torch.testing.assert_close(ours["boxes"], theirs["boxes"])
        torch.testing.assert_close(ours["scores"], theirs["scores"])
        assert torch.equal(ours["levels"], theirs["levels"])
    skip_detections_below(skipping, -1.0)  # never lowers the model's own threshold
    assert skipping.roi_heads.config.score_thresh == threshold


def test_interrupt_saves_a_checkpoint(synthetic, tmp_path):
    config = dataclasses.replace(tiny_config(iterations=5), checkpoint_period=100)
    trainer = _trainer(synthetic, tmp_path, config)
    original_step = trainer.step

    def step_then_signal(iteration, batch):
        metrics = original_step(iteration, batch)
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    trainer.step = step_then_signal
    with pytest.raises(Interrupted) as caught:
        trainer.fit()
    assert caught.value.result.iterations_done == 2
    path = ckpt.last_checkpoint(tmp_path / "checkpoints")
    assert path is not None and ckpt.load_checkpoint(path)["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_to_the_whole_process_group_saves_a_checkpoint(synthetic, tmp_path):
    """A scheduler's SIGTERM reaches the loader workers too: they must outlive it, or torch
    raises in the training process wherever it is and the checkpoint is lost."""
    import subprocess
    import sys
    import time

    json_path, images = synthetic
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hassod", "train", str(json_path), str(images)]
    command += ["--out", str(out), "--preset", "cpu-small", "--quiet", "--device", "cpu"]
    command += ["--iterations", "100000", "--workers", "2", "--batch-size", "2"]
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.csv"
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 1):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # the training process and its loader workers
        _, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, errors
    assert "interrupted by signal" in errors
    assert ckpt.load_checkpoint(ckpt.last_checkpoint(out / "checkpoints"))["iteration"] >= 1


def test_ddp_code_path_with_one_gloo_process(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    config = tiny_config(iterations=2)
    trainer = _trainer(synthetic, tmp_path, config, distributed_mode=True)
    try:
        assert isinstance(trainer.wrapped, torch.nn.parallel.DistributedDataParallel)
        result = trainer.fit()
    finally:
        trainer.close()
    assert not torch.distributed.is_initialized()
    assert result.iterations_done == 2 and result.checkpoint.name == "model_final.pth"


def test_mean_teacher_starts_without_burn_in_momentum(synthetic, tmp_path):
    """At the phase switch the SGD momentum is dropped (the authors' Mean Teacher is a new run
    that loads only the weights): the first Mean Teacher step's momentum buffer is that step's
    own gradient plus weight decay, as a fresh optimizer's is."""
    config = tiny_config(iterations=2, mean_teacher=1)
    trainer = _trainer(synthetic, tmp_path, config)
    for iteration in range(2):
        trainer.step(iteration, trainer.batches[iteration])
    assert trainer.optimizer.state  # burn-in's momentum
    before = {
        p: p.detach().clone() for group in trainer.optimizer.param_groups for p in group["params"]
    }
    metrics = trainer.step(2, trainer.batches[2])
    assert math.isfinite(metrics["total_loss"])
    checked = 0
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            expected = p.grad + group["weight_decay"] * before[p]
            buffer = trainer.optimizer.state[p]["momentum_buffer"]
            torch.testing.assert_close(buffer, expected, rtol=1e-6, atol=1e-8)
            checked += 1
    assert checked > 10


def test_weight_decay_spares_only_the_normalisation_parameters():
    """SGD's two groups: every trainable parameter of a normalisation layer with
    ``weight_decay_norm`` (0, Detectron2's default), all others with ``weight_decay``."""
    from hassod.detector.model import HassodDetector
    from hassod.detector.training import _parameter_groups

    config = tiny_config()
    model = HassodDetector(config.model, "gn")
    norm_types = (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm)
    norm = {
        id(p)
        for m in model.modules()
        if isinstance(m, norm_types)
        for p in m.parameters(recurse=False)
        if p.requires_grad
    }
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    others, norms = _parameter_groups(model, config)
    assert norm and config.weight_decay > 0 and config.weight_decay_norm == 0.0
    assert others["weight_decay"] == config.weight_decay
    assert norms["weight_decay"] == config.weight_decay_norm
    assert {id(p) for p in norms["params"]} == norm
    assert {id(p) for p in others["params"]} == trainable - norm


def test_chunks_split_evenly_in_order():
    from hassod.detector.training import _chunks

    rng = np.random.default_rng(0)
    for _ in range(200):
        count, parts = int(rng.integers(0, 20)), int(rng.integers(1, 8))
        items = list(range(count))
        pieces = _chunks(items, parts)
        assert len(pieces) == parts and sum(pieces, []) == items
        sizes = [len(piece) for piece in pieces]
        assert max(sizes) - min(sizes) <= 1
        assert count < parts or min(sizes) > 0


def test_ddp_micro_batches_sync_once_and_survive_more_teacher_images(
    synthetic, tmp_path, monkeypatch
):
    """Mean Teacher under DDP with micro-batches: 2 labeled images (4 views) and 6 teacher
    images in 3 parts. Every part trains the pseudo-label branch (a part without one left the
    mask head's gradients missing and DDP raised on the next step), and gradients are
    all-reduced once per step, in the last part (forward and backward of the others run under
    no_sync)."""
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    config = tiny_config(iterations=0, mean_teacher=2)
    teacher = dataclasses.replace(
        config.mean_teacher, labeled_batch=2, unlabeled_batch=6, score_threshold=0.0
    )
    config = dataclasses.replace(config, micro_batch=2, mean_teacher=teacher)
    trainer = _trainer(synthetic, tmp_path, config, distributed_mode=True)
    reduced_in, current = [], {}

    def count_reductions(state, bucket):
        reduced_in.append(current["last"])
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    accumulating = trainer._accumulating

    def tracing(last):
        current["last"] = last
        return accumulating(last)

    try:
        trainer.wrapped.register_comm_hook(None, count_reductions)
        trainer._accumulating = tracing
        for iteration in range(2):
            metrics = trainer.step(iteration, trainer.batches[iteration])
            assert math.isfinite(metrics["total_loss"])
    finally:
        trainer.close()
    assert reduced_in and all(reduced_in)  # never inside an earlier part


def test_train_function_writes_logs_and_final_checkpoint(synthetic, tmp_path):
    config = dataclasses.replace(tiny_config(iterations=3), amp=True)  # AMP is ignored on CPU
    result = train(config, *synthetic, tmp_path, device="cpu", progress=False)
    assert result.checkpoint == tmp_path / "checkpoints" / "model_final.pth"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(row["iteration"]) for row in rows] == [1, 2]
    assert all(float(row["loss_mask"]) > 0 for row in rows)
    assert (tmp_path / "config.json").is_file()
    payload = ckpt.load_checkpoint(result.checkpoint)
    assert payload["config"].model.norm == "gn" and payload["teacher"] is None


def test_train_cli_exit_codes(synthetic, tmp_path, capsys):
    from hassod.cli import main

    json_path, images = synthetic
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": []}')
    quiet = ["--preset", "cpu-small", "--quiet", "--device", "cpu"]
    assert main(["train", str(bad), str(images), "--out", str(tmp_path / "a"), *quiet]) == 2
    assert "no 'images' list" in capsys.readouterr().err
    short = "--iterations 1 --mean-teacher-iterations 1 --batch-size 2".split()
    out = tmp_path / "c"
    command = ["train", str(json_path), str(images), "--out", str(out), *short, *quiet]
    # --resume on an empty folder starts the run (one command for a restartable job)
    assert main([*command, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "model_final.pth" in captured.out and "starting a new run" in captured.err
    assert ckpt.load_checkpoint(out / "checkpoints" / "model_final.pth")["teacher"] is not None
    # without --resume, the finished run is not overwritten
    assert main(command) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*command, "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:  # refused before the data load
        main([*command[:4], str(tmp_path / "file"), *command[5:]])
    assert exit_info.value.code == 2
    assert f"--out {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_only_rank_zero_reports_the_training_summary():
    from hassod.detector.cli import is_main_process

    assert is_main_process({})
    assert is_main_process({"RANK": "0"})
    assert not is_main_process({"RANK": "1"})


def test_cuda_rng_state_is_this_devices_only_and_old_lists_resume(monkeypatch):
    """A checkpoint keeps the current device's CUDA RNG state, so a resume that sees fewer
    GPUs works; checkpoints holding every device's state restore the current device's."""
    from hassod.detector import checkpoint as ckpt

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.full((4,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.append(state))
    state = ckpt.rng_state()
    assert torch.equal(state["cuda"], torch.full((4,), 7, dtype=torch.uint8))
    ckpt.set_rng_state(state)
    assert torch.equal(restored[-1], state["cuda"])
    old = dict(state, cuda=[torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)])
    for device, expected in ((1, 1), (3, 0)):  # device 3: saved where fewer were visible
        monkeypatch.setattr(torch.cuda, "current_device", lambda d=device: d)
        ckpt.set_rng_state(old)
        assert torch.equal(restored[-1], torch.full((4,), expected, dtype=torch.uint8))


def _all_true_in_process(rank: int, init_file: str, flags: list, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        info = distributed.DistInfo(rank=rank, world_size=2, local_rank=rank, enabled=True)
        results[rank] = distributed.all_true(flags[rank], info, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("flags", [[True, False], [True, True]])
def test_skipping_a_step_is_decided_by_every_process(tmp_path, flags):
    """all_true over two processes (gloo): one non-finite loss makes both skip."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _all_true_in_process,
            args=(str(tmp_path / "init"), flags, results),
            nprocs=2,
            join=True,
        )
        assert dict(results) == {0: all(flags), 1: all(flags)}
    single = distributed.DistInfo()
    assert distributed.all_true(False, single, "cpu") is False


def test_a_damaged_checkpoint_is_named_and_explained(tmp_path):
    damaged = tmp_path / "bad.pth"
    damaged.write_bytes(os.urandom(256))
    message = r"cannot read checkpoint .*bad.pth: not a checkpoint, or damaged"
    with pytest.raises(ValueError, match=message):
        ckpt.load_checkpoint(damaged)


def test_a_rank_that_sees_one_gpu_uses_it():
    from hassod.detector.training import rank_gpu

    assert rank_gpu(3, 8) == 3
    assert rank_gpu(3, 1) == 0  # CUDA_VISIBLE_DEVICES gave this process its own GPU


def test_package_exports_the_train_function_not_a_module():
    """`from hassod.detector import train` (README) gives the function, whatever was imported
    before (a submodule of that name used to shadow it)."""
    import hassod.detector.training  # noqa: F401  (imported first on purpose)
    from hassod.detector import Predictor, cpu_small_config, filter_levels, paper_config, train

    assert callable(train) and train.__name__ == "train" and train.__module__.endswith("training")
    assert callable(Predictor) and callable(filter_levels)
    assert paper_config().iterations > cpu_small_config().iterations


def test_resuming_a_finished_run_says_so(synthetic, tmp_path, capsys):
    from hassod.cli import main

    json_path, images = synthetic
    run = ["train", str(json_path), str(images), "--out", str(tmp_path / "run")]
    options = "--preset cpu-small --quiet --device cpu --iterations 1 --batch-size 2".split()
    options += ["--mean-teacher-iterations", "0"]
    assert main([*run, *options]) == 0
    assert "trained iterations 0..1" in capsys.readouterr().out
    assert main([*run, "--resume", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "finished its 1 iteration;" in out and "nan" not in out


def test_checkpoints_from_before_grouping_resume_ungrouped(tmp_path):
    """A stored config without data.aspect_ratio_grouping was trained without it."""
    config = tiny_config(iterations=1)
    model = torch.nn.Linear(2, 2)
    path = ckpt.save_checkpoint(tmp_path / "new.pth", config=config, iteration=1, model=model)
    assert ckpt.load_checkpoint(path)["config"].data.aspect_ratio_grouping is True
    payload = torch.load(path, weights_only=True)
    del payload["config"]["data"]["aspect_ratio_grouping"]
    torch.save(payload, tmp_path / "old.pth")
    assert ckpt.load_checkpoint(tmp_path / "old.pth")["config"].data.aspect_ratio_grouping is False


def test_a_second_run_into_a_finished_run_folder_is_refused(synthetic, tmp_path):
    """Without --resume it would replace the run's checkpoints and metrics."""
    config = tiny_config(iterations=1)
    trainer = _trainer(synthetic, tmp_path / "run", config)
    try:
        trainer.fit()
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="already holds a run .*--resume continues it"):
        _trainer(synthetic, tmp_path / "run", config)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        _trainer(synthetic, tmp_path / "file", config)


def test_config_json_is_laid_over_the_preset(tmp_path, capsys):
    from hassod.cli import build_parser
    from hassod.detector.cli import _train_config
    from hassod.detector.config import config_to_dict, cpu_small_config

    def config_of(*options: str):
        parser = build_parser()
        args = parser.parse_args(["train", "p.json", "images", "--out", "o", *options])
        return _train_config(args, parser)[0]

    settings = tmp_path / "settings.json"
    settings.write_text('{"model": {"backbone": "resnet18"}, "batch_size": 3}')
    small = cpu_small_config()
    expected = dataclasses.replace(
        small, batch_size=3, model=dataclasses.replace(small.model, backbone="resnet18")
    )
    assert config_of("--preset", "cpu-small", "--config", str(settings)) == expected
    # a whole config.json gives its settings whatever the preset; options still apply on top
    settings.write_text(json.dumps(config_to_dict(small)))
    assert config_of("--config", str(settings)) == small
    assert config_of("--config", str(settings), "--batch-size", "3").batch_size == 3
    for text, message in (("[1]", "no JSON object"), ('{"model": {"bakbone": 1}}', "bakbone")):
        settings.write_text(text)
        with pytest.raises(SystemExit):
            config_of("--config", str(settings))
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"base_lr": float("nan")}, r"base_lr \(--lr\) must be a finite number"),
        ({"momentum": float("nan")}, "momentum must be a finite number"),
        ({"weight_decay": -1}, "weight_decay must be >= 0, got -1"),
        ({"warmup_iters": -5}, "warmup_iters must be >= 0"),
        ({"checkpoint_period": 0}, r"checkpoint_period \(--checkpoint-period\) must be >= 1"),
        ({"log_period": 0}, "log_period must be >= 1"),
        ({"iterations": "3"}, r"iterations \(--iterations\) must be an integer, got '3'"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"batch_size": 1, "micro_batch": 5}, r"micro_batch \(--micro-batch\) must be at most"),
        ({"model": {"fpn_channels": 0}}, "model.fpn_channels must be >= 1"),
        ({"model": {"num_levels": 0}}, "model.num_levels must be 3"),
        ({"model": {"cascade_ious": [2, 2, 2]}}, r"model.cascade_ious must be in \(0, 1\)"),
        ({"model": {"anchor_sizes": []}}, "model.anchor_sizes needs 5 entries"),
        ({"model": {"rpn_nms_thresh": float("nan")}}, "model.rpn_nms_thresh must be a finite"),
        ({"model": None}, "model must be a JSON object of settings"),
        ({"model": [1]}, "model must be a JSON object of settings"),
        ({"data": {"min_sizes": [1]}}, "data.min_sizes must be >= 32"),
        ({"data": {"test_min_size": 8}}, "data.test_min_size must be >= 32"),
        ({"mean_teacher": {"ema_keep_rate": float("nan")}}, "mean_teacher.ema_keep_rate"),
        ({"mean_teacher": {"labeled_batch": 0}}, "mean_teacher.labeled_batch must be >= 1"),
    ],
)
def test_every_setting_is_checked_before_training(settings, message):
    """NaN, negative, zero-period, string and out-of-range settings are refused up front,
    naming the setting (they used to train a NaN model, or fail after training started)."""
    from hassod.detector.config import config_from_dict, cpu_small_config

    with pytest.raises((TypeError, ValueError), match=message):
        config_from_dict(settings, base=cpu_small_config())


def test_train_checks_a_config_changed_after_it_was_built(synthetic, tmp_path, capsys):
    from hassod.cli import main

    config = tiny_config(iterations=1)
    config.log_period = 0
    with pytest.raises(ValueError, match="log_period must be >= 1"):
        train(config, *synthetic, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    json_path, images = synthetic
    command = ["train", str(json_path), str(images), "--preset", "cpu-small", "--quiet"]
    for options, message in (
        (["--lr", "nan"], "base_lr (--lr) must be a finite number, got nan"),
        (["--checkpoint-period", "0"], "checkpoint_period (--checkpoint-period) must be >= 1"),
        (["--micro-batch", "5", "--batch-size", "1"], "micro_batch (--micro-batch) must be"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--out", str(tmp_path / "cli"), *options])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"hassod train: error: train settings: {message}" in err and "Traceback" not in err


def test_batches_that_do_not_split_over_the_processes_name_the_setting(synthetic):
    from hassod.detector.data import TrainBatches

    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=2, mean_teacher=1)  # Mean Teacher batches of 1 + 2
    config = dataclasses.replace(config, batch_size=2)
    with pytest.raises(ValueError, match=r'mean_teacher.labeled_batch 1 .* 2 processes.*"mean_te'):
        TrainBatches(labels, config, rank=0, world_size=2)
    with pytest.raises(
        ValueError, match=r"batch_size \(--batch-size\) 2 is not divisible by the 3"
    ):
        TrainBatches(labels, config, rank=0, world_size=3)


def test_resume_says_which_settings_it_does_not_apply(synthetic, tmp_path, capsys):
    from hassod.cli import main

    json_path, images = synthetic
    out = tmp_path / "run"
    command = ["train", str(json_path), str(images), "--out", str(out), "--preset", "cpu-small"]
    command += ["--quiet", "--device", "cpu", "--iterations", "1", "--batch-size", "2"]
    command += ["--mean-teacher-iterations", "0"]
    assert main(command) == 0
    capsys.readouterr()
    settings = tmp_path / "settings.json"
    settings.write_text('{"model": {"box_head_dim": 32}, "checkpoint_period": 7}')
    changed = [*command, "--resume", "--iterations", "3", "--lr", "0.5", "--config", str(settings)]
    assert main(changed) == 0
    error = capsys.readouterr().err
    assert "not applied: iterations 3 (the run's: 1), base_lr 0.5" in error
    assert "model.box_head_dim 32" in error and "checkpoint_period" not in error
    assert main([*command, "--resume"]) == 0  # the same settings: nothing to say
    assert "not applied" not in capsys.readouterr().err


def test_train_options_are_checked_together_not_one_by_one():
    """--micro-batch 2 with --batch-size 1 is valid once Mean Teacher (2 x 1 labelled views)
    is on: applying the options one at a time refused it before the last was set."""
    from hassod.cli import build_parser
    from hassod.detector.cli import _train_config

    parser = build_parser()
    options = "--preset cpu-small --batch-size 1 --micro-batch 2 --mean-teacher-iterations 5"
    args = parser.parse_args(["train", "p.json", "images", "--out", "o", *options.split()])
    config, _ = _train_config(args, parser)
    assert (config.batch_size, config.micro_batch, config.mean_teacher.iterations) == (1, 2, 5)


_ONE_STEP = ["--preset", "cpu-small", "--quiet", "--device", "cpu", "--iterations", "1"]
_ONE_STEP += ["--batch-size", "2", "--mean-teacher-iterations", "0"]


def test_train_refuses_an_unwritable_out_before_loading_the_data(synthetic, tmp_path, capsys):
    """An --out under a file, or in a folder that cannot be written, is one line and exit 2
    before the data load (fit() used to raise NotADirectoryError / PermissionError)."""
    from hassod.cli import main

    json_path, images = synthetic
    (tmp_path / "somefile.jpg").write_text("x")
    out = tmp_path / "somefile.jpg" / "run"
    for pseudo in (json_path, tmp_path / "missing.json"):  # the data are not read first
        with pytest.raises(SystemExit) as exit_info:
            main(["train", str(pseudo), str(images), "--out", str(out), *_ONE_STEP])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"--out {out}: {tmp_path / 'somefile.jpg'} is a file, not a folder" in err
        assert "Traceback" not in err and "missing.json" not in err
    assert not list(tmp_path.glob("**/checkpoints"))


def test_train_refuses_an_out_whose_folder_cannot_be_written(synthetic, tmp_path, capsys):
    """A read-only mount (permission bits stop no root process: the probe file fails here)."""
    import tempfile

    from hassod.cli import main

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system", kwargs.get("dir"))

    json_path, images = synthetic
    command = ["train", str(json_path), str(images), "--out", str(tmp_path / "ro" / "run")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "NamedTemporaryFile", read_only)
        with pytest.raises(SystemExit) as exit_info:
            main([*command, *_ONE_STEP])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"hassod train: error: output folder {tmp_path} is not writable" in err
    assert not (tmp_path / "ro").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_train_refuses_a_read_only_out_folder(synthetic, tmp_path, capsys):
    from hassod.cli import main

    json_path, images = synthetic
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(SystemExit) as exit_info:
            out = tmp_path / "ro" / "run"
            main(["train", str(json_path), str(images), "--out", str(out), *_ONE_STEP])
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert exit_info.value.code == 2
    assert f"output folder {tmp_path / 'ro'} is not writable" in capsys.readouterr().err


def test_resume_on_other_data_says_what_differs(synthetic, tmp_path, capsys):
    """Checkpoints record the pseudo-labels (path, size, SHA-256, counts) and the image folder;
    --resume on other data warns in one line and trains on; a moved copy of the JSON is the
    same data; checkpoints without the record resume silently."""
    from hassod.cli import main

    json_path, images = synthetic
    other_json, other_images = write_dataset(tmp_path / "other", count=3, size=96, seed=8)
    moved = tmp_path / "moved"
    shutil.copytree(json_path.parent, moved)
    out = tmp_path / "run"
    options = ["--out", str(out), "--preset", "cpu-small", "--quiet", "--device", "cpu"]
    options += "--iterations 2 --batch-size 2 --mean-teacher-iterations 0".split()
    options += ["--checkpoint-period", "1"]
    assert main(["train", str(json_path), str(images), *options]) == 0
    stopped = out / "checkpoints" / "iter_0000001.pth"
    recorded = ckpt.load_checkpoint(stopped)["extra"]["dataset"]
    assert recorded == load_pseudo_labels(json_path, images).source
    assert recorded["pseudo_json_bytes"] == json_path.stat().st_size
    assert recorded["images_dir"] == str(images.resolve()) and recorded["images"] == 4

    def resume(pseudo, folder) -> str:
        ckpt.mark_last(stopped.parent, stopped)  # as if the run had stopped after iteration 1
        capsys.readouterr()
        assert main(["train", str(pseudo), str(folder), *options, "--resume"]) == 0
        captured = capsys.readouterr()
        assert "trained iterations 1..2" in captured.out
        return "\n".join(
            line for line in captured.err.splitlines() if "trained on other data" in line
        )

    warning = resume(other_json, other_images)
    assert warning.startswith(f"hassod train: warning: --resume: the run in {out} was trained")
    assert f"pseudo-labels {other_json.resolve()} (3 images, " in warning
    assert f"are not the run's {json_path.resolve()} (4 images, " in warning
    assert f"image folder {other_images.resolve()} (the run's: {images.resolve()};" in warning
    assert warning.endswith("training goes on with the data given")
    # the same content elsewhere: only the image folder is noted (its images are not hashed)
    warning = resume(moved / json_path.name, moved / images.name)
    assert "pseudo-labels" not in warning and f"image folder {moved / images.name}" in warning
    assert resume(json_path, images) == ""
    payload = torch.load(stopped, weights_only=True)  # a checkpoint from before the record
    del payload["extra"]["dataset"]
    torch.save(payload, stopped)
    assert resume(other_json, other_images) == ""


@pytest.mark.parametrize(
    "settings, hint",
    [
        ({"lr": 0.1}, "unknown top-level settings: lr (did you mean base_lr?)"),
        ({"batchsize": 2}, "batchsize (did you mean batch_size?)"),
        ({"workers": 2}, "workers (did you mean data.num_workers?)"),
        ({"backbone": "resnet18"}, "backbone (did you mean model.backbone?)"),
        ({"model": {"bakbone": "resnet18"}}, "'model' settings: bakbone (did you mean model."),
        ({"model": {"batch_size": 2}}, "batch_size (did you mean the top-level batch_size?)"),
        ({"mean_teacher": {"ema_keep": 0.9}}, "(did you mean mean_teacher.ema_keep_rate?)"),
        ({"zzz": 1, "lr": 0.1}, "settings: lr (did you mean base_lr?), zzz"),
    ],
)
def test_an_unknown_setting_names_the_likely_one(settings, hint):
    from hassod.detector.config import config_from_dict, cpu_small_config

    with pytest.raises(ValueError) as caught:
        config_from_dict(settings, base=cpu_small_config())
    assert hint in str(caught.value)


def test_an_unknown_config_setting_is_one_line_with_the_likely_one(tmp_path, capsys):
    from hassod.cli import main

    settings = tmp_path / "settings.json"
    settings.write_text('{"lr": 0.1}')
    command = ["train", "p.json", "images", "--out", str(tmp_path / "run"), "--config"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(settings)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train settings: unknown top-level settings: lr (did you mean base_lr?)" in err
    # a missing file, a folder, a file that is not JSON: named as --config, one line
    settings.write_text("{not json")
    for path, message in (
        (settings, "is not a readable JSON file"),
        (tmp_path, "is a folder, not a JSON file"),
        (tmp_path / "nope.json", "not found"),
    ):
        with pytest.raises(SystemExit):
            main([*command, str(path)])
        assert f"train settings: --config {path} {message}" in capsys.readouterr().err


def test_counts_of_one_are_singular(synthetic, tmp_path):
    from hassod.detector.cli import train_summary
    from hassod.detector.training import TrainResult

    json_path, images = synthetic
    result = TrainResult(tmp_path, 0, 1, tmp_path / "final.pth", {"a.png": "bad"}, {}, {}, 1.0)
    assert train_summary(result).endswith("; 1 unreadable image skipped")
    result.skipped_images["b.png"] = "bad"
    assert train_summary(result).endswith("; 2 unreadable images skipped")
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    next(copy.iterdir()).unlink()
    with pytest.warns(UserWarning, match=r"^1 image listed in .* is missing under .*; left out"):
        load_pseudo_labels(json_path, copy)
    from hassod.detector.data import DataError, TrainBatches

    one_json, one_folder = write_dataset(tmp_path / "one", count=1, size=96)
    next(one_folder.iterdir()).write_bytes(b"not an image")
    batches = TrainBatches(load_pseudo_labels(one_json, one_folder), tiny_config(), 0, 1)
    with pytest.raises(DataError, match="^the only image could not be read"):
        batches[0]
