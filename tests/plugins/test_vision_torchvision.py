"""The torchvision plugin: parity with the ``Weights.transforms()`` pipeline, weight names, blocks, layers, listing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _vision_helpers import cosines, randomize_batchnorm, read_with_tlkit, report_parity

import tlkit
from tlkit.contract.backbone import build_shapes_only
from tlkit.errors import BadInputError, ConfigError, TlkitError, UnknownNameError
from tlkit.testing import assert_conformant, sample_images

torchvision = pytest.importorskip("torchvision")
from torchvision.models import get_model, get_model_weights  # noqa: E402


def penultimate(model: torch.nn.Module, head: str) -> torch.nn.Module:
    """The reference: the torchvision model with its final classifier layer replaced by an identity."""
    model.set_submodule(head, torch.nn.Identity())
    return model.eval()


def reference(model: torch.nn.Module, weights: object, folder: Path) -> torch.Tensor:
    """torchvision's own pipeline on the same files: ``Weights.transforms()`` on PIL's decode, then the model."""
    from PIL import Image

    transform = weights.transforms()
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        return model(x)


def tlkit_embed(bb: tlkit.Backbone, folder: Path) -> torch.Tensor:
    _, items = read_with_tlkit(folder)
    with torch.inference_mode():
        return bb.embed(bb.preprocess(items))


#: (model, its final classifier layer): a plain CNN, a bicubic one, and one whose penultimate layer is a hidden Linear
PARITY = [("resnet18", "fc"), ("efficientnet_b0", "classifier.1"), ("mobilenet_v3_small", "classifier.3")]


@pytest.mark.parametrize(("name", "head"), PARITY)
def test_parity_random_init(name: str, head: str, photos: Path) -> None:
    torch.manual_seed(0)
    bb = tlkit.get_backbone(f"torchvision/{name}", weights="none").load()
    torch.manual_seed(0)
    ref = penultimate(get_model(name, weights=None), head)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in bb.module.state_dict().items())
    # torchvision's init with fresh BatchNorm statistics leaves EfficientNet's features at ~1e-14 (numerical noise);
    # the same non-trivial statistics on both sides make the comparison meaningful
    randomize_batchnorm(bb.module)
    randomize_batchnorm(ref)
    ours, theirs = tlkit_embed(bb, photos), reference(ref, get_model_weights(name).DEFAULT, photos)
    assert ours.shape == theirs.shape == (5, bb.spec.embed_dim)
    assert theirs.abs().mean() > 1e-4
    cos = cosines(ours, theirs)
    assert report_parity(f"torchvision/{name} random init", cos) >= 0.9999


@pytest.mark.parametrize(
    ("name", "head", "suffix"), [("resnet18", "fc", ".pth"), ("mobilenet_v3_small", "classifier.3", ".safetensors")]
)
def test_parity_local_weights_file(name: str, head: str, suffix: str, photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    full = get_model(name, weights=None)
    randomize_batchnorm(full)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    bb = tlkit.get_backbone(f"torchvision/{name}", weights=path).load()
    ref = penultimate(full, head)
    cos = cosines(tlkit_embed(bb, photos), reference(ref, get_model_weights(name).DEFAULT, photos))
    assert report_parity(f"torchvision/{name} local {suffix}", cos) >= 0.9999
    assert bb.spec.source == str(path.resolve())


def test_enum_weights_use_torchvision_download(monkeypatch: pytest.MonkeyPatch, photos: Path) -> None:
    """An enum name loads through torchvision's own download path; only the network is mocked."""
    import torchvision.models._api as api

    torch.manual_seed(2)
    published = get_model("resnet18", weights=None)
    randomize_batchnorm(published)
    urls = []

    def fake_download(url: str, *args: object, **kwargs: object) -> dict:
        urls.append(url)
        return {k: v.clone() for k, v in published.state_dict().items()}

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    weights = get_model_weights("resnet18").IMAGENET1K_V1
    bb = tlkit.get_backbone("torchvision/resnet18", weights="IMAGENET1K_V1").load()
    assert urls == [weights.url] and bb.spec.source == weights.url and bb.weights_kind() == "pretrained"
    cos = cosines(tlkit_embed(bb, photos), reference(penultimate(published, "fc"), weights, photos))
    assert report_parity("torchvision/resnet18 IMAGENET1K_V1 (mocked download)", cos) >= 0.9999
    same = [tlkit.get_backbone("torchvision/resnet18", weights=w).spec.source for w in ("pretrained", "DEFAULT")]
    assert same == [weights.url, weights.url]


def test_download_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.models._api as api

    def offline(url: str, *args: object, **kwargs: object) -> dict:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(  # without a network here the message also says why it cannot be downloaded
        TlkitError, match=r"torchvision/resnet18: (could not load )?weights .*IMAGENET1K_V1.*pass weights none"
    ):
        tlkit.get_backbone("torchvision/resnet18", weights="pretrained").load()


def test_preprocessing_comes_from_the_weights() -> None:
    v1 = tlkit.get_backbone("torchvision/resnet50", weights="IMAGENET1K_V1").spec.preprocess
    v2 = tlkit.get_backbone("torchvision/resnet50", weights="ResNet50_Weights.IMAGENET1K_V2").spec.preprocess
    assert (v1["resize_size"], v2["resize_size"]) == (256, 232)
    none = tlkit.get_backbone("torchvision/resnet50", weights="none").spec.preprocess
    assert none == v2  # DEFAULT's transforms even without weights
    inception = tlkit.get_backbone("torchvision/inception_v3", weights="none").spec
    assert inception.preprocess["input_size"] == [3, 299, 299] and inception.embed_dim == 2048
    assert tlkit.get_backbone("torchvision/efficientnet_b0", weights="none").spec.preprocess["interpolation"] == (
        "bicubic"
    )
    small = tlkit.get_backbone("torchvision/resnet18", weights="none", preprocess={"input_size": 64})
    assert small.spec.preprocess["resize_size"] == 73  # the weights' resize/crop ratio, kept
    assert tuple(small.preprocess(sample_images(2)).shape) == (2, 3, 64, 64)
    with pytest.raises(ConfigError, match="unknown preprocess key"):
        tlkit.get_backbone("torchvision/resnet18", weights="none", preprocess={"size": 3}).spec  # noqa: B018


