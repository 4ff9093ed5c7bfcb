"""The timm plugin: parity with timm's own pipeline, weights sources, blocks, layers, names and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _vision_helpers import cosines, randomize_batchnorm, read_with_tlkit, report_parity
from click.testing import CliRunner

import tlkit
from tlkit.errors import BadInputError, ConfigError, TlkitError, UnknownNameError
from tlkit.testing import assert_conformant, sample_images

timm = pytest.importorskip("timm")

#: One small model per family the issue names.
FAMILIES = ["resnet10t", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224"]
#: Input sizes for the parity tests: resnet10t at its own default (176 px); the others smaller, set on both sides,
#: to keep the suite fast on a shared CPU (every other preprocessing value still comes from the model).
PARITY_SIZE = {"resnet10t": None, "efficientnet_b0": 128, "convnext_atto": 128, "vit_tiny_patch16_224": 128}


def parity_options(arch: str) -> tuple[dict, dict]:
    """``(tlkit options, timm create_model kwargs)`` for an architecture's parity input size."""
    size = PARITY_SIZE[arch]
    if size is None:
        return {}, {}
    model_kwargs = {"img_size": size} if arch.startswith("vit") else {}
    return {"preprocess": {"input_size": [3, size, size]}}, model_kwargs


def timm_reference(model: torch.nn.Module, folder: Path, size: int | None = None) -> torch.Tensor:
    """timm's own pipeline on the same files: its eval transform on PIL's decode, then ``model(x)``."""
    from PIL import Image

    config = timm.data.resolve_model_data_config(model)
    if size is not None:
        config["input_size"] = (3, size, size)
    transform = timm.data.create_transform(**config, is_training=False)
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        return model(x)


def tlkit_embed(bb: tlkit.Backbone, folder: Path) -> torch.Tensor:
    _, items = read_with_tlkit(folder)
    with torch.inference_mode():
        return bb.embed(bb.preprocess(items))


@pytest.mark.parametrize("arch", FAMILIES)
def test_parity_random_init(arch: str, photos: Path) -> None:
    options, model_kwargs = parity_options(arch)
    torch.manual_seed(0)
    bb = tlkit.get_backbone(f"timm/{arch}", weights="none", **options).load()
    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs).eval()
    # weights="none" is timm's own initialisation
    ours_state, ref_state = bb.module.state_dict(), ref.state_dict()
    assert list(ours_state) == list(ref_state)
    assert all(torch.equal(ours_state[k], ref_state[k]) for k in ref_state)
    # fresh BatchNorm statistics leave a random EfficientNet's features near zero; give both the same real ones
    randomize_batchnorm(bb.module)
    randomize_batchnorm(ref)
    ours, theirs = tlkit_embed(bb, photos), timm_reference(ref, photos, PARITY_SIZE[arch])
    assert ours.shape == theirs.shape == (5, bb.spec.embed_dim)
    assert theirs.abs().mean() > 1e-4  # a real signal, not numerical noise
    cos = cosines(ours, theirs)
    assert report_parity(f"timm/{arch} random init", cos) >= 0.9999


@pytest.mark.parametrize(("arch", "suffix"), [(a, [".safetensors", ".pth"][i % 2]) for i, a in enumerate(FAMILIES)])
def test_parity_local_weights_file(arch: str, suffix: str, photos: Path, tmp_path: Path) -> None:
    options, model_kwargs = parity_options(arch)
    torch.manual_seed(1)
    # with its classifier, as a checkpoint would be saved
    full = timm.create_model(arch, pretrained=False, **model_kwargs)
    randomize_batchnorm(full)
    state = {k: v.contiguous().clone() for k, v in full.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    ref = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs).eval()
    classifier = full.pretrained_cfg["classifier"]
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith(classifier + ".")}, strict=True)

    bb = tlkit.get_backbone(f"timm/{arch}", weights=path, **options).load()
    assert bb.weights_kind() == "local"
    ours, theirs = tlkit_embed(bb, photos), timm_reference(ref, photos, PARITY_SIZE[arch])
    cos = cosines(ours, theirs)
    assert report_parity(f"timm/{arch} local {suffix}", cos) >= 0.9999
    # the file's content is the weights identity: another file gives another fingerprint
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "other.pth")
    assert bb.fingerprint() != bb.replace(weights=str(tmp_path / "other.pth")).fingerprint()


