"""The plugin host: discovery, TLKIT_PLUGINS, in-process registration, duplicates, misspelled hooks."""

from __future__ import annotations

import pytest

import tlkit
from tlkit.errors import DuplicateNameError, PluginError, UnknownNameError
from tlkit.host.registry import get_registry, list_backbones, resolve_backbone
from tlkit.plugin import BackboneEntry, hookimpl
from tlkit.testing import FakeImageBackbone


def test_builtin_plugins_are_discovered_through_entry_points(fresh_plugins):
    infos = {p.name: p for p in fresh_plugins.list_plugins()}
    assert {"core", "timm", "torchvision", "hf"} <= set(infos)
    assert all(infos[n].builtin and infos[n].status == "ok" for n in ("core", "timm", "torchvision", "hf"))
    assert "tlkit_register_backbones" in infos["core"].hooks


def test_env_var_limits_third_party_plugins(fresh_plugins, monkeypatch):
    monkeypatch.setenv("TLKIT_PLUGINS", "")
    infos = fresh_plugins.list_plugins()
    assert all(p.builtin for p in infos if p.status == "ok")
    assert "fake/image" in get_registry().backbones


class _Plugin:
    def __init__(self, name: str, backbone: str = "mine/tiny") -> None:
        self.name, self.backbone = name, backbone

    @hookimpl
    def tlkit_register_backbones(self, register):
        register(self.backbone, FakeImageBackbone, summary=f"from {self.name}")


def test_in_process_plugin_registers_and_unregisters(fresh_plugins):
    tlkit.register_plugin(_Plugin("p1"), name="p1")
    try:
        entry = resolve_backbone("mine/tiny")
        assert entry.plugin == "p1"
        assert entry.create(weights="none").spec.embed_dim == 16
        assert "mine/tiny" in [e.name for e in list_backbones("mine/*")]
    finally:
        tlkit.unregister_plugin("p1")
    with pytest.raises(UnknownNameError):
        resolve_backbone("mine/tiny")


def test_duplicate_names_name_both_plugins(fresh_plugins):
    tlkit.register_plugin(_Plugin("first"), name="first")
    tlkit.register_plugin(_Plugin("second"), name="second")
    try:
        with pytest.raises(DuplicateNameError) as info:
            get_registry()
        assert "'first'" in str(info.value) and "'second'" in str(info.value) and "mine/tiny" in str(info.value)
    finally:
        tlkit.unregister_plugin("first")
        tlkit.unregister_plugin("second")


def test_duplicate_of_a_builtin_is_refused(fresh_plugins):
    tlkit.register_plugin(_Plugin("shadow", backbone="fake/image"), name="shadow")
    try:
        with pytest.raises(DuplicateNameError, match="'core'.*'shadow'"):
            get_registry()
    finally:
        tlkit.unregister_plugin("shadow")


def test_misspelled_hook_is_caught(fresh_plugins):
    class Typo:
        @hookimpl
        def tlkit_register_backbone(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="tlkit_register_backbone"):
        tlkit.register_plugin(Typo(), name="typo")
    assert "typo" not in {p.name for p in fresh_plugins.list_plugins()}


class VideoBackbone(FakeImageBackbone):
    modality = "video"


def test_bad_modality_is_a_plugin_error(fresh_plugins):
    class BadModality:
        @hookimpl
        def tlkit_register_backbones(self, register):
            register("odd/one", VideoBackbone)

    tlkit.register_plugin(BadModality(), name="badmod")
    try:
        with pytest.raises(PluginError, match="'badmod' registered backbone 'odd/one' with modality 'video'"):
            get_registry()
    finally:
        tlkit.unregister_plugin("badmod")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("odd/one", FakeImageBackbone), {"modality": "image"}, "drop it: the modality is the class attribute"),
        (("odd/one", FakeImageBackbone.build_module), {}, "give a tlkit.plugin.Backbone subclass"),
        (("odd/one", FakeImageBackbone), {"colour": "red"}, "bad arguments: .*colour"),
    ],
)
def test_bad_registrations_are_plugin_errors(fresh_plugins, args, kwargs, match):
    class Bad:
        @hookimpl
        def tlkit_register_backbones(self, register):
            register(*args, **kwargs)

    tlkit.register_plugin(Bad(), name="bad")
    try:
        with pytest.raises(PluginError, match=match):
            get_registry()
    finally:
        tlkit.unregister_plugin("bad")


def test_modality_comes_from_the_class(fresh_plugins):
    from tlkit.testing import FakeTextBackbone

    tlkit.register_plugin(_Plugin("p1"), name="p1")
    try:
        assert resolve_backbone("mine/tiny").modality == "image"
        assert resolve_backbone("fake/text").modality == FakeTextBackbone.modality == "text"
        assert {e.name: e.modality for e in get_registry().readers.values()} == {
            "image": "image",
            "text": "text",
            "audio": "audio",
        }
    finally:
        tlkit.unregister_plugin("p1")


