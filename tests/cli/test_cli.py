"""CLI tests for the foundation commands and their error paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.testing.fake import FakeImageBackbone


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_version(run):
    out = run("--version")
    assert out.exit_code == 0 and tlkit.__version__ in out.output


def test_plugins_table_and_json(run):
    out = run("plugins")
    assert out.exit_code == 0 and "core" in out.output and "ok" in out.output
    data = json.loads(run("plugins", "--json").output)
    core = next(p for p in data if p["name"] == "core")
    assert core["builtin"] and core["status"] == "ok" and "tlkit_register_heads" in core["hooks"]


def test_backbones_list_filter_modality_json(run):
    out = run("backbones")
    assert out.exit_code == 0 and "fake/image" in out.output and "fake/text" in out.output
    names = [e["name"] for e in json.loads(run("backbones", "--filter", "fake/*", "--json").output)]
    assert names == ["fake/image", "fake/text"]
    out = run("backbones", "--filter", "fake/*", "--modality", "text", "--json")
    names = [e["name"] for e in json.loads(out.output)]
    assert names == ["fake/text"]


def test_backbones_filter_with_no_match_is_an_error(run):
    out = run("backbones", "--filter", "nothing/like/this*")
    assert out.exit_code == 1 and "no backbones match" in out.output


def test_backbones_info(run):
    out = run("backbones", "info", "fake/image")
    assert out.exit_code == 0
    for expected in ("modality     image", "embed_dim    16", "input_size", "blocks       3: stem, stages.0, stages.1"):
        assert expected in out.output
    info = json.loads(run("backbones", "info", "fake/text", "--json").output)
    assert info["modality"] == "text" and info["preprocess"]["max_length"] == 64 and len(info["fingerprint"]) == 32


def test_heads(run):
    data = {h["name"]: h for h in json.loads(run("heads", "--json").output)}
    assert data["linear"]["kind"] == "torch" and data["mlp"]["plugin"] == "core"
    assert "mlp" in run("heads").output


def test_blocks_table_and_json(run):
    out = run("blocks", "fake/image")
    assert out.exit_code == 0 and "3 blocks" in out.output and "stages.1" in out.output
    data = json.loads(run("blocks", "fake/image", "--json").output)
    module = FakeImageBackbone("fake/image", weights="none").module
    assert sum(b["params"] for b in data) == sum(p.numel() for p in module.parameters())


def test_unknown_backbone_is_one_line_with_suggestion(run):
    for args in (("blocks", "fake/imag"), ("backbones", "info", "fake/txt")):
        out = run(*args)
        assert out.exit_code == 1
        lines = out.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: unknown backbone") and "did you mean" in lines[0]
        assert "Traceback" not in out.output


def test_missing_weights_file_is_a_clear_error(run, tmp_path):
    out = run("blocks", "fake/image", "--weights", str(tmp_path / "nope.safetensors"))
    assert out.exit_code == 1 and "nope.safetensors" in out.output and "Traceback" not in out.output


def test_local_weights_file_loads(run, tmp_path):
    from safetensors.torch import save_file

    module = FakeImageBackbone("fake/image", weights="none").module
    state = {k: v + 1 for k, v in module.state_dict().items() if v.is_floating_point()}
    state.update({k: v for k, v in module.state_dict().items() if not v.is_floating_point()})
    save_file(state, tmp_path / "w.safetensors")
    bb = tlkit.get_backbone("fake/image", weights=tmp_path / "w.safetensors")
    assert bb.weights_kind() == "local"
    assert torch_equal(bb.module.state_dict()["stem.0.weight"], state["stem.0.weight"])
    assert bb.fingerprint() != tlkit.get_backbone("fake/image", weights="none").fingerprint()
    out = run("blocks", "fake/image", "--weights", str(tmp_path / "w.safetensors"))
    assert out.exit_code == 0


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_usage_errors_exit_2(run):
    assert run("blocks").exit_code == 2
    assert run("no-such-command").exit_code == 2
    assert run("backbones", "--modality", "video").exit_code == 2


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tlkit.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'h5py', 'sklearn', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


def test_python_m_tlkit_runs():
    out = subprocess.run([sys.executable, "-m", "tlkit", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and tlkit.__version__ in out.stdout
