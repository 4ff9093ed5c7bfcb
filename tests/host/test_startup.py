"""Start-up: listing, describing and rejecting backbone names import no model library, and an up-to-date rerun
builds no model. Each command runs in a real ``tlkit`` subprocess that reports, after the command, which heavy
libraries ended up in ``sys.modules`` (no timing is asserted: see benchmarks/startup.py for the times)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tlkit.testing import make_image_folder
from tlkit.testing.imports import probe_cli

MODEL_LIBRARIES = {"timm", "torchvision", "transformers"}


def tlkit(env: dict[str, str], *args: object) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``tlkit ARGS`` in a subprocess: the result and the heavy libraries it imported."""
    out, imported = probe_cli([str(a) for a in args], env, timeout=600)
    assert imported is not None, out.stderr
    return out, imported


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A memo folder of this module's own (it starts empty), and an empty Hugging Face cache."""
    root = tmp_path_factory.mktemp("startup")
    env = {**os.environ, "TLKIT_CACHE_DIR": str(root / "memo"), "HF_HOME": str(root / "hf")}
    env.pop("TLKIT_PLUGINS", None)
    return env


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("startup-images") / "imgs", classes=2, per_class=3)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_listing_and_unknown_names_import_no_model_library(env: dict[str, str], images: Path, tmp_path: Path) -> None:
    for pattern in ("timm/*", "torchvision/*"):  # the first listings build the name indexes (importing the libraries)
        first, _ = tlkit(env, "backbones", "--filter", pattern)
        assert first.returncode == 0, first.stderr
    assert list((Path(env["TLKIT_CACHE_DIR"]) / "names").glob("*.json")), "no name index was kept"
    for args in (("backbones",), ("plugins",), ("backbones", "--filter", "timm/convnext_*"), ("backbones", "--json")):
        out, imported = tlkit(env, *args)
        assert out.returncode == 0, out.stderr
        assert not imported, f"tlkit {' '.join(args)} imported {imported}"
    listing = json.loads(tlkit(env, "backbones", "--filter", "timm/convnext_*", "--json")[0].stdout)
    assert "timm/convnext_tiny" in {e["name"] for e in listing}
    # An unknown name is refused with the closest names, before the runtime (and torch) loads.
    out, imported = tlkit(env, "extract", "timm/resnt18", images, "-o", tmp_path / "y.h5")
    assert "did you mean 'timm/resnet18'" in one_line_error(out)
    assert not imported, imported
    out, imported = tlkit(env, "extract", "torchvision/resnet5", images, "-o", tmp_path / "y.h5")
    assert "did you mean 'torchvision/resnet50'" in one_line_error(out)
    assert not imported, imported
    assert not (tmp_path / "y.h5").exists()


def test_the_listing_is_not_cut_in_a_pipe(env: dict[str, str]) -> None:
    out, _ = tlkit({**env, "COLUMNS": "60"}, "backbones")
    assert "hf/MIT/ast-finetuned-audioset-10-10-0.4593 " in out.stdout  # whole, on one line
    assert "…" not in out.stdout


def test_backbone_info_is_remembered(env: dict[str, str]) -> None:
    first, _ = tlkit(env, "backbones", "info", "effnet/lite0", "--json")
    assert first.returncode == 0, first.stderr
    again, imported = tlkit(env, "backbones", "info", "effnet/lite0", "--json")
    assert again.returncode == 0, again.stderr
    assert not imported, f"a remembered description imported {imported}"
    info = json.loads(again.stdout)
    assert info == json.loads(first.stdout)  # the same description, from the memo
    assert info["weights"] == "pretrained" and info["embed_dim"] == 1280 and len(info["fingerprint"]) == 32
    assert [b["name"] for b in info["blocks"]][:2] == ["stem", "blocks.0"]


@pytest.mark.slow
def test_an_up_to_date_rerun_builds_no_model(env: dict[str, str], images: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "c.h5"
    args = ("extract", "effnet/lite0", images, "-o", out_file, "--workers", "0")
    first, _ = tlkit(env, *args)
    assert first.returncode == 0, first.stderr
    again, imported = tlkit(env, *args)
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout
    assert not imported & MODEL_LIBRARIES, f"the up-to-date check imported {imported & MODEL_LIBRARIES}"
    # The remembered fingerprint is the one the model gives (and that the cache records).
    from tlkit import FeatureCache, get_backbone

    with FeatureCache(out_file) as cache:
        assert cache.meta["key"]["backbone"] == get_backbone("effnet/lite0").fingerprint()
