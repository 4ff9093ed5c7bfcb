"""The backbone contract enforced on real plugin distributions through ``tlkit`` subprocesses: a bad option is a
one-line error before any item is read, a run in which every item fails exits non-zero with one line, a backbone
whose output width differs from its spec is refused before anything is written, and ``--input-size`` on a text
backbone is refused.

Each plugin is a package plus a ``*.dist-info`` with ``entry_points.txt`` in a temporary site directory that
``PYTHONPATH`` puts beside the built-ins, as ``pip install`` would leave it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
from tlkit.plugin import ImageBackbone, hookimpl, parse_augment
from tlkit.testing import FakeImageBackbone


class Narrow(FakeImageBackbone):
    """Declares the fake backbone's width but returns 4 columns fewer."""

    def embed(self, batch):
        return super().embed(batch)[:, :-4]


class AugmentPerItem(FakeImageBackbone):
    """Checks ``augment`` only while preprocessing a training item (what the docs now say not to do)."""

    def preprocess_item(self, item, *, train=False):
        if train and self.augment not in (None, "default", "none", "light"):
            raise ValueError(f"unknown augment {self.augment!r}")
        return super().preprocess_item(item, train=train)


class Unreadable(FakeImageBackbone):
    def preprocess_item(self, item, *, train=False):
        raise ValueError("this plugin reads nothing")


class Augmenting(FakeImageBackbone, ImageBackbone):
    """An ImageBackbone whose training transform parses ``augment``: the validation point builds it once."""

    def preprocess_item(self, item, *, train=False):
        return ImageBackbone.preprocess_item(self, item, train=train)

    def make_transform(self, train):
        if train:
            parse_augment(self.augment)
        return lambda image: FakeImageBackbone.preprocess_item(self, image, train=train)


@hookimpl
def tlkit_register_backbones(register):
    register("contract/narrow", Narrow)
    register("contract/per-item", AugmentPerItem)
    register("contract/unreadable", Unreadable)
    register("contract/augmenting", Augmenting)
'''

FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "tlkit_plugin_contract").mkdir()
    (site / "tlkit_plugin_contract" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "tlkit_contract-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tlkit-contract\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tlkit]\ncontract = tlkit_plugin_contract\n")
    return site


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), classes=2, per_class=6, size=(24, 24))


def tlkit(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    for var in ("TLKIT_PLUGINS", "TLKIT_DEBUG"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=env, timeout=300)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def left_beside(cache: Path) -> list[str]:
    """What a failed extraction left in the cache's folder, besides the lock file (an OS lock that always stays)."""
    return sorted(p.name for p in cache.parent.iterdir() if p.name != cache.name + ".lock")


def test_a_width_mismatch_is_refused_before_anything_is_written(site: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "out" / "narrow.h5"
    cache.parent.mkdir()
    error = one_line_error(tlkit(site, "extract", "contract/narrow", str(images), "-o", str(cache), *FAST))
    assert "backbone contract/narrow (plugin contract)" in error and "embed_dim 16" in error, error
    assert left_beside(cache) == []  # no cache, no .work folder
    run = tmp_path / "run"
    error = one_line_error(tlkit(site, "finetune", "contract/narrow", str(images), "-o", str(run), *FAST))
    assert "plugin contract" in error and "embed_dim 16" in error, error


def test_a_bad_augment_is_one_line_before_any_item_is_read(site: Path, images: Path, tmp_path: Path) -> None:
    out = tlkit(site, "finetune", "contract/augmenting", str(images), "-o", str(tmp_path / "r"), "--augment", "bogus",
                "--epochs", "1", *FAST)  # fmt: skip
    error = one_line_error(out)
    assert "unknown --augment policy 'bogus'" in error, error
    assert "linear probe" not in out.stderr  # failed before the first embedding


def test_a_run_that_trains_on_no_item_fails(site: Path, images: Path, tmp_path: Path) -> None:
    out = tlkit(site, "finetune", "contract/per-item", str(images), "-o", str(tmp_path / "r"), "--augment", "bogus",
                "--epochs", "1", *FAST)  # fmt: skip
    error = one_line_error(out)
    assert "none of the training items could be used" in error and "unknown augment 'bogus'" in error, error


def test_an_extraction_whose_items_all_fail_is_one_line(site: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "out" / "none.h5"
    cache.parent.mkdir()
    error = one_line_error(tlkit(site, "extract", "contract/unreadable", str(images), "-o", str(cache), *FAST))
    assert "none of the 12 items could be read" in error and "this plugin reads nothing" in error, error
    assert left_beside(cache) == []


def test_input_size_on_a_text_backbone_is_refused(site: Path, tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    error = one_line_error(
        tlkit(site, "finetune", "fake/text", str(tmp_path / "texts"), "-o", str(tmp_path / "r"), "--input-size", "64")
    )
    assert "--input-size does not apply to fake/text: it is a text backbone" in error, error
