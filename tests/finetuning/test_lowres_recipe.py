"""Low-resolution images: ``tlkit advise`` finds them from a sample of the data and the model's input size and says
so (its finetune command stays the measured default: the stronger recipe tried for them did not beat it, see
docs/benchmarks.md), and the opt-in ``strong`` augmentation preset builds in every image plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tlkit
from tlkit.data.samples import sample_images
from tlkit.finetuning.advice import advise
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


def test_advise_finds_upscaled_images_and_keeps_the_default_recipe(tiny_images: Path, tmp_path: Path) -> None:
    low = advise(tiny_images, "effnet/lite0", preprocess={"input_size": [3, 32, 32]}, probe_items=40, workers=0)
    assert (low.image_side, low.input_side, low.low_resolution) == (12, 32, True)
    assert low.strategy == "lp-ft" and low.commands[-1].endswith("-o ft-run --input-size 32")
    assert any("12 px on their shorter side" in r and "upscaled 2.67×" in r for r in low.reasons)

    # the same images at a model input under twice their side are not low-resolution: the plain defaults
    near = advise(tiny_images, "effnet/lite0", preprocess={"input_size": [3, 20, 20]}, probe_items=40, workers=0)
    assert near.low_resolution is False and near.commands[-1].endswith("--input-size 20")
    # without a backbone nothing is measured, and nothing is claimed
    blind = advise(tiny_images)
    assert blind.image_side is None and blind.low_resolution is False and "--augment" not in blind.commands[-1]


def test_image_side_skips_items_that_do_not_decode(tmp_path: Path) -> None:
    from tlkit.finetuning.advice import image_side

    root = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=(10, 14))
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    assert image_side(tlkit.open_dataset(root)) == 10
    for png in root.rglob("*.png"):
        png.write_bytes(b"")
    assert image_side(tlkit.open_dataset(root)) is None
