"""The demo: the packaged Fashion-MNIST sample is what the script makes, and ``tlkit demo`` runs offline end to end
with the example plugin's real EfficientNet-Lite0 weights."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlkit.demo import DATA

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["ankle-boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "t-shirt", "trouser"]


def test_packaged_sample_has_class_folders_and_a_split():
    for split, per_class in (("train", 80), ("val", 20)):
        folders = sorted(p.name for p in (DATA / split).iterdir() if p.is_dir())
        assert folders == CLASSES
        for name in folders:
            assert len(list((DATA / split / name).glob("*.png"))) == per_class
    size = sum(p.stat().st_size for p in DATA.rglob("*.png"))
    assert 100_000 < size < 800_000  # a few hundred KB


def test_sample_is_what_the_script_makes(tmp_path, fashion_mnist_dir):
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.make(fashion_mnist_dir, tmp_path) == 1000
    compare = filecmp.dircmp(tmp_path, DATA, ignore=["__pycache__"])
    mismatched = []

    def walk(cmp: filecmp.dircmp) -> None:
        mismatched.extend(cmp.left_only + cmp.right_only + cmp.diff_files)
        for sub in cmp.subdirs.values():
            walk(sub)

    walk(compare)
    assert not mismatched


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path):
    from tlkit.host.registry import get_registry

    if "effnet/lite0" not in get_registry().backbones:
        pytest.skip("the example plugin is not installed: pip install -e plugins/examples/tlkit-effnet-lite")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "tlkit", "demo", "-o", str(tmp_path / "demo"), "--quiet"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    accuracy = float(lines[0].split()[1])
    assert accuracy >= 0.7, out.stdout  # 10 classes: chance is 0.1; real ImageNet features give ~0.8
    # every figure names its split; the test figure comes from images that chose nothing
    assert "on the test split: 200 held-out" in lines[0] and "chose nothing" in lines[0]
    assert lines[1].startswith("validation: ") and "5-fold cross-validation on the train split" in lines[1]
    assert lines[2].startswith("train: ") and "800 images" in lines[2]
    run = tmp_path / "demo" / "run"
    for name in ("config.json", "head.safetensors", "report.json", "curves.png", "confusion.png"):
        assert (run / name).is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["val"] is None and config["train"]["n_train"] == 800  # the test cache chose nothing
    test_report = json.loads((run / "eval-test" / "report.json").read_text())
    assert abs(test_report["accuracy"] - accuracy) < 1e-3
    assert str(run) in out.stdout and "confusion.png" in out.stdout
