"""A base for image backbones whose preprocessing is one transform (a torchvision or timm pipeline) per mode, and
the image preprocessing options: the one vocabulary the CLI's flags (``--input-size``, ``--crop-pct``, ...) parse
from and print to, and the check that a run is used with the preprocessing it was trained with."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tlkit.contract.backbone import Backbone
from tlkit.contract.pixels import Uint8Pipeline, resize_side, uint8_pipeline
from tlkit.data.image import as_rgb_image
from tlkit.errors import ConfigError, FingerprintMismatchError

#: The image preprocessing options, in the order the CLI lists them: each is a ``BackboneSpec.preprocess`` key that
#: every image backbone takes as an override (``MODALITY_PREPROCESS_KEYS['image']``, checked by a test), and the
#: flag of the same name (``input_size`` is ``--input-size``) on every command that builds a backbone. Any other key
#: (a plugin's own, such as timm's ``crop_mode``, or a text backbone's ``max_length``) goes through ``--preprocess
#: KEY=VALUE``.
IMAGE_OPTIONS = ("input_size", "crop_pct", "interpolation", "mean", "std")

#: What each option's flag takes, for help texts and errors.
OPTION_METAVARS = {"input_size": "N|HxW", "crop_pct": "F", "interpolation": "NAME", "mean": "R,G,B", "std": "R,G,B"}


class ImageBackbone(Backbone):
    """An image :class:`~tlkit.contract.backbone.Backbone` that preprocesses with one transform per mode.

    Subclasses implement :meth:`make_transform`; :meth:`preprocess_item` decodes whatever the user passed (a PIL
    image, a path, an array) to RGB and applies the transform, built once per mode. For local weights the spec's
    ``source`` is the file's path, which differs between machines, so it stays out of the fingerprint: the file's
    content hash identifies the weights.
    """

    modality: ClassVar[str] = "image"

    @abstractmethod
    def make_transform(self, train: bool) -> Callable[[Any], Any]:
        """The transform from an RGB PIL image to model input: training augmentation (``self.augment``) when
        ``train``, else the evaluation preprocessing, both from ``self.spec.preprocess``."""

    def validate(self) -> None:
        """The base checks, then the evaluation transform is built once (and dropped) when preprocessing is
        overridden, and the training transform when ``augment`` is set, so a value the plugin refuses is a one-line
        error before any data is read, not a skip of every item."""
        super().validate()
        if self.preprocess_overrides:  # a size or interpolation the transform refuses: one line, not every item skipped
            self.make_transform(False)
        if self.augment not in (None, "none", "default"):
            self.make_transform(True)

    def preprocess_item(self, item: Any, *, train: bool = False) -> Any:
        """The transform of ``make_transform(train)`` on the item as RGB. A transform that is a standard torchvision
        pipeline (resize, centre crop, to tensor, normalise: every evaluation transform, and a training one without
        augmentation) runs on ``uint8`` tensors, the same steps with torchvision's tensor kernels
        (:mod:`tlkit.contract.pixels`: equal to Pillow's up to rounding), so ``augment="none"`` trains on exactly what
        evaluation sees."""
        return self._transform(train)(as_rgb_image(item))

    def pixel_pipeline(self) -> Uint8Pipeline | None:
        """The evaluation preprocessing split for batch work, or ``None``: the :class:`~tlkit.contract.pixels.
        Uint8Pipeline` whose ``pixels`` makes an item's ``uint8`` crop and whose ``batch`` makes a
        :class:`~tlkit.contract.pixels.PixelBatch`, normalised where the model runs. Extraction uses it instead of
        :meth:`preprocess_item` and :meth:`collate` (the same numbers, a fraction of the copies). ``None`` when the
        evaluation transform is not a standard pipeline, or when a subclass overrides ``preprocess_item`` or
        ``collate`` (its own preprocessing is then used as it is)."""
        own = type(self)
        if own.preprocess_item is not ImageBackbone.preprocess_item or own.collate is not Backbone.collate:
            return None
        transform = self._transform(False)
        return transform if isinstance(transform, Uint8Pipeline) else None

    def _transform(self, train: bool) -> Callable[[Any], Any]:
        transforms: dict[bool, Callable[[Any], Any]] = self.__dict__.setdefault("_transforms", {})
        if train not in transforms:
            transform = self.make_transform(train)
            transforms[train] = uint8_pipeline(transform) or transform
        return transforms[train]

    def decode_size(self) -> int | None:
        """The side the evaluation transform resizes an image's shortest side to, so a large JPEG may be decoded at
        a reduced size (libjpeg's DCT scaling) that keeps at least twice as many pixels on that side
        (:func:`tlkit.data.image.reduced_decoding`); ``None`` decodes every image at full size.

        The default reads it from the evaluation transform when that is a standard torchvision pipeline whose first
        step is a resize (timm's and torchvision's presets), else ``None``. Override it when the transform is your
        own: return the side its first resize makes, or ``None`` when it reads full-resolution pixels (a crop before
        the resize, a model that takes the image as it is)."""
        memo: dict[str, int | None] = self.__dict__.setdefault("_decode_size", {})
        if "side" not in memo:
            memo["side"] = resize_side(self.make_transform(False))
        return memo["side"]

    def fingerprint_data(self) -> dict[str, Any]:
        data = super().fingerprint_data()
        if self.weights_kind() == "local":
            data["spec"].pop("source", None)
        return data


# -- the preprocessing options -----------------------------------------------------------------------------------------
def parse_option(key: str, text: str) -> Any:
    """The override value of an option as typed after its flag: ``input_size`` ``96`` → ``[3, 96, 96]`` and
    ``160x128`` (height x width) → ``[3, 160, 128]``; ``crop_pct`` a fraction in (0, 1]; ``mean``/``std`` one or three
    numbers; ``interpolation`` a name (the backbone checks it); any other key a JSON value, else the text itself.
    A bad value is a :class:`ConfigError` about the parameter ``key`` (the CLI names its flag)."""
    text = str(text).strip()
    try:
        if key == "input_size":
            sides = [int(v) for v in text.lower().replace("×", "x").split("x")]
            if len(sides) not in (1, 2) or min(sides) < 1:
                raise ValueError
            return [3, sides[0], sides[-1]]
        if key == "crop_pct":
            value = float(text)
            if not 0 < value <= 1:
                raise ValueError
            return value
        if key in ("mean", "std"):
            values = [float(v) for v in text.split(",")]
            if len(values) not in (1, 3) or (key == "std" and min(values) <= 0):
                raise ValueError
            return values * 3 if len(values) == 1 else values
        if key == "interpolation":
            if not text:
                raise ValueError
            return text
    except ValueError:
        raise ConfigError(
            f"{{param}} {text!r}: expected {OPTION_METAVARS[key]}{_EXAMPLES.get(key, '')}", param=key
        ) from None
    try:
        return json.loads(text)
    except ValueError:
        return text


_EXAMPLES = {
    "input_size": " (e.g. 160, or 160x128 for height x width), whole pixels above 0",
    "crop_pct": ", the share of the resized image kept by the centre crop, above 0 and at most 1 (1: no crop)",
    "mean": ", one or three numbers",
    "std": ", one or three numbers above 0",
}


def format_option(key: str, value: Any) -> str:
    """The inverse of :func:`parse_option`: the text that, typed after the option's flag, gives ``value``."""
    if key == "input_size" and isinstance(value, list | tuple) and value:
        h, w = int(value[-2]) if len(value) > 1 else int(value[0]), int(value[-1])
        return str(h) if h == w else f"{h}x{w}"
    if key == "input_size" and isinstance(value, int):
        return str(value)
    if key in ("mean", "std") and isinstance(value, list | tuple):
        return ",".join(f"{float(v):g}" for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def preprocess_args(overrides: Mapping[str, Any]) -> list[str]:
    """Command-line arguments that give ``overrides`` on any command with the preprocessing options:
    ``{"input_size": [3, 96, 96]}`` → ``["--input-size", "96"]``; other keys as ``--preprocess KEY=VALUE``."""
    args: list[str] = []
    for key, value in overrides.items():
        if key in IMAGE_OPTIONS:
            args += ["--" + key.replace("_", "-"), format_option(key, value)]
        else:
            args += ["--preprocess", f"{key}={format_option(key, value)}"]
    return args


def preprocess_changes(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """How two specs' ``preprocess`` differ, one ``key recorded → wanted`` text per key, in key order."""
    keys = [*recorded, *(k for k in wanted if k not in recorded)]
    return [f"{k} {recorded.get(k)!r} → {wanted.get(k)!r}" for k in keys if recorded.get(k) != wanted.get(k)]


def check_same_preprocess(recorded: Backbone, overrides: Mapping[str, Any] | None, where: str) -> None:
    """Refuse preprocessing ``overrides`` that would change what the ``recorded`` backbone (a run's, rebuilt from its
    config) computes: a head or a fine-tuned model only knows the inputs it was trained on. Overrides that change
    nothing (the recorded values given again) pass. The message names each option as a parameter (``{input_size}``;
    keys without a flag of their own as ``{preprocess}``)."""
    if not overrides:
        return
    have = recorded.spec.preprocess
    wanted = recorded.replace(preprocess=dict(overrides)).spec.preprocess
    changed = [k for k in [*have, *(k for k in wanted if k not in have)] if have.get(k) != wanted.get(k)]
    if not changed:
        return
    given = [k for k in overrides if have.get(k) != wanted.get(k)] or list(overrides)
    params = list(dict.fromkeys(k if k in IMAGE_OPTIONS else "preprocess" for k in given))
    typed = ", ".join(_as_param(k, wanted.get(k, overrides[k])) for k in given)
    own = ", ".join(_as_param(k, have[k]) for k in given if k in have)
    raise FingerprintMismatchError(
        f"{where} was trained on inputs preprocessed with {', '.join(f'{k} {have.get(k)!r}' for k in changed)}; "
        f"{typed} would give inputs it never saw: drop {', '.join('{' + p + '}' for p in params)} (the run's "
        f"preprocessing is used){f', or give the same ({own})' if own else ''}, or train a run at the new setting",
        params=params,
    )


def _as_param(key: str, value: Any) -> str:
    if key in IMAGE_OPTIONS:
        return "{" + key + "} " + format_option(key, value)
    return "{preprocess} " + f"{key}={format_option(key, value)}"
