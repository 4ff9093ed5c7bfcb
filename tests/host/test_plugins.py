"""The plugin host: discovery, TLKIT_PLUGINS, in-process registration, and a plugin's failures contained to it
(duplicates, misspelled and mistyped hooks, bad registrations, hooks that raise)."""

from __future__ import annotations

import pytest

import tlkit
from tlkit.errors import DuplicateNameError, PluginError, UnknownNameError
from tlkit.host.manager import PluginWarning
from tlkit.host.registry import (
    broken_names,
    get_head_entry,
    get_reader_entry,
    get_registry,
    list_backbones,
    resolve_backbone,
)
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


def _status(name: str) -> tuple[str, str]:
    info = {p.name: p for p in tlkit.list_plugins()}[name]
    return info.status, info.error


def test_duplicate_names_name_both_plugins_and_neither_wins(fresh_plugins):
    tlkit.register_plugin(_Plugin("first"), name="first")
    tlkit.register_plugin(_Plugin("second"), name="second")
    try:
        reg = get_registry()  # the clash does not break the registry
        assert "mine/tiny" not in reg.backbones and "fake/image" in reg.backbones
        with pytest.raises(DuplicateNameError) as info:
            resolve_backbone("mine/tiny")
        message = str(info.value)
        assert "'first'" in message and "'second'" in message and "mine/tiny" in message
        assert "neither is used" in message and "TLKIT_PLUGINS" in message
        assert [(b.name, b.plugins) for b in broken_names("backbone")] == [("mine/tiny", ("first", "second"))]
        assert _status("first") == _status("second") == ("conflict", message)
        assert _status("core") == ("ok", "")
        assert resolve_backbone("fake/image").plugin == "core"
    finally:
        tlkit.unregister_plugin("first")
        tlkit.unregister_plugin("second")
    assert get_registry().broken["backbone"] == {}


def test_duplicate_of_a_builtin_is_refused(fresh_plugins):
    tlkit.register_plugin(_Plugin("shadow", backbone="fake/image"), name="shadow")
    try:
        with pytest.raises(DuplicateNameError, match="'core'.*'shadow'.*leave 'shadow' out of TLKIT_PLUGINS"):
            resolve_backbone("fake/image")
        assert resolve_backbone("fake/text").plugin == "core"
    finally:
        tlkit.unregister_plugin("shadow")
    assert resolve_backbone("fake/image").plugin == "core"
    assert _status("core") == ("ok", "")


def test_misspelled_hook_is_caught(fresh_plugins):
    class Typo:
        @hookimpl
        def tlkit_register_backbone(self, register):  # missing "s"
            pass

    with pytest.raises(
        PluginError, match="unknown hook tlkit_register_backbone; did you mean tlkit_register_backbones"
    ):
        tlkit.register_plugin(Typo(), name="typo")
    assert "typo" not in {p.name for p in fresh_plugins.list_plugins()}


def test_mistyped_hook_is_caught(fresh_plugins):
    class Mistyped:
        @hookimpl
        def tlkit_register_backbones(self, registry):
            pass

    with pytest.raises(PluginError, match="tlkit_register_backbones takes registry, .* arguments are: register$"):
        tlkit.register_plugin(Mistyped(), name="mistyped")
    assert "mistyped" not in {p.name for p in fresh_plugins.list_plugins()}


def test_unmarked_hook_is_caught(fresh_plugins):
    class Unmarked:
        def tlkit_register_heads(self, register):
            pass

    with pytest.raises(PluginError, match="tlkit_register_heads lacks the @hookimpl marker"):
        tlkit.register_plugin(Unmarked(), name="unmarked")


class VideoBackbone(FakeImageBackbone):
    modality = "video"


