"""The fine-tuning commands from the CLI: finetune, lr-find, advise, export, and their error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _ft_helpers import image_data, write_head_run
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.data.base import Dataset, Record
from tlkit.finetuning.advice import advise
from tlkit.heads.torch_heads import build_head

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--workers", "0", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("cli") / "data", classes=2, per_class=10)


def test_finetune_command_shows_plan_progress_and_result(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["finetune", "fake/image", str(data), "-o", str(out), "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    assert "linear probe on 18 frozen embeddings" in res.stderr  # the default starts from a probe (LP-FT)
    assert "freeze plan: all:2" in res.stderr and "stages.1" in res.stderr
    assert "phase 1 from epoch 1: training stem, stages.0, stages.1" in res.stderr
    assert "epoch 2/2  train loss" in res.stderr and "items/s" in res.stderr
    assert "accuracy" in res.stdout and str(out) in res.stdout
    assert (out / "model.safetensors").is_file()


def test_finetune_command_json_and_lp_ft(data: Path, tmp_path: Path) -> None:
    bb = tlkit.get_backbone("fake/image")
    probe = write_head_run(
        tmp_path / "probe", "fake/image", bb.fingerprint(), ["class_0", "class_1"], build_head("linear", 16, 2), 16
    )
    args = [
        "finetune",
        "fake/image",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--init-head",
        str(probe),
        "--unfreeze",
        "last:1",
        "--epochs",
        "1",
        "--json",
        *FAST,
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["plan"] == "last:1:1" and out["epochs_run"] == 1 and 0 <= out["report"]["accuracy"] <= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--unfreeze", "layer9"], "unknown block 'layer9'"),
        (["--gradual", "--schedule", "head:1"], "--schedule or --gradual"),
        (["--backbone-lr", "1e-5", "--backbone-lr-ratio", "0.1"], "not both"),
        (["--val", "VAL", "--val-split", "0.3"], "--val or --val-split"),
        (["--head", "sklearn"], "not trained by gradients"),
    ],
)
def test_finetune_command_errors(data: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    extra = [str(data) if x == "VAL" else x for x in extra]
    res = CliRunner().invoke(cli, ["finetune", "fake/image", str(data), "-o", str(tmp_path / "r"), *FAST, *extra])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and message in res.output
    assert "Traceback" not in res.output


def test_init_head_fingerprint_mismatch_from_cli(data: Path, tmp_path: Path) -> None:
    probe = write_head_run(
        tmp_path / "probe", "fake/image", "f" * 32, ["class_0", "class_1"], build_head("linear", 16, 2), 16
    )
    res = CliRunner().invoke(
        cli, ["finetune", "fake/image", str(data), "-o", str(tmp_path / "r"), "--init-head", str(probe), *FAST]
    )
    assert res.exit_code == 1
    assert "f" * 32 in res.output and tlkit.get_backbone("fake/image").fingerprint() in res.output


def test_lr_find_command(data: Path, tmp_path: Path) -> None:
    plot = tmp_path / "lr.png"
    res = CliRunner().invoke(
        cli, ["lr-find", "fake/image", str(data), "-o", str(plot), "--steps", "30", "--json", *FAST]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert plot.stat().st_size > 1000
    assert 1e-7 <= out["suggested_lr"] <= 1.0 and out["suggested_lr"] == pytest.approx(out["min_loss_lr"] / 10)
    lrs = out["lrs"]
    assert len(lrs) <= 30 and all(b > a for a, b in zip(lrs, lrs[1:], strict=False))


def _dataset(per_class: list[int]) -> Dataset:
    records = [Record(f"c{c}/{i}.png", f"c{c}/{i}.png", c) for c, n in enumerate(per_class) for i in range(n)]
    return Dataset(Path("data"), "image", "image", records, [f"c{c}" for c in range(len(per_class))])


def test_advise_rules_follow_dataset_size() -> None:
    small = advise(_dataset([30, 40, 35]))
    assert small.size == "small" and small.strategy == "feature-extraction" and small.domain == "unknown"
    assert small.commands[0].startswith("tlkit extract") and small.per_class == {"c0": 30, "c1": 40, "c2": 35}
    medium = advise(_dataset([300, 250]))
    # the measured defaults: LP-FT of every block, run as printed (no option to add)
    assert (
        medium.strategy == "lp-ft"
        and medium.unfreeze == "all"
        and medium.commands == ["tlkit finetune BACKBONE data -o ft-run"]
    )
    assert any("linear probe on frozen features" in r for r in medium.reasons)
    assert any("0.1× the head's rate (1e-04 against 1e-03)" in r for r in medium.reasons) and any(
        "10 epochs" in r for r in medium.reasons
    )
    large = advise(_dataset([2000, 1500, 3, 1800]))
    assert large.size == "large" and large.strategy == "lp-ft" and large.commands == medium.commands
    assert any("smallest class has 3" in w for w in large.warnings) and any("imbalanced" in w for w in large.warnings)


def test_advise_command_with_a_probe(data: Path) -> None:
    res = CliRunner().invoke(cli, ["advise", str(data), "--backbone", "fake/image", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_items"] == 20 and out["n_classes"] == 2 and out["probe_items"] == 20
    assert 0.0 <= out["probe_accuracy"] <= 1.0 and out["domain"] in ("similar", "partly similar", "different")
    text = CliRunner().invoke(cli, ["advise", str(data)])
    assert text.exit_code == 0 and "recommendation: feature extraction" in text.output and "why:" in text.output


def test_command_module_does_not_import_torch() -> None:
    code = "import sys, tlkit.cli.finetune, tlkit.cli.app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
