"""``timm/<architecture>[.<pretrained tag>]`` names: checking them against timm's registry, and listing them.

Only functions: importing this module imports neither torch nor timm.
"""

from __future__ import annotations

from tlkit.plugin import UnknownNameError

PREFIX = "timm/"

#: What ``tlkit backbones`` shows without a filter: a few well-known models per family, not timm's 1,300+.
CURATED = (
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "convnext_tiny",
    "regnety_016",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "eva02_small_patch14_224",
)


def split_name(name: str) -> tuple[str, str]:
    """``timm/resnet50.a1_in1k`` -> ``("resnet50", "a1_in1k")``; the tag is ``""`` when absent."""
    model = name.removeprefix(PREFIX)
    arch, _, tag = model.partition(".")
    return arch, tag


def check_name(name: str) -> None:
    """Raise :class:`UnknownNameError` with timm's closest names when the architecture or tag does not exist."""
    import timm

    arch, tag = split_name(name)
    if not arch or not timm.is_model(arch):
        raise UnknownNameError(
            "timm architecture",
            name,
            [PREFIX + n for n in timm.list_models()],
            hint="see `tlkit backbones --filter 'timm/<glob>'`",
        )
    if tag:
        tags = [PREFIX + n for n in timm.list_pretrained(f"{arch}.*")]
        if PREFIX + f"{arch}.{tag}" not in tags:
            raise UnknownNameError("timm pretrained tag", name, tags, hint=f"tags of {arch}; or drop the tag")


def summary(name: str) -> str:
    """One line for listings: the pretrained tag the name loads, and its licence (no model is built)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name.removeprefix(PREFIX), allow_unregistered=False)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return "timm architecture (no pretrained weights; use weights none or a local file)"
    return f"timm, pretrained: {cfg.tag or 'default'} ({cfg.license or 'licence not stated'})"


def catalogue(pattern: str) -> list[str]:
    """The names a listing filters by ``pattern``: timm's architectures, or its pretrained tags when the pattern
    names a tag (has a dot after the prefix)."""
    import timm

    names: list[str] = timm.list_pretrained() if "." in pattern.removeprefix(PREFIX) else timm.list_models()
    return names
