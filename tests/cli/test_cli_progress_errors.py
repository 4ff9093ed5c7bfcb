"""Issue 16, points 6, 8 and 10: progress with rate and ETA on the long commands (lr-find, advise --backbone, the
fine-tuning probe and bar), and the one-line errors for inputs a new user gets wrong (a text table given to an image
backbone, the parent of the splits, an unknown fine-tuning option)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _ft_helpers import image_data
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.errors import ConfigError
from tlkit.finetuning.advice import advise
from tlkit.finetuning.lrfind import lr_find
from tlkit.runtime.progress import ProgressEvent

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"workers": 0, "device": "cpu", "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("prog") / "data", classes=2, per_class=10)


def tlkit_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True, timeout=900,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


def check_stage(events: list[ProgressEvent], stage: str, total: int) -> list[ProgressEvent]:
    """The events of ``stage`` count up to ``total`` with a clock: what a bar needs for its rate and ETA."""
    mine = [e for e in events if e.stage == stage and e.total]
    assert mine, [e.stage for e in events]
    assert [e.done for e in mine] == sorted(e.done for e in mine) and mine[-1].done == mine[-1].total == total
    assert mine[-1].elapsed > 0 and mine[-1].rate > 0 and mine[-1].eta == 0
    return mine


# -- progress ------------------------------------------------------------------------------------------------------
def test_lr_find_reports_the_probe_features_then_every_step(data: Path) -> None:
    events: list[ProgressEvent] = []
    result = lr_find("fake/image", data, steps=5, output=None, progress=events.append, **FAST)
    check_stage(events, "features", 20)  # the linear probe that starts the head sees every training item
    steps = check_stage(events, "lr-find", 5)  # five steps cannot diverge: the test stops only after the sixth
    assert [e.done for e in steps] == list(range(1, len(result.lrs) + 1))
    assert [e.info["lr"] for e in steps] == result.lrs and "loss" in steps[0].message
    first_steps = [i for i, e in enumerate(events) if e.stage == "lr-find"][0]
    assert all(e.stage == "features" for e in events[:first_steps])


def test_advise_with_a_backbone_reports_the_probe_pass(data: Path) -> None:
    events: list[ProgressEvent] = []
    advice = advise(data, "fake/image", progress=events.append, workers=0)
    assert advice.probe_accuracy is not None
    assert events[0].stage == "features" and events[0].message == "loading fake/image"  # a bar before the model loads
    check_stage(events, "features", 20)


def test_finetune_refreshes_the_running_loss_every_batch_and_reports_the_probe(data: Path, tmp_path: Path) -> None:
    events: list = []
    tlkit.finetune(
        "fake/image", data, tmp_path / "run", epochs=1, val_split=0.2, callback=events.append, precision="fp32", **FAST
    )
    probe = [e for e in events if e.kind == "probe"]
    assert probe and probe[-1].step == probe[-1].steps == 16 and probe[-1].items_per_s > 0
    assert events.index(probe[-1]) < [e.kind for e in events].index("start")
    steps = [e for e in events if e.kind == "step"]
    assert len(steps) == 4  # 16 training items in batches of 4
    losses = [e.loss for e in steps]
    assert None not in losses and len(set(losses[:3])) == 3, losses  # a new running loss after every batch


@pytest.mark.slow
def test_lr_find_draws_a_bar_with_rate_and_eta_on_a_terminal(data: Path, tmp_path: Path) -> None:
    """A subprocess whose stderr is declared a terminal (rich's TTY_COMPATIBLE/TTY_INTERACTIVE) draws the bars; a
    plain pipe and -q draw none."""
    args = ["lr-find", "fake/image", data, "--steps", "5", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    out = tlkit_cli(*args, "-o", tmp_path / "a.png", env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert out.returncode == 0, out.stderr
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.stderr).replace("\r", "\n")
    assert re.search(r"linear probe: frozen features .* \d+/20 +[\d.]+ items/s", frames), frames[-2000:]
    assert re.search(r"lr-find .* 5/5 +[\d.]+ steps/s +lr 1\.0e\+00 +loss [\d.]+ +\d:\d\d:\d\d", frames), frames
    assert "suggested --lr" in out.stdout
    quiet = tlkit_cli(*args, "-o", tmp_path / "b.png", "-q", env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert quiet.returncode == 0 and "steps/s" not in quiet.stderr, quiet.stderr


# -- errors --------------------------------------------------------------------------------------------------------
def test_an_image_backbone_on_a_text_table_says_so(data: Path, tmp_path: Path) -> None:
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\ngreat film,pos\nawful,neg\n")
    error = one_line_error(tlkit_cli("extract", "fake/image", table, "-o", tmp_path / "r.h5"))
    assert "an image backbone takes images, and this is a text table (columns text, label" in error
    assert "text backbone" in error and "no column 'path'" not in error
    assert not (tmp_path / "r.h5").exists()
    # a manifest whose paths sit under another name is pointed at that column; with it, it is read
    first = sorted((data / "class_0").iterdir())[0]
    manifest = data.parent / "files.csv"
    manifest.write_text(f"file,label\n{first.relative_to(data.parent)},a\n")
    result = CliRunner().invoke(cli, ["extract", "fake/image", str(manifest), "-o", str(tmp_path / "m.h5")])
    assert result.exit_code == 1 and "column 'file' holds image file names; set --path-column file" in result.output
    result = CliRunner().invoke(
        cli, ["extract", "fake/image", str(manifest), "-o", str(tmp_path / "m.h5"), "--path-column", "file",
              "--workers", "0", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 items" in result.output


def test_the_parent_of_the_splits_is_refused_with_the_fix(data: Path, tmp_path: Path) -> None:
    parent = tmp_path / "dataset"
    for split in ("train", "test"):
        (parent / split).mkdir(parents=True)
        for folder in data.iterdir():
            (parent / split / folder.name).symlink_to(folder, target_is_directory=True)
    error = one_line_error(tlkit_cli("extract", "fake/image", parent, "-o", tmp_path / "s.h5"))
    assert f"{parent}: its sub-folder(s) test, train are dataset splits, not classes" in error
    assert f"point at one split, {parent / 'train'}" in error and "allow_split_names=true" in error
    assert not (tmp_path / "s.h5").exists()
    assert tlkit.open_dataset(parent / "train").class_names == ["class_0", "class_1"]
    forced = tlkit.open_dataset(parent, allow_split_names="true")  # the override: they really are the classes
    assert forced.class_names == ["test", "train"] and len(forced.records) == 40


def test_unknown_finetune_options_list_every_accepted_one(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        tlkit.finetune("fake/image", data, tmp_path / "run", input_sise=96)
    message = str(err.value)
    assert "unknown finetune option(s) input_sise (did you mean input_size?)" in message
    known = message.split("known: ")[1].split(", ")
    for name in ("input_size", "preprocess", "val", "weights", "reader_options", "callback", "epochs", "lr"):
        assert name in known, name
    with pytest.raises(ConfigError, match="unknown lr_find option"):
        lr_find("fake/image", data, output=None, epoch=3)
