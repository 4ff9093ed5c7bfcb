"""What plugins register, collected once, and name resolution with clear errors.

Each plugin's hooks are called on their own: a registration hook that raises, a registration that is refused (an
unknown modality, a factory that is not a Backbone subclass) or a name that two plugins register makes that name
unusable (:class:`BrokenName`, whose error asking for it raises) and the plugin broken, never the registry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.errors import DuplicateNameError, PluginError, TlkitError, UnknownNameError
from tlkit.host.manager import (
    call_each,
    call_impl,
    clash_message,
    clear_problems,
    describe,
    generation,
    get_plugin_manager,
    hookimpls,
    list_plugins,
    one_line,
    record_failure,
)

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
    ``factory(name, **options)`` builds it without loading weights. The modality is the class's own.

    ``options`` are options the name implies (where a local model's files are), given to the factory over the
    caller's; the backbone records them with its other options."""

    name: str
    factory: type[Backbone]
    summary: str = ""
    plugin: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

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
        return self.factory(self.name, **{**options, **self.options})


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


@dataclass(frozen=True)
class BrokenName:
    """A name that cannot be used, and why: its registration was refused, its plugin's hook failed, or two plugins
    registered it (``duplicate``). Asking for it raises :meth:`error`."""

    kind: str
    name: str
    plugins: tuple[str, ...]
    reason: str
    modality: str | None = None
    duplicate: bool = False

    def error(self) -> TlkitError:
        return DuplicateNameError(self.reason) if self.duplicate else PluginError(self.reason)


@dataclass
class Registry:
    """What the plugins registered, by name; ``broken`` holds, per kind (``backbone``, ``head``, ``reader``), the
    names that cannot be used and why."""

    backbones: dict[str, BackboneEntry] = field(default_factory=dict)
    heads: dict[str, HeadEntry] = field(default_factory=dict)
    readers: dict[str, ReaderEntry] = field(default_factory=dict)
    broken: dict[str, dict[str, BrokenName]] = field(default_factory=lambda: {"backbone": {}, "head": {}, "reader": {}})


#: The registry, and the plugin manager generation it was built from (it is rebuilt when plugins change).
_registry: tuple[int, Registry] | None = None

#: One plugin's registrations in one hook call: an entry, or the reason it was refused.
Claims = dict[str, Any]


