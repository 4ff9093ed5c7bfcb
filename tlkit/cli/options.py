"""Options that several commands share, defined once: the preprocessing options of every command that builds a
backbone (``extract``, ``advise``, ``finetune``, ``lr-find``, ``predict``, ``evaluate``).

The flags and their parsing come from one vocabulary, :mod:`tlkit.contract.image` (``IMAGE_OPTIONS``,
``parse_option``), which ``tlkit advise`` also uses to print its commands. Only click and light tlkit modules are
imported here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tlkit.contract.image import IMAGE_OPTIONS, OPTION_METAVARS, parse_option
from tlkit.errors import ConfigError

_F = TypeVar("_F", bound=Callable[..., Any])

_HELP = {
    "input_size": "Input size in pixels: N (square) or HxW. Default: the backbone's own (tlkit backbones info).",
    "crop_pct": "Share of the resized image the centre crop keeps, in (0, 1]; 1 keeps all of it.",
    "interpolation": "Resize interpolation: bilinear, bicubic, nearest, ... (as the backbone's library names it).",
    "mean": "Normalisation mean, one or three numbers (R,G,B).",
    "std": "Normalisation standard deviation, one or three numbers (R,G,B).",
}
#: The text that says how a command uses the options (``predict`` and ``evaluate`` only check them).
BUILD = "build"
CHECK = "check"


def preprocess_options(use: str = BUILD) -> Callable[[_F], _F]:
    """``--input-size``, ``--crop-pct``, ``--interpolation``, ``--mean``, ``--std`` (one per image key of
    :data:`tlkit.contract.image.IMAGE_OPTIONS`) and ``--preprocess KEY=VALUE`` (any other key). The command receives
    them as one ``preprocess`` dict of overrides (empty when none is given), as ``tlkit.get_backbone(...,
    preprocess=...)`` takes them. ``use`` is :data:`BUILD` (the overrides make the backbone, and the cache or run
    records them) or :data:`CHECK` (``predict``/``evaluate``: the run's recorded preprocessing is used, and a value
    that differs from it is refused)."""
    note = "" if use == BUILD else " Only checked: the run's recorded value is used, and another is refused."

    def add(command: _F) -> _F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {key: kwargs.pop(key) for key in (*IMAGE_OPTIONS, "preprocess")}
            kwargs["preprocess"] = preprocess_overrides(given)
            return command(*args, **kwargs)

        wrapper = click.option(
            "--preprocess",
            "preprocess",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any other preprocessing key of the backbone's spec (timm's crop_mode, a text backbone's "
            "max_length, ...), repeatable." + note,
        )(wrapper)
        for key in reversed(IMAGE_OPTIONS):
            flag = "--" + key.replace("_", "-")
            wrapper = click.option(flag, key, default=None, metavar=OPTION_METAVARS[key], help=_HELP[key] + note)(
                wrapper
            )
        return wrapper  # type: ignore[return-value]

    return add


def preprocess_overrides(given: dict[str, Any]) -> dict[str, Any]:
    """The overrides dict from the raw flag values (``None`` where a flag is absent)."""
    out: dict[str, Any] = {}
    for key in IMAGE_OPTIONS:
        if given.get(key) is not None:
            out[key] = parse_option(key, given[key])
    for pair in given.get("preprocess") or ():
        key, sep, value = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ConfigError(f"{{param}} {pair!r}: use KEY=VALUE, e.g. crop_mode=squash", param="preprocess")
        if key in IMAGE_OPTIONS:
            raise ConfigError(
                f"{{param}} {pair!r}: {key} has its own flag; use --{key.replace('_', '-')} {value}",
                param="preprocess",
            )
        out[key] = parse_option(key, value)
    return out


__all__ = ["BUILD", "CHECK", "preprocess_options", "preprocess_overrides"]
