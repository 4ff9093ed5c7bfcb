"""Docs cannot rot: README code blocks run, the CLI reference is current, the mkdocs site builds strictly."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def code_blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(path.read_text()) if kind == lang]


def test_readme_python_blocks_run(tmp_path):
    blocks = code_blocks(ROOT / "README.md", "python")
    assert blocks
    for block in blocks:
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"README block failed:\n{block}\n{out.stderr}"


def test_readme_tlkit_commands_run(tmp_path):
    from tlkit.testing import make_image_folder

    # The quickstart's data: a labelled class folder and a flat folder of new images.
    make_image_folder(tmp_path / "data" / "train", classes=2, per_class=8, size=(64, 64))
    make_image_folder(tmp_path / "new", classes=1, per_class=3, size=(64, 64), seed=1)
    (tmp_path / "new" / "class_0").rename(tmp_path / "data" / "new")
    commands = []
    for block in code_blocks(ROOT / "README.md", "bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("tlkit "):
                commands.append(line)
    assert len(commands) >= 5
    for line in commands:
        args = shlex.split(line)[1:]
        out = subprocess.run(
            [sys.executable, "-m", "tlkit", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"


def test_readme_starts_with_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text.split("## Quickstart")[0]
    blocks = code_blocks_from_text(head, "bash")
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks)
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run the README's test command"


def code_blocks_from_text(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "plugins").glob("*.md")), ids=lambda p: p.name)
def test_plugin_guide_python_blocks_run(page, tmp_path):
    for block in code_blocks(page, "python"):
        if "def test_" in block or "@tlkit.hookimpl\ndef " in block:
            continue  # a fragment of a plugin or a test file, not a script
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{page.name} block failed:\n{block}\n{out.stderr}"


def test_cli_reference_is_current():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_mkdocs_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr
