"""The ``hassod`` command line.

Commands: ``discover`` (stage 1 over a folder: COCO pseudo-labels, resumable and sharded),
``merge-shards``, ``demo`` (discovery on three sample photos, with pictures) and ``cluster``
(one image's partitions as a picture).

Exit codes: 0 success (``discover``: images that could not be used are listed in the JSON's
``failed``, not an error), 1 a run-time failure (e.g. weights that cannot be loaded, such as
the default hub weights offline without ``--weights``), 2 bad arguments or input found before
any work (missing or empty images folder, unwritable output, settings that differ from a stored
run; argparse's convention), 130 interrupted (finished images are saved; re-run to resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_BACKBONE = "vit_base_patch8_224.dino"


def main(argv: list[str] | None = None) -> int:
    from hassod.discover import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(prog="hassod", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cluster = commands.add_parser(
        "cluster",
        help="hierarchical adaptive clustering of one image's ViT features, as a picture",
        description=(
            "Extract frozen ViT attention keys from an image, cluster them at each threshold "
            "and write a picture of the partitions (PNG) plus the label maps (NPZ)."
        ),
    )
    cluster.add_argument("image", nargs="?", help="image file (default: scikit-image astronaut)")
    cluster.add_argument("--out", type=Path, default=Path("hassod_cluster"), help="output folder")
    cluster.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm ViT name")
    cluster.add_argument("--weights", type=Path, help="local checkpoint (else the timm hub)")
    cluster.add_argument(
        "--random-weights", action="store_true", help="random backbone, for smoke tests only"
    )
    cluster.add_argument("--size", type=int, help="input side (default 480 rounded to the patch)")
    cluster.add_argument(
        "--transform",
        default=None,
        choices=["none", "remove-key-bias", "center"],
        help="feature transform (default: none for DINO v1, center for other backbones)",
    )
    cluster.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.4, 0.2, 0.1], help="merge thresholds"
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
        "--thresholds", type=float, nargs="+", default=[0.4, 0.2, 0.1], help="merge thresholds"
    )
    discover.add_argument(
        "--near-duplicate-iou",
        type=float,
        default=None,
        metavar="X",
        help="also drop masks with IoU >= X with a kept mask (default: exact duplicates only)",
    )
    discover.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    discover.add_argument(
        "--amp",
        default="off",
        choices=["off", "bf16", "fp16"],
        help="autocast the backbone on CUDA (default off: fp32, the reference features)",
    )
    discover.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for clustering/CRF/filters (default: usable CPUs; 0: in this process)",
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
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("inputs", nargs="+", type=Path, help="shard JSON files or shard folders")
    merge.add_argument("--out", type=Path, required=True, help="merged COCO JSON file")
    merge.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge an incomplete set of shards, unfinished shard folders or unsharded outputs",
    )

    demo = commands.add_parser(
        "demo",
        help="discovery on three sample photos, with pictures of the levels",
        description=(
            "Write scikit-image's astronaut, coffee and chelsea photos to OUT/images/, run "
            "`discover` on them (OUT/pseudo.json) and draw OUT/figures/NAME.png: input | whole "
            "objects | whole + parts | whole + parts + subparts."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("hassod_demo"), help="output folder")
    _add_model_arguments(demo)
    demo.add_argument("--device", default="auto", help="cpu, cuda or auto")
    demo.add_argument("--workers", type=int, default=None, help="post-processing processes")

    args = parser.parse_args(argv)
    if args.command == "cluster":
        return run_cluster(args, parser)
    if args.command == "discover":
        return run_discover_command(args, parser)
    if args.command == "merge-shards":
        return run_merge_command(args)
    if args.command == "demo":
        return run_demo_command(args, parser)
    return 2  # pragma: no cover - argparse enforces a command


_EXIT_CODES = """exit codes:
  0    success (discover: unusable images are listed in the JSON's 'failed')
  1    run-time failure, e.g. weights that cannot be loaded (offline without --weights)
  2    bad arguments or input, found before any work: missing or empty images folder,
       unwritable output, settings that differ from the stored run (see --restart)
  130  interrupted: finished images are saved; run the same command again to resume"""


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
        help="key transform (auto: none for DINO v1, center for other backbones)",
    )


def _discovery_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from hassod.discover import DiscoveryConfig

    try:
        return DiscoveryConfig(
            backbone=args.backbone,
            size=args.size,
            thresholds=tuple(getattr(args, "thresholds", None) or (0.4, 0.2, 0.1)),
            feature_transform=args.feature_transform,
            near_duplicate_iou=getattr(args, "near_duplicate_iou", None),
        )
    except ValueError as error:
        parser.error(str(error))


def run_discover_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hassod import discover_run

    config = _discovery_config(args, parser)
    if args.near_duplicate_iou is not None and not 0.0 < args.near_duplicate_iou <= 1.0:
        parser.error(f"--near-duplicate-iou must be in (0, 1], got {args.near_duplicate_iou}")
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
        summary = discover_run.run_discover(options)
    except discover_run.UsageError as error:
        print(f"hassod discover: error: {error}", file=sys.stderr)
        return discover_run.EXIT_USAGE
    except discover_run.RunError as error:
        print(f"hassod discover: {error}", file=sys.stderr)
        return discover_run.EXIT_RUN_ERROR
    except discover_run.Interrupted as error:
        print(f"hassod discover: {error}", file=sys.stderr)
        return discover_run.EXIT_INTERRUPTED
    print(summary.format())
    if summary.shard is not None:
        count = summary.shard[1]
        print(
            f"shard {summary.shard[0]}/{count} done; when all {count} are, join them with: "
            f"hassod merge-shards {args.out}.parts/shard-*-of-{count}/ --out {args.out}"
        )
    return 0


def run_merge_command(args: argparse.Namespace) -> int:
    from hassod import discover_run

    try:
        coco = discover_run.merge_shards(args.inputs, args.out, args.allow_partial)
    except discover_run.UsageError as error:
        print(f"hassod merge-shards: error: {error}", file=sys.stderr)
        return discover_run.EXIT_USAGE
    print(
        f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} masks, "
        f"{len(coco['failed'])} failed, from {len(args.inputs)} inputs"
    )
    return 0


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from hassod import discover_run

    config = _discovery_config(args, parser)
    out_dir = _writable_dir(args.out, parser)
    images_dir = out_dir / "images"
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
    )
    try:
        summary = discover_run.run_discover(options)
    except discover_run.UsageError as error:
        print(f"hassod demo: error: {error}", file=sys.stderr)
        return discover_run.EXIT_USAGE
    except discover_run.RunError as error:
        print(f"hassod demo: {error}", file=sys.stderr)
        return discover_run.EXIT_RUN_ERROR
    except discover_run.Interrupted as error:
        print(f"hassod demo: {error}", file=sys.stderr)
        return discover_run.EXIT_INTERRUPTED
    print(summary.format())
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
    image, name = _read_image(args.image, parser)
    out_dir = _writable_dir(args.out, parser)

    from hassod.features import image_features, load_vit

    try:
        model = load_vit(
            args.backbone,
            weights=args.weights,
            random_weights=args.random_weights,
            # Build at the input size so the position table is resized once, from the original.
            **({"img_size": args.size} if args.size else {}),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"hassod: {error}", file=sys.stderr)
        return 1
    # Raw keys for DINO v1 (the paper's setting); other backbones' raw keys carry a large
    # shared component that merges everything (DESIGN.md 2b), so centre them by default.
    transform = args.transform or ("none" if args.backbone.endswith(".dino") else "center")
    start = time.perf_counter()
    features = image_features(model, image, size=args.size, transform=transform)
    extracted = time.perf_counter()
    result = fast_cluster(features, thresholds)
    clustered = time.perf_counter()

    from hassod.visualize import partition_figure

    figure_path = out_dir / f"{name}_partitions.png"
    labels_path = out_dir / f"{name}_labels.npz"
    _atomic_save(figure_path, lambda path: partition_figure(image, result).save(path, format="PNG"))
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


def _read_image(path: str | None, parser: argparse.ArgumentParser):
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path is None:
        import skimage.data

        return skimage.data.astronaut(), "astronaut"
    file = Path(path)
    if not file.is_file():
        parser.error(f"image not found: {file}")
    try:
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        parser.error(f"cannot read image {file}: {error}")
    return np.asarray(image), file.stem


def _writable_dir(path: Path, parser: argparse.ArgumentParser) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".hassod_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        parser.error(f"output folder {path} is not writable: {error}")
    return path


def _atomic_save(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a partial file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())
