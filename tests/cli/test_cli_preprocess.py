"""The preprocessing options (issue 16, point 5): one set of flags on every command that builds a backbone, recorded
in the cache and run fingerprints, so LP-FT at a smaller size works from the CLI, and checked by predict/evaluate."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from _ft_helpers import image_data

import tlkit
from tlkit.cli import cli
from tlkit.cli.options import preprocess_overrides
from tlkit.contract.backbone import MODALITY_PREPROCESS_KEYS
from tlkit.contract.image import IMAGE_OPTIONS, format_option, parse_option, preprocess_args
from tlkit.errors import ConfigError
from tlkit.finetuning.advice import advise

FAST = ["--workers", "0", "--device", "cpu"]
COMMANDS = ("extract", "advise", "finetune", "lr-find", "predict", "evaluate")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("pre") / "data", classes=2, per_class=10)


def tlkit_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True, timeout=900
    )  # fmt: skip


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


def test_every_command_that_builds_a_backbone_has_every_image_option() -> None:
    assert set(IMAGE_OPTIONS) == MODALITY_PREPROCESS_KEYS["image"]  # one flag per key image backbones take
    flags = {"--" + k.replace("_", "-") for k in IMAGE_OPTIONS} | {"--preprocess"}
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        have = {opt for p in command.params for opt in p.opts}
        assert flags <= have, (name, flags - have)


def test_option_values_parse_and_print_back() -> None:
    assert parse_option("input_size", "96") == [3, 96, 96]
    assert parse_option("input_size", "160x128") == [3, 160, 128]
    assert parse_option("mean", "0.5") == [0.5, 0.5, 0.5]
    for key, text in [("input_size", "96"), ("input_size", "160x128"), ("crop_pct", "1.0"), ("std", "0.2,0.3,0.4")]:
        assert parse_option(key, format_option(key, parse_option(key, text))) == parse_option(key, text)
    given = {"input_size": "96", "crop_pct": "1", "preprocess": ("crop_mode=squash",)}
    overrides = preprocess_overrides(given)
    assert overrides == {"input_size": [3, 96, 96], "crop_pct": 1.0, "crop_mode": "squash"}
    assert preprocess_args(overrides) == ["--input-size", "96", "--crop-pct", "1.0", "--preprocess", "crop_mode=squash"]
    for key, bad in [("input_size", "0"), ("input_size", "big"), ("crop_pct", "1.5"), ("std", "0,1,1")]:
        with pytest.raises(ConfigError) as err:
            parse_option(key, bad)
        assert err.value.param == key and "expected" in str(err.value)


@pytest.mark.slow
def test_lp_ft_at_a_smaller_size_from_the_cli(data: Path, tmp_path: Path) -> None:
    """The demo's recipe at a smaller size: extract at 24 px, a probe on it, LP-FT from it at 24 px; the sizes must
    agree, and a run refuses another size at predict time but takes its own again."""
    cache, probe, ft = tmp_path / "c24.h5", tmp_path / "probe", tmp_path / "ft"
    out = tlkit_cli("extract", "fake/image", data, "-o", cache, "--input-size", "24", *FAST, "-q")
    assert out.returncode == 0, out.stderr
    with tlkit.FeatureCache(cache) as fc:  # recorded in the fingerprint: the 24-px backbone's, not the default's
        assert fc.fingerprint == tlkit.get_backbone("fake/image", preprocess={"input_size": [3, 24, 24]}).fingerprint()
        assert fc.fingerprint != tlkit.get_backbone("fake/image").fingerprint()
    info = tlkit_cli("cache", "info", cache)
    assert "input size 24x24; --input-size 24" in info.stdout, info.stdout + info.stderr
    out = tlkit_cli("train", cache, "-o", probe, "--head", "linear", "--epochs", "2", "-q", "--device", "cpu")
    assert out.returncode == 0, out.stderr

    finetune = ["finetune", "fake/image", data, "--init-head", probe, "--epochs", "1", "--batch-size", "8", *FAST]
    error = one_line_error(tlkit_cli(*finetune, "-o", tmp_path / "refused"))
    assert "--init-head" in error and "input_size [3, 24, 24] → [3, 32, 32]" in error and "--input-size 24" in error
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    out = tlkit_cli(*finetune, "-o", ft, "--input-size", "24", "-q")
    assert out.returncode == 0, out.stderr
    assert (ft / "model.safetensors").is_file()

    error = one_line_error(tlkit_cli("predict", ft, data, "-o", tmp_path / "p.csv", "--input-size", "32", *FAST))
    assert "input_size [3, 24, 24]" in error and "drop --input-size" in error and "--input-size 24" in error
    out = tlkit_cli("evaluate", probe, data, "--input-size", "24", "--json", *FAST)  # the recorded value passes
    assert out.returncode == 0, out.stderr
    assert '"accuracy"' in out.stdout


def test_advise_prints_commands_that_carry_every_option(data: Path) -> None:
    reader_options = {"allow_single_class": "true"}
    advice = advise(data, weights="none", preprocess={"input_size": [3, 96, 96], "crop_pct": 1.0},
                    reader_options=reader_options)  # fmt: skip
    assert advice.commands
    for line in advice.commands:
        args = shlex.split(line)
        assert args[0] == "tlkit"
        command = cli.get_command(click.Context(cli), args[1])
        assert command is not None
        if args[1] == "train":
            continue
        ctx = command.make_context(args[1], args[2:])  # it parses as printed: every option exists on the command
        assert ctx.params["weights"] == "none"
        assert ctx.params["input_size"] == "96" and ctx.params["crop_pct"] == "1.0", line
        assert "allow_single_class=true" in ctx.params.get("reader_option", ctx.params.get("reader_opts")), line
