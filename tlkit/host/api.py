"""Top-level API functions that resolve names through the plugin registry."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tlkit.contract.backbone import WEIGHTS_PRETRAINED, Backbone, validated
from tlkit.host.manager import PluginInfo
from tlkit.host.manager import list_plugins as _list_plugins
from tlkit.host.registry import BackboneEntry, HeadEntry, get_registry, resolve_backbone
from tlkit.host.registry import list_backbones as _list_backbones


def get_backbone(name: str, weights: str | os.PathLike[str] = WEIGHTS_PRETRAINED, **options: Any) -> Backbone:
    """Create a backbone by name (not loaded yet: call ``.load()`` or touch ``.module``).

    ``weights`` is ``"pretrained"`` (the hub), ``"none"`` (random init) or a local file or directory.
    Other options (``preprocess``, ``pooling``, ``augment``, plugin-specific ones) go to the backbone, whose
    :meth:`~tlkit.plugin.Backbone.validate` checks them here, before any data is read.
    """
    entry = resolve_backbone(name, {"weights": str(weights), **options})
    backbone = entry.create(weights=str(weights), **options)
    backbone.plugin_name = entry.plugin
    return validated(backbone)


def backbone_from_record(record: Mapping[str, Any], weights: str | os.PathLike[str] | None = None) -> Backbone:
    """Rebuild a backbone (not loaded) from what a cache or a run recorded about it.

    ``record`` is a cache's ``backbone`` metadata (``name``, ``weights``, ``init_kwargs``) or a run config's
    ``backbone`` section (``name``, ``weights``, ``options``). ``weights`` replaces the recorded weights (``"none"``
    builds the architecture alone, for a run whose own weights are loaded next); by default the recorded ones are
    used, else ``"pretrained"``.
    """
    options = dict(record.get("init_kwargs") or record.get("options") or {})
    recorded = options.pop("weights", None) or record.get("weights") or WEIGHTS_PRETRAINED
    return get_backbone(str(record["name"]), weights=recorded if weights is None else weights, **options)


def list_backbones(pattern: str | None = None, modality: str | None = None) -> list[BackboneEntry]:
    """Known backbones, optionally filtered by a glob on the name and by modality."""
    return _list_backbones(pattern, modality)


def list_heads() -> list[HeadEntry]:
    """Usable head types, sorted by name."""
    return sorted(get_registry().heads.values(), key=lambda e: e.name)


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin (loaded, broken, conflicting or disabled) with its problems.

    The registration hooks and the listing hooks run first, so a plugin whose hook fails shows as ``broken``.
    """
    _list_backbones(None)  # builds the registry too
    return _list_plugins()