def test_headless_file_and_hf_directory(photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    randomize_batchnorm(ref)
    # a checkpoint saved without a classifier loads too
    torch.save(ref.state_dict(), tmp_path / "headless.pth")
    headless = tlkit.get_backbone("timm/resnet10t", weights=tmp_path / "headless.pth").load()
    # an HF-layout directory (config.json + model.safetensors), as timm's save_for_hf writes it
    hf_dir = tmp_path / "hf-model"
    timm.models.save_for_hf(ref, str(hf_dir), safe_serialization=True)
    assert (hf_dir / "config.json").is_file()
    from_dir = tlkit.get_backbone("timm/resnet10t", weights=hf_dir).load()
    assert from_dir.spec.preprocess["input_size"] == list(ref.pretrained_cfg["input_size"])
    theirs = timm_reference(ref, photos)
    # the cache key follows the file's content, not where it lies
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "headless.pth").write_bytes((tmp_path / "headless.pth").read_bytes())
    moved = tlkit.get_backbone("timm/resnet10t", weights=tmp_path / "moved" / "headless.pth")
    assert moved.fingerprint() == headless.fingerprint()
    for bb in (headless, from_dir):
        assert cosines(tlkit_embed(bb, photos), theirs).min().item() >= 0.9999


def test_pretrained_uses_the_hub(monkeypatch: pytest.MonkeyPatch, photos: Path, tmp_path: Path) -> None:
    """weights="pretrained" is timm's real hub path; only the download is mocked."""
    import timm.models._hub as hub
    from safetensors.torch import save_file

    torch.manual_seed(3)
    published = timm.create_model("resnet10t", pretrained=False).eval()
    randomize_batchnorm(published)
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(tmp_path / "model.safetensors"))
    asked = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        asked.append((repo_id, filename))
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    bb = tlkit.get_backbone("timm/resnet10t.c3_in1k").load()
    assert asked == [("timm/resnet10t.c3_in1k", "model.safetensors")]
    assert bb.spec.source == "hf-hub:timm/resnet10t.c3_in1k"
    assert bb.spec.license == "apache-2.0"
    published.reset_classifier(0)
    assert cosines(tlkit_embed(bb, photos), timm_reference(published, photos)).min().item() >= 0.9999


def test_pretrained_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._hub as hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("Cannot reach the Hugging Face hub (offline)")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    # Offline (this test session sets HF_HUB_OFFLINE=1) the message says why; with a network, what failed.
    with pytest.raises(
        TlkitError,
        match=r"timm/resnet10t: (could not load pretrained weights from |its pretrained weights \()hf-hub:timm/.*"
        r"pass weights none",
    ):
        tlkit.get_backbone("timm/resnet10t").load()


