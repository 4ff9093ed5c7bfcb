"""tlkit built-in plugin: torchvision classification models as ``torchvision/<model>``.

Imported by ``tlkit --help``: no torch or torchvision at module level; the hooks import them on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlkit.host.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlkit.host.registry import BackboneEntry


@hookimpl
def tlkit_resolve_backbone(name: str) -> BackboneEntry | None:
    """Any ``torchvision/<model>`` classification model; an unknown model raises with the closest names."""
    from tlkit_torchvision.naming import PREFIX, check_name, entry

    if not name.startswith(PREFIX):
        return None
    check_name(name)
    return entry(name)


@hookimpl
def tlkit_list_backbones(pattern: str | None) -> list[BackboneEntry]:
    """``torchvision.models.list_models()`` filtered by ``pattern``; a short list without one."""
    from tlkit_torchvision.naming import entry, list_names

    return [entry(n) for n in list_names(pattern)]
