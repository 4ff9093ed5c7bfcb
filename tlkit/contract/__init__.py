"""The backbone contract: what every backbone plugin implements, its spec, blocks, fingerprints and weight files.

Plugin authors import these names from :mod:`tlkit.plugin`, the one public surface for plugins.
"""

from tlkit.contract.augment import AUGMENT_KEYS, AUGMENT_NONE, parse_augment
from tlkit.contract.backbone import (
    WEIGHTS_NONE,
    WEIGHTS_PRETRAINED,
    Backbone,
    BackboneSpec,
    Block,
    blocks_from_children,
    blocks_from_prefixes,
    build_shapes_only,
    hash_path,
)
from tlkit.contract.image import ImageBackbone
from tlkit.contract.weights import WEIGHT_SUFFIXES, load_state_dict_file

__all__ = [
    "AUGMENT_KEYS",
    "AUGMENT_NONE",
    "WEIGHTS_NONE",
    "WEIGHTS_PRETRAINED",
    "WEIGHT_SUFFIXES",
    "Backbone",
    "BackboneSpec",
    "Block",
    "ImageBackbone",
    "blocks_from_children",
    "blocks_from_prefixes",
    "build_shapes_only",
    "hash_path",
    "load_state_dict_file",
    "parse_augment",
]
