"""Level figures, `hassod show` and the static HTML report (`hassod report`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from hassod.cli import main
from hassod.coco import assemble, encode_mask, image_id_for, image_record, mask_annotations
from hassod.labels import InputError
from hassod.report import OUTLINE_WIDTHS, parse_levels, write_report
from hassod.visualize import CAPTION_HEIGHT, _outline, level_figure, region_colours

HEIGHT, WIDTH = 120, 160
GREY = 100
# (y0, y1, x0, x1), level, parent index: a whole with a part with a subpart, a second whole with
# a part, and a lone whole.
SCENE = [
    ((10, 110, 10, 80), 0, -1),  # 0 whole
    ((20, 60, 20, 70), 1, 0),  # 1 part of 0
    ((25, 40, 25, 45), 2, 1),  # 2 subpart of 1
    ((20, 70, 100, 150), 0, -1),  # 3 whole
    ((30, 50, 110, 130), 1, 3),  # 4 part of 3
    ((85, 110, 100, 150), 0, -1),  # 5 whole
]


def scene_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = np.zeros((len(SCENE), HEIGHT, WIDTH), dtype=bool)
    for index, ((y0, y1, x0, x1), _, _) in enumerate(SCENE):
        masks[index, y0:y1, x0:x1] = True
    levels = np.array([level for _, level, _ in SCENE])
    parents = np.array([parent for _, _, parent in SCENE])
    return masks, levels, parents


@pytest.fixture
def scene(tmp_path) -> dict:
    """images/scene.png (flat grey) and its pseudo-labels, as `hassod discover` writes them."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)).save(images / "scene.png")
    masks, levels, parents = scene_masks()
    records = mask_annotations(
        masks,
        levels,
        parents,
        thresholds=np.array([0.1, 0.2, 0.4, 0.1, 0.4, 0.2]),
        scores=np.linspace(0.9, 0.4, len(SCENE)),
    )
    coco = assemble([(image_record("scene.png", WIDTH, HEIGHT), records)], info={})
    labels = tmp_path / "pseudo.json"
    labels.write_text(json.dumps(coco))
    return {"dir": tmp_path, "images": images, "labels": labels, "coco": coco}


