"""Low-resolution images: ``tlkit advise`` finds them from a sample of the data and the model's input size, says so,
and recommends the measured faster rate (``--lr 0.003``, the backbone's ratio kept; docs/finetuning.md), and the
opt-in ``strong`` augmentation preset builds in every image plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tlkit
from tlkit.data.samples import sample_images
from tlkit.finetuning.advice import Advice, advise
from tlkit.testing import make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_strong_preset_is_the_light_crop_plus_randaugment_and_random_erasing() -> None:
    img = sample_images(1, size=(40, 32))[0]
    for name in ("timm/resnet10t", "torchvision/resnet18"):
        bb = tlkit.get_backbone(name, weights="none", preprocess={"input_size": 48}).replace(augment="strong")
        torch.manual_seed(0)
        assert bb.preprocess_item(img, train=True).shape == (3, 48, 48)
        steps = repr(bb._transforms[True])
        assert "RandAugment" in steps and "RandomErasing(p=0.25" in steps and "scale=(0.7, 1.0)" in steps, name


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 images of 12x12 px per class: enough per class for advise to recommend fine-tuning."""
    return make_image_folder(tmp_path_factory.mktemp("lowres") / "data", classes=2, per_class=100, size=(12, 12))


@pytest.fixture(scope="module")
def low(tiny_images: Path) -> Advice:
    return advise(tiny_images, "effnet/lite0", preprocess={"input_size": [3, 32, 32]}, probe_items=40, workers=0)


def test_advise_finds_upscaled_images_and_recommends_a_faster_rate(tiny_images: Path, low: Advice) -> None:
    assert (low.image_side, low.input_side, low.low_resolution) == (12, 32, True)
    assert low.strategy == "lp-ft" and low.commands[-1].endswith("-o ft-run --input-size 32 --lr 0.003")
    assert low.finetune_options == {"lr": 0.003} and low.to_dict()["finetune_options"] == {"lr": 0.003}
    assert any("12 px on their shorter side" in r and "upscaled 2.67×" in r for r in low.reasons)
    assert any("--lr 0.003: the head at 3e-03 and the backbone at 3e-04 (the same 10× ratio)" in r for r in low.reasons)

    # the same images at a model input under twice their side are not low-resolution: the plain defaults
    near = advise(tiny_images, "effnet/lite0", preprocess={"input_size": [3, 20, 20]}, probe_items=40, workers=0)
    assert near.low_resolution is False and near.commands[-1].endswith("-o ft-run --input-size 20")
    assert near.finetune_options == {}
    # without a backbone nothing is measured, and nothing is claimed
    blind = advise(tiny_images)
    assert blind.image_side is None and blind.low_resolution is False and blind.commands[-1].endswith("-o ft-run")


def test_the_low_resolution_command_runs_as_printed(low: Advice, tmp_path: Path) -> None:
    """The printed command in a real subprocess (its output folder moved, its epochs cut to one): the run trains the
    head at the recommended rate and the backbone at a tenth of it."""
    import shlex
    import subprocess
    import sys

    argv = shlex.split(low.commands[-1])
    argv[argv.index("-o") + 1] = str(tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "tlkit", *argv[1:], "--epochs", "1", "--workers", "0", "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    args = config["args"]
    assert (args["lr"], args["backbone_lr_ratio"], args["backbone_lr"]) == (0.003, None, None)
    assert config["plan"][0]["unfreeze"] == "all" and config["status"] == "complete"


def test_image_side_skips_items_that_do_not_decode(tmp_path: Path) -> None:
    from tlkit.finetuning.advice import image_side

    root = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=(10, 14))
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    assert image_side(tlkit.open_dataset(root)) == 10
    for png in root.rglob("*.png"):
        png.write_bytes(b"")
    assert image_side(tlkit.open_dataset(root)) is None
