"""Preprocessing for timm models: the model's own data config, user overrides, and train-time augmentation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from tlkit.errors import ConfigError

#: The preprocessing keys a timm backbone's spec carries (what ``timm.data.create_transform`` takes).
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

#: Named augmentation policies for ``augment=``. ``default`` trades timm's ImageNet-from-scratch crop scale
#: (0.08) for a gentler one (0.35, fastai's fine-tuning default): small transfer datasets lose too much otherwise.
POLICIES: dict[str, dict[str, Any]] = {
    "default": {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.4},
    "light": {"scale": (0.7, 1.0), "hflip": 0.5, "color_jitter": 0.0},
    "randaugment": {"scale": (0.35, 1.0), "hflip": 0.5, "auto_augment": "rand-m9-mstd0.5-inc1"},
}

#: Prefixes of timm auto-augment strings (``rand-m9-mstd0.5``, ``augmix-m5-w4-d2``, ``original``, ``v0``, ``3a``).
AUTO_AUGMENT_PREFIXES = ("rand-", "augmix", "original", "v0", "3a")


def data_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``timm.data.resolve_model_data_config`` output as JSON-friendly data, in :data:`PREPROCESS_KEYS` order."""
    out: dict[str, Any] = {}
    for key in PREPROCESS_KEYS:
        if key in resolved and resolved[key] is not None:
            value = resolved[key]
            out[key] = [float(v) if key in ("mean", "std") else v for v in value] if isinstance(value, tuple) else value
    return out


def merge_overrides(defaults: Mapping[str, Any], overrides: Mapping[str, Any], name: str) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(PREPROCESS_KEYS))
    if unknown:
        raise ConfigError(
            f"{name}: unknown preprocess key(s) {', '.join(unknown)}; timm backbones take {', '.join(PREPROCESS_KEYS)}"
        )
    merged = {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
    size = merged.get("input_size")
    if isinstance(size, int):  # a bare side length means a square RGB input
        merged["input_size"] = [3, size, size]
    elif isinstance(size, list | tuple) and len(size) == 2:
        merged["input_size"] = [3, *size]
    return merged


def eval_transform(cfg: Mapping[str, Any]) -> Any:
    """timm's own evaluation transform (resize, centre crop, normalise) for this config."""
    from timm.data import create_transform

    return create_transform(**_transform_args(cfg), is_training=False)


def train_transform(cfg: Mapping[str, Any], augment: str | Mapping[str, Any] | None) -> Any:
    """timm's training transform with the augmentation ``augment`` names; ``"none"`` is the eval transform.

    ``augment`` is ``None``/``"default"``, a policy in :data:`POLICIES`, a timm auto-augment string
    (``"rand-m9-mstd0.5"``), or a mapping of ``timm.data.create_transform`` arguments (``scale``, ``hflip``,
    ``color_jitter``, ``auto_augment``, ``re_prob`` ...).
    """
    from timm.data import create_transform

    if augment == "none":
        return eval_transform(cfg)
    options = augment_options(augment)
    args = _transform_args(cfg)
    args.pop("crop_pct", None)
    args.pop("crop_mode", None)
    return create_transform(**args, is_training=True, **options)


def augment_options(augment: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``create_transform`` keyword arguments for an ``augment`` value (validated)."""
    if augment is None or augment == "default":
        return dict(POLICIES["default"])
    if isinstance(augment, str):
        if augment in POLICIES:
            return dict(POLICIES[augment])
        if augment.startswith(AUTO_AUGMENT_PREFIXES):
            return {**POLICIES["default"], "auto_augment": augment}
        raise ConfigError(
            f"unknown augment policy {augment!r}; use none, {', '.join(POLICIES)}, a timm auto-augment string "
            f"such as rand-m9-mstd0.5, or a dict of timm.data.create_transform arguments"
        )
    from timm.data import create_transform

    allowed = set(inspect.signature(create_transform).parameters) - {"input_size", "is_training", "mean", "std"}
    unknown = sorted(set(augment) - allowed)
    if unknown:
        raise ConfigError(f"unknown augment option(s) {', '.join(unknown)}; see timm.data.create_transform")
    return {**POLICIES["default"], **dict(augment)}


def _transform_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    args = {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}
    for key in ("input_size", "mean", "std"):
        if key in args:
            args[key] = tuple(args[key])
    return args