def _collector(kind: str, claims: Claims, plugin: str, make: Callable[..., Any]) -> Callable[..., None]:
    """The ``register`` callback one plugin receives (it implements RegisterBackbone, RegisterHead, RegisterReader).

    A registration it refuses marks that name (and the plugin) broken and returns, so the plugin's other
    registrations still count."""

    def refuse(name: str, reason: str, exc: BaseException | None = None) -> None:
        claims[name] = reason
        record_failure(plugin, reason, exc)

    def register(name: str, obj: Any, **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            record_failure(plugin, f"plugin {plugin!r} registered a {kind} without a name")
            return
        if "modality" in kwargs:
            refuse(
                name,
                f"plugin {plugin!r} passed modality= when registering {kind} {name!r}; drop it: the modality is "
                f"the class attribute modality",
            )
            return
        if name in claims:
            refuse(name, f"plugin {plugin!r} registered {kind} {name!r} twice")
            return
        try:
            claims[name] = make(name, obj, plugin=plugin, **kwargs)
        except TypeError as exc:
            refuse(name, f"plugin {plugin!r} registered {kind} {name!r} with bad arguments: {exc}", exc)
        except PluginError as exc:
            refuse(name, str(exc), exc)
        except Exception as exc:
            refuse(name, f"plugin {plugin!r} registered {kind} {name!r}, which failed: {one_line(exc)}", exc)

    return register


def _modality(entry: Any) -> str | None:
    return getattr(entry, "modality", None) if not isinstance(entry, str) else None


def _collect(hook_name: str, kind: str, table: dict[str, Any], broken: dict[str, BrokenName], make: Any) -> None:
    """Call each plugin's registration hook on its own and sort what it registered into ``table`` and ``broken``."""
    claimed: dict[str, list[tuple[str, Any, str | None]]] = {}
    for impl in hookimpls(hook_name):
        plugin = impl.plugin_name
        claims: Claims = {}
        ok, reason = call_impl(impl, hook_name, register=_collector(kind, claims, plugin, make))
        for name, claim in claims.items():
            modality = _modality(claim)
            if not ok:  # what a hook registered before it raised is not trusted
                claim = f"{kind} {name!r} is unavailable: plugin {describe(plugin)}: {reason}"
            claimed.setdefault(name, []).append((plugin, claim, modality))
    for name, claims_of in claimed.items():
        plugins = tuple(p for p, _, _ in claims_of)
        modality = next((m for _, _, m in claims_of if m), None)
        if len(claims_of) > 1:
            message = clash_message(kind, name, plugins)
            for plugin in plugins:
                record_failure(plugin, message, status="conflict")
            broken[name] = BrokenName(kind, name, plugins, message, modality, duplicate=True)
        elif isinstance(claims_of[0][1], str):
            broken[name] = BrokenName(kind, name, plugins, claims_of[0][1], modality)
        else:
            table[name] = claims_of[0][1]


def get_registry() -> Registry:
    """The registry, built on first use from every loaded plugin (and again after plugins change)."""
    global _registry
    current = generation()
    if _registry is None or _registry[0] != current:
        get_plugin_manager()
        clear_problems()
        reg = Registry()
        _collect("tlkit_register_backbones", "backbone", reg.backbones, reg.broken["backbone"], BackboneEntry)
        _collect("tlkit_register_heads", "head", reg.heads, reg.broken["head"], HeadEntry)
        _collect("tlkit_register_readers", "reader", reg.readers, reg.broken["reader"], ReaderEntry)
        _registry = (current, reg)
    return _registry[1]


def _broken_note() -> str:
    """Which plugins are broken, for an unknown-name error (one of them may be what should have offered it)."""
    broken = [f"{i.name!r} ({i.error})" for i in list_plugins() if i.status == "broken"]
    return f"; broken plugins (see `tlkit plugins`): {', '.join(broken)}" if broken else ""


def _resolve_open(name: str, options: Mapping[str, Any]) -> tuple[BackboneEntry | None, list[str]]:
    """Ask the resolvers (first answer wins), each on its own: the entry, and what failed on the way.

    A resolver's :class:`TlkitError` (an unknown model of its family, a missing library) is its answer for the name
    and propagates; any other exception, and a :class:`PluginError`, is that plugin's failure."""
    failures: list[str] = []
    for impl in hookimpls("tlkit_resolve_backbone", call_order=True):
        plugin = impl.plugin_name
        error: BaseException | None = None
        try:
            given = {"name": name, "options": options}
            entry = impl.function(**{k: given[k] for k in impl.argnames if k in given})
        except PluginError as exc:
            entry, error = None, exc
        except TlkitError:
            raise
        except Exception as exc:
            entry, error = None, exc
        if isinstance(entry, BackboneEntry):
            return entry, failures
        if entry is None and error is None:
            continue
        what = one_line(error) if error is not None else f"returned {type(entry).__name__}, not a BackboneEntry"
        reason = f"tlkit_resolve_backbone failed: {what}"
        record_failure(plugin, reason, error)
        failures.append(f"plugin {describe(plugin)}: {reason}")
    return None, failures


def resolve_backbone(name: str, options: Mapping[str, Any] | None = None) -> BackboneEntry:
    """Find the entry for a backbone name: fixed registrations first, then the resolver hook (which also sees the
    ``options`` the backbone is being made with)."""
    reg = get_registry()
    if name in reg.backbones:
        return reg.backbones[name]
    if name in reg.broken["backbone"]:
        raise reg.broken["backbone"][name].error()
    entry, failures = _resolve_open(name, dict(options or {}))
    if entry is not None:
        return entry
    if failures:
        raise PluginError(f"backbone {name!r} could not be resolved: {'; '.join(failures)}")
    known = list(reg.backbones) + [e.name for e in list_backbones(None)]
    raise UnknownNameError(
        "backbone",
        name,
        known,
        hint="see `tlkit backbones`; timm models are `timm/<arch>`, HF models `hf/<id or dir>`" + _broken_note(),
    )


def list_backbones(pattern: str | None = None, modality: str | None = None) -> list[BackboneEntry]:
    """Registered backbones plus what open-ended plugins list for ``pattern``, sorted by name (usable ones only:
    :func:`broken_names` lists the others)."""
    found: dict[str, BackboneEntry] = {}
    reg = get_registry()
    for e in reg.backbones.values():
        found[e.name] = e
    for plugin, listed in call_each("tlkit_list_backbones", "tlkit_list_backbones", pattern=pattern):
        try:
            entries = list(listed or ())
        except Exception as exc:
            record_failure(plugin, f"tlkit_list_backbones failed: {one_line(exc)}", exc)
            continue
        bad = [e for e in entries if not isinstance(e, BackboneEntry)]
        if bad:
            record_failure(plugin, f"tlkit_list_backbones returned {type(bad[0]).__name__}, not a BackboneEntry")
        for e in entries:
            if isinstance(e, BackboneEntry) and e.name not in reg.broken["backbone"]:
                found.setdefault(e.name, e)
    out = [e for e in found.values() if pattern is None or fnmatch.fnmatch(e.name, pattern)]
    if modality:
        out = [e for e in out if e.modality == modality]
    return sorted(out, key=lambda e: e.name)


def broken_names(kind: str, pattern: str | None = None, modality: str | None = None) -> list[BrokenName]:
    """The names of ``kind`` (``backbone``, ``head``, ``reader``) that cannot be used, sorted, filtered like
    :func:`list_backbones`."""
    out = [b for b in get_registry().broken[kind].values() if pattern is None or fnmatch.fnmatch(b.name, pattern)]
    if modality:
        out = [b for b in out if b.modality in (None, modality)]
    return sorted(out, key=lambda b: b.name)


def get_head_entry(name: str) -> HeadEntry:
    reg = get_registry()
    if name in reg.broken["head"]:
        raise reg.broken["head"][name].error()
    if name not in reg.heads:
        raise UnknownNameError("head", name, reg.heads, hint="see `tlkit heads`" + _broken_note())
    return reg.heads[name]


def get_reader_entry(name: str) -> ReaderEntry:
    reg = get_registry()
    if name in reg.broken["reader"]:
        raise reg.broken["reader"][name].error()
    if name not in reg.readers:
        raise UnknownNameError("reader", name, reg.readers, hint=_broken_note().removeprefix("; "))
    return reg.readers[name]