def panel_slices(figure: np.ndarray, panel_width: int, count: int) -> list[np.ndarray]:
    top = CAPTION_HEIGHT
    return [
        figure[top : top + HEIGHT, i * panel_width : (i + 1) * panel_width] for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def test_parse_levels():
    assert parse_levels("whole,part,subpart") == (0, 1, 2)
    assert parse_levels("subpart, whole") == (2, 0)
    assert parse_levels("1") == (1,)
    with pytest.raises(ValueError, match="among"):
        parse_levels("whole,object")
    with pytest.raises(ValueError, match="twice"):
        parse_levels("part,part")


@pytest.mark.parametrize("panels", [(0, 1, 2), (0, 2), (1,)])
def test_level_figure_size_and_panel_count(panels):
    masks, levels, _ = scene_masks()
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    plain = level_figure(image, masks, levels, panel_height=60, panels=panels)
    assert plain.size == ((1 + len(panels)) * 80, 60 + CAPTION_HEIGHT)
    captions = [f"#{i}" for i in range(len(masks))]
    with_legend = level_figure(
        image, masks, levels, panel_height=60, panels=panels, legend=captions
    )
    assert with_legend.size[0] == plain.size[0] and with_legend.size[1] > plain.size[1]
    # The panels themselves do not change with a legend under them.
    assert np.array_equal(np.asarray(with_legend)[: plain.size[1]], np.asarray(plain))
    with pytest.raises(ValueError, match="panels"):
        level_figure(image, masks, levels, panels=(3,))
    with pytest.raises(ValueError, match="legend"):
        level_figure(image, masks, levels, legend=["only one"])


@pytest.mark.parametrize("legend", [False, True])
def test_each_mask_coloured_in_its_panels_only(legend):
    """Separate masks: a mask's pixels change exactly in the panels that include its level."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = np.zeros((4, HEIGHT, WIDTH), dtype=bool)
    masks[0, 5:50, 5:60] = True
    masks[1, 60:110, 5:60] = True
    masks[2, 5:50, 80:150] = True
    masks[3, 60:110, 80:150] = True
    levels = np.array([0, 1, 2, 1])
    colours = region_colours(4)
    figure = np.asarray(
        level_figure(
            image,
            masks,
            levels,
            panel_height=HEIGHT,  # no resampling: compare pixel by pixel
            outline_widths=OUTLINE_WIDTHS,
            legend=[f"#{i}" for i in range(4)] if legend else None,
        )
    )
    panels = panel_slices(figure, WIDTH, 4)
    assert np.array_equal(panels[0], image)
    outside = ~masks.any(axis=0)
    for depth, panel in enumerate(panels[1:]):
        assert np.array_equal(panel[outside], image[outside])
        for index, mask in enumerate(masks):
            changed = (panel != image).any(axis=2)
            if levels[index] <= depth:
                outline = _outline(mask, OUTLINE_WIDTHS[levels[index]])
                assert (panel[outline] == colours[index]).all()
                interior = mask & ~outline
                blend = (0.55 * image[interior] + 0.45 * colours[index].astype(np.float32)).astype(
                    np.uint8
                )
                assert np.abs(panel[interior].astype(int) - blend).max() <= 1
                assert changed[mask].mean() > 0.95  # (a blend can equal the input by chance)
            else:
                assert np.array_equal(panel[mask], image[mask]), (depth, index)


def test_smaller_masks_of_a_level_are_painted_over_larger_ones():
    """Within a level, larger masks are painted first (level_figure's docstring), so a small
    whole inside a large one keeps its own outline and is blended last, whatever the order
    the masks are listed in."""
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 40:60, 40:60] = True  # small, listed first
    masks[1, 10:110, 10:150] = True  # large, around it
    colours = np.array([[250, 0, 0], [0, 0, 250]], dtype=np.uint8)
    figure = np.asarray(
        level_figure(
            image, masks, np.array([0, 0]), panel_height=HEIGHT, panels=(0,), colours=colours
        )
    )
    whole = panel_slices(figure, WIDTH, 2)[1]
    outline = _outline(masks[0], 1)
    assert (whole[outline] == colours[0]).all()
    under = 0.55 * GREY + 0.45 * colours[1].astype(np.float32)  # the large mask's blend
    expected = (0.55 * under + 0.45 * colours[0].astype(np.float32)).astype(np.uint8)
    interior = masks[0] & ~outline
    assert np.abs(whole[interior].astype(int) - expected).max() <= 1


def test_a_whole_keeps_its_outline_where_its_parts_meet_its_edge():
    """Parts are painted over their whole; their fills and outlines used to cover the whole's
    3 px outline along a shared edge (a real photo's part panel then showed a 1 px sliver or
    nothing of it, and which parts made up which whole could not be told)."""
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    masks = np.zeros((3, HEIGHT, WIDTH), dtype=bool)
    masks[0, 10:110, 10:150] = True  # whole
    masks[1, 10:110, 10:80] = True  # its left part: shares the top, left and bottom edges
    masks[2, 10:60, 10:40] = True  # a subpart of that part, in its top-left corner
    colours = np.array([[250, 0, 0], [0, 0, 250], [0, 250, 0]], dtype=np.uint8)
    figure = np.asarray(
        level_figure(
            image,
            masks,
            np.array([0, 1, 2]),
            panel_height=HEIGHT,
            colours=colours,
            outline_widths=OUTLINE_WIDTHS,
        )
    )
    for panel in panel_slices(figure, WIDTH, 4)[1:]:
        assert (panel[_outline(masks[0], OUTLINE_WIDTHS[0])] == colours[0]).all()
    # The part's own edge inside the whole (column 79) keeps the part's outline.
    part_panel = panel_slices(figure, WIDTH, 4)[2]
    assert (part_panel[30:90, 78:80] == colours[1]).all()


def test_level_figure_resamples_to_the_panel_height():
    masks, levels, _ = scene_masks()
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    figure = np.asarray(level_figure(image, masks, levels, panel_height=240))
    assert figure.shape == (240 + CAPTION_HEIGHT, 4 * 320, 3)
    whole = figure[CAPTION_HEIGHT:, 320:640]
    # Mask 5 (rows 85:110, cols 100:150) doubled: rows 170:220, cols 200:300, 1 px outline.
    assert (whole[195, 250] != GREY).any() and (whole[150, 250] == GREY).all()
    assert (whole[170, 250] == region_colours(6)[5]).all()


# ---------------------------------------------------------------------------------------------
# hassod show
# ---------------------------------------------------------------------------------------------


def test_show_draws_input_and_three_level_panels(scene, capsys):
    out = scene["dir"] / "figs" / "scene.png"
    out.parent.mkdir()
    image = scene["images"] / "scene.png"
    args = ["show", str(image), "--labels", str(scene["labels"]), "--out", str(out)]
    assert main([*args, "--panel-height", str(HEIGHT)]) == 0
    assert "6 of 6 masks of scene.png" in capsys.readouterr().out
    figure = np.asarray(Image.open(out).convert("RGB"))
    assert figure.shape[1] == 4 * WIDTH and figure.shape[0] > HEIGHT + CAPTION_HEIGHT  # legend
    panels = panel_slices(figure, WIDTH, 4)
    masks, levels, _ = scene_masks()
    centre_of_subpart = (32, 35)
    assert (panels[0] == GREY).all()
    assert np.array_equal(panels[1][centre_of_subpart], panels[1][100, 30])  # inside whole 0 only
    assert not np.array_equal(panels[2][centre_of_subpart], panels[1][centre_of_subpart])
    assert not np.array_equal(panels[3][centre_of_subpart], panels[2][centre_of_subpart])
    assert not list(out.parent.glob(".*tmp"))


def test_demo_figures_are_drawn_as_show_draws_them(scene):
    """The demo's figures had 1 px outlines at every level and no legend: wholes, parts and
    subparts could not be told apart by line weight as in `hassod show`'s picture."""
    from hassod.demo import write_level_figures

    shown = scene["dir"] / "shown.png"
    image = scene["images"] / "scene.png"
    assert main(["show", str(image), "--labels", str(scene["labels"]), "--out", str(shown)]) == 0
    (written,) = write_level_figures(scene["coco"], scene["images"], scene["dir"] / "figures")
    demo = np.asarray(Image.open(written).convert("RGB"))
    assert np.array_equal(demo, np.asarray(Image.open(shown).convert("RGB")))


def test_show_levels_choose_panels_and_score_threshold_filters(scene):
    out = scene["dir"] / "fig.png"
    image = scene["images"] / "scene.png"
    args = ["show", str(image), "--labels", str(scene["labels"]), "--out", str(out)]
    assert main([*args, "--levels", "whole,subpart", "--panel-height", "60"]) == 0
    assert Image.open(out).size[0] == 3 * 80
    # Scores fall 0.9 -> 0.4 along SCENE: >= 0.7 keeps masks 0-2 only.
    assert main([*args, "--panel-height", str(HEIGHT), "--score-threshold", "0.7"]) == 0
    panels = panel_slices(np.asarray(Image.open(out).convert("RGB")), WIDTH, 4)
    assert (panels[3][40:60, 120:140] == GREY).all()  # whole 3 (score 0.6) left out
    assert (panels[3][60:80, 30:60] != GREY).any()


def test_show_results_list_with_images_json_and_default_level(scene, capsys):
    masks, _, _ = scene_masks()
    image_id = scene["coco"]["images"][0]["id"]
    results = [
        {"image_id": image_id, "segmentation": a["segmentation"], "score": 0.5}
        for a in scene["coco"]["annotations"][:2]
    ]
    results[1]["level"] = 1  # the first has no level: a whole
    (scene["dir"] / "results.json").write_text(json.dumps(results))
    out = scene["dir"] / "fig.png"
    image = scene["images"] / "scene.png"
    args = ["show", str(image), "--labels", str(scene["dir"] / "results.json"), "--out", str(out)]
    code = main([*args, "--images", str(scene["labels"]), "--panel-height", str(HEIGHT)])
    assert code == 0
    figure = np.asarray(Image.open(out).convert("RGB"))
    # the ids are `hassod predict`'s for scene.png: found without the images JSON too
    assert main([*args, "--panel-height", str(HEIGHT)]) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), figure)
    panels = panel_slices(figure, WIDTH, 4)
    assert (panels[1][100, 30] != GREY).any()  # mask 0 (no level): in the whole panel
    assert (panels[1][40, 60] == panels[1][100, 30]).all()  # mask 1 (part) not yet
    assert not (panels[2][40, 60] == panels[1][40, 60]).all()


