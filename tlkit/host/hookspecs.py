"""The hooks a tlkit plugin can implement, and the registration callbacks they receive.

Registration hooks receive a ``register`` callback, so a plugin never touches a registry directly. The callbacks are
typed as :class:`typing.Protocol` classes (:class:`RegisterBackbone`, :class:`RegisterHead`, :class:`RegisterReader`),
so a type checker verifies a plugin's calls. An implementation may accept fewer arguments than its spec (pluggy's
rule), which lets these specs grow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Reader
    from tlkit.host.registry import BackboneEntry

hookspec = pluggy.HookspecMarker("tlkit")
hookimpl = pluggy.HookimplMarker("tlkit")


class RegisterBackbone(Protocol):
    """``register(name, factory, *, summary="")``: offer a backbone under a fixed name.

    ``factory`` is a :class:`tlkit.plugin.Backbone` subclass; ``factory(name, **options)`` builds it without loading
    weights. Its ``modality`` class attribute is the backbone's modality, so registration does not repeat it.
    """

    def __call__(self, name: str, factory: type[Backbone], *, summary: str = "") -> None: ...


class RegisterHead(Protocol):
    """``register(name, factory, *, kind="torch", summary="")``: offer a head type.

    For ``kind="torch"``, ``factory(in_dim, n_classes, **params)`` returns an ``nn.Module`` mapping ``[N, in_dim]`` to
    logits ``[N, n_classes]``. For ``kind="estimator"``, ``factory(**params)`` returns a scikit-learn classifier.
    """

    def __call__(self, name: str, factory: Callable[..., Any], *, kind: str = "torch", summary: str = "") -> None: ...


class RegisterReader(Protocol):
    """``register(name, reader, *, summary="")``: offer a data reader (a :class:`tlkit.plugin.Reader` instance, whose
    ``modality`` attribute says which backbones it feeds)."""

    def __call__(self, name: str, reader: Reader, *, summary: str = "") -> None: ...


@hookspec
def tlkit_register_backbones(register: RegisterBackbone) -> None:
    """Register backbones with fixed names.

    :param register: see :class:`RegisterBackbone`.
    """


@hookspec(firstresult=True)
def tlkit_resolve_backbone(name: str, options: Mapping[str, Any]) -> BackboneEntry | None:
    """Resolve an open-ended backbone name (any timm architecture, any HF id or local directory).

    :param name: the full name the user typed, such as ``timm/convnext_tiny`` or ``hf/./my-model``.
    :param options: the options the backbone is being made with (``weights`` and the plugin's own), read-only; an
        implementation that does not need them leaves the argument out.
    :return: a :class:`tlkit.plugin.BackboneEntry`, or ``None`` when the name is not this plugin's. The first
        non-None answer wins. The entry may rename the backbone (a local directory ``hf/./models/mini`` becomes
        the portable ``hf/mini``) and carry the options that name implies (``options={"local_dir": ...}``), which
        the backbone records, so that it can be rebuilt from its record.
    """


@hookspec
def tlkit_list_backbones(pattern: str | None) -> Iterable[BackboneEntry] | None:
    """List open-ended backbones this plugin can resolve, for ``tlkit backbones``.

    :param pattern: a glob on the full name (``timm/convnext*``), or ``None``. With ``None`` a plugin should return
        a short representative list rather than thousands of names.
    :return: entries (their factories are not called by listing), or ``None``.
    """


@hookspec
def tlkit_register_heads(register: RegisterHead) -> None:
    """Register head types.

    :param register: see :class:`RegisterHead`.
    """


@hookspec
def tlkit_register_readers(register: RegisterReader) -> None:
    """Register data readers.

    :param register: see :class:`RegisterReader`.
    """


@hookspec
def tlkit_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tlkit`` CLI.

    :param cli: the top-level Click group; call ``cli.add_command(...)`` or decorate with ``@cli.command()``.
        Import heavy libraries inside the command, not at module level, so ``tlkit --help`` stays fast.
    """


HOOK_NAMES: tuple[str, ...] = tuple(n for n in dir() if n.startswith("tlkit_"))
