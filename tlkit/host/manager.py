"""The plugin host: one pluggy PluginManager, fed by the ``tlkit`` entry-point group.

Built-in plugins (the distribution ``tlkit`` itself) and third-party plugins are discovered the same way. The
``TLKIT_PLUGINS`` environment variable narrows what loads: unset loads everything; a comma-separated list loads
the built-ins plus the named plugins; an empty value loads the built-ins only.

A plugin's failure stays with that plugin. Its module is checked before it is registered (hook names, hook
arguments), and tlkit calls each plugin's hook implementation on its own (:func:`call_impl`), so an exception in one
plugin's hook marks that plugin ``broken`` (with a one-line reason in ``tlkit plugins`` and one warning) while the
others carry on. ``TLKIT_DEBUG=1`` prints the traceback of each failure.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from tlkit.errors import PluginError
from tlkit.host import hookspecs

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "tlkit"
ENV_VAR = "TLKIT_PLUGINS"
DEBUG_VAR = "TLKIT_DEBUG"
BUILTIN_DIST = "tlkit"

#: Statuses, worst first: a plugin shows the worst of its problems.
STATUSES = ("broken", "conflict", "disabled", "ok")


@dataclass
class PluginInfo:
    """What ``tlkit plugins`` shows for one plugin.

    ``status`` is ``ok``, ``broken`` (it failed to load, or one of its hooks failed or registered something
    invalid: ``errors`` says what), ``conflict`` (another plugin registered one of its names, so neither is used) or
    ``disabled`` (left out by ``TLKIT_PLUGINS``). ``error`` is ``errors`` on one line.
    """

    name: str
    dist: str
    version: str
    builtin: bool
    status: str = "ok"
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: The plugin's module name (``tlkit_foo``), to tell which plugin a traceback passes through.
    module: str = ""
    #: Problems found when it loaded; the others are forgotten when what plugins registered is collected again.
    load_errors: int = 0

    def add_problem(self, reason: str, status: str = "broken") -> bool:
        """Record a problem; ``False`` when it was already recorded."""
        if reason in self.errors:
            return False
        self.errors.append(reason)
        self.error = "; ".join(self.errors)
        if STATUSES.index(status) < STATUSES.index(self.status):
            self.status = status
        return True

    def clear_problems(self) -> None:
        """Forget the problems of earlier hook calls, keeping those found when the plugin loaded."""
        del self.errors[self.load_errors :]
        self.error = "; ".join(self.errors)
        if self.status in ("broken", "conflict") and not self.errors:
            self.status = "ok"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "errors": list(self.errors),
            "hooks": self.hooks,
        }


class PluginWarning(UserWarning):
    """A plugin failed (to load, or in a hook); tlkit carries on without it."""


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
#: Counts changes to the set of plugins, so that what was collected from them (the registry) knows to rebuild.
_generation = 0


def debug() -> bool:
    """Whether ``TLKIT_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def _required_args(function: Callable[..., Any]) -> list[str]:
    """The arguments pluggy passes to a hook implementation: those without a default (``self`` excluded)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def hook_problems(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """What is wrong with a plugin's hooks, one line each: an unknown (misspelled) hook name, an implementation
    whose arguments the hook does not offer, or a hook function that lacks the ``@hookimpl`` marker."""
    problems = []
    for attr in sorted(dir(plugin)):
        if not attr.startswith("tlkit_"):
            continue
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
            function = getattr(plugin, attr)
        except Exception:  # an attribute that raises is not a hook
            continue
        if opts is None:
            if attr in hookspecs.HOOK_NAMES and inspect.isroutine(function):
                problems.append(f"{attr} lacks the @hookimpl marker (tlkit.plugin.hookimpl), so it is never called")
            continue
        if attr not in hookspecs.HOOK_NAMES:
            if not opts.get("optionalhook"):
                close = difflib.get_close_matches(attr, hookspecs.HOOK_NAMES, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; hooks: {', '.join(hookspecs.HOOK_NAMES)}"
                problems.append(f"implements unknown hook {attr}{hint}")
            continue
        offered = _required_args(getattr(hookspecs, attr))
        extra = [a for a in _required_args(function) if a not in offered]
        if extra:
            problems.append(
                f"hook {attr} takes {', '.join(extra)}, which the hook does not pass; "
                f"its arguments are: {', '.join(offered) or 'none'}"
            )
    return problems


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> list[str]:
    """Register a plugin whose hooks are sound; otherwise leave it out and return what is wrong."""
    problems = hook_problems(pm, plugin)
    if problems:
        return problems
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:  # what hook_problems did not foresee
        return [" ".join(str(exc).split())]
    return []


def _warn(plugin: str, reason: str, exc: BaseException | None) -> None:
    message = reason if reason.startswith(f"plugin {plugin!r}") else f"tlkit plugin {describe(plugin)}: {reason}"
    warnings.warn(message, PluginWarning, stacklevel=3)
    if exc is not None and debug():
        traceback.print_exception(exc, file=sys.stderr)


def _load(pm: pluggy.PluginManager) -> None:
    wanted = _wanted()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        builtin = dist == BUILTIN_DIST
        info = PluginInfo(name=ep.name, dist=dist, version=version, builtin=builtin, module=ep.module)
        _infos[ep.name] = info
        if not builtin and wanted is not None and ep.name not in wanted and dist not in wanted:
            info.status = "disabled"
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break tlkit
            reason = f"failed to load and is skipped: {one_line(exc)}"
            info.add_problem(reason)
            info.load_errors = len(info.errors)
            _warn(ep.name, reason, exc)
            continue
        problems = _register(pm, module, ep.name)
        if problems:
            for problem in problems:
                info.add_problem(problem)
            info.load_errors = len(info.errors)
            _warn(ep.name, "is skipped: " + "; ".join(problems), None)
            continue
        info.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("tlkit")
        pm.add_hookspecs(hookspecs)
        _load(pm)
        _pm = pm
    return _pm


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin object (tests, notebooks). Undo with :func:`unregister_plugin`.

    A plugin with a misspelled or mistyped hook is refused with a :class:`PluginError`.
    """
    pm = get_plugin_manager()
    problems = _register(pm, plugin, name)
    if problems:
        raise PluginError(f"plugin {name!r} " + "; ".join(problems))
    _infos[name] = PluginInfo(
        name=name,
        dist="(in process)",
        version="",
        builtin=False,
        hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        module=getattr(plugin, "__name__", "") if isinstance(plugin, types.ModuleType) else "",
    )
    _changed()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _infos.pop(name, None)
    _changed()


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin, loaded, broken or disabled, with the problems its hooks have had so far.

    :func:`tlkit.list_plugins` also runs the registration and listing hooks first, so that it shows their failures.
    """
    get_plugin_manager()
    return list(_infos.values())


def plugin_info(name: str) -> PluginInfo | None:
    return _infos.get(name)


def describe(plugin: str) -> str:
    """``'name' (distribution)``, for messages."""
    info = _infos.get(plugin)
    return f"{plugin!r} ({info.dist})" if info is not None and info.dist != "(in process)" else repr(plugin)


# -- calling hooks one plugin at a time -----------------------------------------------------------------------
def hookimpls(hook_name: str, *, call_order: bool = False) -> list[pluggy.HookImpl]:
    """The implementations of a hook, in registration order (built-ins first), or in pluggy's call order."""
    impls = list(getattr(get_plugin_manager().hook, hook_name).get_hookimpls())
    return impls[::-1] if call_order else impls


def record_failure(plugin: str, reason: str, exc: BaseException | None = None, *, status: str = "broken") -> None:
    """Mark a plugin ``broken`` (or ``conflict``) with a one-line reason; warn once; the traceback on TLKIT_DEBUG."""
    info = _infos.get(plugin)
    if info is not None and not info.add_problem(reason, status):
        return
    if status == "broken":
        _warn(plugin, reason, exc)
    else:  # the same message for every plugin in the clash: Python shows it once
        warnings.warn(reason, PluginWarning, stacklevel=2)


def call_impl(impl: pluggy.HookImpl, what: str, **kwargs: Any) -> tuple[bool, Any]:
    """Call one plugin's implementation of a hook with the arguments it takes; ``(True, result)``, or
    ``(False, reason)`` when it raised (the plugin is then marked broken: ``what`` says what it was doing)."""
    args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
    try:
        return True, impl.function(**args)
    except Exception as exc:
        reason = f"{what} failed: {one_line(exc)}"
        record_failure(impl.plugin_name, reason, exc)
        return False, reason


def call_each(hook_name: str, what: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call every plugin's implementation of a hook, each on its own: ``(plugin, result)`` for those that worked."""
    out = []
    for impl in hookimpls(hook_name):
        ok, result = call_impl(impl, what, **kwargs)
        if ok:
            out.append((impl.plugin_name, result))
    return out


def clear_problems() -> None:
    """Forget the hook failures recorded so far (what plugins registered is being collected again)."""
    for info in _infos.values():
        info.clear_problems()


def register_commands(cli: click.Group) -> None:
    """Let every plugin add its commands, one plugin at a time. A plugin may not replace a command that is already
    there; two plugins adding one command name both lose it (the command says so when run)."""
    import click

    builtin = dict(cli.commands)
    added: dict[str, list[str]] = {}
    for impl in hookimpls("tlkit_register_commands"):
        before = dict(cli.commands)
        if not call_impl(impl, "adding commands", cli=cli)[0]:
            cli.commands.clear()
            cli.commands.update(before)
            continue
        for name, command in list(cli.commands.items()):
            if before.get(name) is command:
                continue
            if name in builtin:
                cli.commands[name] = builtin[name]
                record_failure(impl.plugin_name, f"adding commands failed: it may not replace the command {name!r}")
            else:
                added.setdefault(name, []).append(impl.plugin_name)
    for name, plugins in added.items():
        if len(plugins) > 1:
            message = clash_message("command", name, plugins)
            for plugin in plugins:
                record_failure(plugin, message, status="conflict")

            def refuse(message: str = message) -> None:
                raise PluginError(message)

            cli.commands[name] = click.Command(name, callback=refuse, help=f"Unavailable: {message}")


def clash_message(kind: str, name: str, plugins: Iterable[str]) -> str:
    """Two or more plugins offer one name: neither is used. Say which, and how to choose with TLKIT_PLUGINS."""
    plugins = list(dict.fromkeys(plugins))
    infos = [_infos.get(p) for p in plugins]
    third = [p for p, i in zip(plugins, infos, strict=True) if i is None or not i.builtin]
    both = " and ".join(f"plugin {describe(p)}" for p in plugins)
    head = f"{kind} {name!r} is registered by both {both}, so neither is used"
    if len(third) < len(plugins):  # a built-in is one of them: only leaving the others out helps
        others = ", ".join(repr(p) for p in third)
        return (
            f"{head}; to use the built-in one, leave {others} out of {ENV_VAR} (an empty {ENV_VAR} loads only the "
            f"built-ins) or uninstall it"
        )
    loaded = [i.name for i in _infos.values() if not i.builtin and i.status != "disabled" and i.name not in third]
    example = ",".join([*loaded, third[0]])
    return (
        f"{head}; choose one with {ENV_VAR} (the third-party plugins to load, e.g. {ENV_VAR}={example}) "
        f"or uninstall the other"
    )


def plugin_of(exc: BaseException) -> str | None:
    """The plugin whose code raised ``exc``: the deepest frame of its traceback in a loaded plugin's module."""
    by_module = {i.module: i.name for i in _infos.values() if i.module and i.status != "disabled"}
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        for prefix, plugin in by_module.items():
            if module == prefix or module.startswith(prefix + "."):
                found = plugin
    return found


def explain_import_error(exc: ImportError) -> PluginError | None:
    """A one-line error for a dependency a plugin imports (when it builds a backbone, say) that is not installed;
    ``None`` when no plugin's code raised it."""
    plugin = plugin_of(exc)
    if plugin is None:
        return None
    missing = f"the module {exc.name!r}, which is not installed" if exc.name else "a module that does not import"
    return PluginError(
        f"plugin {describe(plugin)} needs {missing} ({one_line(exc)}); install what the plugin's documentation asks for"
    )


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