def test_predict_results_on_a_folder_are_shown_and_reported_without_a_dataset_json(scene, capsys):
    """`hassod predict IMAGES_DIR --out preds.json` numbers images by their path in the
    folder (image_id_for): show and report find them from the files."""
    nested = scene["images"] / "sub" / "deeper.png"
    nested.parent.mkdir()
    (scene["images"] / "scene.png").rename(nested)
    segmentation = scene["coco"]["annotations"][0]["segmentation"]
    results = [{"image_id": image_id_for("sub/deeper.png"), "segmentation": segmentation}]
    results[0]["score"] = 0.9
    preds = scene["dir"] / "preds.json"
    preds.write_text(json.dumps(results))
    out = scene["dir"] / "fig.png"
    assert main(["show", str(nested), "--labels", str(preds), "--out", str(out)]) == 0
    assert "1 of 1 mask of sub/deeper.png" in capsys.readouterr().out
    # deeper.png beside sub/ in the same folder, with results too: each image gets its own
    Image.open(nested).save(scene["images"] / "deeper.png")
    twin = dict(results[0], image_id=image_id_for("deeper.png"), score=0.6)
    preds.write_text(json.dumps([*results, twin]))
    assert main(["show", str(nested), "--labels", str(preds), "--out", str(out)]) == 0
    assert "1 of 1 mask of sub/deeper.png" in capsys.readouterr().out
    top = scene["images"] / "deeper.png"
    assert main(["show", str(top), "--labels", str(preds), "--out", str(out)]) == 0
    assert "1 of 1 mask of deeper.png" in capsys.readouterr().out
    (scene["images"] / "deeper.png").unlink()
    preds.write_text(json.dumps(results))
    report = ["report", str(scene["images"]), "--labels", str(preds)]
    assert main([*report, "--out", str(scene["dir"] / "report")]) == 0
    assert "1 image, 1 mask," in capsys.readouterr().out
    # results of another folder's numbering: said, with what to do
    preds.write_text(json.dumps([dict(results[0], image_id=image_id_for("deeper.png") + 1)]))
    assert main(["show", str(nested), "--labels", str(preds), "--out", str(out)]) == 2
    assert "nothing for" in capsys.readouterr().err
    assert main([*report, "--out", str(scene["dir"] / "report2")]) == 2
    assert "1 image id is not in" in capsys.readouterr().err


