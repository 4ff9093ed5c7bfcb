"""tlkit built-in plugin: any timm image model as ``timm/<architecture>[.<pretrained tag>]``.

This module is imported by ``tlkit --help``, so it imports neither torch nor timm; the hooks import them on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlkit.host.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlkit.host.registry import BackboneEntry


@hookimpl
def tlkit_resolve_backbone(name: str) -> BackboneEntry | None:
    """Any ``timm/...`` name; an unknown architecture or tag raises with timm's closest names."""
    from tlkit_timm.naming import PREFIX, check_name, entry

    if not name.startswith(PREFIX):
        return None
    check_name(name)
    return entry(name)


@hookimpl
def tlkit_list_backbones(pattern: str | None) -> list[BackboneEntry]:
    """timm's own listing filtered by ``pattern``; a short curated list without one."""
    from tlkit_timm.naming import entry, list_names

    return [entry(n) for n in list_names(pattern)]
