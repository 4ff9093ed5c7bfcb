"""The contract's validation point and its runtime checks: options are checked in the main process before any data
is read, options of another modality are refused, the first batch's width and the spec's modality are checked, and a
plugin that validates its inputs strictly passes the conformance kit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

import tlkit
from tlkit.contract.backbone import check_first_output, validated
from tlkit.errors import ConfigError, PluginError
from tlkit.testing import check_backbone, sample_images, sample_texts
from tlkit.testing.conformance import default_variants
from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone


@pytest.fixture(scope="module")
def images() -> list[Any]:
    return sample_images(4)


class StrictImage(FakeImageBackbone):
    """Refuses every preprocessing value it does not support: 3 channels, square sizes 16..64, mean/std in (0, 1]."""

    def validate(self) -> None:
        super().validate()
        over = self.preprocess_overrides
        size = over.get("input_size")
        if size is not None and not (len(size) == 3 and size[0] == 3 and size[1] == size[2] and 16 <= size[1] <= 64):
            raise ConfigError(f"{self.name}: input_size must be [3, S, S] with S in 16..64, not {size}")
        for key in ("mean", "std"):
            if key in over and not all(0 < float(v) <= 1 for v in over[key]):
                raise ConfigError(f"{self.name}: {key} values must be in (0, 1]")
        if set(over) - {"input_size", "mean", "std"}:
            raise ConfigError(f"{self.name}: only input_size, mean and std can be changed")


class StrictText(FakeTextBackbone):
    """Knows one tokenizer only and a max_length of 2..64."""

    def validate(self) -> None:
        super().validate()
        over = self.preprocess_overrides
        if over.get("tokenizer", "utf8-bytes") != "utf8-bytes":
            raise ConfigError(f"{self.name}: unknown tokenizer {over['tokenizer']!r}")
        if not 2 <= int(over.get("max_length", 64)) <= 64:
            raise ConfigError(f"{self.name}: max_length must be in 2..64")


class PickyVariants(StrictImage):
    """A plugin that names its own valid variants: a smaller input size."""

    def conformance_variants(self) -> list[dict[str, Any]]:
        return [{"input_size": [3, 24, 24]}]


def test_strictly_validating_plugins_pass_the_kit(images: list[Any]) -> None:
    for bb, items in (
        (StrictImage("strict/image", weights="none"), images),
        (StrictText("strict/text", weights="none"), sample_texts()),
        (PickyVariants("strict/picky", weights="none"), images),
    ):
        report = check_backbone(bb, items)
        assert report.ok, report.summary()


def test_the_kits_variants_are_valid_values() -> None:
    image = default_variants(FakeImageBackbone("fake/image").spec.preprocess)
    assert image == [{"mean": [0.45, 0.45, 0.45]}]  # never another channel count or a made-up name
    assert default_variants(FakeTextBackbone("fake/text").spec.preprocess) == [{"max_length": 32}]
    assert default_variants({"sample_rate": 16000, "window_seconds": 10.0}) == [{"window_seconds": 5.0}]


def test_a_variant_the_plugin_refuses_fails_the_check_with_a_hint(images: list[Any]) -> None:
    class RefusesMean(StrictImage):
        def validate(self) -> None:
            super().validate()
            if "mean" in self.preprocess_overrides:
                raise ConfigError("mean is fixed")

    report = check_backbone(RefusesMean("strict/image", weights="none"), images)
    assert report.failed == ["fingerprint_tracks_preprocess"], report.summary()
    assert "conformance_variants()" in report["fingerprint_tracks_preprocess"].detail


def test_the_kit_runs_the_validation_point(images: list[Any]) -> None:
    class Refuses(FakeImageBackbone):
        def validate(self) -> None:
            raise ValueError("pooling 'weird' is not offered")

    report = check_backbone(Refuses("fake/image", weights="none"), images)
    assert "validate" in report.failed
    assert "refused its options: ValueError: pooling 'weird'" in report["validate"].detail


def test_get_backbone_validates_and_names_the_plugin() -> None:
    class Broken(FakeImageBackbone):
        def validate(self) -> None:
            raise ValueError("depth must be 1..3")

    with pytest.raises(
        ConfigError, match=r"backbone x/y \(plugin test_validation\) refused its options: ValueError: depth"
    ):
        validated(Broken("x/y"))
    bb = tlkit.get_backbone("fake/image", weights="none")
    assert bb.plugin_name == "core"
    assert bb.replace(weights="none").plugin_name == "core"


def test_options_of_another_modality_are_refused() -> None:
    with pytest.raises(ConfigError, match="does not apply to fake/text: it is a text backbone") as info:
        tlkit.get_backbone("fake/text", weights="none", preprocess={"input_size": [3, 64, 64]})
    assert info.value.param == "input_size"
    with pytest.raises(ConfigError, match="preprocess option 'tokenizer' does not apply to fake/image"):
        tlkit.get_backbone("fake/image", weights="none", preprocess={"tokenizer": "bert"})
    text = tlkit.get_backbone("fake/text", weights="none")
    with pytest.raises(ConfigError, match="does not apply"):
        text.replace(preprocess={"input_size": 64})  # replace() validates too
    assert "input_size" not in text.spec.preprocess


def test_first_output_check_names_width_and_modality() -> None:
    bb = FakeImageBackbone("fake/image", weights="none")
    dim = bb.spec.embed_dim
    check_first_output(bb, torch.zeros(2, dim), 2)
    check_first_output(bb, torch.zeros(5, dim))
    with pytest.raises(PluginError, match=rf"shape \(2, {dim - 1}\) for 2 items, but its spec declares embed_dim"):
        check_first_output(bb, torch.zeros(2, dim - 1), 2)

    class SaysText(FakeImageBackbone):
        @property
        def spec(self):  # type: ignore[no-untyped-def]
            return replace(super().spec, modality="text")

    with pytest.raises(PluginError, match="registered as image but its spec says 'text'"):
        check_first_output(SaysText("fake/image"), torch.zeros(2, dim), 2)


def test_timm_refuses_a_bad_augment_at_construction() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match="unknown augment policy 'bogus'"):
        tlkit.get_backbone("timm/resnet18", weights="none", augment="bogus")
    with pytest.raises(ConfigError, match="unknown preprocess key"):
        tlkit.get_backbone("timm/resnet18", weights="none", preprocess={"crop_mode": "center", "bogus": 1})
    tlkit.get_backbone("timm/resnet18", weights="none", augment="light")  # a valid one is accepted