def test_predictions_are_drawn_from_score_05_by_default_pseudo_labels_whole(scene, capsys):
    """`hassod predict` keeps detections down to score 0: show and report draw a results list
    from 0.5 unless --score-threshold says otherwise (0: all); pseudo-labels are drawn whole."""
    annotations = scene["coco"]["annotations"]
    image_id = image_id_for("scene.png")
    results = [
        {"image_id": image_id, "segmentation": annotations[0]["segmentation"], "score": 0.9},
        {"image_id": image_id, "segmentation": annotations[3]["segmentation"], "score": 0.1},
    ]
    preds = scene["dir"] / "preds.json"
    preds.write_text(json.dumps(results))
    image = scene["images"] / "scene.png"
    out = scene["dir"] / "fig.png"
    args = ["show", str(image), "--labels", str(preds), "--out", str(out)]
    assert main([*args, "--panel-height", str(HEIGHT)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("1 of 2 masks of scene.png (score >= 0.5)")
    panels = panel_slices(np.asarray(Image.open(out).convert("RGB")), WIDTH, 4)
    assert (panels[1][40:60, 30:60] != GREY).any()  # the 0.9 whole
    assert (panels[1][40:60, 120:140] == GREY).all()  # the 0.1 whole: left out
    assert main([*args, "--score-threshold", "0"]) == 0
    assert "2 of 2 masks of scene.png (score >= 0)" in capsys.readouterr().out
    report = ["report", str(scene["images"]), "--labels", str(preds)]
    assert main([*report, "--out", str(scene["dir"] / "report")]) == 0
    assert "1 image, 1 mask, gallery of 1 (masks scoring >= 0.5)" in capsys.readouterr().out
    # pseudo-labels (scores 0.9 down to 0.4): all six drawn, no threshold said
    pseudo = ["show", str(image), "--labels", str(scene["labels"]), "--out", str(out)]
    assert main(pseudo) == 0
    assert capsys.readouterr().out.rstrip().endswith("6 of 6 masks of scene.png")


def test_write_report_in_python_draws_results_from_05_by_default_as_the_command(scene):
    """The Python write_report picks the same default threshold as `hassod report`."""
    from hassod.report import write_report

    annotations = scene["coco"]["annotations"]
    image_id = image_id_for("scene.png")
    results = [
        {"image_id": image_id, "segmentation": annotations[0]["segmentation"], "score": 0.9},
        {"image_id": image_id, "segmentation": annotations[3]["segmentation"], "score": 0.1},
    ]
    page = write_report(scene["images"], results, scene["dir"] / "r1").index.read_text("utf-8")
    assert "0.5" in page and "score threshold" in page
    summary = write_report(scene["images"], results, scene["dir"] / "r1")
    assert summary.masks == 1
    assert write_report(scene["images"], results, scene["dir"] / "r1", score_threshold=0).masks == 2
    assert write_report(scene["images"], scene["labels"], scene["dir"] / "r2").masks == 6


def test_report_has_a_score_histogram_when_the_labels_have_scores(scene):
    image_id = image_id_for("scene.png")
    segmentation = scene["coco"]["annotations"][0]["segmentation"]
    results = [
        {"image_id": image_id, "segmentation": segmentation, "score": s} for s in (0.9, 0.2, 0.1)
    ]
    preds = scene["dir"] / "preds.json"
    preds.write_text(json.dumps(results))
    report = ["report", str(scene["images"]), "--labels", str(preds), "--out"]
    assert main([*report, str(scene["dir"] / "report")]) == 0
    assert Image.open(scene["dir"] / "report" / "scores.png").size[0] > 100
    assert 'src="scores.png"' in (scene["dir"] / "report" / "index.html").read_text()
    for result in results:  # no scores: no histogram (and an earlier report's is removed)
        del result["score"]
    preds.write_text(json.dumps(results))
    assert main([*report, str(scene["dir"] / "report")]) == 0
    assert not (scene["dir"] / "report" / "scores.png").exists()
    assert "scores.png" not in (scene["dir"] / "report" / "index.html").read_text()


def test_show_of_an_image_discovery_failed_on_says_why(scene, capsys):
    coco = dict(scene["coco"], failed=[{"file_name": "sub/bad.jpg", "reason": "truncated"}])
    (scene["dir"] / "with_failed.json").write_text(json.dumps(coco))
    bad = scene["images"] / "sub" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8")
    args = ["show", str(bad), "--labels", str(scene["dir"] / "with_failed.json")]
    assert main([*args, "--out", str(scene["dir"] / "fig.png")]) == 2
    error = capsys.readouterr().err
    assert "discovery could not use" in error and error.rstrip().endswith(": truncated")
    other = scene["images"] / "other.jpg"  # not listed at all: the usual message
    other.write_bytes(b"")
    args[1] = str(other)
    assert main([*args, "--out", str(scene["dir"] / "fig.png")]) == 2
    assert "no image named 'other.jpg'" in capsys.readouterr().err


def test_show_warns_when_a_results_list_has_nothing_for_the_image(scene, capsys):
    """Results for other images only: drawn without masks, said on stderr (exit 0, a loop over
    a folder goes on). Ids that are no image's at all (e.g. `hassod predict` without
    --image-ids) are refused with the fix; an image of a dataset JSON without masks is quiet."""
    image = scene["images"] / "scene.png"
    out = scene["dir"] / "fig.png"
    hashed = [{"image_id": 424242, "bbox": [1, 1, 5, 5], "score": 0.5}]
    (scene["dir"] / "results.json").write_text(json.dumps(hashed))
    args = ["show", str(image), "--labels", str(scene["dir"] / "results.json"), "--out", str(out)]
    assert main([*args, "--images", str(scene["labels"])]) == 2
    captured = capsys.readouterr()
    assert "hassod show: error: the image id in labels" in captured.err
    assert "rerun it with --image-ids GT.json" in captured.err
    assert not out.exists()
    # Other images of the images JSON have results, this one none.
    images = {"images": [*scene["coco"]["images"], {"id": 424242, "file_name": "other.png"}]}
    (scene["dir"] / "images.json").write_text(json.dumps(images))
    assert main([*args, "--images", str(scene["dir"] / "images.json")]) == 0
    captured = capsys.readouterr()
    assert "0 of 0 masks" in captured.out
    assert "no result for this image, though 1 other image" in captured.err
    empty = {**scene["coco"], "annotations": []}  # a dataset JSON: the image has no masks
    (scene["dir"] / "empty.json").write_text(json.dumps(empty))
    assert (
        main(["show", str(image), "--labels", str(scene["dir"] / "empty.json"), "--out", str(out)])
        == 0
    )
    assert capsys.readouterr().err == ""


def test_show_of_an_image_predict_found_nothing_in_draws_it_empty(scene, capsys):
    """`hassod predict small40 --out preds.json` has results for other images of the folder
    only: `show small40/img00.jpg` exited 2 ("results list with nothing for"), though the
    README promised the picture with a warning; a loop over the folder stopped there."""
    image = scene["images"] / "scene.png"
    Image.open(image).save(scene["images"] / "other.png")
    segmentation = scene["coco"]["annotations"][0]["segmentation"]
    preds = scene["dir"] / "preds.json"
    preds.write_text(
        json.dumps([{"image_id": image_id_for("other.png"), "segmentation": segmentation}])
    )
    out = scene["dir"] / "fig.png"
    args = ["show", str(image), "--labels", str(preds), "--out", str(out)]
    assert main([*args, "--panel-height", str(HEIGHT)]) == 0
    captured = capsys.readouterr()
    assert "0 of 0 masks of scene.png" in captured.out
    assert captured.err.startswith("hassod show: warning: labels ")
    assert "no result for this image, though other images in its folder have some" in (captured.err)
    panels = panel_slices(np.asarray(Image.open(out).convert("RGB")), WIDTH, 4)
    assert all((panel == GREY).all() for panel in panels)  # the photo, no masks
    preds.write_text("[]")  # predict found nothing anywhere
    assert main(args) == 0
    assert "hold no results: nothing is drawn for 'scene.png'" in capsys.readouterr().err
    # Ids that are no file's of the folder (numbered by a dataset JSON): refused, as before.
    out.unlink()
    preds.write_text(json.dumps([{"image_id": 7, "segmentation": segmentation}]))
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "or any other image in its folder" in error and "(--images)" in error
    assert not out.exists()


def test_show_errors(scene, capsys):
    other = scene["images"] / "other.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(other)
    out = scene["dir"] / "fig.png"
    assert main(["show", str(other), "--labels", str(scene["labels"]), "--out", str(out)]) == 2
    assert "no image named 'other.png'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(other), "--labels", str(scene["labels"]), "--out", str(out),
              "--levels", "wholes"])  # fmt: skip
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["show", str(scene["dir"] / "nope.png"), "--labels", "x", "--out", str(out)])
    assert "image not found" in capsys.readouterr().err
    small = scene["dir"] / "small" / "scene.png"  # right name, wrong size
    small.parent.mkdir()
    Image.fromarray(np.zeros((60, 80, 3), dtype=np.uint8)).save(small)
    assert main(["show", str(small), "--labels", str(scene["labels"]), "--out", str(out)]) == 2
    assert "80x60 but its labels are for 160x120" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# hassod report
