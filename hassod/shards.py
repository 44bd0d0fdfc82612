"""Shards of ``hassod discover``: splitting a listing between runs and merging their outputs.

``shard=(i, N)`` (``--shard i/N``, :func:`parse_shard`) takes the images whose index in the
sorted listing is ``i`` modulo ``N``, works in ``OUT.parts/shard-i-of-N/`` and writes
``OUT-stem.shard-i-of-N.json`` (:func:`output_paths`); under ``torchrun`` (``RANK`` /
``WORLD_SIZE`` in the environment, :func:`shard_from_env`) each rank takes its shard by itself
and uses ``cuda:LOCAL_RANK``. :func:`merge_shards` joins shard JSONs or shard work folders into
the JSON a single run would have written.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from hassod._io import atomic_write_json, not_replaced
from hassod.coco import PSEUDO_LABEL_DESCRIPTION, assemble, is_foreign_output
from hassod.labels import InputError, load_labels
from hassod.run_errors import DISK_ERRNOS, UsageError
from hassod.work_folder import MANIFEST, WorkFolder, identity_differences, run_identity


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return index, count


def shard_from_env(environ: dict | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or None outside a multi-process launch."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except ValueError:
        raise UsageError(
            f"RANK / WORLD_SIZE are not integers: {environ['RANK']!r} / {environ['WORLD_SIZE']!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return (rank, world) if world > 1 else None


def output_paths(out: Path, shard: tuple[int, int] | None) -> tuple[Path, Path]:
    """``(json_path, parts_dir)`` of a run writing ``out`` (one shard of it, if ``shard``)."""
    parts = out.with_name(out.name + ".parts")
    if shard is None:
        return out, parts
    tag = f"shard-{shard[0]}-of-{shard[1]}"
    return out.with_name(f"{out.stem}.{tag}{out.suffix}"), parts / tag


def merge_shards(inputs: Sequence[str | Path], out: str | Path, allow_partial: bool = False):
    """Join shard outputs (shard JSON files or shard work folders) into one COCO JSON.

    All inputs must have the same settings (see :func:`run_identity`); unless
    ``allow_partial``, they must be the shards ``0 .. N-1`` of one ``N``, each once, and work
    folders must come from finished runs. The result equals the JSON of a single run over the
    same images (its ``info`` has no ``shard``; ``date_created`` is the earliest).

    Returns:
        The merged COCO dict (also written to ``out``).

    Raises:
        UsageError: unreadable inputs, mixed settings, missing or repeated shards.
    """
    if not inputs:
        raise UsageError("merge-shards needs at least one shard JSON or shard folder")
    if any(Path(out).resolve() == Path(item).resolve() for item in inputs):
        raise UsageError(f"--out {out} is one of the inputs; give the merged JSON another name")
    if is_foreign_output(out):
        raise UsageError(not_replaced(f"--out {out}", "a pseudo-label JSON of hassod"))
    loaded = [_load_shard(Path(item), allow_partial) for item in inputs]
    first_info = loaded[0][0]
    for path, (info, _, _) in zip(inputs, loaded):
        differences = identity_differences(run_identity(first_info), run_identity(info))
        if differences:
            raise UsageError(
                f"{path} was made with other settings than {inputs[0]}; refusing to mix them: "
                + "; ".join(differences)
            )
    shards = [info.get("shard") for info, _, _ in loaded]
    if not allow_partial:
        if any(shard is None for shard in shards):
            raise UsageError(
                "every input must be one shard (from --shard or torchrun); use --allow-partial "
                "to merge other outputs"
            )
        counts = sorted({shard["count"] for shard in shards})
        if len(counts) != 1:
            raise UsageError(
                f"the inputs are shards of {' and of '.join(map(str, counts))}: give the shards "
                "of one run"
            )
        indices = [shard["index"] for shard in shards]
        repeated = sorted({index for index in indices if indices.count(index) > 1})
        missing = sorted(set(range(counts[0])) - set(indices))
        if repeated or missing:
            said = [f"shard {i}/{counts[0]} given twice" for i in repeated]
            said += [f"shard {i}/{counts[0]} missing" for i in missing]
            raise UsageError(
                f"{'; '.join(said)}: give each shard of the run once (use --allow-partial to "
                "merge an incomplete set anyway)"
            )
    else:
        partial = _incomplete_shards(shards)
        if partial:  # allowed, but the merged JSON lacks images: say which shards
            warnings.warn(f"merging an incomplete set of shards: {partial}", stacklevel=2)
    entries, failures = [], {}
    seen: dict[str, str] = {}
    for path, (_, shard_entries, shard_failed) in zip(inputs, loaded):
        for image, records in shard_entries:
            name = image["file_name"]
            if name in seen:
                raise UsageError(f"image {name!r} is in both {seen[name]} and {path}")
            seen[name] = str(path)
            entries.append((image, records))
        for failure in shard_failed:
            failures[failure["file_name"]] = failure
    failed = sorted(
        (failure for name, failure in failures.items() if name not in seen),
        key=lambda failure: failure["file_name"],
    )
    info = {key: value for key, value in first_info.items() if key != "shard"}
    info["date_created"] = min(info_item.get("date_created") or "" for info_item, _, _ in loaded)
    try:
        coco = assemble(entries, info, failed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, coco)
    except OSError as error:
        if error.errno in DISK_ERRNOS:
            raise  # the disk, not the arguments: the command's one-line run-time error (1)
        raise UsageError(f"cannot write {out}: {error}") from None
    return coco


def _incomplete_shards(shards: list) -> str:
    """What is missing from a set of shard records (``{"index", "count"}`` or None), or ""."""
    counts = sorted({shard["count"] for shard in shards if shard is not None})
    said = []
    for count in counts:
        indices = {shard["index"] for shard in shards if shard and shard["count"] == count}
        missing = sorted(set(range(count)) - indices)
        if missing:
            said.append(f"shard(s) {', '.join(map(str, missing))} of {count} missing")
    return "; ".join(said)


def _load_shard(path: Path, allow_partial: bool) -> tuple[dict, list, list[dict]]:
    """``(info, entries, failures)`` of a shard JSON or a shard work folder."""
    if path.is_dir():
        folder = WorkFolder(path)
        manifest = folder.read_manifest()
        if manifest is None:
            raise UsageError(f"{path} is not a hassod work folder (no {MANIFEST})")
        if not manifest.get("completed") and not allow_partial:
            raise UsageError(
                f"the run writing {path} has not finished; finish it (re-run its command) or "
                "use --allow-partial"
            )
        entries, failures = folder.load()
        return manifest["info"], list(entries.values()), list(failures.values())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read shard {path}: {error}") from None
    missing = [
        key
        for key, kind in (("info", dict), ("images", list), ("annotations", list))
        if not isinstance(data, dict) or not isinstance(data.get(key), kind)
    ]
    if missing:
        found = (
            "a JSON list (a COCO results list?)"
            if isinstance(data, list)
            else f"a JSON {type(data).__name__}"
            if not isinstance(data, dict)
            else "a dict without " + ", ".join(map(repr, missing))
        )
        raise UsageError(
            f"{path} is not a hassod output JSON: expected a dict with an 'info' object and "
            f"'images' and 'annotations' lists (as `hassod discover` writes), got {found}"
        )
    try:  # ids, file names and fields checked as everywhere else
        load_labels(data, "shard", str(path))
    except InputError as error:
        raise UsageError(str(error)) from None
    info, images, annotations = data["info"], data["images"], data["annotations"]
    for index, item in enumerate([*images, *annotations]):
        for key in ("id", "parent_id") if index >= len(images) else ("id",):
            value = item.get(key)
            # Parents are stored relative to the image's first annotation id: integers only.
            if value is not None and not isinstance(value, int):
                raise UsageError(f"shard {path}: {key} {value!r} is not an integer")
    for image in images:
        if not isinstance(image.get("file_name"), str):
            raise UsageError(f"shard {path}: image id {image['id']!r} has no 'file_name'")
    description = data["info"].get("description")
    if description != PSEUDO_LABEL_DESCRIPTION:  # e.g. a ground truth: say so, not its settings
        raise UsageError(
            f"{path} is not a pseudo-label JSON of hassod (its info.description is "
            f"{description!r}); merge-shards joins the outputs of `hassod discover`"
        )
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
    for annotation in annotations:
        by_image[annotation["image_id"]].append(annotation)
    entries = []
    for image in images:
        records = []
        group = by_image[image["id"]]
        first_id = group[0]["id"] if group else 0
        for annotation in group:
            record = {
                key: value
                for key, value in annotation.items()
                if key not in ("id", "image_id", "parent_id")
            }
            parent = annotation.get("parent_id")
            record["parent"] = None if parent is None else parent - first_id
            records.append(record)
        entries.append((image, records))
    return info, entries, list(data.get("failed", []))
