"""Open-ended backbone families: every model of a zoo under one name prefix (``timm/<arch>``, ``torchvision/<model>``).

A plugin for such a zoo describes it once as a :class:`BackboneFamily`, whose methods implement the two hooks for
open-ended names; the plugin module exposes them under the hook names::

    FAMILY = BackboneFamily("zoo/", ZooBackbone, plugin="zoo", check=check_name, catalogue=zoo_names)
    tlkit_resolve_backbone = FAMILY.tlkit_resolve_backbone
    tlkit_list_backbones = FAMILY.tlkit_list_backbones
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlkit.host.hookspecs import hookimpl
from tlkit.host.registry import BackboneEntry

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named ``prefix + model`` for every model a library knows.

    - ``factory``: the :class:`tlkit.plugin.Backbone` subclass every name builds;
    - ``plugin``: the plugin's name, shown by ``tlkit backbones``;
    - ``check(name)``: raises (an :class:`tlkit.plugin.UnknownNameError` with close matches) when the library does not
      know the full ``name``; called when a name is resolved;
    - ``catalogue(pattern)``: the library's model names (without the prefix) a listing filters by ``pattern``; called
      only when the pattern can match the prefix, so listing another family's names never imports this library;
    - ``curated``: the model names listed without a pattern (a short list, not the whole zoo);
    - ``summary``: a one-line description per full name, or one string for all.
    """

    prefix: str
    factory: type[Backbone]
    plugin: str
    check: Callable[[str], object]
    catalogue: Callable[[str], Iterable[str]]
    curated: Sequence[str] = ()
    summary: str | Callable[[str], str] = ""

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def could_match(self, pattern: str) -> bool:
        """Whether a glob can match a name of this family at all."""
        literal = pattern
        for ch in "*?[":
            literal = literal.split(ch, 1)[0]
        return self.prefix.startswith(literal) or literal.startswith(self.prefix)

    def entry(self, name: str) -> BackboneEntry:
        summary = self.summary(name) if callable(self.summary) else self.summary
        return BackboneEntry(name=name, factory=self.factory, summary=summary, plugin=self.plugin)

    @hookimpl
    def tlkit_resolve_backbone(self, name: str) -> BackboneEntry | None:
        """The entry for ``name`` (checked), or ``None`` when the name is not this family's."""
        if not self.owns(name):
            return None
        self.check(name)
        return self.entry(name)

    @hookimpl
    def tlkit_list_backbones(self, pattern: str | None) -> list[BackboneEntry]:
        """Entries matching the glob ``pattern``; the curated names without one."""
        if pattern is None:
            return [self.entry(self.prefix + n) for n in self.curated]
        if not self.could_match(pattern):
            return []
        names = (self.prefix + n for n in self.catalogue(pattern))
        return [self.entry(n) for n in names if fnmatch.fnmatch(n, pattern)]
