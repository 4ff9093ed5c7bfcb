"""Preprocessing for timm models: the model's own data config, user overrides, and train-time augmentation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from tlkit.plugin import AUTO_AUGMENT_POLICIES, ConfigError, parse_augment

#: The preprocessing keys a timm backbone's spec carries (what ``timm.data.create_transform`` takes).
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

#: The shared augmentation vocabulary's ``auto_augment`` policies as timm strings. timm has no TrivialAugment.
TIMM_AUTO_AUGMENT = {"randaugment": "rand-m9-mstd0.5-inc1", "autoaugment": "original", "augmix": "augmix-m5-w4-d2"}

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
    """timm's training transform for ``augment`` (tlkit's augmentation vocabulary, :func:`tlkit.plugin.parse_augment`);
    ``"none"`` is the eval transform.

    Beyond the shared vocabulary, timm takes its own auto-augment strings (``"rand-m7-mstd0.5"``, as ``augment`` or as
    ``auto_augment``) and any other ``timm.data.create_transform`` argument in a dict.
    """
    from timm.data import create_transform

    options = augment_options(augment)
    if options is None:
        return eval_transform(cfg)
    args = _transform_args(cfg)
    args.pop("crop_pct", None)
    args.pop("crop_mode", None)
    return create_transform(**args, is_training=True, **options)


def augment_options(augment: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``create_transform`` keyword arguments for an ``augment`` value (validated); ``None`` for ``"none"``."""
    from timm.data import create_transform

    taken = {"input_size", "is_training", "mean", "std"}
    extra = set(inspect.signature(create_transform).parameters) - taken
    options = parse_augment(augment, extra_keys=sorted(extra), backend_policy=is_timm_policy)
    policy = options.get("auto_augment") if options else None
    if options is not None and policy in AUTO_AUGMENT_POLICIES:
        if policy not in TIMM_AUTO_AUGMENT:
            raise ConfigError(
                f"{{param}} {policy}: timm has no such policy; use {', '.join(TIMM_AUTO_AUGMENT)} or a timm string",
                param="augment",
            )
        options["auto_augment"] = TIMM_AUTO_AUGMENT[policy]
    return options


def is_timm_policy(text: str) -> bool:
    """Whether ``text`` is a timm auto-augment string."""
    return text.startswith(AUTO_AUGMENT_PREFIXES)


def _transform_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    args = {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}
    for key in ("input_size", "mean", "std"):
        if key in args:
            args[key] = tuple(args[key])
    return args