def test_resolver_hook_answers_open_ended_names(fresh_plugins):
    class Resolver:
        @hookimpl
        def tlkit_resolve_backbone(self, name):
            if name.startswith("any/"):
                return BackboneEntry(name, FakeImageBackbone, summary="resolved", plugin="resolver")
            return None

        @hookimpl
        def tlkit_list_backbones(self, pattern):
            return [BackboneEntry("any/one", FakeImageBackbone, summary="listed", plugin="resolver")]

    tlkit.register_plugin(Resolver(), name="resolver")
    try:
        bb = tlkit.get_backbone("any/thing", weights="none")
        assert bb.name == "any/thing" and bb.weights == "none"
        assert [e.name for e in tlkit.list_backbones("any/*")] == ["any/one"]
        assert tlkit.list_backbones("any/*", modality="text") == []
    finally:
        tlkit.unregister_plugin("resolver")


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(UnknownNameError) as info:
        tlkit.get_backbone("fake/imgae")
    assert "did you mean 'fake/image'" in str(info.value)


def test_every_hook_is_exercised_by_a_test():
    """A hook nobody tests is a hook nobody knows works (datasette's meta-test)."""
    from pathlib import Path

    from tlkit.host.hookspecs import HOOK_NAMES

    text = "\n".join(p.read_text() for p in Path(__file__).parents[1].rglob("*.py"))
    untested = [h for h in HOOK_NAMES if f"def {h}(" not in text]
    assert not untested, f"hooks without a test implementation: {untested}"


def test_every_hook_is_documented():
    from pathlib import Path

    from tlkit.host.hookspecs import HOOK_NAMES

    doc = (Path(__file__).parents[2] / "docs" / "plugins" / "hooks.md").read_text()
    missing = [h for h in HOOK_NAMES if f"`{h}" not in doc]
    assert not missing, f"hooks missing from docs/plugins/hooks.md: {missing}"


def test_plugin_reader_is_used_for_its_modality(fresh_plugins, tmp_path):
    from PIL import Image

    from tlkit import open_dataset
    from tlkit.plugin import ImageReader

    class PpmReader(ImageReader):
        name = "ppm"
        extensions = (".ppm",)

    class ReaderPlugin:
        @hookimpl
        def tlkit_register_readers(self, register):
            register("ppm", PpmReader(), summary="PPM files only")

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / cls / "x.ppm")
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "y.png")
    tlkit.register_plugin(ReaderPlugin(), name="ppm-plugin")
    try:
        ds = open_dataset(tmp_path, modality="image", reader="ppm")
        assert [r.id for r in ds.records] == ["a/x.ppm", "b/x.ppm"]
        assert ds.class_names == ["a", "b"] and ds.reader == "ppm"
        builtin = open_dataset(tmp_path, modality="image")  # the first image reader (core) ignores .ppm
        assert builtin.reader == "image" and [r.id for r in builtin.records] == ["a/y.png", "b/y.png"]
    finally:
        tlkit.unregister_plugin("ppm-plugin")


def test_backbone_family_answers_both_hooks(fresh_plugins):
    """A zoo plugin describes its names once; the family's methods are its two hooks."""
    from tlkit.plugin import BackboneFamily

    asked: list[str] = []

    def check(name):
        if name.removeprefix("zoo/") not in ("a1", "a2", "b1"):
            raise UnknownNameError("zoo model", name, ["zoo/a1", "zoo/a2", "zoo/b1"])

    def catalogue(pattern):
        asked.append(pattern)
        return ["a1", "a2", "b1"]

    family = BackboneFamily(
        "zoo/", FakeImageBackbone, plugin="zoo", check=check, catalogue=catalogue, curated=("a1",), summary=str.upper
    )

    class Zoo:
        tlkit_resolve_backbone = family.tlkit_resolve_backbone
        tlkit_list_backbones = family.tlkit_list_backbones

    tlkit.register_plugin(Zoo(), name="zoo")
    try:
        assert tlkit.get_backbone("zoo/a2", weights="none").name == "zoo/a2"
        with pytest.raises(UnknownNameError, match="unknown zoo model 'zoo/a3'; did you mean"):
            tlkit.get_backbone("zoo/a3")
        entry = resolve_backbone("zoo/b1")
        assert (entry.plugin, entry.summary, entry.modality) == ("zoo", "ZOO/B1", "image")
        assert [e.name for e in list_backbones("zoo/a*")] == ["zoo/a1", "zoo/a2"]
        assert "zoo/a1" in [e.name for e in list_backbones()] and "zoo/a2" not in [e.name for e in list_backbones()]
        list_backbones("fake/*")  # a pattern outside the prefix never asks the library
        assert asked == ["zoo/a*"]
        assert [p.hooks for p in tlkit.list_plugins() if p.name == "zoo"] == [
            ["tlkit_list_backbones", "tlkit_resolve_backbone"]
        ]
    finally:
        tlkit.unregister_plugin("zoo")


def test_tlkit_hookimpl_is_the_plugin_surface_marker():
    import tlkit.plugin

    assert tlkit.hookimpl is tlkit.plugin.hookimpl
