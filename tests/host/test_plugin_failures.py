"""One broken plugin never takes tlkit down: real plugin distributions, one per way a plugin can fail, discovered
through real entry points by ``tlkit`` subprocesses.

Each distribution is written into a temporary site directory (a package plus a ``*.dist-info`` folder with
``METADATA`` and ``entry_points.txt``, what pip leaves behind) that ``PYTHONPATH`` puts beside the built-ins. With any
one of them installed, ``tlkit plugins``, ``tlkit backbones``, ``tlkit heads`` and ``tlkit extract`` with a built-in
backbone work and report the broken plugin with its reason; asking for the broken name is a one-line error;
``TLKIT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

HEADER = """
from tlkit.plugin import Backbone, BackboneEntry, hookimpl
from tlkit.testing import FakeImageBackbone
"""

#: dist name -> plugin module source (the entry point ``<module>`` of group ``tlkit``).
SOURCES = {
    "raises": """
        @hookimpl
        def tlkit_register_backbones(register):
            register("raises/tiny", FakeImageBackbone)
            raise RuntimeError("the registration hook blew up")


        @hookimpl
        def tlkit_register_heads(register):
            raise RuntimeError("the heads hook blew up")
    """,
    "typo": """
        @hookimpl
        def tlkit_register_backbone(register):  # the hook is tlkit_register_backbones
            register("typo/tiny", FakeImageBackbone)
    """,
    "mistyped": """
        @hookimpl
        def tlkit_register_backbones(registry):  # the argument is `register`
            registry("mistyped/tiny", FakeImageBackbone)
    """,
    "clash_a": """
        @hookimpl
        def tlkit_register_backbones(register):
            register("clash/tiny", FakeImageBackbone, summary="from clash_a")
            register("clash_a/own", FakeImageBackbone)


        @hookimpl
        def tlkit_register_heads(register):
            register("clash-head", lambda in_dim, n_classes: None)
    """,
    "clash_b": """
        @hookimpl
        def tlkit_register_backbones(register):
            register("clash/tiny", FakeImageBackbone, summary="from clash_b")


        @hookimpl
        def tlkit_register_heads(register):
            register("clash-head", lambda in_dim, n_classes: None)
    """,
    "modality": """
        class VideoBackbone(FakeImageBackbone):
            modality = "video"


        @hookimpl
        def tlkit_register_backbones(register):
            register("modality/video", VideoBackbone)
            register("modality/fine", FakeImageBackbone)
    """,
    "family": """
        @hookimpl
        def tlkit_resolve_backbone(name):
            if name.startswith("family/"):
                raise RuntimeError("the family's model index is corrupt")
            return None


        @hookimpl
        def tlkit_list_backbones(pattern):
            raise RuntimeError("the family's model index is corrupt")
    """,
    "build": """
        class NeedsLibrary(FakeImageBackbone):
            def build_module(self):
                import tlkit_library_that_is_not_installed  # noqa: F401


        @hookimpl
        def tlkit_register_backbones(register):
            register("build/tiny", NeedsLibrary)
    """,
}


@dataclass(frozen=True)
class Case:
    """One way to break a plugin: the distributions, the name to ask for, what the one-line error and the plugin's
    reason say, and the plugin's status in ``tlkit plugins``."""

    id: str
    dists: tuple[str, ...]
    ask: str
    error: str
    reason: str
    status: str = "broken"
    listed_broken: bool = True  # the name shows in `tlkit backbones` as broken


CASES = [
    Case("hook raises", ("raises",), "raises/tiny", "the registration hook blew up", "the heads hook blew up"),
    Case(
        "misspelled hook",
        ("typo",),
        "typo/tiny",
        "unknown hook tlkit_register_backbone; did you mean tlkit_register_backbones?",
        "implements unknown hook tlkit_register_backbone",
        listed_broken=False,
    ),
    Case(
        "mistyped hook",
        ("mistyped",),
        "mistyped/tiny",
        "takes registry, which the hook does not pass",
        "hook tlkit_register_backbones takes registry",
        listed_broken=False,
    ),
    Case(
        "two plugins, one name",
        ("clash_a", "clash_b"),
        "clash/tiny",
        "backbone 'clash/tiny' is registered by both plugin 'clash_a' (tlkit-clash-a) and plugin 'clash_b' "
        "(tlkit-clash-b), so neither is used; choose one with TLKIT_PLUGINS",
        "so neither is used",
        status="conflict",
    ),
    Case(
        "unknown modality",
        ("modality",),
        "modality/video",
        "plugin 'modality' registered backbone 'modality/video' with modality 'video'",
        "with modality 'video'",
    ),
    Case(
        "family hooks raise",
        ("family",),
        "family/any",
        "plugin 'family' (tlkit-family): tlkit_resolve_backbone failed: RuntimeError: the family's model index",
        "tlkit_list_backbones failed: RuntimeError: the family's model index is corrupt",
        listed_broken=False,
    ),
]


