"""``torchvision/<model>`` names and weight names (``IMAGENET1K_V2``, ``DEFAULT``), checked against torchvision.

Checking and listing model names reads a small index of torchvision's classification models, built once per
installed torchvision (:func:`tlkit.plugin.library_index`), so it imports neither torch nor torchvision.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from tlkit.plugin import UnknownNameError, library_index

PREFIX = "torchvision/"

#: What ``tlkit backbones`` shows without a filter.
CURATED = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny", "vit_b_16", "vgg16")


def live_models() -> list[str]:
    """torchvision's image-classification models (not detection, segmentation, video or quantized ones), asked of
    torchvision itself (imports it)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


@functools.cache
def _indexed() -> tuple[str, ...]:
    return tuple(library_index("torchvision", live_models, schema=1))


def classification_models() -> list[str]:
    """The classification model names of the installed torchvision, from the index (no import); while torchvision
    is imported anyway, from torchvision itself."""
    return live_models() if "torchvision.models" in sys.modules else list(_indexed())


def check_name(name: str) -> str:
    """The model name of ``torchvision/<model>``; an unknown model raises with the closest names."""
    model = name.removeprefix(PREFIX)
    known = _indexed()
    if model not in known and "torchvision.models" in sys.modules:
        known = tuple(live_models())
    if model not in known:
        raise UnknownNameError(
            "torchvision model",
            name,
            [PREFIX + m for m in known],
            hint="see `tlkit backbones --filter 'torchvision/*'`",
        )
    return model


def weights_enum(model: str) -> Any:
    """The model's weights enum class (``ResNet50_Weights``)."""
    from torchvision.models import get_model_weights

    return get_model_weights(model)


def find_weights(model: str, weights: str) -> Any:
    """The enum member ``weights`` names (``pretrained`` = ``DEFAULT``; ``ResNet50_Weights.IMAGENET1K_V2`` works
    too), or ``None`` when it is ``none`` or a path."""
    if weights == "none":
        return None
    enum = weights_enum(model)
    member = "DEFAULT" if weights == "pretrained" else weights.removeprefix(enum.__name__ + ".")
    if member in enum.__members__:
        return enum[member]
    return None


def looks_like_enum(weights: str) -> bool:
    """``IMAGENET1K_V3``-style text: upper case, digits and underscores, no path separators or suffix."""
    core = weights.rsplit(".", 1)[-1]
    return bool(core) and core.replace("_", "").isalnum() and core.upper() == core and "/" not in weights


def unknown_weights(model: str, weights: str) -> UnknownNameError:
    enum = weights_enum(model)
    return UnknownNameError(
        f"weights for torchvision/{model}",
        weights,
        list(enum.__members__),
        hint="or pretrained, none, or a local weights file",
    )
