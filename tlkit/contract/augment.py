"""One vocabulary for image training augmentation, shared by every image backbone.

A backbone's ``augment`` option is one of:

- ``None`` or ``"default"``: a gentle random resized crop (scale 0.35-1), horizontal flip and colour jitter. Transfer
  datasets are small, and ImageNet training's crop scale (0.08-1) loses too much of each image;
- ``"none"``: no augmentation (the evaluation transform);
- a preset name from :data:`AUGMENT_PRESETS` (``"light"``, ``"strong"``, ``"randaugment"``, ...);
- a mapping of :data:`AUGMENT_KEYS` (``{"scale": (0.9, 1.0), "re_prob": 0.25}``), applied over the default preset.

:func:`parse_augment` validates a value and returns the options; each backbone turns them into its library's
transforms (the ``auto_augment`` names into timm's strings or torchvision's classes). A backbone may accept more
than the shared vocabulary (timm takes any ``create_transform`` argument and its own auto-augment strings); it says so
through ``extra_keys`` and ``backend_policy``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from tlkit.errors import ConfigError

#: The options of an image augmentation policy: random resized crop ``scale`` and ``ratio``, flip probabilities,
#: colour jitter strength, an ``auto_augment`` policy name, and the random-erasing probability ``re_prob``.
AUGMENT_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "re_prob")

#: Automatic augmentation policies every image backbone understands (as ``auto_augment`` or as a preset).
AUTO_AUGMENT_POLICIES = ("randaugment", "trivialaugment", "autoaugment", "augmix")

_DEFAULT: dict[str, Any] = {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.4}

#: Named policies for ``augment=``.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(_DEFAULT),
    "light": {"scale": (0.7, 1.0), "hflip": 0.5, "color_jitter": 0.0},
    # light, plus RandAugment and random erasing: the regularisation of timm's fine-tuning recipes, for data that
    # overfits the light policy (tlkit advise recommends it for upscaled low-resolution images)
    "strong": {"scale": (0.7, 1.0), "hflip": 0.5, "color_jitter": 0.0, "auto_augment": "randaugment", "re_prob": 0.25},
    **{name: {"scale": (0.35, 1.0), "hflip": 0.5, "auto_augment": name} for name in AUTO_AUGMENT_POLICIES},
}

#: The value that turns augmentation off.
AUGMENT_NONE = "none"


def parse_augment(
    augment: str | Mapping[str, Any] | None,
    *,
    extra_keys: Collection[str] = (),
    backend_policy: Callable[[str], bool] | None = None,
) -> dict[str, Any] | None:
    """The augmentation options ``augment`` names (see the module docstring), or ``None`` for ``"none"``.

    ``extra_keys`` are the mapping keys a backbone accepts beyond :data:`AUGMENT_KEYS`. ``backend_policy`` says
    whether a string is one of the backbone library's own auto-augment policies (timm's ``"rand-m9-mstd0.5"``); such
    a string is accepted as ``auto_augment`` and, on its own, as the whole ``augment`` value.
    """
    if augment == AUGMENT_NONE:
        return None
    if augment is None or isinstance(augment, str):
        name = augment or "default"
        if name in AUGMENT_PRESETS:
            return dict(AUGMENT_PRESETS[name])
        if backend_policy is not None and backend_policy(name):
            return {**_DEFAULT, "auto_augment": name}
        raise ConfigError(
            f"unknown {{param}} policy {name!r}; use {AUGMENT_NONE}, {', '.join(AUGMENT_PRESETS)}"
            + (", a policy string of the backbone's library" if backend_policy is not None else "")
            + f", or a dict of {', '.join(AUGMENT_KEYS)}",
            param="augment",
        )
    known = (*AUGMENT_KEYS, *extra_keys)
    unknown = sorted(set(augment) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {{param}} option(s) {', '.join(map(str, unknown))}; use {', '.join(known)}", param="augment"
        )
    options = {**_DEFAULT, **dict(augment)}
    policy = options.get("auto_augment")
    if policy and policy not in AUTO_AUGMENT_POLICIES and not (backend_policy is not None and backend_policy(policy)):
        raise ConfigError(
            f"unknown auto_augment {policy!r} in {{param}}; use {', '.join(AUTO_AUGMENT_POLICIES)}", param="augment"
        )
    return options