# ---------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Links of a page and the depth of each mask-tree entry."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.entries = [], set(), []
        self._lists = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "ul":
            self._lists += 1
        if tag == "span" and "data-overlay" in attrs:
            self.entries.append((attrs["data-overlay"], self._lists))

    def handle_endtag(self, tag):
        if tag == "ul":
            self._lists -= 1


def read_page(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def assert_links_exist(index: Path, page: _Page) -> None:
    for link in page.links:
        if link.startswith("#"):
            assert link[1:] in page.ids, link
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        assert (index.parent / unquote(parsed.path)).is_file(), link


def gt_for(scene) -> Path:
    """Ground truth: three of the scene's wholes and one more object nobody found."""
    coco = json.loads(scene["labels"].read_text())
    annotations = [dict(a, category_id=1) for a in coco["annotations"] if a["hier_level"] == 0]
    annotations.append(dict(annotations[0], id=99, category_id=120))  # a stuff duplicate
    gt = {**coco, "annotations": annotations, "categories": [{"id": 1}, {"id": 120}]}
    path = scene["dir"] / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_report_page_files_tree_and_evaluation(scene, capsys):
    out = scene["dir"] / "report"
    args = ["report", str(scene["images"]), "--labels", str(scene["labels"]), "--out", str(out)]
    assert main([*args, "--gt", str(gt_for(scene)), "--things-only"]) == 0
    captured = capsys.readouterr()
    assert "1 image, 6 masks, gallery of 1, with evaluation" in captured.out
    assert "report: 100%" in captured.err  # the gallery's progress bar
    index = out / "index.html"
    page = read_page(index)
    assert_links_exist(index, page)
    for name in ("levels.png", "masks_per_image.png", "figures/0001-scene.png"):
        assert name in page.links
        with Image.open(out / name) as picture:
            assert picture.size[0] > 100
    # The tree follows parent_id: depth 1 = roots; entries in depth-first order, largest first.
    entries = [(int(overlay.rsplit("-", 1)[1]), depth) for overlay, depth in page.entries]
    assert entries == [(0, 1), (1, 2), (2, 3), (3, 1), (4, 2), (5, 1)]
    # Each overlay: the mask's colour where the mask is, transparent elsewhere.
    masks, _, _ = scene_masks()
    for index_, mask in enumerate(masks):
        overlay = np.asarray(Image.open(out / "overlays" / "0001-scene" / f"{index_}.png"))
        assert overlay.shape == (HEIGHT, WIDTH, 4)
        assert np.array_equal(overlay[..., 3] > 0, mask)
        assert (overlay[mask, :3] == region_colours(6)[index_]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["objects"] == 3 and metrics["counts"]["dropped_stuff"] == 1
    assert metrics["segm"]["AR@100"] == 1.0
    html = index.read_text(encoding="utf-8")
    assert "By merge threshold and level" in html and "threshold 0.4" in html
    # masks per level, as a plain count of the labels' hier_level (the scene has every level)
    per_level = [
        sum(a["hier_level"] == level for a in scene["coco"]["annotations"]) for level in range(3)
    ]
    assert per_level == [3, 2, 1]
    assert "6 masks (6.00 per image): 3 whole, 2 part, 1 subpart." in html
    assert not list(out.rglob(".*tmp"))
    assert main([*args, "--quiet"]) == 0
    assert "report:" not in capsys.readouterr().err


def test_report_viewer_shows_a_small_photo_enlarged_with_sharp_pixels(scene, tmp_path):
    """The mask viewer showed a photo at its own size: a 40 x 30 photo (and its masks) as a
    40 x 30 pixel stamp. Small photos are now shown at a whole multiple of their size, up to
    512 px, their pixels kept sharp; larger ones are unchanged."""
    out = scene["dir"] / "report"
    summary = write_report(scene["images"], scene["labels"], out)
    page = summary.index.read_text(encoding="utf-8")
    # 160 x 120 -> x3; the files stay at the photo's size, enlarged by the page.
    assert re.search(
        r'<div class="stage enlarged"><img src="photos/0001-scene.jpg" '
        r'width="480" height="360"',
        page,
    )
    assert ".stage.enlarged img { image-rendering: pixelated; }" in page
    with Image.open(out / "photos" / "0001-scene.jpg") as photo:
        assert photo.size == (WIDTH, HEIGHT)
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.full((600, 900, 3), GREY, dtype=np.uint8)).save(big / "big.png")
    coco = assemble([(image_record("big.png", 900, 600), [])], info={})
    (tmp_path / "big.json").write_text(json.dumps(coco))
    page = write_report(big, tmp_path / "big.json", tmp_path / "r").index.read_text("utf-8")
    assert re.search(
        r'<div class="stage"><img src="photos/0001-big.jpg" width="512" '
        r'height="341"',
        page,
    )


def test_report_results_list_tree_from_coverage_and_missing_images(scene):
    image_id = scene["coco"]["images"][0]["id"]
    results = [
        {"image_id": image_id, "segmentation": a["segmentation"], "score": 0.5}
        for a in scene["coco"]["annotations"]
    ]
    extra = dict(scene["coco"]["images"][0], id=7, file_name="gone.png")
    images = {"images": [scene["coco"]["images"][0], extra]}
    (scene["dir"] / "results.json").write_text(json.dumps(results))
    (scene["dir"] / "images.json").write_text(json.dumps(images))
    out = scene["dir"] / "report"
    summary = write_report(
        scene["images"], scene["dir"] / "results.json", out, images=scene["dir"] / "images.json"
    )
    assert summary.missing == ["gone.png"] and summary.shown == 1 and not summary.evaluated
    page = read_page(summary.index)
    assert_links_exist(summary.index, page)
    # No parent_id: coverage forest (0.75) of the masks, the same nesting as SCENE.
    entries = [(int(overlay.rsplit("-", 1)[1]), depth) for overlay, depth in page.entries]
    assert entries == [(0, 1), (1, 2), (2, 3), (3, 1), (4, 2), (5, 1)]
    assert "gone.png" in summary.index.read_text(encoding="utf-8")


def test_report_tree_without_parent_ids_uses_the_teacher_cover(scene):
    """Without parent_id the tree is the coverage forest at 0.75 (module docstring): a mask
    with 80% of its pixels inside a larger one is its child there (a root at 0.9)."""
    image_id = scene["coco"]["images"][0]["id"]
    large = np.zeros((HEIGHT, WIDTH), dtype=bool)
    large[10:30, 10:30] = True  # 400 pixels
    small = np.zeros((HEIGHT, WIDTH), dtype=bool)
    small[14:34, 12:22] = True  # 200 pixels, rows 14..29 inside the large one: 160 of 200
    assert (large & small).sum() / small.sum() == 0.8
    results = [
        {"image_id": image_id, "segmentation": encode_mask(mask), "score": 0.5}
        for mask in (large, small)
    ]
    (scene["dir"] / "results.json").write_text(json.dumps(results))
    (scene["dir"] / "images.json").write_text(json.dumps({"images": scene["coco"]["images"]}))
    summary = write_report(
        scene["images"],
        scene["dir"] / "results.json",
        scene["dir"] / "report",
        images=scene["dir"] / "images.json",
    )
    page = read_page(summary.index)
    entries = [(int(overlay.rsplit("-", 1)[1]), depth) for overlay, depth in page.entries]
    assert entries == [(0, 1), (1, 2)]


def test_report_errors(scene, capsys):
    out = scene["dir"] / "report"
    missing = ["report", str(scene["dir"] / "nope"), "--labels", str(scene["labels"])]
    with pytest.raises(SystemExit) as exit_info:
        main([*missing, "--out", str(out)])
    assert exit_info.value.code == 2
    bad = scene["dir"] / "bad.json"
    bad.write_text("{")
    args = ["report", str(scene["images"]), "--labels", str(bad), "--out", str(out)]
    assert main(args) == 2
    assert "not valid JSON" in capsys.readouterr().err


def _with_second_image(scene, file_name: str) -> list[str]:
    """The scene's labels with a second image, file_name (no masks); report's arguments."""
    coco = json.loads(scene["labels"].read_text())
    coco["images"].append(dict(coco["images"][0], id=2, file_name=file_name))
    (scene["dir"] / "two.json").write_text(json.dumps(coco))
    return ["report", str(scene["images"]), "--labels", str(scene["dir"] / "two.json")]


def test_report_leaves_out_an_undecodable_image_and_says_so(scene, capsys):
    """One damaged file aborted the whole report (exit 2, half a report folder behind)."""
    grey = scene["images"] / "scene.png"
    (scene["images"] / "broken.png").write_bytes(grey.read_bytes()[:100])  # truncated
    out = scene["dir"] / "report"
    assert main([*_with_second_image(scene, "broken.png"), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "2 images, 6 masks, gallery of 1" in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "hassod report: warning: left out of the gallery, cannot read broken.png: "
    ), lines
    page = read_page(out / "index.html")
    assert_links_exist(out / "index.html", page)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Left out, as they cannot be read: broken.png (" in text
    assert "Gallery (1 image)" in text and "<p>2 images, 6 masks" in text


def test_report_of_a_folder_without_the_listed_images_is_refused(scene, capsys):
    """As `hassod show` refuses an image the labels do not list; a folder missing only some
    is a warning (it printed "gallery of 0 / 2 gallery images not found", exit 0)."""
    wrong = scene["dir"] / "wrong"
    wrong.mkdir()
    out = scene["dir"] / "report"
    args = ["report", str(wrong), "--labels", str(scene["labels"]), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "hassod report: error: labels" in err
    assert f"the one image they list is not in {wrong} (looked for 'scene.png'" in err
    assert not out.exists()  # refused before anything is written
    two = _with_second_image(scene, "gone.png")
    two[1] = str(wrong)
    assert main([*two, "--out", str(out)]) == 2
    assert "none of the 2 images they list is in" in capsys.readouterr().err
    assert main([*two, "--out", str(out), "--limit", "1"]) == 2
    assert "none of the gallery's one image (the first of 2 by file name)" in (
        capsys.readouterr().err
    )
    two[1] = str(scene["images"])
    assert main([*two, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "gallery of 1" in captured.out
    assert f"hassod report: warning: 1 gallery image not found in {scene['images']}" in (
        captured.err
    )
    assert "Not found in the images folder: gone.png" in (out / "index.html").read_text("utf-8")


def test_report_out_that_is_a_file_is_refused_as_such(scene, capsys):
    occupied = scene["dir"] / "occupied"
    occupied.write_text("a file")
    args = ["report", str(scene["images"]), "--labels", str(scene["labels"])]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(occupied)])
    assert exit_info.value.code == 2
    assert f"--out {occupied} is a file; give a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(occupied / "report")])
    assert f"--out {occupied / 'report'}: {occupied} is a file, not a folder" in (
        capsys.readouterr().err
    )


def test_report_of_a_file_says_a_folder_is_wanted(scene, capsys):
    """`hassod report photo.jpg` said "images folder not found" of a file that exists."""
    photo = scene["images"] / "scene.png"
    args = ["report", str(photo), "--labels", str(scene["labels"])]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(scene["dir"] / "report")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{photo} is a file; give the folder of images it is in" in error
    assert "not found" not in error
    with pytest.raises(InputError, match="images folder .* is a file, not a folder"):
        write_report(photo, scene["labels"], scene["dir"] / "report")


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_report_replaces_only_an_earlier_report(scene, capsys, monkeypatch):
    """--out naming a folder of other files (a user's index.html, levels.png, photos/)
    replaced them, exit 0; --out inside the images folder filled it with PNGs and JPEGs that a
    later recursive `hassod discover` takes for images. Both refused now, nothing written; an
    earlier report (also one whose run stopped half-way) is replaced as before."""
    args = ["report", str(scene["images"]), "--labels", str(scene["labels"]), "--quiet"]
    site = scene["dir"] / "site"
    (site / "photos").mkdir(parents=True)
    (site / "index.html").write_text("<!DOCTYPE html>\n<html><body>my page</body></html>\n")
    (site / "levels.png").write_bytes(b"my levels")
    (site / "photos" / "0001-scene.jpg").write_bytes(b"my photo")
    before = _tree(site)
    assert main([*args, "--out", str(site)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"hassod report: error: report folder {site} holds an index.html that hassod report did "
        "not write; refusing to replace it and write beside it: choose another folder (--out), "
        "a new or empty one"
    ]
    (site / "index.html").unlink()  # no page at all: the other files are kept just the same
    del before["index.html"]
    assert main([*args, "--out", str(site)]) == 2
    assert "is not empty and holds no report" in capsys.readouterr().err
    assert _tree(site) == before
    for inside in (scene["images"], scene["images"] / "report"):
        assert main([*args, "--out", str(inside)]) == 2
        error = capsys.readouterr().err
        assert "the images folder" in error and "choose a folder outside it" in error
    assert [p.name for p in scene["images"].iterdir()] == ["scene.png"]
    empty = scene["dir"] / "empty"
    empty.mkdir()
    assert main([*args, "--out", str(empty)]) == 0
    head = (empty / "index.html").read_bytes()[:200]
    assert b'<meta name="generator" content="hassod report">' in head
    (empty / "metrics.json").write_text("{}")  # as an earlier run with --gt left it
    (empty / "figures" / "0002-gone.png").write_bytes(b"an image no longer listed")
    assert main([*args, "--out", str(empty), "--levels", "whole"]) == 0  # its own: replaced
    # ... wholly: nothing of the earlier run outlives it (a stale evaluation, old figures)
    assert not (empty / "metrics.json").exists()
    assert sorted(p.name for p in (empty / "figures").iterdir()) == ["0001-scene.png"]
    # Stopped half-way: the page says it is unfinished, and the rerun is let in.
    from hassod import report

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "_histograms", interrupted)
    stopped = scene["dir"] / "stopped"
    assert main([*args, "--out", str(stopped)]) == 130  # Ctrl-C
    assert "This report is not finished" in (stopped / "index.html").read_text("utf-8")
    monkeypatch.undo()
    assert main([*args, "--out", str(stopped)]) == 0
    assert "Gallery (1 image)" in (stopped / "index.html").read_text("utf-8")


def test_report_only_gt_images_evaluates_the_annotated_images(scene, capsys):
    """Labels of a folder larger than the ground truth: refused, or evaluated without them."""
    extra = scene["images"] / "extra.png"
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)).save(extra)
    coco = json.loads(scene["labels"].read_text())
    gt = {**coco, "annotations": [dict(a, category_id=1) for a in coco["annotations"]]}
    (scene["dir"] / "gt.json").write_text(json.dumps(gt))
    other = dict(coco["images"][0], id=1, file_name="extra.png")
    coco["images"].append(other)
    coco["annotations"].append(dict(coco["annotations"][0], id=100, image_id=1))
    (scene["dir"] / "both.json").write_text(json.dumps(coco))
    out = scene["dir"] / "report"
    args = ["report", str(scene["images"]), "--labels", str(scene["dir"] / "both.json")]
    args += ["--out", str(out), "--gt", str(scene["dir"] / "gt.json")]
    assert main(args) == 2
    assert "pass --only-gt-images" in capsys.readouterr().err
    assert main([*args, "--only-gt-images"]) == 0
    assert "2 images, 7 masks, gallery of 2, with evaluation" in capsys.readouterr().out
    counts = json.loads((out / "metrics.json").read_text())["counts"]
    assert counts["dropped_images"] == 1 and counts["predictions"] == 6


def test_report_results_list_with_other_ids_says_how_to_fix(scene, capsys):
    results = [{"image_id": 123, "bbox": [1, 1, 5, 5], "score": 0.5}]
    (scene["dir"] / "results.json").write_text(json.dumps(results))
    args = ["report", str(scene["images"]), "--labels", str(scene["dir"] / "results.json")]
    args += ["--out", str(scene["dir"] / "report"), "--images", str(scene["labels"])]
    assert main(args) == 2
    assert "rerun it with --image-ids GT.json" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(scene):
    out = scene["dir"] / "report"
    summary = write_report(scene["images"], scene["labels"], out, gt=gt_for(scene))
    url = summary.index.resolve().as_uri() + "#selftest"
    command = [
        _chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={scene['dir'] / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body is not None, done.stdout[:500]
    assert 'data-entries="6"' in body.group(0)
    assert 'data-selftest="ok"' in body.group(0)  # hovering each entry shows its overlay


def test_mask_tree_of_a_deep_parent_chain_is_drawn_without_recursion():
    """A hand-written parent chain thousands deep (`report --max-masks 0`) raised
    RecursionError; the nested lists still follow the chain, and a cycle is still listed."""
    from hassod.report import ImageMasks, _tree_html

    depth = 3000
    masks = np.zeros((depth, 2, 2), dtype=bool)
    annotations = [{"id": index + 1, "bbox": [0, 0, 1, 1]} for index in range(depth)]
    item = ImageMasks(np.zeros((2, 2, 3), np.uint8), annotations, masks, np.zeros(depth), depth)
    colours = np.zeros((depth, 3), dtype=np.uint8)
    page = _tree_html("s", item, colours, [-1, *range(depth - 1)])
    assert page.count("<li>") == depth and page.count("<ul>") == depth - 1
    assert page.endswith("</li>" + "</ul></li>" * (depth - 1) + "</ul>")
    cycle = _tree_html("s", item, colours, [depth - 1, *range(depth - 1)])
    assert cycle.count("<li>") == depth  # every mask listed once


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("show", "--max-masks", "-1"),
        ("show", "--score-threshold", "nan"),
        ("report", "--max-masks", "-5"),
        ("report", "--limit", "-1"),
        ("report", "--score-threshold", "inf"),
    ],
)
def test_negative_counts_and_nan_thresholds_are_refused(scene, capsys, command, option, value):
    """A negative count acted as a Python slice (the last masks or images silently left
    out); nan kept no mask."""
    target = scene["images"] / "scene.png" if command == "show" else scene["images"]
    out = scene["dir"] / ("fig.png" if command == "show" else "report")
    args = [command, str(target), "--labels", str(scene["labels"]), "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err
    assert not out.exists()


def test_python_api_refuses_negative_counts_too(scene):
    from hassod.labels import select
    from hassod.report import write_report

    with pytest.raises(ValueError, match="max_masks must be >= 0"):
        select([{"score": 1.0}], max_masks=-1)
    with pytest.raises(ValueError, match="score_threshold must be a finite"):
        select([{"score": 1.0}], score_threshold=float("nan"))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        write_report(scene["images"], scene["labels"], scene["dir"] / "r", limit=-1)
    assert not (scene["dir"] / "r").exists()


def test_show_refuses_an_absurd_panel_height(scene, capsys):
    """--panel-height 100000 was a MemoryError traceback."""
    args = ["show", str(scene["images"] / "scene.png"), "--labels", str(scene["labels"])]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(scene["dir"] / "f.png"), "--panel-height", "100000"])
    assert exit_info.value.code == 2
    assert "--panel-height must be between 16 and 8192" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: encode_mask(np.zeros((2, 3, 4), bool)), ValueError, r"2-D \(H, W\)"),
        (lambda: encode_mask(np.zeros(5, bool)), ValueError, r"2-D \(H, W\)"),
        (lambda: image_id_for(None), TypeError, "file_name must be a str"),
        (
            lambda: mask_annotations(np.ones((2, 3, 3), bool), [0], [-1, -1], [0.1] * 2, [1] * 2),
            ValueError,
            "differ in length",
        ),
        (lambda: assemble([({"id": 1}, [])], {}), ValueError, "'file_name' string"),
    ],
)
def test_coco_helpers_refuse_bad_arguments_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("file_name", ["a.png", "val2017/000000397133.jpg", "é/ü.JPG"])
def test_image_ids_are_the_first_48_bits_of_the_file_names_sha256(file_name):
    """Stable ids that stay exact in JavaScript (< 2**53): the first 6 bytes of the digest."""
    import hashlib

    digest = hashlib.sha256(file_name.encode("utf-8")).hexdigest()
    assert image_id_for(file_name) == int(digest[:12], 16)
    assert 0 < image_id_for(file_name) < 2**48


