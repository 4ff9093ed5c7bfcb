"""Testing helpers for tlkit and its plugin authors: fake backbones, the conformance kit, sample data makers."""

from tlkit.data.samples import make_image_folder, sample_images, sample_texts
from tlkit.testing.conformance import (
    CHECKS,
    CheckResult,
    ConformanceReport,
    assert_conformant,
    check_backbone,
    default_variants,
)
from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceReport",
    "FakeImageBackbone",
    "FakeTextBackbone",
    "assert_conformant",
    "check_backbone",
    "default_variants",
    "make_image_folder",
    "sample_images",
    "sample_texts",
]
