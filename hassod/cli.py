"""The ``hassod`` command line.

Commands: ``discover`` (stage 1 over a folder: COCO pseudo-labels, resumable and sharded),
``merge-shards``, ``demo`` (discovery on three sample photos, with pictures), ``cluster``
(one image's partitions as a picture), ``evaluate`` (class-agnostic AR / AP against COCO ground
truth), ``show`` (one image's masks level by level, as a picture), ``report`` (a static HTML
report of a label set) and ``sa1b-to-coco`` (SA-1B's per-image files as one ground truth);
stage 2's ``train``, ``predict`` and ``export-detectron2`` live in :mod:`hassod.detector.cli`.

Exit codes of ``discover`` (each command's ``--help`` lists its own): 0 success (images that
could not be used are listed in the JSON's ``failed``, not an error), 1 a run-time failure
(e.g. weights that cannot be loaded, such as the default hub weights offline without
``--weights``, or every image failed), 2 bad arguments or input found before any work
(missing or empty images folder, unwritable output, settings that differ from a stored run;
argparse's convention), 130 interrupted (finished images are saved; re-run to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from hassod._io import atomic_write_file, output_target


def _atomic_save(path, write) -> None:
    """Write a file atomically, making its missing folders (checked by _writable_file)."""
    atomic_write_file(path, write, parents=True)


DEFAULT_BACKBONE = "vit_base_patch8_224.dino"


def main(argv: list[str] | None = None) -> int:
    """Run one ``hassod`` command; returns its exit code. SIGTERM counts as Ctrl-C throughout
    (exit 130), not only while a command's run saves its work (which handles it itself)."""
    from hassod.run_errors import signals_as_interrupt

    with signals_as_interrupt(KeyboardInterrupt):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Errors found after parsing show the subcommand's usage, not the list of commands.
    parser = _subcommands(parser).choices[args.command]
    try:
        return _run_command(args, parser)
    except KeyboardInterrupt:  # the commands that save partial work catch it themselves
        print(f"hassod {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        from hassod.run_errors import STORAGE_ERRNOS

        if error.errno not in STORAGE_ERRNOS:  # a bug should show its traceback
            raise
        # A full disk or a folder gone read-only mid-run: one line, not a traceback. Every
        # writer replaces files atomically, so what was saved before is intact.
        print(
            f"hassod {args.command}: error: cannot write: {error}; files saved before are "
            "intact: make room (or restore access) and run the same command again",
            file=sys.stderr,
        )
        return 1


def _run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod.detector import cli as detector_cli

    if args.command == "train":
        return detector_cli.run_train_command(args, parser)
    # Their warnings (e.g. a checkpoint's settings loaded as stored) as one line each.
    if args.command == "predict":
        with _warnings_as_lines("predict"):
            return detector_cli.run_predict_command(args, parser)
    if args.command == "export-detectron2":
        with _warnings_as_lines("export-detectron2"):
            return detector_cli.run_export_command(args, parser)
    if args.command == "evaluate":
        return run_evaluate_command(args, parser)
    if args.command == "show":
        return run_show_command(args, parser)
    if args.command == "report":
        return run_report_command(args, parser)
    if args.command == "cluster":
        return run_cluster(args, parser)
    if args.command == "discover":
        return run_discover_command(args, parser)
    if args.command == "merge-shards":
        return run_merge_command(args)
    if args.command == "demo":
        return run_demo_command(args, parser)
    if args.command == "sa1b-to-coco":
        return run_sa1b_command(args, parser)
    return 2  # pragma: no cover - argparse enforces a command


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, every subcommand included (parsing imports no torch)."""
    from hassod.discover import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="hassod",
        description="HASSOD: object masks and their whole/part/subpart levels from unlabeled "
        "images, and a detector trained on them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cluster = commands.add_parser(
        "cluster",
        help="hierarchical adaptive clustering of one image's ViT features, as a picture",
        description=(
            "Extract frozen ViT attention keys from an image, cluster them at each threshold "
            "and write a picture of the partitions (PNG) plus the label maps (NPZ)."
        ),
        epilog="exit codes:\n  0    success\n  1    weights that cannot be loaded (offline "
        "without --weights), a disk that fills up or turns read-only\n  2    bad arguments, an "
        "unreadable image, an unwritable --out, a NAME_labels.npz in it that cluster did not "
        "write or a NAME_partitions.png that no hassod command wrote\n"
        "  130  interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster.add_argument("image", nargs="?", help="image file (default: scikit-image astronaut)")
    cluster.add_argument(
        "--out",
        type=Path,
        default=Path("hassod_cluster"),
        help="output folder, gets NAME_partitions.png and NAME_labels.npz (default hassod_cluster)",
    )
    cluster.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"timm ViT name (default {DEFAULT_BACKBONE})"
    )
    cluster.add_argument("--weights", type=Path, help="local checkpoint (else the timm hub)")
    cluster.add_argument(
        "--random-weights", action="store_true", help="random backbone, for smoke tests only"
    )
    cluster.add_argument("--size", type=int, help="input side (default 480 rounded to the patch)")
    cluster.add_argument(
        "--transform",
        "--feature-transform",  # discover's name for it
        dest="transform",
        default=None,
        choices=["none", "remove-key-bias", "center"],
        help="feature transform (default: none for DINO v1, center for other backbones)",
    )
    cluster.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.4, 0.2, 0.1],
        help="merge thresholds (default 0.4 0.2 0.1)",
    )
    discover = commands.add_parser(
        "discover",
        help="stage 1 over a folder of images: hierarchical object-mask pseudo-labels (COCO JSON)",
        description=(
            "Discover object masks with their whole/part/subpart levels in every image under "
            "IMAGES_DIR (recursively; .jpg .jpeg .png .bmp .tif .tiff .webp, any case; hidden "
            "files skipped) and write them as COCO JSON. Results stream into OUT.parts/ in "
            "chunks: re-running the same command resumes, skipping finished images and "
            "retrying failed ones. Images that cannot be used (corrupt, truncated, empty, not "
            "an image, over --max-pixels) are listed in the JSON's 'failed' with the reason."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    discover.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of images")
    discover.add_argument("--out", type=Path, required=True, help="output COCO JSON file")
    _add_model_arguments(discover)
    discover.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.4, 0.2, 0.1],
        help="merge thresholds (default 0.4 0.2 0.1)",
    )
    discover.add_argument(
        "--near-duplicate-iou",
        type=float,
        default=None,
        metavar="X",
        help="also drop masks with IoU >= X with a kept mask (default: exact duplicates only)",
    )
    discover.add_argument(
        "--crf",
        default="auto",
        choices=["auto", "native", "torch", "pydensecrf"],
        help="dense CRF backend: native (C++ on the CPU), torch (batched over images on the "
        "run's device), pydensecrf (the reference); auto (default): torch on a CUDA device, "
        "else native",
    )
    discover.add_argument(
        "--crf-method",
        default="auto",
        choices=["auto", *sorted(CRF_METHODS)],
        help="how the torch CRF backend filters: triton (fused Triton kernels, float32), spmm "
        "(sparse products, float32) or triton-float16 (label columns stored in float16, Q "
        "within about 1e-2); auto (default): triton on a CUDA device when Triton is "
        "importable, else spmm",
    )
    discover.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    discover.add_argument(
        "--amp",
        default="off",
        choices=["off", "bf16", "fp16"],
        help="autocast the backbone on CUDA (default off: fp32, the reference features; the "
        "patch embedding's convolution in TF32 on Ampere and newer, torch's default)",
    )
    discover.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for clustering/CRF/filters (default: usable CPUs, per process under "
        "torchrun, or 0 on a CPU-only run with two CPUs or fewer; 0: in this process)",
    )
    discover.add_argument(
        "--batch-size", type=int, default=4, help="images per backbone batch (default 4)"
    )
    discover.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="process images with index %% N == i into OUT.parts/shard-i-of-N/ and write "
        "OUT-stem.shard-i-of-N.json (default: RANK/WORLD_SIZE under torchrun, else all)",
    )
    discover.add_argument(
        "--limit", type=int, default=None, help="only the first N images (of the shard)"
    )
    discover.add_argument(
        "--restart",
        action="store_true",
        help="discard the stored chunks of an earlier run with this --out (and shard)",
    )
    discover.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"images with more pixels are listed as failed (default {DEFAULT_MAX_PIXELS}; "
        "0: no limit)",
    )
    discover.add_argument(
        "--chunk-size", type=int, default=8, help="images per chunk file (default 8)"
    )
    discover.add_argument("--quiet", action="store_true", help="no progress bar")

    merge = commands.add_parser(
        "merge-shards",
        help="join the outputs of `discover --shard i/N` runs into one COCO JSON",
        description=(
            "Join shard JSON files (OUT-stem.shard-i-of-N.json) or shard work folders "
            "(OUT.parts/shard-*/) into the JSON one unsharded run would have written. Refuses "
            "inputs made with different settings, and incomplete shard sets unless "
            "--allow-partial."
        ),
        epilog=_MERGE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("inputs", nargs="+", type=Path, help="shard JSON files or shard folders")
    merge.add_argument("--out", type=Path, required=True, help="merged COCO JSON file")
    merge.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge an incomplete set of shards, unfinished shard folders or unsharded outputs",
    )

    sa1b = commands.add_parser(
        "sa1b-to-coco",
        help="fold SA-1B's per-image annotation files into one COCO ground truth",
        description=(
            "Read every sa_*.json of an SA-1B folder (not its sub-folders) and write one "
            "class-agnostic COCO JSON for `hassod evaluate --gt` and `hassod predict "
            "--image-ids`: the paper's SA-1B recall is measured against such masks. Each "
            "file is SA-1B's {'image': {image_id, width, height, file_name}, 'annotations': "
            "[{id, segmentation (RLE), area, bbox, predicted_iou, ...}]}; every mask becomes "
            "an object of category 1 (SAM's quality fields are dropped), ids 1..N."
        ),
        epilog="exit codes:\n  0    success\n  1    a disk that fills up or turns read-only\n"
        "  2    no such folder, no sa_*.json in it, a file "
        "that is not SA-1B's (named), an unwritable --out or a file it did not write\n"
        "  130  interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sa1b.add_argument("folder", type=Path, metavar="SA1B_DIR", help="folder of sa_N.json files")
    sa1b.add_argument("--out", type=Path, required=True, help="COCO ground-truth JSON to write")
    sa1b.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = commands.add_parser(
        "demo",
        help="discovery on three sample photos, with pictures of the levels",
        description=(
            "Write scikit-image's astronaut, coffee and chelsea photos to OUT/images/, run "
            "`discover` on them (OUT/pseudo.json) and draw OUT/figures/NAME.png: input | whole "
            "objects | whole + parts | whole + parts + subparts. Every run starts afresh."
        ),
        epilog=_DEMO_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out", type=Path, default=Path("hassod_demo"), help="output folder (default hassod_demo)"
    )
    _add_model_arguments(demo)
    demo.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="post-processing processes (default as for discover: usable CPUs, or 0 on a "
        "CPU-only run with two CPUs or fewer)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    _add_evaluate_parser(commands)
    _add_show_parser(commands)
    _add_report_parser(commands)
    from hassod.detector import cli as detector_cli  # argparse only: torch loads on use

    detector_cli.add_train_parser(commands)
    detector_cli.add_predict_parser(commands)
    detector_cli.add_export_parser(commands)

    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )


_EXIT_CODES = """exit codes:
  0    success (discover: unusable images are listed in the JSON's 'failed')
  1    run-time failure, e.g. weights that cannot be loaded (offline without --weights),
       or every image failed (the JSON lists them under 'failed')
  2    bad arguments or input, found before any work: missing or empty images folder,
       unwritable output or a file it did not write, settings that differ from the stored
       run (see --restart)
  130  interrupted: finished images are saved; run the same command again to resume"""


_MERGE_EXIT_CODES = """exit codes:
  0    success
  1    a disk that fills up or turns read-only
  2    bad input: a missing or unreadable input, inputs made with other settings, shards of
       different runs, an incomplete set or an unfinished shard folder (without
       --allow-partial), an image in two shards, an unwritable --out or a file it did not
       write (an input included)
  130  interrupted"""


_DEMO_EXIT_CODES = """exit codes:
  0    success
  1    run-time failure, e.g. weights that cannot be loaded (offline without --weights),
       or every image failed
  2    bad arguments, an unwritable --out, an OUT/images holding other images, an
       OUT/pseudo.json or OUT/figures/*.png that hassod did not write
  130  interrupted"""


_EXIT_CODES_INSPECT = """exit codes:
  0    success
  1    run-time failure
  2    bad arguments or input: a missing or malformed file, labels of images the other file
       does not have, an image the labels do not list, an unwritable output, or an output
       (file, or report folder) that the command did not write
  130  interrupted (Ctrl-C or SIGTERM)"""


def _add_evaluate_parser(commands) -> None:
    from hassod.evaluate import IOU_TYPES, STUFF_MIN_ID

    evaluate = commands.add_parser(
        "evaluate",
        help="class-agnostic AR / AP of predictions or pseudo-labels against COCO ground truth",
        description=(
            "Fold all categories into one and run pycocotools' COCOeval with maxDets 10/100/1000: "
            "AR@10, AR@100, AR@1000, AR small/medium/large and AP, AP50, AP75 (at 1000), for "
            "boxes and masks (the paper's Tables 1 and 9; its 'AR' is AR@1000, as the "
            "authors' evaluator computes it). PRED is a COCO results list or a "
            "pseudo-label / COCO JSON (its images matched to the ground truth's by file name); "
            "a missing score counts as 1.0. Crowd regions are ignore regions. The printed "
            "tables are in percent; --out writes fractions in [0, 1]. '-' (null in the JSON) "
            "marks a metric with nothing to evaluate: no ground-truth objects in its area "
            "range, e.g. AR_s when no object is small."
        ),
        epilog=_EXIT_CODES_INSPECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("--pred", type=Path, required=True, help="predictions or pseudo-labels")
    evaluate.add_argument("--gt", type=Path, required=True, help="COCO ground-truth JSON")
    evaluate.add_argument(
        "--iou-type",
        nargs="+",
        choices=IOU_TYPES,
        default=list(IOU_TYPES),
        help="box and/or mask IoU (default both)",
    )
    evaluate.add_argument(
        "--things-only",
        action="store_true",
        help="drop ground truth with category_id >= --stuff-min-id (COCO panoptic stuff)",
    )
    evaluate.add_argument(
        "--stuff-min-id",
        type=_count,
        default=None,
        help=f"first stuff category id for --things-only (default {STUFF_MIN_ID})",
    )
    evaluate.add_argument(
        "--breakdown",
        action="store_true",
        help="also labels per image, AR and AP by merge threshold and by level (paper Table 2)",
    )
    _add_only_gt_images_argument(evaluate)
    evaluate.add_argument("--out", type=Path, help="also write the metrics as JSON here")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_only_gt_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only-gt-images",
        action="store_true",
        help="leave out predictions on images the ground truth does not have (e.g. discovery "
        "on a folder larger than the annotated subset) and say how many; without it they are "
        "refused, as COCOeval needs results on its images only",
    )


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Python warnings printed as ``hassod COMMAND: warning: ...`` lines (not with the source
    line that raised them)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"hassod {command}: warning: {message}", file=sys.stderr)

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


def run_evaluate_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from hassod._io import foreign_file, not_replaced
    from hassod.evaluate import InputError, evaluate, format_breakdown, format_metrics

    if args.stuff_min_id is not None and not args.things_only:
        parser.error("--stuff-min-id goes with --things-only (without it nothing is dropped)")
    if args.stuff_min_id is None:
        from hassod.evaluate import STUFF_MIN_ID

        args.stuff_min_id = STUFF_MIN_ID
    if args.out is not None:
        _writable_file(args.out, parser)
        # What evaluate's metrics JSON begins with (json.dumps of the result, indent 2).
        signature = json.dumps({"settings": {"iou_types": 0}}, indent=2).split("0")[0]
        if foreign_file(args.out, (signature.encode("utf-8"),)):
            parser.error(not_replaced(f"--out {args.out}", "a metrics JSON of hassod evaluate"))
    try:
        with _warnings_as_lines("evaluate"):
            result = evaluate(
                args.pred,
                args.gt,
                iou_types=args.iou_type,
                things_only=args.things_only,
                stuff_min_id=args.stuff_min_id,
                breakdown=args.breakdown,
                only_gt_images=args.only_gt_images,
                progress=not args.quiet,
            )
    except InputError as error:
        print(f"hassod evaluate: error: {error}", file=sys.stderr)
        return 2
    print(format_metrics(result))
    if args.breakdown:
        print()
        print(format_breakdown(result))
    if args.out is not None:
        text = json.dumps(result, indent=2).encode("utf-8")
        _atomic_save(args.out, lambda handle: handle.write(text))
        print(f"wrote {args.out}")
    return 0


def _count(text: str) -> int:
    """An integer >= 0 (argparse type): a negative count would act as a Python slice, a
    negative --stuff-min-id would call every category stuff."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _finite(text: str) -> float:
    """A finite number (argparse type): every score compares False with nan."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _add_label_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels", type=Path, required=True, help="pseudo-labels, COCO JSON or results list"
    )
    parser.add_argument(
        "--levels",
        default="whole,part,subpart",
        help="panels after the input, comma-separated: whole (wholes), part (+ parts), "
        "subpart (+ subparts) (default: all three)",
    )
    parser.add_argument(
        "--score-threshold",
        type=_finite,
        default=None,
        help="show masks with score >= this (default: 0.5 for a results list, e.g. `hassod "
        "predict`'s, which keeps detections down to score 0; none for pseudo-labels or a COCO "
        "JSON; 0: every result)",
    )
    parser.add_argument(
        "--max-masks",
        type=_count,
        default=100,
        help="at most this many masks per image, the best scores (default 100; 0: no limit)",
    )


def _add_show_parser(commands) -> None:
    show = commands.add_parser(
        "show",
        help="one image's masks level by level: input | whole | + part | + subpart (PNG)",
        description=(
            "Draw the masks of IMAGE from a label JSON as the paper's Figures 1 and 5: the "
            "input, then whole objects, wholes + parts, wholes + parts + subparts; one colour "
            "per mask, outlines 3/2/1 px for whole/part/subpart, and a legend. The image is "
            "found among the JSON's images by file name; a results list needs --images, "
            "unless its image ids are those `hassod predict` gives a folder's files. "
            "Levels come from 'hier_level' or 'level' (none: whole)."
        ),
        epilog=_EXIT_CODES_INSPECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("image", type=Path, metavar="IMAGE", help="the image file")
    _add_label_view_arguments(show)
    show.add_argument("--out", type=Path, required=True, help="output PNG (a .png file name)")
    show.add_argument(
        "--images",
        "--gt",
        dest="images_json",
        type=Path,
        help="dataset JSON naming the images of a results list (e.g. the ground truth); "
        "without it, a results list's ids are taken for `hassod predict`'s (from file paths)",
    )
    show.add_argument(
        "--panel-height",
        type=int,
        default=320,
        help="panel height in pixels, 16 to 8192 (default 320; lower where the panels of a "
        "very wide image would make the figure wider than 8192 pixels)",
    )


_SHOW_SOFTWARE = "hassod show"


def run_show_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod._io import foreign_file, not_replaced
    from hassod._text import counted
    from hassod.labels import (
        InputError,
        failure_of,
        load_labels,
        match_image,
        read_json,
    )
    from hassod.report import (
        display_threshold,
        image_figure,
        image_masks,
        image_names,
        predict_records,
        read_labelled_image,
        record_by_predict_id,
    )
    from hassod.visualize import is_hassod_png, save_stamped_png

    panels = _parse_levels(args.levels, parser)
    from hassod.visualize import MAX_FIGURE_SIDE

    # Beyond that the figure would be scaled back down anyway (after a huge allocation).
    if not 16 <= args.panel_height <= MAX_FIGURE_SIDE:
        parser.error(
            f"--panel-height must be between 16 and {MAX_FIGURE_SIDE}, got {args.panel_height}"
        )
    if args.image.is_dir():
        parser.error(f"{args.image} is a folder; give one image file (hassod report takes folders)")
    if not args.image.is_file():
        parser.error(f"image not found: {args.image}")
    # The figure is a PNG: a name without the suffix (meant as a folder?) would hide that.
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must be a .png file name, got {str(args.out)!r}")
    _writable_file(args.out, parser)
    if foreign_file(args.out, is_hassod_png):  # e.g. the photo itself, mistyped
        parser.error(not_replaced(f"--out {args.out}", "a figure of hassod show"))
    try:
        labels = load_labels(args.labels, "labels")
        named = None
        if args.images_json is not None:
            named = read_json(args.images_json, "images")
            if not isinstance(named, dict) or not isinstance(named.get("images"), list):
                raise InputError(f"{args.images_json} is not a COCO JSON with an 'images' list")
            named = named["images"]
        within = f"labels {labels.source}" if labels.images is not None else str(args.images_json)
        if labels.images is None and named is None:  # `hassod predict IMAGES_DIR`'s results
            record = record_by_predict_id(labels, args.image)
            if record is None:  # no results for it: drawn empty, or refused (_no_results_for)
                record = predict_records([args.image.name])[0]
        else:
            try:
                record = match_image(image_names(labels, named), args.image, within)
            except InputError:
                reason = failure_of(labels, args.image)
                if reason is None:
                    raise
                raise InputError(
                    f"{args.image} is among the images discovery could not use (labels "
                    f"{labels.source}, 'failed'): {reason}"
                ) from None
        annotations = labels.by_image().get(record["id"], [])
        if not annotations and labels.is_results_list:
            warning = _no_results_for(args.image, labels, named, record, args.images_json)
            print(f"hassod show: warning: {warning}", file=sys.stderr)
        pixels = read_labelled_image(args.image, record, annotations)
        threshold = display_threshold(labels, args.score_threshold)
        item = image_masks(pixels, annotations, threshold, args.max_masks or None)
    except InputError as error:
        print(f"hassod show: error: {error}", file=sys.stderr)
        return 2
    figure = image_figure(item, panels, args.panel_height)
    _atomic_save(args.out, lambda handle: save_stamped_png(figure, handle, _SHOW_SOFTWARE))
    scoring = "" if threshold is None else f" (score >= {threshold:g})"
    print(
        f"wrote {args.out} ({figure.size[0]}x{figure.size[1]}): {len(item.annotations)} of "
        f"{counted(item.total, 'mask')} of {record.get('file_name')}{scoring}"
    )
    return 0


def _no_results_for(
    image: Path, labels, images: list | None, record: dict, images_json: Path | None
) -> str:
    """The warning for a results list with nothing for the shown image (a dataset JSON lists
    every image, so there an image without masks is simply one; a results list only lists
    detections), which is drawn without masks when the list's ids are those of other images
    (of ``images``, else `hassod predict`'s of the image's folder).

    Raises:
        InputError: none of the list's ids is an image's: its numbering is another (drawing
            every image empty, a script over a folder would learn nothing).
    """
    from hassod.labels import HASHED_IDS_HINT, InputError
    from hassod.report import neighbours_have_predict_results

    shown = f"nothing is drawn for {record.get('file_name')!r} (id {record['id']!r})"
    if not labels.annotations:
        return f"labels {labels.source} hold no results: {shown}"
    if images is None:
        if not neighbours_have_predict_results(labels, image):
            raise InputError(
                f"labels {labels.source} are a results list with nothing for {image} or any "
                "other image in its folder under the ids `hassod predict` gives files (from "
                "their path in the folder it ran on): results numbered by a dataset JSON need "
                "that JSON (--images)"
            )
        return (
            f"labels {labels.source} have no result for this image, though other images in "
            f"its folder have some: {shown} (`hassod predict` found nothing in it)"
        )
    ids = labels.by_image().keys()
    matching = len(ids & {entry["id"] for entry in images})
    if not matching:
        raise InputError(
            f"{'the image id' if len(ids) == 1 else f'none of the {len(ids)} image ids'} in "
            f"labels {labels.source} {'is not' if len(ids) == 1 else 'is'} an image of "
            f"{images_json}: the list is numbered otherwise, so nothing in it can be drawn. "
            f"{HASHED_IDS_HINT}"
        )
    others = (
        f"{matching} other images of {images_json} have"
        if matching > 1
        else (f"1 other image of {images_json} has")
    )
    return (
        f"labels {labels.source} have no result for this image, though {others} some: "
        f"{shown}. If it should have detections, they carry another image id"
    )


def _add_report_parser(commands) -> None:
    from hassod.evaluate import STUFF_MIN_ID

    report = commands.add_parser(
        "report",
        help="a static HTML report of a label set: figures, mask trees, histograms, evaluation",
        description=(
            "Write OUT/index.html (open it from disk; relative links only) with a gallery of "
            "level figures (as `hassod show`), per image the tree of masks (hover an entry to "
            "see its mask), histograms of levels, of masks per image and of scores, and with "
            "--gt the evaluation tables (as `hassod evaluate --breakdown`, also in "
            "OUT/metrics.json)."
        ),
        epilog=_EXIT_CODES_INSPECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of images")
    _add_label_view_arguments(report)
    report.add_argument(
        "--out",
        type=Path,
        required=True,
        help="report folder: new, empty, or an earlier report (replaced); not inside IMAGES_DIR",
    )
    report.add_argument("--gt", type=Path, help="COCO ground truth: adds the evaluation")
    report.add_argument(
        "--images",
        dest="images_json",
        type=Path,
        help="dataset JSON naming a results list's images (default --gt, else the ids `hassod "
        "predict` gives the folder's files)",
    )
    report.add_argument(
        "--things-only",
        action="store_true",
        help=f"evaluate without ground truth of category_id >= {STUFF_MIN_ID} (stuff)",
    )
    _add_only_gt_images_argument(report)
    report.add_argument(
        "--limit",
        type=_count,
        default=50,
        help="gallery of the first N images by file name (default 50; 0: all); the statistics "
        "and evaluation cover all",
    )
    report.add_argument("--quiet", action="store_true", help="no progress bar")


def run_report_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod._text import counted
    from hassod.labels import InputError, load_labels
    from hassod.report import display_threshold, write_report

    panels = _parse_levels(args.levels, parser)
    if args.images_dir.is_file():
        parser.error(
            f"{args.images_dir} is a file; give the folder of images it is in (hassod show "
            "draws one image)"
        )
    if not args.images_dir.is_dir():
        parser.error(f"images folder not found: {args.images_dir}")
    # Made by write_report once the input is checked: refused input leaves no folder behind.
    out_dir = _writable_dir(args.out, parser, create=False)
    try:
        labels = load_labels(args.labels, "labels")
        threshold = display_threshold(labels, args.score_threshold)
        summary = write_report(
            args.images_dir,
            labels,
            out_dir,
            gt=args.gt,
            images=args.images_json,
            things_only=args.things_only,
            only_gt_images=args.only_gt_images,
            score_threshold=threshold,
            max_masks=args.max_masks or None,
            limit=args.limit or None,
            panels=panels,
            progress=not args.quiet,
        )
    except InputError as error:
        print(f"hassod report: error: {error}", file=sys.stderr)
        return 2
    warn = "hassod report: warning:"
    for name, reason in summary.unreadable[:MAX_LISTED]:
        print(f"{warn} left out of the gallery, cannot read {name}: {reason}", file=sys.stderr)
    if len(summary.unreadable) > MAX_LISTED:
        more = len(summary.unreadable) - MAX_LISTED
        print(f"{warn} and {counted(more, 'more image')} that cannot be read", file=sys.stderr)
    if summary.missing:
        print(
            f"{warn} {counted(len(summary.missing), 'gallery image')} not found in "
            f"{args.images_dir} (listed on the page), e.g. {summary.missing[0]!r}",
            file=sys.stderr,
        )
    print(
        f"wrote {summary.index}: {counted(summary.images, 'image')}, "
        f"{counted(summary.masks, 'mask')}, gallery of {summary.shown}"
        + (", with evaluation" if summary.evaluated else "")
        + ("" if threshold is None else f" (masks scoring >= {threshold:g})")
    )
    return 0


MAX_LISTED = 10  # report's warnings name this many unreadable images, then count the others


def _parse_levels(text: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    from hassod.report import parse_levels

    try:
        return parse_levels(text)
    except ValueError as error:
        parser.error(f"--levels: {error}")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"timm ViT name (default {DEFAULT_BACKBONE})"
    )
    parser.add_argument(
        "--weights", type=Path, help="local checkpoint (default: the timm hub, needs network)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random backbone (seeded), for smoke tests only: meaningless pseudo-labels",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=480,
        help="side the image is resized to, rounded down to the patch size (default 480)",
    )
    parser.add_argument(
        "--feature-transform",
        default="auto",
        choices=["auto", "none", "remove-key-bias", "center"],
        help="key transform (default auto: none for DINO v1, center for other backbones)",
    )
    parser.add_argument(
        "--pos-embed-resize",
        default="auto",
        choices=["auto", "dino", "size"],
        help="how the position table is resized to the input's token grid (default auto: DINO "
        "v1's own "
        "way, scale (grid+0.1)/old, for DINO v1 backbones; an explicit size for the others)",
    )


#: ``--crf-method`` choices -> CrfParams fields of the torch backend.
CRF_METHODS = {
    "spmm": {"torch_method": "spmm", "torch_precision": "float32"},
    "triton": {"torch_method": "triton", "torch_precision": "float32"},
    "triton-float16": {"torch_method": "triton", "torch_precision": "float16"},
}


def _crf_backend(args: argparse.Namespace) -> str:
    """``--crf auto``: the batched torch CRF when the run's device is CUDA, else native."""
    backend = getattr(args, "crf", "native")
    if backend != "auto":
        return backend
    return "torch" if _runs_on_cuda(args) else "native"


def _runs_on_cuda(args: argparse.Namespace) -> bool:
    """Whether ``--device`` (auto: CUDA when available) is a CUDA device."""
    import torch

    device = getattr(args, "device", "auto")
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _crf_params(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """CrfParams from --crf and --crf-method; the Triton kernels need the torch backend on a
    CUDA device (on the CPU they only run in Triton's interpreter, far too slowly)."""
    from hassod.postprocess import CrfParams

    backend = _crf_backend(args)
    method = getattr(args, "crf_method", "auto")
    if method == "auto":
        method = "spmm"
        if backend == "torch" and _runs_on_cuda(args):
            from hassod import crf_triton

            method = "triton" if crf_triton.available() else "spmm"
    elif method != "spmm":
        if backend != "torch":
            parser.error(f"--crf-method {method} applies to the torch CRF backend, not {backend}")
        if not _runs_on_cuda(args):
            device = getattr(args, "device", "auto")
            parser.error(f"--crf-method {method} needs a CUDA device (--device {device})")
    return CrfParams(backend=backend, **CRF_METHODS[method])


def _discovery_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from hassod.discover import DiscoveryConfig

    try:
        return DiscoveryConfig(
            backbone=args.backbone,
            size=args.size,
            thresholds=tuple(getattr(args, "thresholds", None) or (0.4, 0.2, 0.1)),
            feature_transform=args.feature_transform,
            pos_embed_resize=getattr(args, "pos_embed_resize", "auto"),
            crf=_crf_params(args, parser),
            near_duplicate_iou=getattr(args, "near_duplicate_iou", None),
        )
    except ValueError as error:
        parser.error(str(error))


def run_discover_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod import discover_run

    if args.near_duplicate_iou is not None and not 0.0 < args.near_duplicate_iou <= 1.0:
        parser.error(f"--near-duplicate-iou must be in (0, 1], got {args.near_duplicate_iou}")
    config = _discovery_config(args, parser)
    if not args.out.name:
        parser.error(f"--out {str(args.out)!r} is not a file name (e.g. pseudo.json)")
    if args.max_pixels < 0:
        parser.error(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    try:
        shard = discover_run.parse_shard(args.shard) if args.shard else None
        options = discover_run.RunOptions(
            images_dir=args.images_dir,
            out=args.out,
            config=config,
            weights=args.weights,
            random_weights=args.random_weights,
            device=args.device,
            amp=args.amp,
            workers=args.workers,
            batch_size=args.batch_size,
            shard=shard,
            limit=args.limit,
            restart=args.restart,
            chunk_size=args.chunk_size,
            max_pixels=args.max_pixels or None,
            progress=not args.quiet,
        )
        with _warnings_as_lines("discover"):
            summary = discover_run.run_discover(options)
    except (discover_run.UsageError, discover_run.RunError, discover_run.Interrupted) as error:
        return _report_run_error("discover", error)
    print(summary.format())
    failure = summary.nothing_usable()
    if failure:
        print(f"hassod discover: {failure}", file=sys.stderr)
        return discover_run.EXIT_RUN_ERROR
    if summary.shard is not None:
        count = summary.shard[1]
        print(
            f"shard {summary.shard[0]}/{count} done; when all {count} are, join them with: "
            f"hassod merge-shards {args.out}.parts/shard-*-of-{count}/ --out {args.out}"
        )
    return 0


def _report_run_error(command: str, error: Exception) -> int:
    """Print a discovery run's error and return its exit code (2 usage, 1 run, 130 interrupt)."""
    from hassod import discover_run

    if isinstance(error, discover_run.UsageError):
        print(f"hassod {command}: error: {error}", file=sys.stderr)
        return discover_run.EXIT_USAGE
    print(f"hassod {command}: {error}", file=sys.stderr)
    if isinstance(error, discover_run.Interrupted):
        return discover_run.EXIT_INTERRUPTED
    return discover_run.EXIT_RUN_ERROR


def run_merge_command(args: argparse.Namespace) -> int:
    from hassod import discover_run
    from hassod._text import counted

    try:
        with _warnings_as_lines("merge-shards"):  # e.g. a damaged chunk of a shard folder
            coco = discover_run.merge_shards(args.inputs, args.out, args.allow_partial)
    except discover_run.UsageError as error:
        print(f"hassod merge-shards: error: {error}", file=sys.stderr)
        return discover_run.EXIT_USAGE
    print(
        f"wrote {args.out}: {counted(len(coco['images']), 'image')}, "
        f"{counted(len(coco['annotations']), 'mask')}, {len(coco['failed'])} failed, from "
        f"{counted(len(args.inputs), 'input')}"
    )
    return 0


def run_sa1b_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod._io import atomic_write_json, foreign_file, json_signature, not_replaced
    from hassod._progress import progress_bar
    from hassod._text import counted
    from hassod.labels import InputError
    from hassod.sa1b import SA1B_DESCRIPTION, sa1b_files, sa1b_to_coco

    _writable_file(args.out, parser)
    if foreign_file(args.out, (json_signature(SA1B_DESCRIPTION),)):
        parser.error(not_replaced(f"--out {args.out}", "a ground truth that sa1b-to-coco wrote"))
    try:
        files = sa1b_files(args.folder)
        bar = progress_bar(
            files, desc="SA-1B files", unit="file", enabled=not args.quiet, leave=False
        )
        coco = sa1b_to_coco(bar)
    except InputError as error:
        print(f"hassod sa1b-to-coco: error: {error}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, coco, parents=True)
    print(
        f"wrote {args.out}: {counted(len(coco['images']), 'image')}, "
        f"{counted(len(coco['annotations']), 'mask')}"
    )
    return 0


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from hassod import discover_run

    config = _discovery_config(args, parser)
    out_dir = _writable_dir(args.out, parser)
    images_dir = out_dir / "images"
    demo_files = {f"{name}.png" for name in discover_run.DEMO_IMAGES}
    if images_dir.is_dir():  # the demo labels every image there: only its own photos
        from hassod.image_folder import list_images

        others = [name for name in list_images(images_dir) if name not in demo_files]
        if others:
            parser.error(
                f"{images_dir} holds images that are not the demo's ({others[0]!r}"
                f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}); give the demo a "
                "new or empty --out folder"
            )
    from hassod._io import foreign_file, not_replaced
    from hassod.visualize import is_hassod_png

    for name in sorted(demo_files):
        figure = out_dir / "figures" / name
        if foreign_file(figure, is_hassod_png):
            advice = "give the demo a new or empty --out folder"
            parser.error(not_replaced(figure, "a figure of hassod", advice))
    discover_run.write_demo_images(images_dir)
    options = discover_run.RunOptions(
        images_dir=images_dir,
        out=out_dir / "pseudo.json",
        config=config,
        weights=args.weights,
        random_weights=args.random_weights,
        device=args.device,
        workers=args.workers,
        restart=True,  # the demo always starts afresh (other settings may have made the last)
        progress=not args.quiet,
    )
    try:
        with _warnings_as_lines("discover"):
            summary = discover_run.run_discover(options)
    except discover_run.Interrupted:  # nothing to resume: every demo run starts afresh
        print("hassod demo: interrupted; run it again to start afresh", file=sys.stderr)
        return discover_run.EXIT_INTERRUPTED
    except (discover_run.UsageError, discover_run.RunError) as error:
        return _report_run_error("demo", error)
    print(summary.format("hassod demo"))
    failure = summary.nothing_usable()
    if failure:
        print(f"hassod demo: {failure}", file=sys.stderr)
        return discover_run.EXIT_RUN_ERROR
    coco = json.loads(summary.json_path.read_text(encoding="utf-8"))
    figures = discover_run.write_level_figures(coco, images_dir, out_dir / "figures")
    print(f"wrote {len(figures)} figures in {out_dir / 'figures'}")
    return 0


def run_cluster(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import numpy as np

    from hassod.cluster import check_thresholds, fast_cluster

    try:
        thresholds = check_thresholds(args.thresholds)
    except ValueError as error:
        parser.error(str(error))
    if args.size is not None and args.size < 1:
        parser.error(f"--size must be a positive number of pixels, got {args.size}")
    image, name = _read_image(args.image, parser)
    out_dir = _writable_dir(args.out, parser)
    from hassod._io import foreign_file, not_replaced
    from hassod.visualize import is_hassod_png

    for path, own in (
        (out_dir / f"{name}_partitions.png", is_hassod_png),
        (out_dir / f"{name}_labels.npz", _is_cluster_npz),
    ):
        if foreign_file(path, own):
            parser.error(not_replaced(path, "a file hassod cluster wrote"))

    from hassod.features import InputSizeError, image_features, load_vit, round_to_patch

    try:
        model = load_vit(
            args.backbone,
            weights=args.weights,
            random_weights=args.random_weights,
            # Build at the input size so the position table is resized once, from the original.
            **({"img_size": args.size} if args.size else {}),
        )
    except InputSizeError as error:
        parser.error(f"--size: {error}")
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"hassod cluster: error: {error}", file=sys.stderr)
        return 1
    size = args.size
    if size is not None:
        try:
            size = round_to_patch(model, size)  # as the help says (the grid is the same)
        except ValueError as error:
            parser.error(f"--size: {error}")
    # Raw keys for DINO v1 (the paper's setting); other backbones' raw keys carry a large
    # shared component that merges everything (DESIGN.md 2b), so centre them by default.
    transform = args.transform or ("none" if args.backbone.endswith(".dino") else "center")
    start = time.perf_counter()
    features = image_features(model, image, size=size, transform=transform)
    extracted = time.perf_counter()
    result = fast_cluster(features, thresholds)
    clustered = time.perf_counter()

    from hassod.visualize import partition_figure, save_stamped_png

    figure_path = out_dir / f"{name}_partitions.png"
    labels_path = out_dir / f"{name}_labels.npz"
    figure = partition_figure(image, result)
    _atomic_save(figure_path, lambda path: save_stamped_png(figure, path, "hassod cluster"))
    _atomic_save(
        labels_path,
        lambda path: np.savez_compressed(
            path, labels=result.labels, thresholds=result.thresholds, merges=result.merges
        ),
    )
    regions = ", ".join(f"{t:g}: {n}" for t, n in zip(result.thresholds, result.num_regions))
    print(
        f"{name}: grid {features.shape[0]}x{features.shape[1]}x{features.shape[2]} "
        f"({transform} keys), regions {{{regions}}}; features {1e3 * (extracted - start):.0f} ms, "
        f"clustering {1e3 * (clustered - extracted):.1f} ms"
    )
    print(f"wrote {figure_path} and {labels_path}")
    return 0


def _is_cluster_npz(head: bytes) -> bool:
    """Whether a file's first bytes are cluster's label maps: NumPy's zip whose first member
    (after the 30-byte local header and its name length fields) is labels.npy."""
    return head.startswith(b"PK\x03\x04") and head[30:40] == b"labels.npy"


def _read_image(path: str | None, parser: argparse.ArgumentParser):
    """The image decoded as ``discover`` decodes it (EXIF, 16-bit scaling, any PIL mode)."""
    from hassod.discover import UnreadableImage, read_image

    if path is None:
        import skimage.data

        return skimage.data.astronaut(), "astronaut"
    file = Path(path)
    if file.is_dir():
        parser.error(f"{file} is a folder; give one image file (hassod discover takes folders)")
    if not file.is_file():
        parser.error(f"image not found: {file}")
    try:
        image = read_image(file, None)
    except UnreadableImage as error:
        parser.error(f"cannot read image {file}: {error}")
    return image, file.stem


def _writable_file(path: Path, parser: argparse.ArgumentParser, option: str = "--out") -> Path:
    """An output file's path: a name that is not a folder, whose folder exists and is
    writable or can be made in a writable one (checked before the work, not after it; nothing
    is created: the writer makes the missing folders)."""
    if not path.name or path.name in (".", ".."):
        parser.error(f"{option} {str(path)!r} is not a file name")
    if path.is_dir():
        parser.error(f"{option} {path} is a folder; give a file name inside it")
    try:
        path = output_target(path)
    except OSError as error:
        parser.error(f"{option}: {error}")
    _writable_folder(path.parent if str(path.parent) else Path("."), parser, option, path)
    return path


def _writable_folder(
    folder: Path, parser: argparse.ArgumentParser, option: str = "--out", named: Path | None = None
) -> Path:
    """An output folder that exists and is writable, or can be made in a writable one: its
    nearest existing folder is probed, nothing is created (the writer makes the missing
    folders). ``named``: the path the option gave (``folder``'s file), for the message."""
    named = folder if named is None else named
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        if existing == named:
            parser.error(f"{option} {named} is a file, not a folder")
        parser.error(f"{option} {named}: {existing} is a file, not a folder")
    try:  # a probe file, removed at once: the folder's permissions alone miss read-only mounts
        import tempfile

        with tempfile.NamedTemporaryFile(dir=existing, prefix=".hassod_write_test"):
            pass
    except OSError as error:
        parser.error(f"output folder {existing} is not writable: {error}")
    return folder


def _writable_dir(
    path: Path, parser: argparse.ArgumentParser, option: str = "--out", create: bool = True
) -> Path:
    """An output folder: not a file, under no file, writable (a probe file, removed at once).
    Made with its missing parents when ``create``; else only checked (the nearest existing
    folder above it must be writable), so that input refused later leaves nothing behind."""
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if existing == path and not path.is_dir():
        parser.error(f"{option} {path} is a file; give a folder")
    if not existing.is_dir():
        parser.error(f"{option} {path}: {existing} is a file, not a folder")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        import tempfile

        with tempfile.NamedTemporaryFile(dir=existing, prefix=".hassod_write_test"):
            pass
    except OSError as error:
        parser.error(f"output folder {existing} is not writable: {error}")
    return path


if __name__ == "__main__":
    sys.exit(main())
