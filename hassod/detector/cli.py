"""The ``hassod train``, ``predict`` and ``export-detectron2`` subcommands (registered by
:mod:`hassod.cli`).

Importing this module is light (argparse only); torch loads when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_TRAIN_EXIT_CODES = """exit codes:
  0    success: OUT/checkpoints/model_final.pth written
  1    run-time failure (e.g. CUDA out of memory)
  2    bad arguments or input: unusable pseudo-label JSON (no images, no annotations), missing
       image folder or backbone weights, weights of another architecture, an unreadable
       --init-from checkpoint, an OUT that already holds a run (without --resume) or files a
       run did not write, is a file or cannot be written (checked before the data load)
  130  interrupted (Ctrl-C, SIGTERM): a checkpoint of the last finished iteration is saved
       (once one has finished);
       run the same command with --resume to continue exactly"""

_PREDICT_EXIT_CODES = """exit codes:
  0    success (unreadable images are skipped and listed on stderr)
  1    run-time failure
  2    bad arguments or input: missing images or checkpoint, unknown level, an image that
       --image-ids does not list, an unwritable --out or one that is not its own results
       list, an OUT.parts/ that another run is
       writing or that another command made (checked before the model loads); no image
       could be read (--out is not written)
  130  interrupted (Ctrl-C, SIGTERM): the finished images are saved in OUT.parts/; run the
       same command again to resume (other settings start afresh)"""

# check_predict_options' parameters as hassod predict's options, for its messages
_PREDICT_OPTION_NAMES = {
    "score_threshold": "--score-threshold",
    "max_detections": "--max-detections",
    "min_size": "--min-size",
    "max_size": "--max-size",
}


def _weights_choice(value: str) -> str:
    """--weights: which network of a checkpoint (a model file belongs to --checkpoint)."""
    if value in ("student", "teacher", "auto"):
        return value
    hint = (
        "; the model file goes to --checkpoint"
        if any(mark in value for mark in ("/", ".pth", ".pkl", ".pt"))
        else ""
    )
    raise argparse.ArgumentTypeError(
        f"choose student, teacher or auto (which network of the checkpoint), got {value!r}{hint}"
    )


def _preset_default(setting) -> str:
    """The help's note on an option's default: its value in each preset (``setting`` reads it
    from a TrainConfig), so the help cannot drift from hassod.detector.config."""
    from hassod.detector.config import PRESETS

    values = [(name, setting(make())) for name, make in PRESETS.items()]
    if len({repr(value) for _, value in values}) == 1:
        return f"default: --config's, else {values[0][1]!r}"
    presets = ", ".join(f"{value!r} for {name}" for name, value in values)
    return f"default: --config's, else the preset's: {presets}"


def add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="stage 2: train the detector on pseudo-labels, then Mean Teacher",
        description=(
            "Train Cascade Mask R-CNN (R50-FPN, class-agnostic) with a level head on a "
            "pseudo-label COCO JSON (from `hassod discover`): burn-in with multi-scale, flip, "
            "copy-paste and DropLoss, then Mean Teacher with adaptive targets. Checkpoints, "
            "metrics.csv (and TensorBoard logs when tensorboard is installed) go to OUT. "
            "Multi-GPU: torchrun --nproc-per-node N -m hassod train ..."
        ),
        epilog=_TRAIN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("pseudo_json", type=Path, metavar="PSEUDO_JSON", help="pseudo-label JSON")
    train.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="its image folder")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument(
        "--preset",
        default="paper",
        choices=["paper", "cpu-small"],
        help="settings to start from (default paper: R50-FPN, 40k iterations at batch 16, "
        "2k Mean Teacher iterations; cpu-small: a tiny model for smoke tests)",
    )
    train.add_argument(
        "--config",
        type=Path,
        help="JSON of settings laid over --preset's, the layout of OUT/config.json; any part, "
        'e.g. {"model": {"backbone": "resnet18"}, "batch_size": 8}',
    )
    train.add_argument("--backbone-weights", type=Path, help="self-supervised ResNet checkpoint")
    train.add_argument(
        "--iterations",
        type=int,
        help=f"burn-in iterations ({_preset_default(lambda c: c.iterations)})",
    )
    train.add_argument(
        "--mean-teacher-iterations",
        type=int,
        help="Mean Teacher iterations, 0: none "
        f"({_preset_default(lambda c: c.mean_teacher.iterations)})",
    )
    train.add_argument(
        "--batch-size",
        type=int,
        help="burn-in images per iteration over all processes "
        f"({_preset_default(lambda c: c.batch_size)}; the Mean Teacher phase's are "
        "mean_teacher.labeled_batch and unlabeled_batch, set in a --config JSON)",
    )
    train.add_argument(
        "--micro-batch",
        type=int,
        help="images per forward pass on one process, accumulated; 0: its whole share "
        f"({_preset_default(lambda c: c.micro_batch)})",
    )
    train.add_argument(
        "--lr", type=float, help=f"base learning rate ({_preset_default(lambda c: c.base_lr)})"
    )
    train.add_argument(
        "--seed", type=int, help=f"random seed ({_preset_default(lambda c: c.seed)})"
    )
    train.add_argument(
        "--workers",
        type=int,
        help=f"data loader processes ({_preset_default(lambda c: c.data.num_workers)})",
    )
    train.add_argument(
        "--checkpoint-period",
        type=int,
        help=f"iterations between checkpoints ({_preset_default(lambda c: c.checkpoint_period)})",
    )
    train.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (AMP is the default)")
    train.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT's last checkpoint (a new run when it has none yet, so one "
        "command serves a job that may be restarted); warns when the data differ from the run's",
    )
    train.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="start from the student weights of a `hassod train` checkpoint (architecture "
        "included) with a fresh optimizer, e.g. a burn-in run's model_final.pth, or from a "
        "Detectron2 checkpoint of the HASSOD detector (the authors' model.pth); with "
        "--iterations 0 only the Mean Teacher phase runs (the authors' second job). "
        "With --resume it applies only while OUT has no checkpoint yet",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="run a trained detector on images: masks, scores and levels as COCO results",
        description=(
            "Detect objects with their whole/part/subpart level in an image or every image "
            "under a folder, with a `hassod train` checkpoint (or the authors' Detectron2 one), "
            "and write COCO results JSON "
            "(bbox, RLE segmentation, score, hier_level, level_scores). Image ids follow "
            "`hassod discover` (hashed relative file names); to score the results with "
            "`hassod evaluate --gt GT.json`, give --image-ids GT.json so that they carry the "
            "ground truth's ids. Finished images are saved as the run goes in OUT.parts/, so "
            "that the same command run again after an interruption resumes; it then writes "
            "OUT and removes that folder."
        ),
        epilog=_PREDICT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("images", type=Path, metavar="IMAGES", help="image file or folder")
    predict.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a `hassod train` checkpoint (.pth), or a Detectron2 checkpoint of the HASSOD "
        "detector such as the authors' released model.pth",
    )
    predict.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output JSON (its work folder while the run is unfinished: OUT.parts/)",
    )
    predict.add_argument(
        "--levels",
        default="whole,part,subpart",
        help="levels to keep, comma-separated among whole, part, subpart, e.g. whole,part "
        "(default all three)",
    )
    predict.add_argument(
        "--image-ids",
        type=Path,
        metavar="JSON",
        help="COCO JSON (e.g. the ground truth) whose 'images' give each image's id, matched by "
        "file name (a record's file_name may be any tail of the image's path); every image "
        "must be listed there (exit 2 otherwise; see --skip-unlisted). Default: hashed "
        "relative file names, as `hassod discover`",
    )
    predict.add_argument(
        "--skip-unlisted",
        action="store_true",
        help="with --image-ids: leave out the images that JSON does not list (say how many) "
        "instead of refusing, e.g. a folder larger than the annotated subset",
    )
    predict.add_argument(
        "--weights",
        default="student",
        type=_weights_choice,
        metavar="{student,teacher,auto}",
        help="which network of the checkpoint (default student: the one the authors evaluate "
        "after Mean Teacher; teacher: its EMA; auto: the teacher when present)",
    )
    predict.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections scoring above this, in [0, 1] (default: the checkpoint's "
        "score_thresh, 0 in both presets and for Detectron2 checkpoints)",
    )
    predict.add_argument(
        "--max-detections",
        type=int,
        help="at most this many detections per image (default: the checkpoint's "
        "detections_per_image: 1000 for the paper preset and Detectron2 checkpoints, 100 for "
        "cpu-small)",
    )
    predict.add_argument(
        "--min-size",
        type=int,
        help="test short side in pixels, at least 32 (default: the checkpoint's "
        "test_min_size: 800 for the "
        "paper preset and Detectron2 checkpoints, 128 for cpu-small)",
    )
    predict.add_argument(
        "--max-size",
        type=int,
        help="test long side cap in pixels, at least 32 (default: the checkpoint's "
        "test_max_size: 1333 for "
        "the paper preset, 160 for cpu-small)",
    )
    predict.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_config(args, parser):
    """The run's settings (the preset, --config's JSON, the options) and that JSON's object
    (None without --config), read once."""
    from hassod.detector.config import check_config, preset, settings_unchecked

    try:
        settings = _config_settings(args)
        with settings_unchecked():  # the options apply one by one: the result is checked once
            config = _configured(args, preset(args.preset), settings)
        check_config(config)
    except (OSError, ValueError, TypeError) as error:
        parser.error(f"train settings: {error}")
    return config, settings


def _config_settings(args) -> dict | None:
    import json

    if args.config is None:
        return None
    if not args.config.is_file():
        raise ValueError(
            f"--config {args.config} "
            + ("is a folder, not a JSON file" if args.config.is_dir() else "not found")
        )
    try:
        settings = json.loads(args.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {args.config} is not a readable JSON file: {error}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {args.config} holds no JSON object of settings")
    return settings


def _configured(args, config, settings: dict | None):
    """``config`` with --config's ``settings`` laid over it, then the command-line options."""
    import dataclasses

    from hassod.detector.config import config_from_dict

    if settings is not None:
        config = config_from_dict(settings, base=config)
    changes = {
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "micro_batch": args.micro_batch,
        "base_lr": args.lr,
        "seed": args.seed,
        "checkpoint_period": args.checkpoint_period,
    }
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    if args.no_amp:
        config = dataclasses.replace(config, amp=False)
    if args.mean_teacher_iterations is not None:
        mean_teacher = dataclasses.replace(
            config.mean_teacher, iterations=args.mean_teacher_iterations
        )
        config = dataclasses.replace(config, mean_teacher=mean_teacher)
    if args.workers is not None:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, num_workers=args.workers)
        )
    return config