def test_legend_of_an_image_without_masks_has_room_for_its_no_masks_line():
    """The legend counted 0 rows, so 'no masks' was drawn below the figure's edge."""
    image = np.zeros((40, 40, 3), np.uint8)
    one = level_figure(image, np.ones((1, 40, 40), bool), [0], panel_height=40, legend=["#1"])
    none = level_figure(image, np.zeros((0, 40, 40), bool), [], panel_height=40, legend=[])
    assert none.size == one.size
    legend = np.asarray(none)[40 + 22 + 8 + 20 :]  # the row under the outline widths
    assert (legend < 128).any()  # the text is there


def test_masks_per_image_histogram_has_integer_ticks(tmp_path, monkeypatch):
    from hassod import report

    canvases = []
    monkeypatch.setattr(report, "_save_figure", lambda canvas, path: canvases.append(canvas))
    report._histograms(tmp_path, np.array([3, 1, 0]), [2, 3])  # counts of 1: 0.25 ticks before
    ticks = canvases[1].figure.axes[0].get_yticks()
    assert len(ticks) > 1 and all(float(tick).is_integer() for tick in ticks)


def test_show_out_must_be_a_png_name(scene, capsys):
    """`--out shows/sub` silently wrote a PNG named 'sub'."""
    out = scene["dir"] / "shows" / "sub"
    args = ["show", str(scene["images"] / "scene.png"), "--labels", str(scene["labels"])]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--out must be a .png file name" in capsys.readouterr().err
    assert main([*args, "--out", str(scene["dir"] / "fig.PNG")]) == 0


def test_show_replaces_only_its_own_figure(scene, tmp_path, capsys):
    """--out naming the photo itself (or any PNG it did not draw) is refused, the file kept;
    its own figure from an earlier run is replaced. A folder as the image says so."""
    photo = tmp_path / "photo.png"
    shutil.copy(scene["images"] / "scene.png", photo)
    original = photo.read_bytes()
    args = ["show", str(scene["images"] / "scene.png"), "--labels", str(scene["labels"])]
    for out in (photo, scene["images"] / "scene.png"):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--out", str(out)])
        assert exit_info.value.code == 2
        assert "not a figure of hassod show" in capsys.readouterr().err
    assert photo.read_bytes() == original
    figure = tmp_path / "figure.png"
    assert main([*args, "--out", str(figure)]) == 0
    assert main([*args, "--out", str(figure), "--levels", "whole"]) == 0  # its own: replaced
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(tmp_path), "--labels", str(scene["labels"]), "--out", str(figure)])
    assert exit_info.value.code == 2 and "is a folder; give one image" in capsys.readouterr().err