def test_bad_local_weights(tmp_path: Path) -> None:
    wrong = timm.create_model("resnet18", pretrained=False)
    torch.save(wrong.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(BadInputError, match=r"resnet18\.pth: these weights do not fit resnet10t"):
        tlkit.get_backbone("timm/resnet10t", weights=tmp_path / "resnet18.pth").load()
    # a partial file fails instead of silently leaving layers at random init
    partial = {k: v for k, v in wrong.state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(BadInputError, match="Missing key"):
        tlkit.get_backbone("timm/resnet18", weights=tmp_path / "partial.pth").load()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match=r"garbage\.pth: cannot read weights"):
        tlkit.get_backbone("timm/resnet18", weights=tmp_path / "garbage.pth").load()
    (tmp_path / "w.npy").write_bytes(b"x")
    with pytest.raises(BadInputError, match="unsupported weights file"):
        tlkit.get_backbone("timm/resnet18", weights=tmp_path / "w.npy").load()
    with pytest.raises(BadInputError, match="no such file or directory"):
        tlkit.get_backbone("timm/resnet18", weights=tmp_path / "missing.pth").load()
    other = tmp_path / "other-dir"
    timm.models.save_for_hf(timm.create_model("resnet10t", num_classes=0), str(other))
    with pytest.raises(BadInputError, match="config.json describes resnet10t, not resnet18"):
        tlkit.get_backbone("timm/resnet18", weights=other).spec  # noqa: B018


def test_names_and_listing() -> None:
    assert isinstance(tlkit.get_backbone("timm/convnext_atto"), tlkit.Backbone)
    with pytest.raises(UnknownNameError, match="did you mean 'timm/resnet50'"):
        tlkit.get_backbone("timm/resnet5O")
    with pytest.raises(UnknownNameError, match="timm pretrained tag.*timm/resnet50.a1_in1k"):
        tlkit.get_backbone("timm/resnet50.a1_in1kk")
    convnexts = [e.name for e in tlkit.list_backbones("timm/convnext*", modality="image")]
    assert "timm/convnext_tiny" in convnexts and all(n.startswith("timm/convnext") for n in convnexts)
    assert len(convnexts) == len(timm.list_models("convnext*"))
    tagged = [e.name for e in tlkit.list_backbones("timm/resnet50.*")]
    assert "timm/resnet50.a1_in1k" in tagged
    short = [e.name for e in tlkit.list_backbones(None) if e.plugin == "timm"]
    assert 3 <= len(short) <= 20 and "timm/resnet50" in short
    assert not [e for e in tlkit.list_backbones("hf/*") if e.plugin == "timm"]


# -- blocks ---------------------------------------------------------------------------------------------------------
EXPECTED_BLOCKS = {
    "resnet10t": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "efficientnet_b0": ["stem", *[f"blocks.{i}" for i in range(7)], "head_conv"],
    "convnext_atto": ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head_norm"],
    "vit_tiny_patch16_224": ["stem", *[f"blocks.{i}" for i in range(12)], "head_norm"],
}

#: More layouts, built on the meta device (no memory): other matchers, a callable matcher, no matcher at all.
MORE_ARCHS = [
    "resnet50",
    "mobilenetv3_small_050",
    "regnetx_002",
    "swin_tiny_patch4_window7_224",
    "deit_tiny_distilled_patch16_224",
    "vit_small_patch16_224",
    "levit_128s",
    "densenet121",
    "hrnet_w18_small",
    "cait_xxs24_224",
    "inception_v3",
    "poolformer_s12",
    "coat_lite_tiny",
    "xcit_nano_12_p16_224",
    "tf_efficientnet_lite0",
]


def assert_cover(blocks: list[tlkit.Block], module: torch.nn.Module) -> None:
    names = [b.name for b in blocks]
    assert len(set(names)) == len(names), names
    assigned = [p for b in blocks for p in b.params]
    assert sorted(assigned) == sorted(n for n, _ in module.named_parameters())
    assert all(b.params for b in blocks)
    assert "head" not in names  # reserved for tlkit's head


@pytest.mark.parametrize("arch", FAMILIES)
def test_blocks_per_family(arch: str) -> None:
    bb = tlkit.get_backbone(f"timm/{arch}", weights="none")
    blocks = bb.blocks()
    assert [b.name for b in blocks] == EXPECTED_BLOCKS[arch]
    assert_cover(blocks, bb.module)


@pytest.mark.parametrize("arch", MORE_ARCHS)
def test_blocks_cover_more_layouts(arch: str) -> None:
    from tlkit_timm.blocks import timm_blocks

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    blocks = timm_blocks(model)
    assert_cover(blocks, model)
    assert len(blocks) >= 3
    assert blocks[0].name in ("stem", "stem1", "conv1", "stem.0") or blocks[0].name.startswith(("stem", "conv"))


def test_vit_small_blocks_and_backbone_info_cli() -> None:
    from tlkit.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["blocks", "timm/vit_small_patch16_224", "--weights", "none", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["stem", *[f"blocks.{i}" for i in range(12)], "head_norm"]
    assert sum(r["params"] for r in rows) == sum(
        p.numel() for p in timm.create_model("vit_small_patch16_224", num_classes=0).parameters()
    )
    info = runner.invoke(cli, ["backbones", "info", "timm/resnet50", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    # Described as the name loads it (pretrained), without downloading: the blocks come from the architecture.
    assert data["embed_dim"] == 2048 and data["weights"] == "pretrained" and data["license"] == "apache-2.0"
    assert data["fingerprint"] == tlkit.get_backbone("timm/resnet50").fingerprint()
    assert [b["name"] for b in data["blocks"]] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert data["preprocess"]["interpolation"] == "bicubic"  # from resnet50's pretrained_cfg, not hard-coded
    listing = runner.invoke(cli, ["backbones", "--modality", "image", "--filter", "timm/convnext*", "--json"])
    assert listing.exit_code == 0, listing.output
    assert {"timm/convnext_atto", "timm/convnext_tiny"} <= {e["name"] for e in json.loads(listing.output)}
    unknown = runner.invoke(cli, ["blocks", "timm/vit_smal_patch16_224"])
    assert unknown.exit_code == 1 and "did you mean" in unknown.output


# -- layers, pooling, preprocessing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224"])
def test_embed_layers_match_embed(arch: str) -> None:
    bb = tlkit.get_backbone(f"timm/{arch}", weights="none", preprocess={"input_size": [3, 96, 96]}).load()
    names = bb.layer_names()
    assert names and set(names) <= {b.name for b in bb.blocks()}
    batch = bb.preprocess(sample_images(3))
    with torch.inference_mode():
        final, per_layer = bb.embed_layers(batch, names)
        alone = bb.embed(batch)
    assert torch.allclose(final, alone, atol=1e-5)
    assert list(per_layer) == names
    assert all(t.shape[0] == 3 and t.dim() == 2 for t in per_layer.values())
    with pytest.raises(UnknownNameError):
        bb.embed_layers(batch, ["nope"])


def test_vit_at_a_smaller_input_size() -> None:
    bb = tlkit.get_backbone("timm/vit_tiny_patch16_224", weights="none", preprocess={"input_size": [3, 96, 96]})
    x = bb.preprocess(sample_images(2))
    assert tuple(x.shape) == (2, 3, 96, 96)
    with torch.inference_mode():
        assert bb.embed(x).shape == (2, 192)


def test_pooling_choice() -> None:
    token = tlkit.get_backbone("timm/vit_tiny_patch16_224", weights="none", preprocess={"input_size": [3, 64, 64]})
    avg = token.replace(pooling="avg")
    assert token.spec.pooling == "token" and avg.spec.pooling == "avg"
    assert token.fingerprint() != avg.fingerprint()
    assert "head_norm" in [b.name for b in avg.blocks()]  # fc_norm, after the blocks
    cat = tlkit.get_backbone("timm/resnet10t", weights="none", pooling="catavgmax")
    assert cat.spec.embed_dim == 1024
    with torch.inference_mode():
        assert cat.embed(cat.preprocess(sample_images(2))).shape == (2, 1024)
    with pytest.raises(ConfigError, match="pooling"):
        tlkit.get_backbone("timm/resnet10t", weights="none", pooling="median").spec  # noqa: B018


def test_preprocessing_comes_from_the_model() -> None:
    vit = tlkit.get_backbone("timm/vit_tiny_patch16_224", weights="none").spec.preprocess
    assert vit["mean"] == [0.5, 0.5, 0.5] and vit["crop_pct"] == 0.9
    r10 = tlkit.get_backbone("timm/resnet10t", weights="none").spec.preprocess
    assert r10["input_size"] == [3, 176, 176]  # resnet10t's own size, not 224
    tagged = tlkit.get_backbone("timm/resnet50.a1_in1k", weights="none").spec.preprocess
    assert tagged["crop_pct"] == pytest.approx(0.95)
    small = tlkit.get_backbone("timm/resnet10t", weights="none", preprocess={"input_size": 112})
    assert small.spec.preprocess["input_size"] == [3, 112, 112]
    assert tuple(small.preprocess(sample_images(1)).shape) == (1, 3, 112, 112)
    with pytest.raises(ConfigError, match="unknown preprocess key"):
        tlkit.get_backbone("timm/resnet10t", weights="none", preprocess={"size": 3}).spec  # noqa: B018


def test_training_augmentation() -> None:
    bb = tlkit.get_backbone("timm/resnet10t", weights="none", preprocess={"input_size": 64})
    img = sample_images(1, size=(96, 80))[0]
    torch.manual_seed(0)
    train = [bb.preprocess_item(img, train=True) for _ in range(4)]
    assert all(t.shape == (3, 64, 64) for t in train)
    assert any(not torch.equal(train[0], t) for t in train[1:])  # random
    assert torch.equal(bb.preprocess_item(img), bb.preprocess_item(img))  # eval is deterministic
    ra = bb.replace(augment="randaugment")
    assert ra.preprocess_item(img, train=True).shape == (3, 64, 64)
    assert "RandAugment" in repr(ra._transforms[True])
    custom = bb.replace(augment={"scale": (0.9, 1.0), "hflip": 0.0, "color_jitter": 0.0})
    assert custom.preprocess_item(img, train=True).shape == (3, 64, 64)
    none = bb.replace(augment="none")
    assert torch.equal(none.preprocess_item(img, train=True), bb.preprocess_item(img))
    with pytest.raises(ConfigError, match="unknown augment policy"):
        bb.replace(augment="heavy").preprocess_item(img, train=True)


def test_grad_checkpointing_and_numpy_items() -> None:
    import numpy as np

    bb = tlkit.get_backbone("timm/resnet10t", weights="none", preprocess={"input_size": 64})
    assert bb.set_grad_checkpointing(True) is True
    arr = np.asarray(sample_images(1)[0])
    assert torch.equal(bb.preprocess_item(arr), bb.preprocess_item(sample_images(1)[0]))
    with pytest.raises(BadInputError, match="expected a PIL image"):
        bb.preprocess_item(np.zeros((4, 4), np.float32))


def test_conformance() -> None:
    bb = tlkit.get_backbone("timm/resnet10t", weights="none", preprocess={"input_size": [3, 64, 64]})
    report = assert_conformant(bb, sample_images(4))
    assert report.ok and len(report.results) >= 7


def test_help_does_not_import_timm() -> None:
    import subprocess
    import sys

    code = "import sys, tlkit_timm; from tlkit_timm import naming; print('timm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
