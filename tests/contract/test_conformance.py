"""The conformance kit passes on the fake backbones and fails, by name, on deliberately broken ones."""

from __future__ import annotations

import pytest
import torch

from tlkit.contract.backbone import Block
from tlkit.errors import ConfigError
from tlkit.testing import CHECKS, assert_conformant, check_backbone, sample_images, sample_texts
from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone


@pytest.fixture(scope="module")
def images():
    return sample_images(4)


def test_fake_backbones_conform(images):
    for bb, items in (
        (FakeImageBackbone("fake/image", weights="none"), images),
        (FakeTextBackbone("fake/text", weights="none"), sample_texts()),
    ):
        report = check_backbone(bb, items)
        assert report.ok, report.summary()
        assert [r.name for r in report.results] == list(CHECKS)


def test_pytest_fixture_is_registered(tlkit_conformance, images):
    report = tlkit_conformance(FakeImageBackbone("fake/image", weights="none"), images)
    assert report.ok


class NoPreprocessConfig(FakeImageBackbone):
    DEFAULT_PREPROCESS = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": []}

    def preprocess_item(self, item, *, train=False):
        return super().replace(preprocess={"std": [0.25] * 3}).preprocess_item(item, train=train)


class WrongShape(FakeImageBackbone):
    def embed(self, batch):
        return super().embed(batch)[:, :8]


class NonDeterministic(FakeImageBackbone):
    def embed(self, batch):
        out = super().embed(batch)
        return out + 1e-3 * torch.rand_like(out)


class BatchDependent(FakeImageBackbone):
    def embed(self, batch):
        out = super().embed(batch)
        return out - out.mean(dim=0, keepdim=True) if len(out) > 1 else out  # leaks batch statistics


class MissingParam(FakeImageBackbone):
    def blocks(self):
        blocks = super().blocks()
        return [Block(blocks[0].name, blocks[0].params[1:]), *blocks[1:]]


class DoubleCounted(FakeImageBackbone):
    def blocks(self):
        blocks = super().blocks()
        return [blocks[0], Block(blocks[1].name, blocks[1].params + blocks[0].params[:1]), *blocks[2:]]


class UnusedBlock(FakeImageBackbone):
    """A classifier layer the embedding never uses, still offered for training."""

    def build_module(self):
        module = super().build_module()
        module.classifier = torch.nn.Linear(4, 2)
        return module

    def blocks(self):
        head = ("classifier.weight", "classifier.bias")
        body = [Block(b.name, tuple(p for p in b.params if p not in head)) for b in super().blocks()]
        return [*body, Block("classifier", head)]


class FlaggedButUsed(FakeImageBackbone):
    def blocks(self):
        blocks = super().blocks()
        return [*blocks[:-1], Block(blocks[-1].name, blocks[-1].params, reaches_output=False)]


class UnstableFingerprint(FakeImageBackbone):
    _counter = 0

    def fingerprint(self):
        UnstableFingerprint._counter += 1
        return f"fp-{UnstableFingerprint._counter}"


class FingerprintIgnoresPreprocess(FakeImageBackbone):
    def fingerprint(self):
        return "always-the-same"


class SpecSaysText(FakeImageBackbone):
    @property
    def spec(self):
        from dataclasses import replace

        return replace(super().spec, modality="text")


class NoModality(FakeImageBackbone):
    modality = "video"


BROKEN = [
    (SpecSaysText, "modality"),
    (NoModality, "modality"),
    (NoPreprocessConfig, "preprocess_config"),
    (WrongShape, "embedding_shape"),
    (NonDeterministic, "determinism"),
    (BatchDependent, "batch_invariance"),
    (MissingParam, "blocks_cover_params"),
    (DoubleCounted, "blocks_cover_params"),
    (UnusedBlock, "blocks_reach_output"),
    (FlaggedButUsed, "blocks_reach_output"),
    (UnstableFingerprint, "fingerprint_stable"),
    (FingerprintIgnoresPreprocess, "fingerprint_tracks_preprocess"),
]


@pytest.mark.parametrize(("cls", "check"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_each_broken_backbone_fails_its_check(cls, check, images):
    report = check_backbone(cls("fake/image", weights="none"), images)
    assert not report.ok
    assert check in report.failed, report.summary()
    assert report[check].detail
    with pytest.raises(AssertionError, match=check):
        assert_conformant(cls("fake/image", weights="none"), images)


def test_a_crashing_check_is_a_failure_not_an_error(images):
    class Crashes(FakeImageBackbone):
        def blocks(self):
            raise RuntimeError("boom")

    report = check_backbone(Crashes("fake/image", weights="none"), images)
    assert report.failed == ["blocks_cover_params", "blocks_reach_output"]  # both read blocks()
    assert "RuntimeError: boom" in report["blocks_cover_params"].detail


def test_an_unused_block_flagged_as_such_conforms_and_is_not_offered(images):
    from tlkit.finetuning.freeze import resolve_unfreeze
    from tlkit.testing.conformance import block_gradients

    class Flagged(UnusedBlock):
        def blocks(self):
            *used, classifier = super().blocks()
            return [*used, Block(classifier.name, classifier.params, reaches_output=False)]

    bb = Flagged("fake/image", weights="none")
    assert_conformant(bb, images)
    norms = block_gradients(bb, images)
    assert norms["classifier"] == 0 and all(v > 0 for k, v in norms.items() if k != "classifier")
    used = [b.name for b in bb.output_blocks()]
    assert "classifier" not in used and len(used) == len(bb.blocks()) - 1
    assert resolve_unfreeze("last:1", bb.blocks()) == used[-1:]  # last:N counts blocks that reach the output
    assert resolve_unfreeze("all", bb.blocks()) == used
    with pytest.raises(ConfigError, match="'classifier' .* does not reach the pooled embedding"):
        resolve_unfreeze("classifier", bb.blocks())


def test_needs_two_items(images):
    with pytest.raises(ValueError):
        check_backbone(FakeImageBackbone("fake/image", weights="none"), images[:1])


def test_effnet_lite0_blocks_all_reach_its_embedding(images):
    from tlkit.host.api import get_backbone
    from tlkit.host.registry import get_registry

    if "effnet/lite0" not in get_registry().backbones:
        pytest.skip("the example plugin is not installed: pip install -e plugins/examples/tlkit-effnet-lite")
    bb = get_backbone("effnet/lite0", weights="pretrained", preprocess={"input_size": [3, 96, 96]})
    report = check_backbone(bb, images, checks=["blocks_cover_params", "blocks_reach_output"])
    assert report.ok, report.summary()
    assert bb.output_blocks() == bb.blocks()


@pytest.mark.parametrize("size", [(8, 8), (13, 5), (0, 5)])
def test_fake_image_pixels_equal_torchvision_s(size):
    """The fake backbone's fast path (an RGB image's bytes viewed as CHW) gives torchvision's ``to_image`` values,
    a writable tensor, and an empty image still converts (``torch.frombuffer`` refuses an empty buffer)."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from tlkit.testing.fake import _pixels

    w, h = size
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    x = _pixels(im)
    assert torch.equal(x, F.to_image(im).as_subclass(torch.Tensor))
    x.add_(0)  # writable
