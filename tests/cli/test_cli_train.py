"""The train, predict and evaluate commands: a real subprocess end to end, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from _heads_helpers import image_split, make_cache, timm_backbone, timm_weights
from click.testing import CliRunner

from tlkit.cli import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    backbone = timm_backbone(timm_weights(root))
    train_dir = image_split(root / "train", per_class=12, seed=0)
    val_dir = image_split(root / "val", per_class=5, seed=1)
    flat = root / "flat"
    flat.mkdir()
    for p in sorted((train_dir / "class_0").iterdir())[:4]:
        (flat / p.name).write_bytes(p.read_bytes())
    return {
        "root": root,
        "train": make_cache(train_dir, root / "train.h5", backbone),
        "val": make_cache(val_dir, root / "val.h5", backbone),
        "val_dir": val_dir,
        "flat": make_cache(flat, root / "flat.h5", backbone),
        "few": make_cache(image_split(root / "few", classes=2, per_class=1), root / "few.h5", backbone),
    }


def tlkit_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_train_predict_evaluate_in_subprocesses(data, tmp_path):
    run = tmp_path / "run"
    out = tlkit_cli("train", data["train"], "-o", run, "--val", data["val"], "--sweep", "--sweep-lr", "1e-3,1e-2",
                    "--sweep-wd", "0,1e-3", "--epochs", "15", "--quiet")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "sweep: best validation accuracy" in out.stdout and "run: " in out.stdout and "accuracy" in out.stdout
    assert json.loads((run / "config.json").read_text())["train"]["sweep"] is True
    out = tlkit_cli("predict", run, data["val_dir"], "-o", tmp_path / "p.csv", "--top-k", "2", "--workers", "0")
    assert out.returncode == 0, out.stderr
    assert "15 predictions" in out.stdout
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15 and "top2_probability" in rows[0]
    out = tlkit_cli("evaluate", run, data["val"], "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accuracy"] >= 0.9 and report["n"] == 15
    assert (run / "eval-val" / "confusion.png").is_file()


def test_train_json_with_sklearn_head_and_params(data, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(data["train"]),
            "-o",
            str(tmp_path / "r"),
            "--val",
            str(data["val"]),
            "--head",
            "sklearn",
            "--param",
            "estimator=logreg",
            "--param",
            "C=0.5",
            "--json",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["head"] == "sklearn" and info["report"]["accuracy"] >= 0.9
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["head"]["params"] == {"estimator": "logreg", "C": 0.5} and config["head"]["kind"] == "estimator"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--param", "C"], "Error: --param 'C': expected KEY=VALUE"),
        (["--head", "sklearn", "--param", "estimator=logreg", "--param", "Cx=1"], "unknown parameter(s) Cx"),
        (["--head", "nope"], "Error: unknown head 'nope'"),
        (["--val-split", "0.2", "--val", "VAL"], "Error: give --val or --val-split, not both"),
        (["--val-split", "0", "--early-stopping", "2"], "Error: --early-stopping needs validation data"),
        (["--sweep", "--head", "mlp"], "Error: --head 'mlp': a sweep trains linear probes"),
        (["--sweep", "--param", "C=1"], "Error: --param do not apply: a sweep trains plain linear probes"),
        (["--lr", "0"], "Error: --lr must be positive, not 0.0"),
    ],
)
def test_option_errors_are_one_line(data, tmp_path, args, message):
    args = [str(data["val"]) if a == "VAL" else a for a in args]
    result = CliRunner().invoke(cli, ["train", str(data["train"]), "-o", str(tmp_path / "r"), *args])
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_data_errors_are_one_line(data, tmp_path):
    out = tlkit_cli("train", data["flat"], "-o", tmp_path / "r1")
    assert out.returncode == 1 and "the cache has no labels" in out.stderr and "Traceback" not in out.stderr
    out = tlkit_cli("train", data["few"], "-o", tmp_path / "r2", "--val-split", "0.5")
    assert out.returncode == 1 and "has 1 item; --val-split 0.5 needs at least 2 per class" in out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    for name in ("train", "predict", "evaluate", "demo"):
        assert f"  {name} " in result.output
    result = CliRunner().invoke(cli, ["train", "--help"])
    for option in ("--val-split", "--sweep", "--layer", "--views", "--class-weight", "--early-stopping", "--param"):
        assert option in result.output