def test_bad_modality_breaks_that_name_only(fresh_plugins):
    class BadModality:
        @hookimpl
        def tlkit_register_backbones(self, register):
            register("odd/one", VideoBackbone)
            register("odd/two", FakeImageBackbone)

    tlkit.register_plugin(BadModality(), name="badmod")
    try:
        message = "plugin 'badmod' registered backbone 'odd/one' with modality 'video'"
        with pytest.raises(PluginError, match=message):
            resolve_backbone("odd/one")
        assert resolve_backbone("odd/two").plugin == "badmod"  # its other registrations count
        assert [e.name for e in list_backbones("odd/*")] == ["odd/two"]
        assert [(b.name, b.modality) for b in broken_names("backbone", "odd/*")] == [("odd/one", None)]
        assert [b.name for b in broken_names("backbone", modality="text")] == ["odd/one"]  # shown under any modality
        status, error = _status("badmod")
        assert status == "broken" and message in error
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
            resolve_backbone("odd/one")
        assert _status("bad")[0] == "broken"
        assert resolve_backbone("fake/image").plugin == "core"
    finally:
        tlkit.unregister_plugin("bad")


def test_a_raising_registration_hook_breaks_its_plugin_only(fresh_plugins, capsys, monkeypatch):
    class Raises:
        @hookimpl
        def tlkit_register_backbones(self, register):
            register("raises/tiny", FakeImageBackbone)
            raise RuntimeError("boom in backbones")

        @hookimpl
        def tlkit_register_heads(self, register):
            raise ValueError("boom in heads")

        @hookimpl
        def tlkit_register_readers(self, register):
            register("raises-reader", object())

    monkeypatch.setenv("TLKIT_DEBUG", "1")
    tlkit.register_plugin(Raises(), name="raises")
    try:
        with pytest.warns(PluginWarning, match="'raises'.*tlkit_register_backbones failed: RuntimeError: boom"):
            reg = get_registry()
        assert "Traceback" in capsys.readouterr().err  # TLKIT_DEBUG
        assert {"fake/image", "fake/text"} <= set(reg.backbones) and "linear" in reg.heads and "image" in reg.readers
        with pytest.raises(
            PluginError, match="'raises/tiny' is unavailable: plugin 'raises': tlkit_register_backbones"
        ):
            tlkit.get_backbone("raises/tiny")
        with pytest.raises(PluginError, match="registered reader 'raises-reader' whose class sets no modality"):
            get_reader_entry("raises-reader")
        status, error = _status("raises")
        assert status == "broken"
        assert "RuntimeError: boom in backbones" in error and "ValueError: boom in heads" in error
        with pytest.raises(UnknownNameError, match="broken plugins .*'raises' .*boom in heads"):
            get_head_entry("raises-head")
        assert [h.name for h in tlkit.list_heads()] == sorted(reg.heads)
    finally:
        tlkit.unregister_plugin("raises")
    assert _status("core") == ("ok", "")


def test_resolve_and_list_failures_stay_with_their_family(fresh_plugins):
    class Family:
        @hookimpl
        def tlkit_resolve_backbone(self, name):
            raise RuntimeError(f"index broken for {name}")

        @hookimpl
        def tlkit_list_backbones(self, pattern):
            raise RuntimeError("index broken")

    class Garbage:
        @hookimpl
        def tlkit_resolve_backbone(self, name):
            return "not an entry" if name == "junk/x" else None

        @hookimpl
        def tlkit_list_backbones(self, pattern):
            return ["not an entry"]

    tlkit.register_plugin(Family(), name="family")
    tlkit.register_plugin(Garbage(), name="garbage")
    try:
        with pytest.warns(PluginWarning):
            names = [e.name for e in list_backbones("fake/*")]
            assert names == ["fake/image", "fake/text"]
            assert tlkit.get_backbone("fake/image").name == "fake/image"
            with pytest.raises(PluginError, match="'family': tlkit_resolve_backbone failed: RuntimeError: index"):
                resolve_backbone("family/x")
            with pytest.raises(PluginError, match="'garbage': tlkit_resolve_backbone failed: returned str, not a"):
                resolve_backbone("junk/x")
        statuses = {p.name: (p.status, p.error) for p in tlkit.list_plugins()}
        assert statuses["family"][0] == statuses["garbage"][0] == "broken"
        assert "tlkit_list_backbones failed: RuntimeError: index broken" in statuses["family"][1]
        assert "tlkit_list_backbones returned str, not a BackboneEntry" in statuses["garbage"][1]
        assert all(statuses[n] == ("ok", "") for n in ("core", "timm", "torchvision", "hf"))
    finally:
        tlkit.unregister_plugin("family")
        tlkit.unregister_plugin("garbage")


