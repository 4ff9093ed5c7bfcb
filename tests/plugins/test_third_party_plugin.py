"""A real third-party plugin, installed by pip into a temporary target and discovered by a tlkit subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def plugin_target(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(target),
        str(FIXTURES / "tlkit-hello"),
        str(FIXTURES / "tlkit-broken"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=240)
    assert (target / "tlkit_hello").is_dir()
    return target


def _tlkit(target: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    full_env.pop("TLKIT_PLUGINS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_installed_plugin_backbone_appears(plugin_target):
    out = _tlkit(plugin_target, "backbones", "--json")
    assert out.returncode == 0, out.stderr
    entries = {e["name"]: e for e in json.loads(out.stdout)}
    assert entries["hello/tiny"]["plugin"] == "hello"
    assert entries["hello/tiny"]["modality"] == "image"
    assert "fake/image" in entries  # the built-ins still work beside it


def test_broken_plugin_is_reported_and_the_rest_works(plugin_target):
    out = _tlkit(plugin_target, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["broken"]["status"] == "broken"
    assert "tlkit_dependency_that_does_not_exist" in infos["broken"]["error"]
    assert infos["hello"]["status"] == "ok" and infos["hello"]["version"] == "0.3.0"
    assert sorted(infos["hello"]["hooks"]) == [
        "tlkit_register_backbones",
        "tlkit_register_commands",
        "tlkit_register_heads",
    ]
    warnings = [line for line in out.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and "failed to load" in warnings[0]


def test_plugin_backbone_blocks_and_command(plugin_target):
    out = _tlkit(plugin_target, "blocks", "hello/tiny", "--json")
    assert out.returncode == 0, out.stderr
    assert [b["name"] for b in json.loads(out.stdout)] == ["stem", "stages.0", "stages.1"]
    out = _tlkit(plugin_target, "hello")
    assert out.returncode == 0 and out.stdout.strip() == "hello from tlkit-hello"
    out = _tlkit(plugin_target, "heads", "--json")
    assert "hello-linear" in {h["name"] for h in json.loads(out.stdout)}


def test_env_var_disables_third_party_plugins(plugin_target):
    out = _tlkit(plugin_target, "plugins", "--json", env={"TLKIT_PLUGINS": ""})
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["hello"]["status"] == "disabled" and infos["broken"]["status"] == "disabled"
    assert "warning" not in out.stderr
    out = _tlkit(plugin_target, "plugins", "--json", env={"TLKIT_PLUGINS": "hello"})
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["hello"]["status"] == "ok" and infos["broken"]["status"] == "disabled"
