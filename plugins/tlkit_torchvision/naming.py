"""``torchvision/<model>`` names and weight names (``IMAGENET1K_V2``, ``DEFAULT``), checked against torchvision."""

from __future__ import annotations

from typing import Any

from tlkit.plugin import UnknownNameError

PREFIX = "torchvision/"

#: What ``tlkit backbones`` shows without a filter.
CURATED = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny", "vit_b_16", "vgg16")


def classification_models() -> list[str]:
    """torchvision's image-classification models (not detection, segmentation, video or quantized ones)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def check_name(name: str) -> str:
    """The model name of ``torchvision/<model>``; an unknown model raises with the closest names."""
    model = name.removeprefix(PREFIX)
    known = classification_models()
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
