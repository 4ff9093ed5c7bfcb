"""tlkit built-in plugin: torchvision classification models as ``torchvision/<model>``.

Imported by ``tlkit --help``: no torch or torchvision at module level; they load when a name is checked, listed or
built.
"""

from __future__ import annotations

from tlkit.plugin import BackboneFamily
from tlkit_torchvision.backbone import TorchvisionBackbone
from tlkit_torchvision.naming import CURATED, PREFIX, check_name, classification_models

#: Every torchvision classification model; its methods are this plugin's two hooks.
FAMILY = BackboneFamily(
    PREFIX,
    TorchvisionBackbone,
    plugin="torchvision",
    check=check_name,
    catalogue=lambda pattern: classification_models(),
    curated=CURATED,
    summary="torchvision model",
)
tlkit_resolve_backbone = FAMILY.tlkit_resolve_backbone
tlkit_list_backbones = FAMILY.tlkit_list_backbones

__all__ = ["FAMILY", "TorchvisionBackbone"]