def test_a_family_that_does_not_know_a_name_still_answers_with_its_error(fresh_plugins):
    with pytest.raises(UnknownNameError, match="did you mean"):
        resolve_backbone("torchvision/resnet5")
    assert _status("torchvision") == ("ok", "")


def test_plugin_commands_are_added_one_plugin_at_a_time(fresh_plugins):
    import click
    from click.testing import CliRunner

    def adder(name, command_name):
        class Adds:
            @hookimpl
            def tlkit_register_commands(self, cli):
                if command_name is None:
                    raise RuntimeError("no commands today")

                @cli.command(command_name)
                def _cmd():
                    click.echo(name)

        return Adds()

    @click.group()
    def cli():
        pass

    @cli.command("extract")
    def extract():
        pass

    builtin_extract = cli.commands["extract"]
    plugins = {"p-fails": None, "p-own": "own", "p-one": "same", "p-two": "same", "p-replaces": "extract"}
    for name, command in plugins.items():
        tlkit.register_plugin(adder(name, command), name=name)
    try:
        with pytest.warns(PluginWarning):
            fresh_plugins.register_commands(cli)
        assert cli.commands["extract"] is builtin_extract
        assert "own" in cli.commands
        runner = CliRunner()
        result = runner.invoke(cli, ["same"])
        assert result.exit_code != 0 and "'p-one' and plugin 'p-two', so neither is used" in str(result.exception)
        infos = {p.name: p for p in fresh_plugins.list_plugins()}
        assert infos["p-fails"].status == "broken" and "no commands today" in infos["p-fails"].error
        assert (
            infos["p-replaces"].status == "broken"
            and "may not replace the command 'extract'" in infos["p-replaces"].error
        )
        assert infos["p-one"].status == infos["p-two"].status == "conflict"
        assert infos["p-own"].status == "ok"
    finally:
        for name in plugins:
            tlkit.unregister_plugin(name)


def test_modality_comes_from_the_class(fresh_plugins):
    from tlkit.testing import FakeTextBackbone

    tlkit.register_plugin(_Plugin("p1"), name="p1")
    try:
        assert resolve_backbone("mine/tiny").modality == "image"
        assert resolve_backbone("fake/text").modality == FakeTextBackbone.modality == "text"
        readers = {e.name: e.modality for e in get_registry().readers.values()}
        formats = ("", "webdataset-", "parquet-", "hf-datasets-")
        assert readers == {f"{f}{m}": m for f in formats for m in ("image", "text", "audio")}
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


def test_a_missing_module_in_plugin_code_names_the_plugin(fresh_plugins):
    import types

    module = types.ModuleType("tlkit_plugin_needs_a_library")
    exec("def build():\n    import tlkit_module_not_installed_anywhere\n", module.__dict__)
    tlkit.register_plugin(module, name="needs")
    try:
        with pytest.raises(ImportError) as raised:
            module.build()
        error = fresh_plugins.explain_import_error(raised.value)
        assert isinstance(error, PluginError)
        assert str(error).startswith("plugin 'needs' needs the module 'tlkit_module_not_installed_anywhere'")
        with pytest.raises(ImportError) as raised:
            import tlkit_module_not_installed_anywhere  # noqa: F401
        assert fresh_plugins.explain_import_error(raised.value) is None  # not a plugin's code: left alone
    finally:
        tlkit.unregister_plugin("needs")
