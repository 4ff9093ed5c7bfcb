"""tlkit built-in plugin: any timm image model as ``timm/<architecture>[.<pretrained tag>]``.

This module is imported by ``tlkit --help``, so it imports neither torch nor timm; they load when a name is checked,
listed or built. :class:`TimmBackbone` is public: subclass it to ship a timm architecture with other weights.
"""

from __future__ import annotations

from tlkit.plugin import BackboneFamily
from tlkit_timm.backbone import TimmBackbone, strip_classifier
from tlkit_timm.naming import CURATED, PREFIX, catalogue, check_name, summary

#: Every timm architecture and pretrained tag; its methods are this plugin's two hooks.
FAMILY = BackboneFamily(
    PREFIX, TimmBackbone, plugin="timm", check=check_name, catalogue=catalogue, curated=CURATED, summary=summary
)
tlkit_resolve_backbone = FAMILY.tlkit_resolve_backbone
tlkit_list_backbones = FAMILY.tlkit_list_backbones

__all__ = ["FAMILY", "TimmBackbone", "strip_classifier"]
