"""The ``hassod`` command line.

Exit codes: 0 success, 1 a run-time failure (e.g. weights that cannot be loaded), 2 bad
arguments or input (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_BACKBONE = "vit_base_patch8_224.dino"


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    if args.command == "cluster":
        return run_cluster(args, parser)
    return 2  # pragma: no cover - argparse enforces a command


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