def write_dist(site: Path, module: str) -> None:
    """A plugin distribution as pip installs it: the package and its ``dist-info`` with the entry point."""
    dist = "tlkit-" + module.replace("_", "-")
    package = site / f"tlkit_plugin_{module}"
    package.mkdir()
    (package / "__init__.py").write_text(HEADER + textwrap.dedent(SOURCES[module]))
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[tlkit]\n{module} = tlkit_plugin_{module}\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), classes=2, per_class=2, size=(24, 24))


def site_with(tmp_path: Path, dists: tuple[str, ...]) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    for module in dists:
        write_dist(site, module)
    return site


def tlkit(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    for var in ("TLKIT_PLUGINS", "TLKIT_DEBUG"):
        full_env.pop(var, None)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exit code 1, ``Error: ...`` on one line, no traceback."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_broken_plugin_stays_broken_alone(case: Case, tmp_path: Path, images: Path) -> None:
    site = site_with(tmp_path, case.dists)

    out = tlkit(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    for name in case.dists:
        assert infos[name]["status"] == case.status, infos[name]
        assert case.reason in infos[name]["error"], infos[name]
    assert all(infos[n]["status"] == "ok" for n in ("core", "timm", "torchvision", "hf"))

    out = tlkit(site, "backbones", "--json")
    assert out.returncode == 0, out.stderr
    rows = {e["name"]: e for e in json.loads(out.stdout)}
    assert rows["fake/image"]["status"] == "ok" and "timm/resnet50" in rows
    if case.listed_broken:
        assert rows[case.ask]["status"] == "broken" and case.error in rows[case.ask]["error"], rows[case.ask]
    else:
        assert case.ask not in rows
    if case.status == "broken":  # and one warning on stderr says why
        assert case.reason in out.stderr or case.error in out.stderr, out.stderr

    out = tlkit(site, "heads", "--json")
    assert out.returncode == 0, out.stderr
    heads = {h["name"]: h for h in json.loads(out.stdout)}
    assert heads["linear"]["status"] == "ok"

    out = tlkit(site, "extract", "fake/image", str(images), "-o", str(tmp_path / "f.h5"), "--weights", "none")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "f.h5").is_file()

    error = one_line_error(tlkit(site, "backbones", "info", case.ask))
    assert case.error in error, error
    debug = tlkit(site, "backbones", "info", case.ask, TLKIT_DEBUG="1")
    assert debug.returncode == 1 and case.error in debug.stderr
    if case.id not in ("misspelled hook", "mistyped hook", "two plugins, one name"):  # nothing raised in those
        assert "Traceback (most recent call last)" in debug.stderr, debug.stderr


def test_two_plugins_one_name_choose_with_the_env_var(tmp_path: Path) -> None:
    site = site_with(tmp_path, ("clash_a", "clash_b"))
    error = one_line_error(tlkit(site, "blocks", "clash/tiny"))
    assert re.search(r"TLKIT_PLUGINS=([\w,]+,)?clash_a\b", error), error
    for chosen in ("clash_a", "clash_b"):
        out = tlkit(site, "backbones", "--json", TLKIT_PLUGINS=chosen)
        rows = {e["name"]: e for e in json.loads(out.stdout)}
        assert rows["clash/tiny"] == {
            "name": "clash/tiny",
            "modality": "image",
            "plugin": chosen,
            "summary": f"from {chosen}",
            "status": "ok",
        }
    out = tlkit(site, "heads", "--json")
    heads = {h["name"]: h for h in json.loads(out.stdout)}
    assert heads["clash-head"]["status"] == "broken" and "neither is used" in heads["clash-head"]["error"]
    out = tlkit(site, "backbones", "--json")
    assert {e["name"]: e["status"] for e in json.loads(out.stdout)}["clash_a/own"] == "ok"  # its other names work


def test_a_build_that_needs_a_missing_module_is_one_line(tmp_path: Path, images: Path) -> None:
    site = site_with(tmp_path, ("build",))
    out = tlkit(site, "plugins", "--json")
    assert {p["name"]: p["status"] for p in json.loads(out.stdout)}["build"] == "ok"  # nothing of it failed yet
    error = one_line_error(tlkit(site, "blocks", "build/tiny"))
    assert "plugin 'build' (tlkit-build) needs the module 'tlkit_library_that_is_not_installed'" in error, error
    cache = tmp_path / "out" / "f.h5"
    cache.parent.mkdir()
    error = one_line_error(tlkit(site, "extract", "build/tiny", str(images), "-o", str(cache), "--weights", "none"))
    assert "tlkit_library_that_is_not_installed" in error and "plugin 'build'" in error, error

    debug = tlkit(site, "blocks", "build/tiny", TLKIT_DEBUG="1")
    assert debug.returncode == 1 and "ModuleNotFoundError" in debug.stderr and "Traceback" in debug.stderr
    out = tlkit(site, "extract", "fake/image", str(images), "-o", str(tmp_path / "g.h5"), "--weights", "none")
    assert out.returncode == 0, out.stderr