def test_bad_weights_and_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        tlkit.get_backbone("torchvision/resnet18", weights="IMAGENET1K_V3").spec  # noqa: B018
    with pytest.raises(UnknownNameError, match="did you mean 'torchvision/resnet18'"):
        tlkit.get_backbone("torchvision/resnet19")
    torch.save(get_model("resnet34", weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(BadInputError, match=r"resnet34\.pth: these weights do not fit torchvision/resnet18"):
        tlkit.get_backbone("torchvision/resnet18", weights=tmp_path / "resnet34.pth").load()
    with pytest.raises(ConfigError, match="one pooling"):
        tlkit.get_backbone("torchvision/resnet18", weights="none", pooling="max")


def test_listing() -> None:
    names = [e.name for e in tlkit.list_backbones("torchvision/resnet*", modality="image")]
    assert "torchvision/resnet50" in names and all(n.startswith("torchvision/resnet") for n in names)
    assert "torchvision/fasterrcnn_resnet50_fpn" not in [e.name for e in tlkit.list_backbones("torchvision/*")]
    assert "torchvision/resnet50" in [e.name for e in tlkit.list_backbones(None)]


# -- blocks ---------------------------------------------------------------------------------------------------------
EXPECTED = {
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "efficientnet_b0": [f"features.{i}" for i in range(9)],
    "mobilenet_v2": [f"features.{i}" for i in range(19)],
    "mobilenet_v3_small": [*[f"features.{i}" for i in range(13)], "classifier"],
    "convnext_tiny": ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head_norm"],
    "swin_t": ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head_norm"],
    "vit_b_16": ["stem", *[f"encoder.layers.{i}" for i in range(12)], "head_norm"],
    "regnet_y_400mf": ["stem", *[f"trunk_output.block{i}" for i in range(1, 5)]],
    "shufflenet_v2_x0_5": ["conv1", "stage2", "stage3", "stage4", "conv5"],
}
MORE = ["vgg16", "densenet121", "googlenet", "inception_v3", "squeezenet1_0", "maxvit_t", "mnasnet0_5", "alexnet"]


def headless_shapes(name: str) -> tuple[tlkit.Backbone, torch.nn.Module]:
    """The backbone and its headless network built for shapes only (no memory), for block checks."""
    bb = tlkit.get_backbone(f"torchvision/{name}", weights="none")
    return bb, build_shapes_only(lambda: bb._headless(bb._new_model(None)))


@pytest.mark.parametrize("name", [*EXPECTED, *MORE])
def test_blocks_cover_every_parameter_once(name: str) -> None:
    from tlkit_torchvision.blocks import torchvision_layout

    _, model = headless_shapes(name)
    layout = torchvision_layout(name, model)
    names = [b.name for b in layout.blocks]
    if name in EXPECTED:
        assert names == EXPECTED[name]
    assert len(set(names)) == len(names) and "head" not in names
    assigned = [p for b in layout.blocks for p in b.params]
    assert sorted(assigned) == sorted(n for n, _ in model.named_parameters())
    assert set(layout.outputs) <= set(names) and layout.outputs
    for path in layout.outputs.values():
        model.get_submodule(path)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_embed_layers(name: str) -> None:
    bb = tlkit.get_backbone(f"torchvision/{name}", weights="none", preprocess={"input_size": 64}).load()
    layers = bb.layer_names()
    assert layers and set(layers) <= {b.name for b in bb.blocks()}
    batch = bb.preprocess(sample_images(3))
    with torch.inference_mode():
        final, per_layer = bb.embed_layers(batch, layers)
        assert torch.allclose(final, bb.embed(batch))
    assert list(per_layer) == layers and all(t.shape[0] == 3 and t.dim() == 2 for t in per_layer.values())
    if name == "resnet18":
        assert [t.shape[1] for t in per_layer.values()] == [64, 128, 256, 512]
    with pytest.raises(UnknownNameError):
        bb.embed_layers(batch, ["fc"])


def test_training_augmentation() -> None:
    bb = tlkit.get_backbone("torchvision/resnet18", weights="none", preprocess={"input_size": 48})
    img = sample_images(1, size=(80, 64))[0]
    torch.manual_seed(0)
    views = [bb.preprocess_item(img, train=True) for _ in range(4)]
    assert all(v.shape == (3, 48, 48) for v in views) and any(not torch.equal(views[0], v) for v in views[1:])
    for policy in ("randaugment", "trivialaugment", {"scale": (0.9, 1.0), "re_prob": 0.5}):
        assert bb.replace(augment=policy).preprocess_item(img, train=True).shape == (3, 48, 48)
    assert torch.equal(bb.replace(augment="none").preprocess_item(img, train=True), bb.preprocess_item(img))
    with pytest.raises(ConfigError, match="unknown augment"):
        bb.replace(augment="extreme").preprocess_item(img, train=True)


def test_conformance() -> None:
    bb = tlkit.get_backbone("torchvision/resnet18", weights="none", preprocess={"input_size": 64})
    assert assert_conformant(bb, sample_images(4)).ok
