"""README.md stays true to the code: its command lines parse with hassod's own parser, every
option it names exists (hassod's, or a benchmark script's), the scripts it names exist, the
Python signatures it quotes are the functions' own, and its Python examples run (placeholders
such as ``probs_khw`` filled with small arrays; the files they name made in a temporary
folder)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_checks import tiny_config
from PIL import Image

from hassod.cli import _subcommands, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "benchmarks"
FOLDERS = ("benchmarks", "tests")
pytestmark = pytest.mark.skipif(
    not README.is_file(), reason="no README.md beside tests/ (not a source checkout)"
)
# Options of other programs the READMEs show: pytest-benchmark's, Detectron2's train_net and
# torchrun's (the benchmark scripts' are read from their sources).
OTHER_PROGRAMS_OPTIONS = {"--benchmark-enable", "--eval-only", "--nproc-per-node"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def block_commands(text: str) -> list[str]:
    """The hassod command lines of the README's shell blocks, continuation lines joined, a
    trailing comment dropped, `torchrun ... -m hassod` read as `hassod`."""
    commands = []
    for language, body in code_blocks(text):
        if language not in ("", "bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line)
            for part in line.split("&&"):
                part = re.sub(r"^\s*torchrun\b.*?-m hassod\b", "hassod", part).strip()
                if part.startswith("hassod "):
                    commands.append(part)
    return commands


def as_arguments(command: str) -> list[str]:
    """The arguments after `hassod`, with [optional] groups written out and `...` filled."""
    words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
    return ["VALUE" if word == "..." else word for word in words]


def parse(arguments: list[str]) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"README's `hassod {' '.join(arguments)}` does not parse: {errors.getvalue()}")


def options_by_command() -> dict[str, set[str]]:
    choices = _subcommands(build_parser()).choices
    return {
        name: {option for action in sub._actions for option in action.option_strings}
        for name, sub in choices.items()
    }


def test_the_readme_command_lines_parse():
    commands = block_commands(README.read_text())
    assert len(commands) >= 15, commands  # the extraction found the blocks
    for command in commands:
        parse(as_arguments(command))


def test_the_command_line_reader_sees_what_the_parser_refuses():
    text = "```bash\nhassod discover IMAGES --out x.json [--no-such-option 3]\n```\n"
    (command,) = block_commands(text)
    with pytest.raises(pytest.fail.Exception, match="no-such-option"):
        parse(as_arguments(command))


def test_every_subcommand_is_in_the_readme():
    text = README.read_text()
    missing = [name for name in options_by_command() if f"hassod {name}" not in text]
    assert not missing


def test_inline_commands_name_their_own_options():
    """`hassod SUB --option` fragments in the prose name options SUB has."""
    by_command = options_by_command()
    text = README.read_text()
    spans = [" ".join(span.split()) for span in re.findall(r"`(hassod [^`]+)`", text)]
    assert len(spans) >= 10
    for span in spans:
        words = span.replace("[", " ").replace("]", " ").split()
        assert words[1] in by_command, span
        unknown = [w for w in words[2:] if w.startswith("--") and w not in by_command[words[1]]]
        assert not unknown, f"`{span}`: {words[1]} has no {unknown}"


def script_options(script: Path) -> set[str]:
    """The options a benchmark script's argparse parser declares (read from its source: the
    scripts import torch and more at the top)."""
    return set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", script.read_text()))


def benchmark_options() -> set[str]:
    return set().union(*(script_options(path) for path in BENCHMARKS.glob("*.py")))


@pytest.mark.parametrize("document", ["README.md", "benchmarks/README.md"])
def test_every_option_named_exists(document):
    known = set().union(*options_by_command().values()) | OTHER_PROGRAMS_OPTIONS
    known |= benchmark_options()
    text = (ROOT / document).read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert named, document
    assert not sorted(named - known)


def test_defaults_the_readme_quotes_are_the_parsers():
    """`--option` ... (default N): N is that option's default in every command that has it."""
    text = " ".join(README.read_text().split())
    quoted = re.findall(r"`(--[a-z][a-z0-9-]*)`[^`(]{0,40}\(default (-?\d+(?:\.\d+)?)", text)
    assert quoted, "the README quotes --panel-height's default"
    defaults: dict[str, list] = {}
    for sub in _subcommands(build_parser()).choices.values():
        for action in sub._actions:
            for option in action.option_strings:
                defaults.setdefault(option, []).append(action.default)
    for option, number in quoted:
        assert defaults[option], option
        wrong = [value for value in defaults[option] if value != float(number)]
        assert not wrong, f"README: {option} (default {number}); the parser's: {wrong}"


def test_the_script_reader_finds_the_options():
    assert {"--quick", "--out", "--weights"} <= script_options(BENCHMARKS / "bench_cluster.py")


