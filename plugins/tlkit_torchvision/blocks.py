"""Blocks of torchvision models, per family, with a generic fallback over the trunk's children.

- ResNet, ResNeXt, Wide ResNet: ``stem`` (``conv1``, ``bn1``), ``layer1`` ... ``layer4``;
- ConvNeXt and Swin (``features`` = stem, stage, downsample, stage, ...): ``stem``, ``stages.0`` ... ``stages.3``
  (each with the downsampling layer before it), ``head_norm``;
- ViT: ``stem`` (``conv_proj``, ``class_token``, ``encoder.pos_embedding``), ``encoder.layers.0`` ...,
  ``head_norm`` (``encoder.ln``), ``pre_logits`` (when the weights have a representation layer);
- everything else (EfficientNet, MobileNet, RegNet, VGG, DenseNet, Inception, ...): one block per top-level child,
  with the trunk split into its children: ``features.0``, ``features.1``, ...
  (:func:`tlkit.plugin.blocks_from_children`).

Each layout also says which module's output is each block's output, for per-block embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tlkit.plugin import Block, blocks_from_children, blocks_from_prefixes

if TYPE_CHECKING:
    from torch import nn

#: Blocks after the trunk; their outputs are the embedding's own path, not per-block features.
TRAILING = ("head_norm", "pre_logits", "classifier", "norm", "fc")


@dataclass
class Layout:
    blocks: list[Block]
    #: block name -> the module whose output is that block's output (for blocks that have one)
    outputs: dict[str, str] = field(default_factory=dict)
    #: how feature maps are laid out: ``NCHW``, ``NHWC`` (Swin) or ``NLC`` tokens with a class token first (ViT)
    layout: str = "NCHW"


def family(model_name: str) -> str:
    if model_name.startswith(("resnet", "resnext", "wide_resnet")):
        return "resnet"
    if model_name.startswith("convnext"):
        return "convnext"
    if model_name.startswith("swin"):
        return "swin"
    if model_name.startswith("vit_"):
        return "vit"
    return "generic"


def torchvision_layout(model_name: str, module: nn.Module) -> Layout:
    kind = family(model_name)
    if kind == "resnet":
        groups = [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]
        blocks = blocks_from_prefixes(module, groups, rest="layer4")
        return Layout(blocks, {f"layer{i}": f"layer{i}" for i in range(1, 5)})
    if kind in ("convnext", "swin"):
        return _staged(module, "NHWC" if kind == "swin" else "NCHW")
    if kind == "vit":
        return _vit(module)
    blocks = blocks_from_children(module)
    outputs = {b.name: b.name for b in blocks if b.name not in TRAILING and _is_module(module, b.name)}
    return Layout(blocks, outputs)


def _staged(module: nn.Module, layout: str) -> Layout:
    """``features`` = [stem, stage, downsample, stage, downsample, ...]; a downsample joins the stage after it."""
    n = len(module.features)
    groups = [("stem", ["features.0"])]
    outputs = {"stem": "features.0"}
    for i, start in enumerate(range(1, n, 2)):
        members = [f"features.{start}"] + ([f"features.{start - 1}"] if start > 1 else [])
        groups.append((f"stages.{i}", members))
        outputs[f"stages.{i}"] = f"features.{start}"
    # ConvNeXt's final norm is classifier.0; Swin's is ``norm``.
    groups.append(("head_norm", ["norm", "classifier"]))
    return Layout(blocks_from_prefixes(module, groups, rest="head_norm"), outputs, layout)


def _vit(module: nn.Module) -> Layout:
    layers = [name for name, _ in module.encoder.layers.named_children()]
    groups = [("stem", ["conv_proj", "class_token", "encoder.pos_embedding"])]
    outputs = {}
    for i, child in enumerate(layers):
        groups.append((f"encoder.layers.{i}", [f"encoder.layers.{child}"]))
        outputs[f"encoder.layers.{i}"] = f"encoder.layers.{child}"
    groups += [("head_norm", ["encoder.ln"]), ("pre_logits", ["heads"])]
    return Layout(blocks_from_prefixes(module, groups, rest="stem"), outputs, "NLC")


def _is_module(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
