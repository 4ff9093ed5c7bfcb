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

Extraction splits the pipeline where timm's prefetching loader does: workers (or threads) make the ``uint8`` crop
(:meth:`Uint8Pipeline.pixels`), batches travel as ``uint8`` (:class:`PixelBatch`, four times fewer bytes through
shared memory and to a GPU), and the normalisation runs once per batch where the model runs
(:meth:`PixelBatch.to`), straight into the memory format the model wants. The arithmetic is the same as the
per-item path's, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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


def uint8_pipeline(transform: Any) -> Uint8Pipeline | None:
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
        # Contiguous first: elementwise maths on the cropped HWC view is several times slower.
        return self.pixels(image).contiguous().float().mul_(self.scale).add_(self.shift)

    def pixels(self, image: Any) -> Any:
        """The resized, cropped ``uint8`` ``[3, H, W]`` tensor of an RGB PIL image or of a ``uint8`` ``[3, H, W]``
        tensor (as :func:`tlkit.data.image.decode_image` returns under ``pixel_decoding``; HWC memory is fastest)."""
        import torch
        import torchvision.transforms.v2.functional as F

        x = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
        for kind, args in self.steps:
            if kind == "resize":
                size = args["size"]
                x = F.resize(x, list(size), interpolation=args["interpolation"], max_size=args["max_size"],
                             antialias=True)  # fmt: skip
            else:
                x = F.center_crop(x, list(args["size"]))
        return x

    def batch(self, pixels: Sequence[Any]) -> PixelBatch | EncodedBatch:
        """Items of :meth:`pixels` as one :class:`PixelBatch` (one copy into an NHWC ``uint8`` buffer); when some are
        JPEGs left compressed (:class:`tlkit.data.image.EncodedImage`), an :class:`EncodedBatch` to decode where the
        model runs."""
        from tlkit.data.image import EncodedImage

        if any(isinstance(x, EncodedImage) for x in pixels):
            return EncodedBatch.of(pixels, self)
        return self._stacked(pixels)

    def _stacked(self, pixels: Sequence[Any]) -> PixelBatch:
        import torch

        shapes = {tuple(x.shape) for x in pixels}
        if len(shapes) != 1:
            raise ValueError(f"items of different sizes cannot form a batch: {sorted(shapes)}")
        c, h, w = shapes.pop()
        out = torch.empty((len(pixels), h, w, c), dtype=torch.uint8)
        for i, x in enumerate(pixels):
            out[i].copy_(x.permute(1, 2, 0))
        return PixelBatch(out.permute(0, 3, 1, 2), self.scale, self.shift)