def is_main_process(environ=None) -> bool:
    """True unless torchrun made this process a rank other than 0 (RANK)."""
    environ = os.environ if environ is None else environ
    return environ.get("RANK", "0") in ("", "0")


@contextlib.contextmanager
def _warnings_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _not_applied_on_resume(args, config, settings: dict | None) -> list[str]:
    """Settings given on the command line (or in --config) that a resumed run does not use:
    it continues with those stored in OUT/config.json (what was trained does not change);
    only the checkpoint and log periods and the loader workers follow the command."""
    import json

    from hassod.detector.config import config_from_dict

    stored_path = args.out / "config.json"
    if not (args.resume and stored_path.is_file()):
        return []
    try:
        stored = config_from_dict(json.loads(stored_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return []  # the run's checkpoint carries its settings; the trainer reads those
    given = {
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "micro_batch": args.micro_batch,
        "base_lr": args.lr,
        "seed": args.seed,
        "mean_teacher.iterations": args.mean_teacher_iterations,
        "amp": False if args.no_amp else None,
    }
    for key, value in (settings or {}).items():
        names = value if isinstance(value, dict) else {None: value}
        for name in names:
            path = key if name is None else f"{key}.{name}"
            given.setdefault(path, True)  # compared below through the built config
    ignored = []
    for path, value in given.items():
        if value is None or path in ("checkpoint_period", "log_period", "data.num_workers"):
            continue
        wanted, kept = config, stored
        for part in path.split("."):
            wanted, kept = getattr(wanted, part), getattr(kept, part)
        if wanted != kept:
            ignored.append(f"{path} {wanted!r} (the run's: {kept!r})")
    return ignored


def run_train_command(args, parser) -> int:
    from hassod.cli import _warnings_as_lines, _writable_folder

    _writable_folder(args.out, parser)  # before the data load and the run, not after them
    config, settings = _train_config(args, parser)
    from hassod.detector.data import DataError
    from hassod.detector.training import Interrupted, train

    ignored = _not_applied_on_resume(args, config, settings)
    if ignored and is_main_process():
        print(
            f"hassod train: warning: --resume continues the run in {args.out} with its own "
            f"settings; not applied: {', '.join(ignored)}",
            file=sys.stderr,
        )

    # Every process meets the same warnings: rank 0 prints them.
    shown = _warnings_as_lines("train") if is_main_process() else _warnings_ignored()
    try:
        with shown:
            result = train(
                config,
                args.pseudo_json,
                args.images_dir,
                args.out,
                backbone_weights=args.backbone_weights,
                resume=args.resume,
                init_from=args.init_from,
                device=args.device,
                progress=not args.quiet,
            )
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"hassod train: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as error:
        if is_main_process():  # rank 0 saves, and says so, for every process
            print(f"hassod train: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as error:
        print(f"hassod train: {error}", file=sys.stderr)
        return EXIT_RUN_ERROR
    if not is_main_process():
        return EXIT_OK  # rank 0 reports for every process
    print(train_summary(result))
    for name, reason in sorted(result.skipped_images.items()):
        print(f"hassod train: skipped {name}: {reason}", file=sys.stderr)
    return EXIT_OK


def add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export-detectron2",
        help="write a trained detector as a Detectron2 checkpoint (the authors' code reads it)",
        description=(
            "Write the network of a `hassod train` checkpoint under Detectron2's names, as the "
            "authors' HASSOD code loads it (MODEL.WEIGHTS of their train_net.py --eval-only or "
            "demo), and print the config options under which their "
            "cascade_mask_rcnn_R_50_FPN.yaml builds the same network."
        ),
        epilog="exit codes:\n  0    success\n  1    a disk that fills up or turns read-only\n"
        "  2    missing or unreadable checkpoint, "
        "unwritable output or a file it did not write, a network Detectron2 cannot build\n"
        "  130  interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="hassod checkpoint")
    export.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="Detectron2 checkpoint to write: .pth (torch.save), or .pkl (Detectron2's pickle "
        "of NumPy arrays)",
    )
    export.add_argument(
        "--weights",
        default="student",
        type=_weights_choice,
        metavar="{student,teacher,auto}",
        help="which network (default student, as `hassod predict`)",
    )


def run_export_command(args, parser) -> int:
    from hassod._io import foreign_file, not_replaced
    from hassod.cli import _writable_file
    from hassod.detector import detectron2_weights
    from hassod.detector.checkpoint import detector_from_checkpoint

    _writable_file(args.out, parser, option="OUT")
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        parser.error("OUT is the CHECKPOINT itself; give another file name")
    if foreign_file(args.out, detectron2_weights.is_export):
        kind = "a file export-detectron2 wrote (another run's checkpoint, say)"
        parser.error(
            not_replaced(f"OUT {args.out}", kind, "choose another name (or delete it first)")
        )
    try:
        model, config = detector_from_checkpoint(args.checkpoint, args.weights)
        options = detectron2_weights.detectron2_options(config.model, config.data)
        state = detectron2_weights.export_detectron2(model)
    except (FileNotFoundError, ValueError, TypeError, OSError) as error:
        print(f"hassod export-detectron2: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    # Checked writable above: a failure now is the disk's (hassod.cli: one line, exit 1).
    detectron2_weights.write_detectron2_file(args.out, state, config)
    if config.model.anchor_generator != "detectron2":
        print(
            "warning: this network was trained with torchvision's anchors; Detectron2 uses "
            "its own (see hassod.detector.anchors)",
            file=sys.stderr,
        )
    print(f"wrote {args.out} ({len(state)} tensors). Detectron2 options for the authors' config:")
    print("  " + " \\\n  ".join(options))
    return EXIT_OK


def run_predict_command(args, parser) -> int:
    from hassod.cli import _writable_file
    from hassod.detector.predict import check_predict_options, parse_levels, predict_images
    from hassod.run_errors import Interrupted, UsageError

    _writable_file(args.out, parser)  # before the run, not after it
    if args.skip_unlisted and args.image_ids is None:
        parser.error("--skip-unlisted goes with --image-ids")

    try:
        levels = parse_levels(args.levels)
    except ValueError as error:
        parser.error(f"--levels: {error}")
    try:  # here, so that the messages name the options (predict_images names parameters)
        check_predict_options(
            args.score_threshold,
            args.max_detections,
            args.min_size,
            args.max_size,
            names=_PREDICT_OPTION_NAMES,
        )
    except (ValueError, TypeError) as error:
        print(f"hassod predict: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = predict_images(
            args.images,
            args.checkpoint,
            args.out,
            levels=levels,
            image_ids=args.image_ids,
            skip_unlisted=args.skip_unlisted,
            progress=not args.quiet,
            device=args.device,
            weights=args.weights,
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            min_size=args.min_size,
            max_size=args.max_size,
        )
    except (FileNotFoundError, ValueError, TypeError, UsageError) as error:
        print(f"hassod predict: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as error:
        print(f"hassod predict: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as error:
        print(f"hassod predict: {error}", file=sys.stderr)
        return EXIT_RUN_ERROR
    print(summary.format())
    return EXIT_OK


def train_summary(result) -> str:
    """The line ``hassod train`` ends with (a :class:`~hassod.detector.training.TrainResult`)."""
    from hassod._text import counted

    skipped = len(result.skipped_images)
    if result.start_iteration >= result.iterations_done:  # resumed a finished run
        return (
            "nothing to train: the run had already finished its "
            f"{counted(result.iterations_done, 'iteration')}; checkpoint {result.checkpoint}"
        )
    return (
        f"trained iterations {result.start_iteration}..{result.iterations_done} in "
        f"{result.seconds:.0f} s ({result.iterations_per_second:.2f} it/s); "
        f"final loss {result.last_losses.get('total_loss', float('nan')):.4f}; "
        f"checkpoint {result.checkpoint}"
        + (f"; {counted(skipped, 'unreadable image')} skipped" if skipped else "")
    )
