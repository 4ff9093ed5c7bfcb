"""What plugins register, collected once, and name resolution with clear errors."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.errors import DuplicateNameError, PluginError, UnknownNameError

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Reader

MODALITIES = ("image", "text", "audio")


def _check_modality(kind: str, name: str, owner: object, plugin: str) -> str:
    """The ``modality`` attribute of a backbone class or reader, checked; a :class:`PluginError` naming the fix."""
    modality = getattr(owner, "modality", None)
    if modality not in MODALITIES:
        what = f"with modality {modality!r}" if modality is not None else "whose class sets no modality"
        raise PluginError(
            f"plugin {plugin!r} registered {kind} {name!r} {what}; set the class attribute modality to one of "
            f"{', '.join(MODALITIES)}"
        )
    return str(modality)


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone a plugin offers: ``factory`` is a :class:`tlkit.plugin.Backbone` subclass, and
    ``factory(name, **options)`` builds it without loading weights. The modality is the class's own."""

    name: str
    factory: type[Backbone]
    summary: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        from tlkit.contract.backbone import Backbone

        if not (isinstance(self.factory, type) and issubclass(self.factory, Backbone)):
            raise PluginError(
                f"plugin {self.plugin!r} offers backbone {self.name!r} with factory {self.factory!r}; "
                f"give a tlkit.plugin.Backbone subclass"
            )
        _check_modality("backbone", self.name, self.factory, self.plugin)

    @property
    def modality(self) -> str:
        return self.factory.modality

    def create(self, **options: Any) -> Backbone:
        return self.factory(self.name, **options)


@dataclass(frozen=True)
class HeadEntry:
    """A head type. ``kind`` is ``"torch"`` (factory(in_dim, n_classes, **params) -> nn.Module) or
    ``"estimator"`` (factory(**params) -> scikit-learn classifier)."""

    name: str
    factory: Callable[..., Any]
    kind: str = "torch"
    summary: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ReaderEntry:
    """A data reader; its modality is the reader's own ``modality`` attribute."""

    name: str
    reader: Reader
    summary: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_modality("reader", self.name, self.reader, self.plugin)

    @property
    def modality(self) -> str:
        return self.reader.modality


@dataclass
class Registry:
    backbones: dict[str, BackboneEntry] = field(default_factory=dict)
    heads: dict[str, HeadEntry] = field(default_factory=dict)
    readers: dict[str, ReaderEntry] = field(default_factory=dict)


#: The registry, and the plugin manager generation it was built from (it is rebuilt when plugins change).
_registry: tuple[int, Registry] | None = None


def _collector(kind: str, table: dict[str, Any], plugin: str, make: Callable[..., Any]) -> Callable[..., None]:
    """The ``register`` callback one plugin receives (it implements RegisterBackbone, RegisterHead, RegisterReader)."""

    def register(name: str, obj: Any, **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        if "modality" in kwargs:
            raise PluginError(
                f"plugin {plugin!r} passed modality= when registering {kind} {name!r}; drop it: the modality is "
                f"the class attribute modality"
            )
        try:
            entry = make(name, obj, plugin=plugin, **kwargs)
        except TypeError as exc:
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} with bad arguments: {exc}") from exc
        if name in table:
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by both plugin {table[name].plugin!r} and plugin {plugin!r}; "
                f"uninstall one or limit plugins with TLKIT_PLUGINS"
            )
        table[name] = entry

    return register


def _call_each(hook_name: str, kind: str, table: dict[str, Any], make: Callable[..., Any]) -> None:
    from tlkit.host.manager import get_plugin_manager

    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        impl.function(register=_collector(kind, table, impl.plugin_name, make))


def get_registry() -> Registry:
    """The registry, built on first use from every loaded plugin (and again after plugins change)."""
    global _registry
    from tlkit.host.manager import generation

    current = generation()
    if _registry is None or _registry[0] != current:
        reg = Registry()
        _call_each("tlkit_register_backbones", "backbone", reg.backbones, BackboneEntry)
        _call_each("tlkit_register_heads", "head", reg.heads, HeadEntry)
        _call_each("tlkit_register_readers", "reader", reg.readers, ReaderEntry)
        _registry = (current, reg)
    return _registry[1]


def resolve_backbone(name: str) -> BackboneEntry:
    """Find the entry for a backbone name: fixed registrations first, then the resolver hook."""
    from tlkit.host.manager import get_plugin_manager

    reg = get_registry()
    if name in reg.backbones:
        return reg.backbones[name]
    entry = get_plugin_manager().hook.tlkit_resolve_backbone(name=name)
    if entry is not None:
        return entry  # type: ignore[no-any-return]
    known = list(reg.backbones) + [e.name for e in list_backbones(None)]
    raise UnknownNameError(
        "backbone", name, known, hint="see `tlkit backbones`; timm models are `timm/<arch>`, HF models `hf/<id or dir>`"
    )


def list_backbones(pattern: str | None = None, modality: str | None = None) -> list[BackboneEntry]:
    """Registered backbones plus what open-ended plugins list for ``pattern``, sorted by name."""
    from tlkit.host.manager import get_plugin_manager

    found: dict[str, BackboneEntry] = {}
    for e in get_registry().backbones.values():
        found[e.name] = e
    for listed in get_plugin_manager().hook.tlkit_list_backbones(pattern=pattern):
        for e in listed or ():
            found.setdefault(e.name, e)
    out = [e for e in found.values() if pattern is None or fnmatch.fnmatch(e.name, pattern)]
    if modality:
        out = [e for e in out if e.modality == modality]
    return sorted(out, key=lambda e: e.name)


def get_head_entry(name: str) -> HeadEntry:
    heads = get_registry().heads
    if name not in heads:
        raise UnknownNameError("head", name, heads, hint="see `tlkit heads`")
    return heads[name]


def get_reader_entry(name: str) -> ReaderEntry:
    readers = get_registry().readers
    if name not in readers:
        raise UnknownNameError("reader", name, readers)
    return readers[name]
