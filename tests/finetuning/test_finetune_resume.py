"""Resume after kill -9: a real `tlkit finetune` subprocess is SIGKILLed in phase 2, then resumed; the final weights
must equal those of an uninterrupted run, bit for bit (deterministic CPU run, augmentation, mixup/CutMix and a
DataLoader worker and the weight average of --ema included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _ft_helpers import image_data
from click.testing import CliRunner
from safetensors.torch import load_file

from tlkit.cli import cli
from tlkit.finetuning.state import read_meta

ARGS = [
    "--schedule",
    "head:1,last:2:4",
    "--workers",
    "1",
    "--batch-size",
    "4",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--lr",
    "1e-2",
    "--backbone-lr-ratio",
    "0.5",
    "--head",
    "linear",
    "--mixup",
    "0.2",
    "--cutmix",
    "1.0",
    "--ema",
    "0.9",
    "-q",
]


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tlkit", "finetune", "fake/image", str(data), "-o", str(out), *ARGS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _metric_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "items_per_s")} for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("resume") / "data", classes=3, per_class=16)


def test_sigkill_in_phase_two_then_resume_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    ref = tmp_path / "uninterrupted"
    done = subprocess.run(_command(data, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(data, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _metric_lines(out) < 2:  # epoch 2 (the first of phase 2) is checkpointed: we are inside phase 2
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the run never reached phase 2"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    meta = read_meta(out / "checkpoints" / "last.safetensors")
    assert 2 <= meta["epoch"] < 5 and meta["phase"] == 1, meta["epoch"]  # killed in phase 2, before the end
    assert json.loads((out / "config.json").read_text())["status"] == "running"
    assert not (out / "model.safetensors").exists()

    resumed = subprocess.run(
        _command(data, out, "--resume", "--json"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == meta["epoch"] and summary["epochs_run"] == 5

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows_ref = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert _without_timings(rows) == _without_timings(rows_ref)
    final, expected = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    last, last_ref = (load_file(str(d / "checkpoints" / "last.safetensors")) for d in (out, ref))
    assert any(key.startswith("ema.") for key in last_ref)  # the weight average resumes too
    for key in last_ref:
        if key.startswith(("model.", "optim.", "ema.")):
            assert torch.equal(last[key], last_ref[key]), key


def test_resume_refuses_different_arguments(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["finetune", "fake/image", str(data), "-o", str(out), "--schedule", "head:1", "--workers", "0", "-q"]
    runner = CliRunner()
    first = runner.invoke(cli, base)
    assert first.exit_code == 0, first.output
    changed = runner.invoke(cli, [*base, "--resume", "--lr", "0.1"])
    assert changed.exit_code == 1
    assert "--resume with different arguments" in changed.output and "--lr 0.001 → 0.1" in changed.output
    again = runner.invoke(cli, base)
    assert again.exit_code == 1 and "--resume" in again.output
    finished = runner.invoke(cli, [*base, "--resume", "--device", "cpu", "--json"])  # device may change
    assert finished.exit_code == 0, finished.output
    assert json.loads(finished.output)["resumed_from"] == 1
