"""The evaluation transform of an image backbone, read as data: the side it resizes to (what a reduced-size decode
must keep), and the same steps computed on ``uint8`` tensors, which is several times cheaper than Pillow's resize.

Only standard torchvision pipelines are read: a ``Compose`` of ``Resize`` (bilinear or bicubic), ``CenterCrop``,
``ToTensor`` (timm's ``MaybeToTensor`` is one) and ``Normalize``, or torchvision's ``ImageClassification`` preset
(what ``Weights.transforms()`` returns). Anything else (a plugin's own transform, timm's ``ResizeKeepRatio`` for a
non-square input, another interpolation) is left alone: :func:`resize_side` is ``None`` (decode at full size) and
:func:`uint8_pipeline` is ``None`` (the transform runs as it is).

The ``uint8`` steps are torchvision's own tensor kernels (``torchvision.transforms.v2.functional``: antialiased
``resize`` on ``uint8``, ``center_crop``), then one conversion ``x / (255 std) - mean / std``. Against
Pillow's resize they differ by rounding only: at most 2 of 255 in a pixel, 0.003 on average, on 500x375 photos
(``tests/extraction/test_decode_fidelity.py`` checks the features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: The interpolations whose ``uint8`` tensor kernel matches Pillow's antialiased filter.
UINT8_INTERPOLATIONS = ("bilinear", "bicubic")


def resize_side(transform: Any) -> int | None:
    """The side the transform resizes an image's shortest side to before anything else reads its pixels (for a
    resize to a fixed height and width, the larger of the two), or ``None`` when its first step is not a resize it
    recognises."""
    steps = _steps(transform)
    if steps is None or not steps:
        return None
    kind, args = steps[0]
    if kind != "resize":
        return None
    size = args["size"]
    return int(max(size))


def uint8_pipeline(transform: Any) -> Callable[[Any], Any] | None:
    """A callable that computes ``transform`` on a PIL RGB image through ``uint8`` tensors, or ``None`` when the
    transform is not a pipeline this module reads (then use ``transform`` itself)."""
    steps = _steps(transform)
    if steps is None or not steps or steps[-1][0] != "float":
        return None
    return Uint8Pipeline([(kind, args) for kind, args in steps if kind != "float"], steps[-1][1])


class Uint8Pipeline:
    """Resize and crop on a ``uint8`` CHW tensor, then one fused conversion to normalised ``float32``."""

    def __init__(self, steps: Sequence[tuple[str, dict[str, Any]]], norm: dict[str, Any]) -> None:
        import torch

        self.steps = list(steps)
        mean = torch.tensor(norm.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(norm.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(-1, 1, 1)
        self.scale, self.shift = 1.0 / (std * 255.0), -mean / std

    def __call__(self, image: Any) -> Any:
        import torchvision.transforms.v2.functional as F

        x = F.pil_to_tensor(image)
        for kind, args in self.steps:
            if kind == "resize":
                size = args["size"]
                x = F.resize(x, list(size), interpolation=args["interpolation"], max_size=args["max_size"],
                             antialias=True)  # fmt: skip
            else:
                x = F.center_crop(x, list(args["size"]))
        # Contiguous first: elementwise maths on the cropped HWC view is several times slower.
        return x.contiguous().float().mul_(self.scale).add_(self.shift)


def _steps(transform: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """The transform as ``[(kind, args)]`` with kinds ``resize``, ``crop`` and a final ``float`` (to tensor, then
    normalise), or ``None`` for anything else."""
    from torchvision import transforms as T

    preset = _preset(transform)
    if preset is not None:
        return preset
    if not isinstance(transform, T.Compose):
        return None
    out: list[tuple[str, dict[str, Any]]] = []
    for step in transform.transforms:
        if out and out[-1][0] == "float":
            if isinstance(step, T.Normalize) and "mean" not in out[-1][1] and not step.inplace:
                out[-1][1].update(mean=_floats(step.mean), std=_floats(step.std))
                continue
            return None
        if isinstance(step, T.Resize):
            interp = _interpolation(step.interpolation)
            if interp is None or step.antialias is False:
                return None
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            out.append(("resize", {"size": size, "interpolation": interp, "max_size": step.max_size}))
        elif isinstance(step, T.CenterCrop):
            out.append(("crop", {"size": list(step.size)}))
        elif type(step) is T.ToTensor or (isinstance(step, T.ToTensor) and type(step).__name__ == "MaybeToTensor"):
            out.append(("float", {}))
        else:
            return None
    return out


def _preset(transform: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """torchvision's ``ImageClassification`` preset: resize, centre crop, to float, normalise."""
    try:
        from torchvision.transforms._presets import ImageClassification
    except ImportError:  # pragma: no cover - a torchvision without the preset
        return None
    if type(transform) is not ImageClassification or not transform.antialias:
        return None
    interp = _interpolation(transform.interpolation)
    if interp is None:
        return None
    return [
        ("resize", {"size": list(transform.resize_size), "interpolation": interp, "max_size": None}),
        ("crop", {"size": list(transform.crop_size)}),
        ("float", {"mean": _floats(transform.mean), "std": _floats(transform.std)}),
    ]


def _interpolation(mode: Any) -> Any:
    from torchvision.transforms import InterpolationMode

    try:
        mode = InterpolationMode(mode) if not isinstance(mode, InterpolationMode) else mode
    except ValueError:
        return None
    return mode if mode.value in UINT8_INTERPOLATIONS else None


def _floats(values: Any) -> list[float]:
    import torch

    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.reshape(-1).tolist()]
    return [float(v) for v in values]


__all__ = ["UINT8_INTERPOLATIONS", "Uint8Pipeline", "resize_side", "uint8_pipeline"]
