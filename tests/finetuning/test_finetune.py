"""The fine-tuning engine on real (tiny) networks: freezing, BatchNorm, learning rates, LP-FT, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _ft_helpers import FAST, Recorder, image_data, write_head_run

import tlkit
from tlkit.errors import BadInputError, ConfigError, FingerprintMismatchError
from tlkit.finetuning.model import TransferModel
from tlkit.heads.torch_heads import build_head

pytestmark = pytest.mark.usefixtures("one_thread")

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("ft") / "data", classes=3, per_class=10)


def _block_keys(engine, names: list[str]) -> list[str]:
    """State-dict keys (parameters and buffers) of the modules inside the named blocks."""
    prefixes = {p.rsplit(".", 1)[0] for b in engine.model.blocks if b.name in names for p in b.params}
    return [k for k in engine.model.state_dict() if k.startswith("backbone.") and k[9:].rsplit(".", 1)[0] in prefixes]


@pytest.mark.parametrize("policy", ["train", "affine"])
def test_frozen_blocks_and_their_bn_statistics_are_bitwise_unchanged(data: Path, tmp_path: Path, policy: str) -> None:
    rec = Recorder(
        "fake/image", data, tmp_path / "run", unfreeze="last:1", epochs=3, bn_policy=policy, lr=1e-2, linear_probe=False
    )
    result = rec.run()
    assert result.plan == "head:1,last:1:2"  # a random head trains alone first
    start, end = rec.states[0], rec.states[-1]
    frozen = _block_keys(rec.engine, ["stem", "stages.0"])
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith(".weight") for k in frozen)
    for key in frozen:  # weights, γ/β and running statistics of frozen blocks
        assert torch.equal(start[key], end[key]), key
    # the trainable block did train, so the comparison above could have failed
    assert not torch.equal(start["backbone.stages.1.0.weight"], end["backbone.stages.1.0.weight"])
    assert not torch.equal(start["backbone.stages.1.1.weight"], end["backbone.stages.1.1.weight"])  # γ trains
    stats_moved = not torch.equal(start["backbone.stages.1.1.running_mean"], end["backbone.stages.1.1.running_mean"])
    assert stats_moved is (policy == "train")
    # during every epoch, after the engine's model.train(): frozen-block BN in eval mode
    assert len(rec.modes) == 3
    for epoch, modes in enumerate(rec.modes):
        assert modes["stem.1"] is False and modes["stages.0.1"] is False
        assert modes["stages.1.1"] is (policy == "train" and epoch > 0)


def test_learning_rates_per_group_equal_the_spec(data: Path, tmp_path: Path) -> None:
    rec = Recorder(
        "fake/image",
        data,
        tmp_path / "a",
        unfreeze="last:2",
        epochs=1,
        head_epochs=0,
        lr=2e-3,
        backbone_lr_ratio=0.1,
        layer_decay=0.5,
        lr_schedule="constant",
        warmup=0.0,
        weight_decay=0.05,
    )
    rec.run()
    lrs = {g["name"]: g["lr"] for g in rec.engine.optimizer.param_groups}
    assert lrs == pytest.approx(
        {
            "stem": 0.0,
            "stem/no_decay": 0.0,
            "stages.0": 1e-4,
            "stages.0/no_decay": 1e-4,
            "stages.1": 2e-4,
            "stages.1/no_decay": 2e-4,
            "head": 2e-3,
            "head/no_decay": 2e-3,
        }
    )
    wd = {g["name"]: g["weight_decay"] for g in rec.engine.optimizer.param_groups}
    assert wd["stages.1"] == 0.05 and wd["stages.1/no_decay"] == 0.0 and wd["head/no_decay"] == 0.0
    row = [r for r in rec.engine.freeze if r.block == "stages.0"][0]
    assert row.lr == pytest.approx(1e-4)

    rec = Recorder(
        "fake/image", data, tmp_path / "b", unfreeze="all", epochs=1, head_epochs=0, lr_schedule="constant", warmup=0.0
    )
    rec.run()
    lrs = {g["name"]: g["lr"] for g in rec.engine.optimizer.param_groups}
    assert lrs["head"] == pytest.approx(1e-3)  # the defaults: head 1e-3, backbone × 0.1
    assert [lrs[n] for n in ("stem", "stages.0", "stages.1")] == pytest.approx([1e-4] * 3)


def test_lp_ft_starts_from_the_probe_head(data: Path, tmp_path: Path) -> None:
    bb = tlkit.get_backbone("fake/image")
    torch.manual_seed(123)
    probe = build_head("linear", 16, 3)
    probe_dir = write_head_run(
        tmp_path / "probe", "fake/image", bb.fingerprint(), ["class_0", "class_1", "class_2"], probe, 16
    )
    rec = Recorder("fake/image", data, tmp_path / "run", init_head=str(probe_dir), unfreeze="last:1", epochs=2)
    result = rec.run()
    start = rec.states[0]
    assert torch.equal(start["head.weight"], probe.weight) and torch.equal(start["head.bias"], probe.bias)
    assert result.plan == "last:1:2"  # the probe replaces the head-only epochs
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head"]["name"] == "linear" and config["init_head"]["fingerprint"] == bb.fingerprint()


def test_init_head_bad_inputs(data: Path, tmp_path: Path) -> None:
    bb = tlkit.get_backbone("fake/image")
    head = build_head("linear", 16, 3)
    classes = ["class_0", "class_1", "class_2"]
    wrong = write_head_run(tmp_path / "wrong", "fake/image", "0" * 32, classes, head, 16)
    with pytest.raises(FingerprintMismatchError) as info:
        tlkit.finetune("fake/image", data, tmp_path / "r1", init_head=wrong, **FAST)
    assert "0" * 32 in str(info.value) and bb.fingerprint() in str(info.value)
    other = write_head_run(tmp_path / "other", "fake/image", bb.fingerprint(), ["x", "y", "z"], head, 16)
    with pytest.raises(BadInputError, match="classes"):
        tlkit.finetune("fake/image", data, tmp_path / "r2", init_head=other, **FAST)
    good = write_head_run(tmp_path / "good", "fake/image", bb.fingerprint(), classes, head, 16)
    with pytest.raises(ConfigError, match="linear"):
        tlkit.finetune("fake/image", data, tmp_path / "r3", init_head=good, head="mlp", **FAST)


def test_run_directory_and_from_run(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = tlkit.finetune("fake/image", data, out, epochs=2, unfreeze="last:1", **FAST)
    for name in (
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "report.json",
        "curves.png",
        "confusion.png",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "finetune" and config["status"] == "complete"
    assert config["backbone"]["fingerprint"] == tlkit.get_backbone("fake/image").fingerprint()
    assert config["head"] == {"name": "linear", "kind": "torch", "params": {}, "in_dim": 16, "n_classes": 3}
    assert config["init_head"]["auto"] is True and config["init_head"]["items"] == 27  # probe: 90 % of 30
    assert config["class_names"] == ["class_0", "class_1", "class_2"]
    assert config["runtime"] == {
        "stage": "finetune", "device": "cpu", "precision": "fp32", "batch_size": None, "auto_batch": False,
        "workers": 0, "rank": 0, "world_size": 1,
    }  # fmt: skip
    assert config["args"]["precision"] == "fp32" and config["args"]["device"] == "cpu"  # as given
    from safetensors.torch import load_file

    keys = load_file(str(out / "model.safetensors")).keys()
    assert keys and all(k.startswith(("backbone.", "head.")) for k in keys)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result.history
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == result.report.accuracy and report["evaluated_on"] == "val"
    assert result.report.n == 3  # 10 % of 3 × 10 held out, stratified

    model = TransferModel.from_run(out)
    images = tlkit.testing.sample_images(3, size=(32, 32))
    batch = model.preprocess(images)
    ref = TransferModel(tlkit.get_backbone("fake/image").load(), build_head("linear", 16, 3)).eval()
    ref.load_state_dict(load_file(str(out / "model.safetensors")))
    with torch.inference_mode():
        assert torch.equal(model(batch), ref(batch))
    assert model.class_names == config["class_names"] and not model.training


def test_auto_precision_is_the_one_extraction_uses(data: Path, tmp_path: Path) -> None:
    from tlkit.runtime import RuntimeOptions, resolve

    result = tlkit.finetune(
        "fake/image", data, tmp_path / "run", epochs=1, unfreeze="none", **{**FAST, "precision": "auto"}
    )
    runtime = json.loads((result.run_dir / "config.json").read_text())["runtime"]
    extraction = resolve("extract", RuntimeOptions.of(device="cpu"), env=False)
    assert runtime["precision"] == extraction.precision and runtime["device"] == "cpu"


def test_bad_items_are_skipped_with_a_summary(tmp_path: Path) -> None:
    data = image_data(tmp_path / "data", classes=2, per_class=6)
    (data / "class_1" / "broken.png").write_bytes(b"not an image")
    result = tlkit.finetune("fake/image", data, tmp_path / "run", epochs=1, val_split=0.0, **FAST)
    assert [(s.id, "image" in s.reason) for s in result.skipped] == [("class_1/broken.png", True)]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["skipped"][0]["id"] == "class_1/broken.png"
    with pytest.raises(BadInputError, match="broken.png"):
        tlkit.finetune("fake/image", data, tmp_path / "run2", epochs=1, val_split=0.0, on_error="fail", **FAST)


def test_early_stopping_on_validation(data: Path, tmp_path: Path) -> None:
    # a rate so small that no weight moves: validation cannot improve after epoch 1
    result = tlkit.finetune(
        "fake/image",
        data,
        tmp_path / "run",
        epochs=6,
        unfreeze="none",
        lr=1e-30,
        early_stopping=2,
        monitor="val_loss",
        linear_probe=False,  # a random head: epoch 1 is the first candidate (from a probe, epoch 0 would be)
        **FAST,
    )
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len(result.history) == 3


def test_text_backbone_bf16_accumulation(tmp_path: Path) -> None:
    rows = ["text,label"] + [f"{w} {i} {w},{lab}" for i in range(8) for w, lab in (("good", "pos"), ("bad", "neg"))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="gradient checkpointing"):
        result = tlkit.finetune(
            "fake/text",
            tmp_path / "t.csv",
            tmp_path / "run",
            epochs=2,
            unfreeze="all",
            accumulate=2,
            grad_checkpointing=True,
            **{**FAST, "precision": "bf16"},
        )
    assert result.epochs_run == 2 and result.report.n == 2  # 10 % of 8 per class, at least 1 each
    assert TransferModel.from_run(tmp_path / "run").class_names == ["neg", "pos"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": "head:1,last:1:1", "gradual": True}, "give schedule or gradual, not both"),
        ({"schedule": "head:1,last:1:1", "unfreeze": "all"}, "drop unfreeze"),
        ({"schedule": "head:1,last:1:1", "epochs": 5}, "disagrees"),
        ({"backbone_lr_ratio": 0.1, "backbone_lr": 1e-5}, "not both"),
        ({"val_split": 0.0, "early_stopping": 2}, "watches validation"),
        ({"layer_decay": 1.5}, "layer_decay must be in"),
        ({"ema": 1.0}, "ema is a decay per optimizer step in"),
        ({"unfreeze": "stages.9"}, "stem, stages.0, stages.1"),
        ({"nonsense": 1}, "unknown finetune option"),
    ],
)
def test_conflicting_or_bad_options(data: Path, tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        tlkit.finetune("fake/image", data, tmp_path / "run", **{**FAST, **options})
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_val_and_val_split_conflict_and_existing_run(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give val or val_split, not both"):
        tlkit.finetune("fake/image", data, tmp_path / "r", val=data, val_split=0.2, **FAST)
    out = tmp_path / "done"
    tlkit.finetune("fake/image", data, out, epochs=1, unfreeze="none", **FAST)
    with pytest.raises(ConfigError, match="already holds a run; pass resume"):
        tlkit.finetune("fake/image", data, out, epochs=1, unfreeze="none", **FAST)


class _WaveBackbone(tlkit.Backbone):
    """A minimal real audio backbone: the raw waveform, padded, through one linear layer."""

    modality = "audio"

    @property
    def spec(self):
        from tlkit.contract.backbone import BackboneSpec

        return BackboneSpec(self.name, "audio", 4, {"sample_rate": 8000, "clip_seconds": 0.05}, "mean", self.weights)

    def build_module(self):
        return torch.nn.Linear(1, 4)

    def preprocess_item(self, item, *, train: bool = False):
        return torch.as_tensor(item.waveform)

    def collate(self, processed):
        return torch.nn.utils.rnn.pad_sequence(list(processed), batch_first=True)

    def embed(self, batch):
        return self.module(batch.unsqueeze(-1)).mean(1)

    def blocks(self):
        return [tlkit.Block("proj", ("weight", "bias"))]


def test_audio_training_items_are_cropped_scaled_and_noised(tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from tlkit.finetuning.data import ItemDataset
    from tlkit.host.readers import open_dataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            t = np.arange(1600) / 8000
            soundfile.write(tmp_path / c / f"{i}.wav", 0.5 * np.sin(2 * np.pi * (300 + 100 * i) * t), 8000)
    dataset = open_dataset(tmp_path, modality="audio")
    bb = _WaveBackbone("test/wave", weights="none")
    clean = ItemDataset(dataset, bb, train=False)[0][1]
    np.random.seed(0)
    noisy = ItemDataset(dataset, bb, train=True)[0][1]
    assert clean.shape == (1600,) and noisy.shape == (400,)  # cropped to clip_seconds (0.05 s at 8 kHz)
    assert not any(torch.allclose(noisy, clean[s : s + 400], atol=1e-3) for s in range(0, 1201))
    np.random.seed(0)
    assert torch.equal(ItemDataset(dataset, bb, train=True)[0][1], noisy)  # seeded: resumable
    result = tlkit.finetune(bb, dataset, tmp_path / "run", epochs=1, val_split=0.0, unfreeze="all", **FAST)
    assert result.epochs_run == 1 and result.evaluated_on == "train" and result.report.n == 4


def test_fp16_uses_a_gradient_scaler_that_is_checkpointed(data: Path, tmp_path: Path) -> None:
    from tlkit.finetuning.state import read_meta

    result = tlkit.finetune(
        "fake/image",
        data,
        tmp_path / "run",
        epochs=1,
        head_epochs=0,
        unfreeze="all",
        val_split=0.0,
        **{**FAST, "precision": "fp16"},
    )
    assert result.epochs_run == 1
    scaler = read_meta(tmp_path / "run" / "checkpoints" / "last.safetensors")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 1  # a real, enabled scaler stepped and was saved