@pytest.mark.parametrize("document", ["README.md", "benchmarks/README.md"])
def test_every_benchmark_script_named_exists(document):
    """`bench_x.py`, `gpu_x.sh`, `test_x.py`, `benchmarks/x.py` and `tests/x.py` name files of
    benchmarks/ or tests/, and a command line `python benchmarks/x.py --option` names options
    that script has."""
    text = " ".join((ROOT / document).read_text().split())
    pattern = r"(?<![\w/.-])((?:benchmarks|tests)/\w+\.(?:py|sh)|(?:bench|gpu|test)_\w+\.(?:py|sh))"
    named = {Path(name).name for name in re.findall(pattern, text)}
    assert len(named) >= 3, document
    missing = [
        name for name in named if not any((ROOT / folder / name).is_file() for folder in FOLDERS)
    ]
    assert not sorted(missing)
    for script, options in re.findall(r"python benchmarks/([a-z_]+\.py)((?: --[a-z-]+)*)", text):
        unknown = set(options.split()) - script_options(BENCHMARKS / script)
        assert not unknown, f"{script} has no {sorted(unknown)}"


def quoted_signatures(text: str) -> list[tuple[str, dict]]:
    """``hassod.module.function(..., name=literal, ...)`` spans of the prose: (dotted name,
    {keyword: value})."""
    found = []
    for dotted, arguments in re.findall(r"`(hassod(?:\.\w+)+)\(([^`]*)\)`", text):
        call = ast.parse(f"f({arguments})", mode="eval").body
        keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        if keywords:
            found.append((dotted, keywords))
    return found


def resolve(dotted: str):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


def test_quoted_signatures_are_the_functions_own():
    """Keyword defaults the README quotes in a signature are the real ones, and a quoted
    signature leaves out none of the function's parameters."""
    quoted = quoted_signatures(" ".join(README.read_text().split()))
    assert quoted, "the README quotes hassod.evaluate.evaluate's signature"
    for dotted, keywords in quoted:
        parameters = inspect.signature(resolve(dotted)).parameters
        actual = {
            name: parameter.default
            for name, parameter in parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        wrong = {
            name: (value, actual.get(name, "<no such keyword>"))
            for name, value in keywords.items()
            if actual.get(name, "<no such keyword>") != value
        }
        assert not wrong, f"{dotted}: README (quoted, real): {wrong}"
        assert not sorted(set(actual) - set(keywords)), f"{dotted}: README leaves out keywords"


def python_blocks() -> list[str]:
    return [body for language, body in code_blocks(README.read_text()) if language == "python"]


def block_with(*names: str) -> str:
    found = [body for body in python_blocks() if all(name in body for name in names)]
    assert len(found) == 1, f"one README Python block with {names}, found {len(found)}"
    return found[0]


def test_the_clustering_and_hierarchy_examples_run():
    namespace: dict = {}
    exec(block_with("fast_cluster(features"), namespace)
    assert namespace["res"].labels.shape == (3, 60, 60)
    exec(block_with("build_hierarchy(masks"), namespace)
    assert len(namespace["h"].parent) == len(namespace["masks"])


def test_the_discovery_example_runs(tmp_path, monkeypatch):
    """The one-image discovery example, end to end, with structured features on the paper's
    60 x 60 grid standing in for the DINO ViT-B/8 keys of the weights it names (a random ViT's
    keys split a photo into hundreds of regions: a minute of CRFs)."""
    import hassod.features
    from hassod.testing import structured_features

    real_load_vit, real_image_features = hassod.features.load_vit, hassod.features.image_features

    def fake_load_vit(name, weights=None, **options):
        inspect.signature(real_load_vit).bind(name, weights, **options)  # the call is valid
        assert name == "vit_base_patch8_224.dino" and weights == "dino_vitbase8_pretrain.pth"
        return "model"

    def fake_image_features(model, image, size=None, *, transform="none"):
        inspect.signature(real_image_features).bind(model, image, size, transform=transform)
        assert model == "model" and image.dtype == np.uint8 and image.shape[2] == 3
        assert (size, transform) == (480, "none")  # the paper's, for DINO v1
        return structured_features(60, 60, 64)

    monkeypatch.setattr(hassod.features, "load_vit", fake_load_vit)
    monkeypatch.setattr(hassod.features, "image_features", fake_image_features)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    pixels[10:40, 20:60] = (200, 30, 30)
    (tmp_path / "IMAGES_DIR").mkdir()
    Image.fromarray(pixels).save(tmp_path / "IMAGES_DIR" / "x.jpg")
    box = [20.0, 10.0, 40.0, 30.0]
    ground_truth = {
        "images": [{"id": 1, "file_name": "x.jpg", "height": 60, "width": 80}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": box,
                "area": 1200.0,
                "segmentation": [[20.0, 10.0, 60.0, 10.0, 60.0, 40.0, 20.0, 40.0]],
            }
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "instances_val2017.json").write_text(json.dumps(ground_truth))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(block_with("discover_from_features(image, keys, config)"), namespace)
    result, pseudo = namespace["result"], namespace["pseudo"]
    assert result.masks.shape[1:] == (60, 80)
    assert len(pseudo["annotations"]) == len(result.masks)
    assert "AR@1000" in printed.getvalue()


def photo_and_probs(labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    probs = rng.random((labels, 24, 32)).astype(np.float32)
    return image, probs / probs.sum(axis=0)


def test_the_crf_example_runs():
    image, probs = photo_and_probs(3, 0)
    namespace = {
        "image_uint8_hw3": image,
        "probs_khw": probs,
        "probs_a": probs,
        "probs_b": photo_and_probs(5, 1)[1],
    }
    exec(block_with("CrfLattice(image_uint8_hw3)"), namespace)
    np.testing.assert_allclose(namespace["q"], namespace["q1"], atol=1e-6)
    assert namespace["q2"].shape == (5, 24, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the example runs on a CUDA device")
def test_the_gpu_crf_example_runs():
    images, probs_list = zip(*(photo_and_probs(3, seed) for seed in range(2)))
    namespace = {
        "images": list(images),
        "probs_list": list(probs_list),
        "label_sets": [(p, p, p) for p in probs_list],
    }
    exec(block_with("CrfBatch(images"), namespace)
    assert len(namespace["qs"]) == 2


def test_the_detector_example_runs(tmp_path, monkeypatch):
    from hassod.detector import checkpoint as ckpt
    from hassod.detector.model import HassodDetector

    torch.manual_seed(0)
    config = tiny_config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, norm="gn"))
    model, teacher = HassodDetector(config.model, "gn"), HassodDetector(config.model, "gn")
    checkpoint = tmp_path / "run" / "checkpoints" / "model_final.pth"
    checkpoint.parent.mkdir(parents=True)
    ckpt.save_checkpoint(checkpoint, config=config, iteration=0, model=model, teacher=teacher)
    (tmp_path / "val2017").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for index, name in enumerate(("a.jpg", "b.jpg")):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "val2017" / name)
        records.append({"id": 7 + index, "file_name": name, "height": 48, "width": 64})
    ground_truth = {"images": records, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "instances_val2017.json").write_text(json.dumps(ground_truth))
    monkeypatch.chdir(tmp_path)

    namespace = {"image_rgb_uint8": rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)}
    exec(block_with("Predictor(", "predict_images("), namespace)
    assert isinstance(namespace["detections"], list)
    results = json.loads((tmp_path / "preds.json").read_text())
    assert {result["image_id"] for result in results} <= {7, 8}


