"""The plugin host: one pluggy PluginManager, fed by the ``tlkit`` entry-point group.

Built-in plugins (the distribution ``tlkit`` itself) and third-party plugins are discovered the same way. The
``TLKIT_PLUGINS`` environment variable narrows what loads: unset loads everything; a comma-separated list loads
the built-ins plus the named plugins; an empty value loads the built-ins only.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
import warnings
from dataclasses import dataclass, field

import pluggy

from tlkit.errors import PluginError
from tlkit.host import hookspecs

ENTRY_POINT_GROUP = "tlkit"
ENV_VAR = "TLKIT_PLUGINS"
BUILTIN_DIST = "tlkit"


@dataclass
class PluginInfo:
    """What ``tlkit plugins`` shows for one plugin."""

    name: str
    dist: str
    version: str
    builtin: bool
    status: str = "ok"  # "ok" | "broken" | "disabled"
    error: str = ""
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
        }


class PluginWarning(UserWarning):
    """A plugin could not be loaded; tlkit carries on without it."""


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
#: Counts changes to the set of plugins, so that what was collected from them (the registry) knows to rebuild.
_generation = 0


def _wanted() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _entry_points() -> list[md.EntryPoint]:
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    # One entry per name: a stale second install of the same distribution must not register twice.
    seen: dict[str, md.EntryPoint] = {}
    for ep in eps:
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda e: (e.dist.name != BUILTIN_DIST if e.dist else True, e.name))


def _load(pm: pluggy.PluginManager) -> None:
    wanted = _wanted()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        builtin = dist == BUILTIN_DIST
        info = PluginInfo(name=ep.name, dist=dist, version=version, builtin=builtin)
        _infos[ep.name] = info
        if not builtin and wanted is not None and ep.name not in wanted and dist not in wanted:
            info.status = "disabled"
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not break tlkit
            info.status = "broken"
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"tlkit plugin {ep.name!r} ({dist}) failed to load and is skipped: {info.error}",
                PluginWarning,
                stacklevel=2,
            )
            if os.environ.get("TLKIT_DEBUG"):
                traceback.print_exc()
            continue
        info.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("tlkit")
        pm.add_hookspecs(hookspecs)
        _load(pm)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"a plugin implements an unknown hook: {exc}") from exc
        _pm = pm
    return _pm


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin object (tests, notebooks). Undo with :func:`unregister_plugin`."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        raise PluginError(f"plugin {name!r} implements an unknown hook: {exc}") from exc
    _infos[name] = PluginInfo(
        name=name,
        dist="(in process)",
        version="",
        builtin=False,
        hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or []),
    )
    _changed()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _infos.pop(name, None)
    _changed()


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin, loaded, broken or disabled."""
    get_plugin_manager()
    return list(_infos.values())


def generation() -> int:
    """A number that changes whenever plugins are registered, unregistered or rediscovered."""
    return _generation


def _changed() -> None:
    global _generation
    _generation += 1


def reset() -> None:
    """Forget the plugin manager so the next call rediscovers entry points (tests)."""
    global _pm
    _pm = None
    _infos.clear()
    _changed()
