"""``timm/<architecture>[.<pretrained tag>]`` names: checking them against timm's registry, and listing them.

Only functions: importing this module imports neither torch nor timm. Neither does checking, describing or listing a
name: they read timm's registry from a small index (:func:`index`) that is built once per installed timm version
(importing timm that one time) and kept in tlkit's cache folder (:func:`tlkit.plugin.library_index`). A name the
index does not know is asked of timm itself when timm is already imported (a model registered at run time).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from tlkit.plugin import UnknownNameError, library_index

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

#: ``[tag, licence, has weights, download source, hub file name]`` of a pretrained config, as the index stores it;
#: the source is ``hf-hub:<repo id>``, a URL or ``""``.
Described = list[Any] | None


def _describe_cfg(cfg: Any) -> Described:
    if cfg is None:
        return None
    source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "")
    return [cfg.tag or "", cfg.license or "", bool(cfg.hf_hub_id or cfg.url or cfg.file), source,
            cfg.hf_hub_filename or ""]  # fmt: skip


def build_index() -> dict[str, Any]:
    """timm's registry as data (imports timm): every architecture with its default pretrained config, and every
    pretrained ``arch.tag`` with its own."""
    import timm
    from timm.models import get_pretrained_cfg

    def cfg_of(name: str) -> Described:
        return _describe_cfg(get_pretrained_cfg(name, allow_unregistered=False))

    return {
        "models": {arch: cfg_of(arch) for arch in timm.list_models()},
        "pretrained": {name: cfg_of(name) for name in timm.list_pretrained()},
    }


@functools.cache
def index() -> dict[str, Any]:
    """The registry index of the installed timm (built and stored on first use)."""
    data: dict[str, Any] = library_index("timm", build_index, schema=2)
    return data


def split_name(name: str) -> tuple[str, str]:
    """``timm/resnet50.a1_in1k`` -> ``("resnet50", "a1_in1k")``; the tag is ``""`` when absent."""
    model = name.removeprefix(PREFIX)
    arch, _, tag = model.partition(".")
    return arch, tag


def _known(arch: str, tag: str) -> bool:
    idx = index()
    return bool(arch) and arch in idx["models"] and (not tag or f"{arch}.{tag}" in idx["pretrained"])


def _live_error(name: str) -> UnknownNameError | None:
    """timm's own answer (for a model registered at run time); only asked while timm is imported anyway."""
    import timm

    arch, tag = split_name(name)
    if not arch or not timm.is_model(arch):
        return UnknownNameError(
            "timm architecture",
            name,
            [PREFIX + n for n in timm.list_models()],
            hint="see `tlkit backbones --filter 'timm/<glob>'`",
        )
    if tag:
        tags = [PREFIX + n for n in timm.list_pretrained(f"{arch}.*")]
        if PREFIX + f"{arch}.{tag}" not in tags:
            return UnknownNameError("timm pretrained tag", name, tags, hint=f"tags of {arch}; or drop the tag")
    return None


def check_name(name: str) -> None:
    """Raise :class:`UnknownNameError` with timm's closest names when the architecture or tag does not exist."""
    arch, tag = split_name(name)
    if _known(arch, tag):
        return
    if "timm" in sys.modules:
        error = _live_error(name)
        if error is None:
            return
        raise error
    idx = index()
    if not arch or arch not in idx["models"]:
        raise UnknownNameError(
            "timm architecture",
            name,
            [PREFIX + n for n in idx["models"]],
            hint="see `tlkit backbones --filter 'timm/<glob>'`",
        )
    tags = [PREFIX + n for n in idx["pretrained"] if n.partition(".")[0] == arch]
    raise UnknownNameError("timm pretrained tag", name, tags, hint=f"tags of {arch}; or drop the tag")


def pretrained_cfg(model: str) -> Described:
    """The indexed pretrained config of ``arch`` or ``arch.tag`` (``None`` when unknown or without one)."""
    idx = index()
    cfg: Described = idx["pretrained"].get(model) if "." in model else idx["models"].get(model)
    return cfg


def summary(name: str) -> str:
    """One line for listings: the pretrained tag the name loads, and its licence (no model is built)."""
    model = name.removeprefix(PREFIX)
    cfg = pretrained_cfg(model)
    if cfg is None and "timm" in sys.modules:  # registered at run time
        from timm.models import get_pretrained_cfg

        cfg = _describe_cfg(get_pretrained_cfg(model, allow_unregistered=False))
    if cfg is None or not cfg[2]:
        return "timm architecture (no pretrained weights; use weights none or a local file)"
    return f"timm, pretrained: {cfg[0] or 'default'} ({cfg[1] or 'licence not stated'})"


def catalogue(pattern: str) -> list[str]:
    """The names a listing filters by ``pattern``: timm's architectures, or its pretrained tags when the pattern
    names a tag (has a dot after the prefix)."""
    kind = "pretrained" if "." in pattern.removeprefix(PREFIX) else "models"
    names = list(index()[kind])
    if "timm" in sys.modules:  # and any registered at run time
        import timm

        live = timm.list_pretrained() if kind == "pretrained" else timm.list_models()
        names += [n for n in live if n not in index()[kind]]
    return names
