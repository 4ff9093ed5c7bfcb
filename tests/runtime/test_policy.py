"""The one resolution point: every stage that runs a backbone resolves the same device and precision for the same
options, the table is complete, the docs show the table as it is, and bad values are one-line parameter errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tlkit.errors import ConfigError
from tlkit.runtime import RuntimeOptions, probe, resolve
from tlkit.runtime.policy import DEVICE_TYPES, POLICY, STAGES, option_help, policy_markdown

ROOT = Path(__file__).resolve().parents[2]
#: Stages whose numbers come from a backbone's forward pass: they must agree on device and precision.
FORWARD_STAGES = [s for s in STAGES if s != "train"]


def test_table_covers_every_stage_and_device() -> None:
    assert set(POLICY) == {(s, d) for s in STAGES for d in DEVICE_TYPES}


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_every_stage_resolves_the_same_device_and_precision_here(device: str, precision: str) -> None:
    options = RuntimeOptions(device=device, precision=precision)
    resolved = {stage: resolve(stage, options, env=None) for stage in FORWARD_STAGES}
    assert len({str(r.device) for r in resolved.values()}) == 1
    assert len({r.precision for r in resolved.values()}) == 1
    assert resolve("train", options, env=None).device == resolved["extract"].device
    for r in resolved.values():
        assert "auto" not in (str(r.device), r.precision, r.batch_size, r.workers)


def test_auto_precision_on_this_cpu_follows_native_bf16() -> None:
    r = resolve("finetune", RuntimeOptions(device="cpu"), env=None)
    assert r.precision == ("bf16" if probe.cpu_has_native_bf16() else "fp32")
    assert resolve("train", RuntimeOptions(device="cpu"), env=None).precision == "fp32"


@pytest.mark.parametrize(
    ("cuda", "bf16", "mps", "device", "precision"),
    [
        (True, True, False, "cuda", "bf16"),
        (True, False, False, "cuda", "fp16"),
        (False, False, True, "mps", "fp16"),
    ],
)
def test_every_stage_agrees_on_accelerators(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, bf16: bool, mps: bool, device: str, precision: str
) -> None:
    """The table on machines this test does not run on: the probes answer as such a machine would."""
    import torch

    monkeypatch.setattr(probe, "cuda_available", lambda: cuda)
    monkeypatch.setattr(probe, "cuda_device_count", lambda: 1 if cuda else 0)
    monkeypatch.setattr(probe, "cuda_bf16_supported", lambda: bf16)
    monkeypatch.setattr(probe, "mps_available", lambda: mps)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    for stage in FORWARD_STAGES:
        r = resolve(stage, RuntimeOptions(), env=None)
        assert (r.device.type, r.precision) == (device, precision), stage
    assert resolve("extract", RuntimeOptions(), env=None).batch_size == POLICY[("extract", device)].batch_size


def test_workers_and_batch() -> None:
    cores = probe.cpu_count()
    r = resolve("extract", RuntimeOptions(device="cpu"), env=None)
    assert r.workers == min(POLICY[("extract", "cpu")].workers_cap, max(cores - 1, 0))
    assert (r.batch_size, r.auto_batch) == (POLICY[("extract", "cpu")].batch_size, True)
    r = resolve("extract", RuntimeOptions(device="cpu", batch_size=7, workers=3), env=None)
    assert (r.batch_size, r.auto_batch, r.workers) == (7, False, 3)
    assert resolve("finetune", RuntimeOptions(device="cpu"), env=None).batch_size is None


def test_runtime_carries_the_launchers_ranks() -> None:
    from tlkit.runtime.distributed import DistEnv

    r = resolve("extract", RuntimeOptions(device="cpu", workers="auto"), env=DistEnv(3, 4, 1, 2))
    assert (r.rank, r.world_size, r.local_rank, r.distributed, r.is_main) == (3, 4, 1, True, False)
    assert r.workers == min(POLICY[("extract", "cpu")].workers_cap, max(probe.cpu_count() // 2 - 1, 0))


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (RuntimeOptions(precision="fp8"), "precision"),
        (RuntimeOptions(device="tpu9"), "device"),
        (RuntimeOptions(batch_size=0), "batch_size"),
        (RuntimeOptions(batch_size="many"), "batch_size"),
        (RuntimeOptions(workers=-1), "workers"),
    ],
)
def test_errors_name_the_parameter(options: RuntimeOptions, param: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve("extract", options, env=None)
    assert info.value.param == param
    assert str(info.value).startswith(param) and "--" not in str(info.value)
    flag = "--" + param.replace("_", "-")
    assert info.value.for_flag(flag).startswith(flag)


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("extract", ["--batch-size", "zero"], "--batch-size must be auto or a positive integer"),
        ("extract", ["--device", "tpu9"], "--device 'tpu9' is not a device"),
        ("finetune", ["--workers", "-2"], "--workers must be auto or a non-negative integer, not -2"),
        ("finetune", ["--schedule", "head:1", "--gradual"], "give --schedule or --gradual, not both"),
    ],
)
def test_cli_names_the_flags(tmp_path: Path, command: str, flags: list[str], message: str) -> None:
    from click.testing import CliRunner

    from tlkit.cli import cli

    result = CliRunner().invoke(cli, [command, "fake/image", str(tmp_path), "-o", str(tmp_path / "out"), *flags])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {message}") and "Traceback" not in result.output


def test_library_names_the_parameters() -> None:
    import tlkit

    with pytest.raises(ConfigError, match=r"^give schedule or gradual, not both$"):
        tlkit.finetune("fake/image", ".", "out", schedule="head:1", gradual=True)


def test_help_comes_from_the_table() -> None:
    assert "bf16" in option_help("precision", "extract")
    assert str(POLICY[("extract", "cuda")].batch_size) in option_help("batch_size", "extract")


def test_docs_show_the_table_as_it_is() -> None:
    page = (ROOT / "docs" / "runtime.md").read_text()
    table = re.search(r"<!-- policy:begin[^>]*-->\n(.*?)<!-- policy:end -->", page, re.S)
    assert table is not None and table.group(1) == policy_markdown()
