"""The hooks a tlkit plugin can implement.

Registration hooks receive a ``register`` callback, so a plugin never touches a registry directly. An
implementation may accept fewer arguments than its spec (pluggy's rule), which lets these specs grow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from tlkit.host.registry import BackboneEntry

hookspec = pluggy.HookspecMarker("tlkit")
hookimpl = pluggy.HookimplMarker("tlkit")


@hookspec
def tlkit_register_backbones(register: Callable[..., None]) -> None:
    """Register backbones with fixed names.

    :param register: ``register(name, factory, *, modality, summary="")``. ``factory(name, **options)`` returns a
        :class:`tlkit.Backbone` without loading weights; ``modality`` is ``"image"``, ``"text"`` or ``"audio"``.
    """


@hookspec(firstresult=True)
def tlkit_resolve_backbone(name: str) -> BackboneEntry | None:
    """Resolve an open-ended backbone name (any timm architecture, any HF id or local directory).

    :param name: the full name the user typed, such as ``timm/convnext_tiny`` or ``hf/./my-model``.
    :return: a :class:`tlkit.host.registry.BackboneEntry`, or ``None`` when the name is not this plugin's. The first
        non-None answer wins.
    """


@hookspec
def tlkit_list_backbones(pattern: str | None) -> Iterable[BackboneEntry] | None:
    """List open-ended backbones this plugin can resolve, for ``tlkit backbones``.

    :param pattern: a glob on the full name (``timm/convnext*``), or ``None``. With ``None`` a plugin should return
        a short representative list rather than thousands of names.
    :return: entries (their factories are not called by listing), or ``None``.
    """


@hookspec
def tlkit_register_heads(register: Callable[..., None]) -> None:
    """Register head types.

    :param register: ``register(name, factory, *, kind="torch", summary="")``. For ``kind="torch"``,
        ``factory(in_dim, n_classes, **params)`` returns an ``nn.Module`` mapping ``[N, in_dim]`` to logits
        ``[N, n_classes]``. For ``kind="estimator"``, ``factory(**params)`` returns a scikit-learn classifier.
    """


@hookspec
def tlkit_register_readers(register: Callable[..., None]) -> None:
    """Register data readers.

    :param register: ``register(name, reader, *, modality, summary="")`` where ``reader`` is a
        :class:`tlkit.data.Reader` instance.
    """


@hookspec
def tlkit_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tlkit`` CLI.

    :param cli: the top-level Click group; call ``cli.add_command(...)`` or decorate with ``@cli.command()``.
        Import heavy libraries inside the command, not at module level, so ``tlkit --help`` stays fast.
    """


HOOK_NAMES: tuple[str, ...] = tuple(n for n in dir() if n.startswith("tlkit_"))