@pytest.mark.parametrize("side, shown", [(600, 512), (300, 300), (256, 512), (100, 500)])
def test_the_report_viewer_sizes_the_readme_gives(tmp_path, side, shown):
    """The mask viewer shows a photo at most DISPLAY_SIDE px long, and one at most half that
    long enlarged to a whole multiple of its size, as the README says."""
    from hassod.report import DISPLAY_SIDE, ImageMasks, _write_viewer_files

    text = " ".join(README.read_text().split())
    assert f"on the photo at most {DISPLAY_SIDE} px long" in text
    assert f"a photo at most {DISPLAY_SIDE // 2} px long is shown enlarged" in text
    pixels = np.zeros((side // 2, side, 3), dtype=np.uint8)
    masks = np.ones((1, side // 2, side), dtype=bool)
    item = ImageMasks(pixels, [{"id": 1}], masks, np.zeros(1, dtype=np.int64), 1)
    colours = np.zeros((1, 3), dtype=np.uint8)
    _, _, (width, _) = _write_viewer_files(tmp_path, "x", item, colours)
    assert DISPLAY_SIDE == 512 and width == shown


def test_the_build_section_names_the_build_inputs_and_requirements():
    """Building: every environment variable setup.py counts among the build folder's inputs,
    and the setuptools that pyproject.toml's build requires, for builds without isolation."""
    text = " ".join(README.read_text().split())
    setup_py = (ROOT / "setup.py").read_text()
    cached = re.search(r"^CACHED_ENV = \(([^)]*)\)", setup_py, flags=re.MULTILINE)
    names = re.findall(r'"(\w+)"', cached.group(1))
    assert names
    section = text[text.index("## Building") : text.index("## Benchmarks")]
    inputs = section[section.index("is reused only while") :][:300]
    assert not [name for name in names if f"`{name}`" not in inputs and name not in inputs]
    pyproject = (ROOT / "pyproject.toml").read_text()
    minimum = re.search(r'requires = \[[^]]*"setuptools>=([\d.]+)"', pyproject).group(1)
    assert f"`'setuptools>={minimum}' cmake ninja pybind11`" in section
