"""Adapters (peft LoRA and friends) inside the fine-tuning engine, on the fast fake backbones: the spec, which layers
get adapters, a frozen base, phases and rates, the run's files, loading them back, and refusing bad or crafted input.
The real models (timm, torchvision, MiniLM, an audio transformer), kill -9 and DDP are in test_adapters_models.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _ft_helpers import FAST, Recorder, image_data
from click.testing import CliRunner
from safetensors.torch import load_file

import tlkit
from tlkit.data.samples import sample_images
from tlkit.errors import BadInputError, ConfigError
from tlkit.finetuning.adapters import attach_adapters, parse_adapter, select_targets
from tlkit.finetuning.model import TransferModel

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("lora") / "data", classes=3, per_class=10)


@pytest.fixture(scope="module")
def lora_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tlkit.FinetuneResult]:
    """One finished LoRA run on fake/image, shared read-only (a test that edits it works on a copy)."""
    run = tmp_path_factory.mktemp("lora_run") / "run"
    return run, tlkit.finetune("fake/image", data, run, adapter="lora:r=2", epochs=2, lr=1e-2, **FAST)


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora_text") / "t.csv"
    rows = ["text,label"] + [f"{w} {i} {w},{lab}" for i in range(10) for w, lab in (("good", "pos"), ("bad", "neg"))]
    path.write_text("\n".join(rows) + "\n")
    return path


# -- the spec ------------------------------------------------------------------------------------------------------
def test_parse_adapter_fills_defaults_and_round_trips() -> None:
    spec = parse_adapter("lora:r=4,alpha=8,dropout=0,targets=query+value")
    assert spec is not None and spec.method == "lora"
    assert spec.opts == {"r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False, "dora": False,
                         "targets": ("query", "value")}  # fmt: skip
    assert parse_adapter(spec.describe()) == spec
    assert parse_adapter("lora") == parse_adapter("LoRA:r=8,alpha=16,dropout=0.05")
    assert parse_adapter("none") is None and parse_adapter(None) is None
    ia3 = parse_adapter("ia3:ff=output.dense")
    assert ia3 is not None and ia3.opts["ff"] == ("output.dense",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qlora", "unknown adapter method 'qlora'; use one of lora, ia3, loha, lokr"),
        ("lora:rank=8", "unknown option(s) rank; lora takes r, alpha, dropout, rslora, dora, targets"),
        ("lora:r=0", "r must be at least 1"),
        ("lora:r=2.5", "r='2.5' is not a valid int"),
        ("lora:dropout=1", "dropout must be below 1"),
        ("lora:alpha=-1", "alpha must be above 0"),
        ("lora:dora=maybe", "not a valid bool"),
        ("lora:r", "'r' is not KEY=VALUE"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_flag(text: str, message: str, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        tlkit.finetune("fake/image", data, tmp_path / "run", adapter=text, **FAST)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.for_flags({}).startswith("--adapter")


# -- which layers --------------------------------------------------------------------------------------------------
def test_default_targets_pointwise_convs_or_every_dense_conv_plus_linear() -> None:
    from torch import nn

    from tlkit.contract.backbone import Block

    def blocks_of(module: nn.Module) -> list[Block]:
        return [Block(n, tuple(f"{n}.{p}" for p, _ in m.named_parameters())) for n, m in module.named_children()]

    # MobileNet-like: pointwise convs carry the weights; the depthwise conv and the 3x3 stem get no adapter
    mobile = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 1), nn.Conv2d(64, 64, 3, groups=64), nn.Conv2d(64, 16, 1), nn.Linear(16, 4)
    )
    mobile_blocks = blocks_of(mobile)
    assert select_targets(mobile, mobile_blocks, [b.name for b in mobile_blocks]) == ["1", "3", "4"]
    # ResNet-like: 3x3 convs carry the weights, so every dense conv gets one
    resnet = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 32, 1))
    resnet_blocks = blocks_of(resnet)
    assert select_targets(resnet, resnet_blocks, [b.name for b in resnet_blocks]) == ["0", "1", "2"]
    # only in the chosen blocks; explicit globs with peft's suffix rule
    assert select_targets(mobile, mobile_blocks, ["3", "4"]) == ["3", "4"]
    assert select_targets(mobile, mobile_blocks, ["1", "3", "4"], ["4"]) == ["4"]
    with pytest.raises(ConfigError, match="targets='query' matches no Linear"):
        select_targets(mobile, mobile_blocks, ["1"], ["query"])


# -- the engine ----------------------------------------------------------------------------------------------------
def test_lora_phases_train_only_adapters_and_head_the_base_stays_bitwise(data: Path, tmp_path: Path) -> None:
    rec = Recorder(
        "fake/image", data, tmp_path / "run", adapter="lora:r=4", schedule="head:1,stages.1:1,last:2:1", lr=1e-2,
        linear_probe=False, bn_policy="train",
    )  # fmt: skip
    result = rec.run()
    engine = rec.engine
    adapters = engine.model.adapters
    assert adapters is not None and adapters.block_names == ["stages.0", "stages.1"]
    assert adapters.targets == ["stages.0.0", "stages.1.0"]  # fake/image: 3x3 convs, every dense conv
    start, after_head, after_top, end = rec.states
    lora = [k for k in end if ".lora_" in k]
    base = [k for k in end if k.startswith("backbone.") and ".lora_" not in k]
    assert lora and "backbone.stages.1.0.base_layer.weight" in base
    # the base weights of every layer never change (a BatchNorm layer of a training adapter block may)
    for key in base:
        if not key.startswith(("backbone.stages.0.1.", "backbone.stages.1.1.")):
            assert torch.equal(start[key], end[key]), key
    assert all(torch.equal(start[k], after_head[k]) for k in lora)  # the head phase trains no adapter
    top, low = "backbone.stages.1.0.lora_B.default.weight", "backbone.stages.0.0.lora_B.default.weight"
    assert not torch.equal(after_head[top], after_top[top]) and torch.equal(after_head[low], after_top[low])
    assert not torch.equal(after_top[low], end[low])  # the last phase adds the lower block's adapters
    # bn_policy train: statistics of an adapter block move once it trains, never in a block without adapters
    assert torch.equal(start["backbone.stem.1.running_mean"], end["backbone.stem.1.running_mean"])
    assert not torch.equal(start["backbone.stages.1.1.running_mean"], end["backbone.stages.1.1.running_mean"])
    # rates: adapters at head lr × 0.5 by default; the head at lr
    rates = {g["name"]: g["base_lr"] for g in engine.optimizer.param_groups}
    assert rates["stages.1"] == pytest.approx(5e-3) and rates["head"] == pytest.approx(1e-2)
    rows = {r.block: r for r in result.freeze}
    assert rows["stem"].trainable is False and rows["stem"].adapter_params == 0
    assert rows["stages.1"].adapter_params == 4 * 16 * 9 + 16 * 4  # A: r×in×3×3, B: out×r×1×1
    assert rows["stages.1"].params == 16 * 16 * 9 + 16 + 16 * 2  # the base block's own weights


def test_run_files_are_small_data_and_load_back_to_the_same_model(data: Path, lora_run) -> None:
    run, result = lora_run
    names = {p.name for p in run.iterdir()}
    assert {"adapter.safetensors", "adapter.json", "head.safetensors", "config.json"} <= names
    assert "model.safetensors" not in names and result.model_path == run / "adapter.safetensors"
    record = json.loads((run / "adapter.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert record["method"] == "lora" and record["options"]["r"] == 2
    assert record["base"] == config["adapter"]["base"]
    assert record["base"]["fingerprint"] == config["backbone"]["fingerprint"]
    assert config["args"]["adapter"] == "lora:r=2"
    tensors = load_file(run / "adapter.safetensors")
    assert set(tensors) == set(record["extra"]) | {k for k in tensors if ".lora_" in k}
    last = load_file(run / "checkpoints" / "last.safetensors")
    assert not any(k.startswith("model.") and ".base_layer." in k for k in last)  # checkpoints skip the frozen base

    model = TransferModel.from_run(run)
    images = sample_images(2)
    batch = model.preprocess(images)
    with torch.inference_mode():
        unmerged = model(batch)
        model.merge_adapters()
        merged = model(batch)
    assert not any(".lora_" in k for k in model.state_dict())
    assert (unmerged - merged).abs().max() <= 1e-5
    predictions = tlkit.predict(run, data, device="cpu", workers=0)
    assert len(predictions) == 30 and (predictions.predicted == predictions.labels).mean() > 0.5


def test_a_different_base_is_refused_in_one_line(lora_run) -> None:
    run, _ = lora_run
    other = tlkit.get_backbone("fake/image", pooling="max")  # another fingerprint
    with pytest.raises(BadInputError, match="adapters were trained on fake/image") as info:
        TransferModel.from_run(run, base=other)
    assert "\n" not in str(info.value)
    same = tlkit.get_backbone("fake/image").load()
    with torch.no_grad():
        next(same.module.parameters()).add_(1.0)  # same name and fingerprint, other weights
    with pytest.raises(BadInputError, match="differs from the one the adapters were trained on"):
        TransferModel.from_run(run, base=same)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(method="os.system"), "unknown adapter method 'os.system'"),
        (lambda r: r["options"].update(target_class="peft.LoraConfig"), "unknown option(s) target_class"),
        (lambda r: r.update(targets=["stem.1"]), "'stem.1' is not a Linear or convolution layer"),
        (lambda r: r.update(extra=["../../etc"]), "'../../etc' is not a tensor"),
        (lambda r: r.update(targets="stem.0"), "'targets' must be a list of names"),
    ],
)
def test_crafted_adapter_json_is_refused_before_anything_is_built(lora_run, tmp_path: Path, edit, message: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(lora_run[0], run)
    path = run / "adapter.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TransferModel.from_run(run)


def test_unfreeze_none_or_blocks_without_layers_are_refused(data: Path, tmp_path: Path, text_csv: Path) -> None:
    with pytest.raises(ConfigError, match="names none"):
        tlkit.finetune("fake/image", data, tmp_path / "a", adapter="lora", unfreeze="none", **FAST)
    with pytest.raises(ConfigError, match="have no Linear or dense convolution layer"):  # an embedding block
        tlkit.finetune("fake/text", text_csv, tmp_path / "b", adapter="lora", unfreeze="embeddings", **FAST)


@pytest.mark.parametrize("method", ["lora:dora=true,rslora=true", "ia3", "loha:r=2", "lokr:r=2"])
def test_every_method_trains_saves_loads_and_merges(text_csv: Path, tmp_path: Path, method: str) -> None:
    run = tmp_path / "run"
    tlkit.finetune("fake/text", text_csv, run, adapter=method, epochs=2, lr=5e-2, **FAST)
    model = TransferModel.from_run(run)
    assert model.adapters is not None and model.adapters.spec == parse_adapter(method)
    assert any(t.abs().sum() > 0 for t in load_file(run / "adapter.safetensors").values())
    batch = model.preprocess(["good 1 good", "bad 2 bad"])
    with torch.inference_mode():
        before = model(batch)
        model.merge_adapters()
        after = model(batch)
    assert (before - after).abs().max() <= 1e-4


def test_blocks_command_shows_adapter_parameters_per_block() -> None:
    from tlkit.cli import cli

    out = CliRunner().invoke(cli, ["blocks", "fake/image", "--adapter", "lora:r=4", "--unfreeze", "last:1"])
    assert out.exit_code == 0, out.output
    assert "adapter params" in out.output and "640 adapter params train" in out.output
    rows = json.loads(
        CliRunner().invoke(cli, ["blocks", "fake/image", "--adapter", "lora:r=4", "--json"]).output
    )  # --unfreeze defaults to all
    assert [r["adapter_params"] for r in rows] == [140, 352, 640] and all(r["trainable"] for r in rows)
    module = tlkit.get_backbone("fake/image").module
    assert not any("lora" in n for n, _ in module.named_parameters())  # the preview works on a copy


def test_attach_is_seeded_and_identity_at_start() -> None:
    spec = parse_adapter("lora:r=3")
    assert spec is not None
    outs, states = [], []
    for _ in range(2):
        bb = tlkit.get_backbone("fake/image").load()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = bb.embed(x)
            attach_adapters(bb.module, bb.blocks(), spec, ["stages.1"], seed=7)
            outs.append((bb.embed(x) - ref).abs().max())
        states.append({k: v.clone() for k, v in bb.module.state_dict().items() if "lora_A" in k})
    assert outs[0] == 0 and outs[1] == 0
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# -- the learning-rate range test ------------------------------------------------------------------------------------
def test_lr_find_with_adapters_trains_a_copy_never_the_callers_backbone(data: Path) -> None:
    backbone = tlkit.get_backbone("fake/image").load()
    before = {k: v.clone() for k, v in backbone.module.state_dict().items()}
    total = sum(p.numel() for p in backbone.module.parameters())
    found = {}
    for adapter in (None, "lora:r=2"):
        found[adapter] = tlkit.lr_find(backbone, data, adapter=adapter, steps=8, output=None, **FAST)
        after = backbone.module.state_dict()
        assert after.keys() == before.keys()  # no adapter layer was injected into the caller's module
        assert all(torch.equal(before[k], after[k]) for k in before)  # and nothing of it trained
    plain, lora = found[None], found["lora:r=2"]
    assert plain.adapter is None and plain.trainable_params > total  # every block and the head
    assert lora.adapter == "lora:r=2" and lora.trainable_params < total / 5
    assert (
        "unfreeze all, adapter lora:r=2;" in lora.summary() and f"{lora.trainable_params:,} trainable" in lora.summary()
    )


def test_lr_find_command_with_adapter_trains_adapters_and_head_only(data: Path, tmp_path: Path) -> None:
    """Through the CLI in a subprocess: the range test trains exactly the adapters of the --unfreeze blocks and the
    head (BatchNorm frozen here, so nothing else), and its suggestion carries --adapter into the next command."""
    import os
    import subprocess
    import sys

    from tlkit.finetuning.freeze import freeze_preview

    plot = tmp_path / "lr.png"
    setting = ["--adapter", "lora:r=2", "--unfreeze", "last:1", "--bn-policy", "frozen", "-o", str(plot)]
    fast = ["--workers", "0", "--batch-size", "8", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit", "lr-find", "fake/image", str(data), *setting, *fast, "--steps", "12", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    backbone = tlkit.get_backbone("fake/image")
    rows = freeze_preview(backbone, "last:1", adapter="lora:r=2")
    adapter_params = sum(r.adapter_params or 0 for r in rows if r.trainable)
    head = backbone.spec.embed_dim * 3 + 3  # the linear head, 3 classes
    assert adapter_params > 0 and out["trainable_params"] == adapter_params + head
    assert out["adapter"] == "lora:r=2" and out["unfreeze"] == "last:1" and plot.stat().st_size > 1000
    assert 1e-7 <= out["suggested_lr"] <= 1.0 and len(out["lrs"]) <= 12

    from tlkit.cli import cli  # the human output, in-process

    res = CliRunner().invoke(cli, ["lr-find", "fake/image", str(data), *setting, *fast, "--steps", "6", "-q"])
    assert res.exit_code == 0, res.output
    assert f"unfreeze last:1, adapter lora:r=2; {out['trainable_params']:,} trainable params" in res.output
    assert f"tlkit finetune fake/image {data} -o RUN_DIR --adapter lora:r=2 --unfreeze last:1 --lr" in res.output