@dataclass
class PixelBatch:
    """A batch as ``uint8`` pixels ``[N, 3, H, W]`` (NHWC in memory) with the normalisation that makes it model
    input: ``x * scale + shift`` per channel, done by :meth:`to` where the model runs."""

    pixels: torch.Tensor
    scale: torch.Tensor  # [3, 1, 1]: 1 / (255 std)
    shift: torch.Tensor  # [3, 1, 1]: -mean / std

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def pin_memory(self) -> PixelBatch:
        return PixelBatch(self.pixels.pin_memory(), self.scale, self.shift)

    def to(self, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        """The normalised ``float32`` batch on ``device`` (the ``uint8`` copy is asynchronous from pinned memory),
        in ``channels_last`` or contiguous NCHW memory: one conversion pass, then the per-item path's multiply and add
        (the same numbers), in place."""
        import torch

        x = self.pixels.to(device, non_blocking=True)
        n, c, h, w = x.shape
        scale, shift = self.scale.to(x.device), self.shift.to(x.device)
        if not channels_last:
            out = torch.empty((n, c, h, w), dtype=torch.float32, device=x.device)
            out.copy_(x)
            return out.mul_(scale).add_(shift)
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
        out.copy_(x)
        # NHWC rows of W*C values, against per-channel factors tiled along a row: the same products and sums, on
        # long contiguous runs (a [C, 1, 1] factor against channels_last memory runs 3.5x slower).
        rows = out.permute(0, 2, 3, 1).view(n, h, w * c)
        rows.mul_(scale.view(c).repeat(w)).add_(shift.view(c).repeat(w))
        return out


@dataclass
class EncodedBatch:
    """A batch whose JPEGs travel compressed, to be decoded where the model runs (``decode="device"``): one batched
    ``torchvision.io.decode_jpeg`` call (nvJPEG on a CUDA device), then the same resize and crop on the device.
    ``data`` holds the JPEGs' bytes end to end (``offsets`` delimit them; one buffer, so the batch's JPEGs are one
    shared-memory file and one pinned copy), ``encoded_at`` their places in the batch; the items the workers
    decoded themselves (other formats, progressive or CMYK JPEGs, rotated photos) travel as a :class:`PixelBatch` of
    crops in ``ready``, at ``ready_at``. :meth:`decode` makes the :class:`PixelBatch` on the device."""

    data: torch.Tensor  # uint8 [total bytes]
    offsets: list[int]  # len(encoded_at) + 1
    encoded_at: list[int]
    ready: PixelBatch | None
    ready_at: list[int]

    @classmethod
    def of(cls, items: Sequence[Any], pipeline: Uint8Pipeline) -> EncodedBatch:
        import numpy as np
        import torch

        from tlkit.data.image import EncodedImage

        encoded_at = [i for i, x in enumerate(items) if isinstance(x, EncodedImage)]
        ready_at = [i for i, x in enumerate(items) if not isinstance(x, EncodedImage)]
        offsets = np.cumsum([0] + [len(items[i].data) for i in encoded_at]).tolist()
        data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
        flat = data.numpy()
        for k, i in enumerate(encoded_at):
            flat[offsets[k] : offsets[k + 1]] = np.frombuffer(items[i].data, np.uint8)
        ready = pipeline._stacked([items[i] for i in ready_at]) if ready_at else None
        return cls(data, offsets, encoded_at, ready, ready_at)

    def __len__(self) -> int:
        return len(self.encoded_at) + len(self.ready_at)

    def pin_memory(self) -> EncodedBatch:
        ready = self.ready.pin_memory() if self.ready is not None else None
        return EncodedBatch(self.data.pin_memory(), self.offsets, self.encoded_at, ready, self.ready_at)

    def decode(self, device: torch.device, pipeline: Uint8Pipeline) -> tuple[PixelBatch | None, list[tuple[int, str]]]:
        """``(the batch's crops on device, failures)``: the crops of every item that decodes, in batch order, and
        ``(place in the batch, reason)`` for those that do not. A JPEG the device decoder refuses is decoded on the
        CPU instead (Pillow's path, which names what is wrong with a damaged file), so no item is lost to the
        decoder it was sent to."""
        import torch

        crops: dict[int, torch.Tensor] = {}
        failed: list[tuple[int, str]] = []
        for i, x in zip(self.encoded_at, self._decoded(device), strict=True):
            if isinstance(x, str):
                failed.append((i, x))
            else:
                crops[i] = pipeline.pixels(x)
        if self.ready is not None:
            ready = self.ready.pixels.to(device, non_blocking=True)
            for k, i in enumerate(self.ready_at):
                crops[i] = ready[k]
        if not crops:
            return None, failed
        order = sorted(crops)
        c, h, w = crops[order[0]].shape
        out = torch.empty((len(order), h, w, c), dtype=torch.uint8, device=device)
        for k, i in enumerate(order):
            out[k].copy_(crops[i].permute(1, 2, 0))
        return PixelBatch(out.permute(0, 3, 1, 2), pipeline.scale, pipeline.shift), sorted(failed)

    def _decoded(self, device: torch.device) -> list[torch.Tensor | str]:
        """Each JPEG as a ``uint8`` ``[3, H, W]`` tensor on ``device``, or the reason it is unreadable: all in one
        call, then one by one when that call fails, then on the CPU for those the device decoder refuses."""
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        parts = [self.data[a:b] for a, b in zip(self.offsets, self.offsets[1:], strict=False)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            try:
                return list(decode_jpeg(parts, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:  # one bad file fails the whole call: find it
                pass
            out: list[torch.Tensor | str] = []
            for part in parts:
                try:
                    out.append(decode_jpeg(part, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(_cpu_decoded(part, device))
            return out


def _cpu_decoded(part: torch.Tensor, device: torch.device) -> torch.Tensor | str:
    """A JPEG the device decoder refused, decoded on the CPU (:func:`tlkit.data.image.decode_image`), or the
    reason it is unreadable."""
    from tlkit.data.image import decode_image, encoded_jpegs, pixel_decoding
    from tlkit.errors import BadItemError

    try:
        with pixel_decoding(True), encoded_jpegs(False):
            x = decode_image(part.cpu().numpy().tobytes())
    except BadItemError as exc:
        return exc.reason
    out: torch.Tensor = x.to(device)
    return out


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


__all__ = ["UINT8_INTERPOLATIONS", "PixelBatch", "Uint8Pipeline", "resize_side", "uint8_pipeline"]
