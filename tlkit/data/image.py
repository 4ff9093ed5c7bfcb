"""The image reader: class folders, flat folders and manifests of JPEG, PNG, WebP, BMP, TIFF and GIF files."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.data.base import Dataset, Reader, Record, read_rows
from tlkit.data.listing import os_error_reason
from tlkit.data.urls import read_item
from tlkit.errors import BadInputError, BadItemError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Pillow's decompression-bomb guard, kept on: images above this many pixels are refused.
MAX_IMAGE_PIXELS = 178_956_970


class ImageReader(Reader):
    name = "image"
    modality = "image"
    extensions = IMAGE_EXTENSIONS
    returns_decoded_images = True  # load returns decode_image's result: a tensor under pixel_decoding

    def load(self, record: Record) -> Any:
        return decode_image(read_item(record.source, record.id), record.id)  # a URL's bytes, or the path

    def _scan_manifest(self, manifest: Path | str, options: dict[str, Any]) -> Dataset:
        """A manifest of image paths; a table without its path column says what it is instead (a text table, or
        image paths under another column name)."""
        try:
            return super()._scan_manifest(manifest, options)
        except BadInputError as exc:
            if exc.param != "path_column" or "path_column" in options:
                raise
            raise not_a_manifest(manifest, exc) from None


def not_a_manifest(manifest: Path | str, exc: BadInputError) -> BadInputError:
    """The error for a CSV without a ``path`` column given to an image backbone: the column that holds image file
    names, when one does (set ``path_column``), else that this is a table of something else (text) and an image
    backbone takes images. ``exc`` is the reader's own error, kept when the file cannot be read again."""
    try:
        columns, rows, _ = read_rows(manifest)
    except BadInputError:
        return exc
    sample = [row for _, row in rows[:200]]
    paths = [c for c in columns if _mostly_image_paths([str(row.get(c) or "") for row in sample])]
    if paths:
        return BadInputError(
            f"{manifest}: no column 'path', but column {paths[0]!r} holds image file names; set {{param}} {paths[0]}",
            param="path_column",
        )
    return BadInputError(
        f"{manifest}: an image backbone takes images, and this is a text table (columns {', '.join(columns)}; none "
        f"holds image paths): for text pick a text backbone (tlkit backbones --modality text); for images give a "
        f"folder, or a manifest CSV with the image paths in a 'path' column (or set {{param}})",
        param="path_column",
    )


def _mostly_image_paths(values: list[str]) -> bool:
    filled = [v.strip().lower() for v in values if v.strip()]
    return bool(filled) and sum(v.endswith(IMAGE_EXTENSIONS) for v in filled) * 2 >= len(filled)


def decode_image(
    path: str | os.PathLike[str] | bytes, item_id: str | None = None, *, min_side: int | None = None
) -> Any:
    """Decode ``path`` (or the encoded bytes of a tar member or a table cell) to an RGB ``PIL.Image``: EXIF
    orientation applied; grey, CMYK, palette, alpha and 16-bit images converted; GIFs and other multi-frame files
    give their first frame. Raises :class:`BadItemError` with the reason (empty, truncated, not an image,
    unreadable, too large).

    ``min_side`` (default: the enclosing :func:`reduced_decoding` block's, else ``None``): a JPEG whose shortest side
    is at least twice ``min_side`` is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's
    ``draft``), the largest reduction that keeps its shortest side at least ``min_side``. Other formats, and
    ``None``, decode at full size.

    Inside a :func:`pixel_decoding` block the result is the same pixels as a ``uint8`` tensor ``[3, H, W]``; inside
    an :func:`encoded_jpegs` block too, a JPEG that the device decoder takes is an :class:`EncodedImage` instead."""
    import io
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    item_id = item_id or ("image bytes" if isinstance(path, bytes) else str(path))
    pixels = _PIXELS.get()
    side = _MIN_SIDE.get() if min_side is None else min_side
    try:
        data = path if isinstance(path, bytes) else _read(path) if pixels else None  # pixels: one read, no stat
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            raise BadItemError(item_id, "empty file (0 bytes)")
        if pixels and data is not None:
            if _ENCODED.get():
                encoded = _device_jpeg(data)
                if encoded is not None:
                    return encoded
            fast = _jpeg_pixels(data, side)
            if fast is not None:
                return fast
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.seek(0)
                if im.width * im.height > MAX_IMAGE_PIXELS:  # explicit: warning filters are not thread-safe
                    raise Image.DecompressionBombError(f"{im.width}x{im.height}")
                _draft(im, side)
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # the default returns a copy, even when nothing turns
                rgb = im if im.mode == "RGB" else to_rgb(im)  # an RGB image is not copied again (decode_pillow.py)
                return _to_pixels(rgb) if pixels else rgb
    except BadItemError:
        raise
    except FileNotFoundError as exc:
        raise BadItemError(item_id, "file not found") from exc
    except PermissionError as exc:
        raise BadItemError(item_id, "permission denied (unreadable file)") from exc
    except IsADirectoryError as exc:
        raise BadItemError(item_id, "a directory, not an image file") from exc
    except UnidentifiedImageError as exc:
        raise BadItemError(item_id, "not an image, or an unsupported format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadItemError(item_id, f"too large (decompression-bomb limit {MAX_IMAGE_PIXELS} pixels)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the file system's error, not the content's
            raise BadItemError(item_id, os_error_reason(exc)) from exc
        raise BadItemError(item_id, f"truncated or corrupt image ({exc})") from exc


#: How much larger than the side the model's transform resizes to a reduced decode stays (see
#: :func:`reduced_decoding`). With 2, features of EfficientNet-Lite0 on 1600x1200 to 4000x3000 JPEGs kept a per-row
#: cosine of at least 0.9995 against full decoding; with 1 (decoding just above the resize target) it fell to 0.993:
#: the final antialiased resize needs the extra pixels (Pillow's ``reducing_gap=2`` follows the same rule).
REDUCED_DECODE_MARGIN = 2

_MIN_SIDE: contextvars.ContextVar[int | None] = contextvars.ContextVar("tlkit_decode_min_side", default=None)


@contextlib.contextmanager
def reduced_decoding(resize_side: int | None) -> Iterator[None]:
    """Within the block, :func:`decode_image` decodes large JPEGs at a reduced size for a transform that resizes
    the shortest side to ``resize_side`` (``ImageBackbone.decode_size()``): the decoded shortest side stays at least
    :data:`REDUCED_DECODE_MARGIN` times ``resize_side``. ``None`` decodes at full size. Readers need not know: every
    reader that decodes through :func:`decode_image` (files, tar members, table cells) honours it."""
    token = _MIN_SIDE.set(None if not resize_side else int(resize_side) * REDUCED_DECODE_MARGIN)
    try:
        yield
    finally:
        _MIN_SIDE.reset(token)


_PIXELS: contextvars.ContextVar[bool] = contextvars.ContextVar("tlkit_decode_pixels", default=False)


@contextlib.contextmanager
def pixel_decoding(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`decode_image` returns the RGB image as a ``uint8`` tensor ``[3, H, W]`` (HWC in
    memory, as the tensor kernels of :meth:`tlkit.contract.pixels.Uint8Pipeline.pixels` read it fastest) instead of a
    PIL image: baseline and progressive JPEGs that are not decoded at a reduced size go straight from libjpeg-turbo to
    the tensor (``torchvision.io.decode_jpeg``, EXIF orientation applied; the same pixels as Pillow's, without the
    PIL image and its copies); everything else is decoded as usual and converted. PNGs stay on Pillow's path:
    torchvision 0.29's ``decode_png`` ends the process with a segmentation fault on damaged image data (a flipped
    byte or a short ``IDAT`` chunk, checked), where a damaged file must be a named skip. Only the extraction loader
    asks for it, and only from readers that declare they return :func:`decode_image`'s result as it is
    (``returns_decoded_images = True``, as :class:`ImageReader` does): a reader that works on the PIL image itself
    keeps getting one."""
    token = _PIXELS.set(enabled)
    try:
        yield
    finally:
        _PIXELS.reset(token)


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG left compressed, to be decoded where the model runs (:func:`encoded_jpegs`): its bytes and its size."""

    data: bytes
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        return len(self.data)


_ENCODED: contextvars.ContextVar[bool] = contextvars.ContextVar("tlkit_decode_encoded", default=False)


@contextlib.contextmanager
def encoded_jpegs(enabled: bool = True) -> Iterator[None]:
    """Within the block (and a :func:`pixel_decoding` one), :func:`decode_image` leaves the JPEGs that a GPU's
    decoder takes compressed, as :class:`EncodedImage`: baseline 8-bit JPEGs, colour (YCbCr) or grey, under the
    pixel limit, with no EXIF rotation (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")`` applies none).
    Everything else (PNGs, progressive or CMYK JPEGs, rotated photos, files whose header Pillow cannot read) is
    decoded here as usual, so a damaged file is still a named skip where it is read. ``decode="device"``
    extraction asks for it (:class:`tlkit.contract.pixels.EncodedBatch`)."""
    token = _ENCODED.set(enabled)
    try:
        yield
    finally:
        _ENCODED.reset(token)


#: Start-of-frame markers of baseline and extended sequential Huffman JPEGs: what a GPU decoder is given.
_SEQUENTIAL_MARKERS = (0xC0, 0xC1)


def _device_jpeg(data: bytes) -> EncodedImage | None:
    """``data`` as an :class:`EncodedImage` when the device decoder takes it (see :func:`encoded_jpegs`), else
    ``None``. Reads the headers only (Pillow's, for the colour mode and the EXIF orientation): nothing is decoded."""
    header = jpeg_header(data)
    if header is None:
        return None
    marker, width, height, components = header
    if marker not in _SEQUENTIAL_MARKERS or components not in (1, 3) or width * height > MAX_IMAGE_PIXELS:
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.getexif().get(0x0112, 1) != 1:
                return None
    except Exception:  # noqa: BLE001 - a header Pillow cannot read: the usual path decides, with its reason
        return None
    return EncodedImage(data, width, height)


def _reduces(size: tuple[int, int], min_side: int | None) -> bool:
    """Whether a JPEG of ``size`` decodes at a reduced size for ``min_side``: its shortest side is at least twice it."""
    return bool(min_side) and min(size) >= 2 * int(min_side or 0)


def _draft(im: Any, min_side: int | None) -> None:
    """Ask a JPEG for DCT-scaled decoding (1/2, 1/4, 1/8) that keeps both sides at least ``min_side``."""
    if im.format in ("JPEG", "MPO") and _reduces(im.size, min_side):
        im.draft(None, (min_side, min_side))


def _jpeg_pixels(data: bytes, min_side: int | None) -> Any:
    """A baseline or progressive 8-bit JPEG (colour or grey) decoded by libjpeg-turbo straight into a ``uint8``
    tensor, or ``None`` to take Pillow's path: another format, CMYK, a reduced-size decode (Pillow's ``draft`` is
    cheaper), an image over the pixel limit, or a file torchvision's decoder refuses (Pillow then decides whether it
    is bad, with its own reason). Only the JPEG header is read here: no PIL image is made."""
    frame = jpeg_frame(data)
    if frame is None:
        return None
    width, height, components = frame
    if components not in (1, 3) or width * height > MAX_IMAGE_PIXELS:
        return None
    if _reduces((width, height), min_side):
        return None
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            from torchvision.io import ImageReadMode, decode_jpeg

            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (ImportError, RuntimeError):  # no image decoders in this torchvision, or a file it refuses
        return None


#: JPEG start-of-frame markers whose frame header gives the image size: baseline, extended, progressive and
#: lossless, Huffman or arithmetic coded (not DHT ``C4``, JPG ``C8``, DAC ``CC``).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` of an 8-bit JPEG from its frame header, or ``None`` for anything else (not a
    JPEG, another sample precision, a header that ends early or makes no sense)."""
    header = jpeg_header(data)
    return None if header is None else header[1:]


def jpeg_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(start-of-frame marker, width, height, components)`` of an 8-bit JPEG (the marker tells baseline ``0xC0``
    from progressive ``0xC2`` and the others), or ``None`` as for :func:`jpeg_frame`."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 10 > n or data[i + 4] != 8:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return (marker, width, height, data[i + 9]) if width and height else None
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        i += 2 + length
    return None


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _to_pixels(rgb: Any) -> Any:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(rgb)


def to_rgb(im: Any) -> Any:
    """Any PIL mode to 8-bit RGB. Alpha is composited on white; 16-bit integer images are scaled by their bit depth
    (so a dark image stays dark); float images are rescaled from their own range."""
    import numpy as np
    from PIL import Image

    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.min() >= 0 and arr.max() <= 65535 else None
        if scale is None:  # 32-bit integers outside the 16-bit range: use the image's own range
            lo, hi = float(arr.min()), float(arr.max())
            arr, scale = arr - lo, (255.0 / (hi - lo) if hi > lo else 0.0)
        return Image.fromarray((arr * scale).round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if 0.0 <= lo and hi <= 1.0:  # already a [0, 1] intensity image
            lo, hi = 0.0, 1.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.nan_to_num((arr - lo) * scale).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("LAB", "HSV"):
        raise ValueError(f"colour mode {im.mode} is not supported; save the image as RGB")
    return im.convert("RGB")


def as_rgb_image(item: Any) -> Any:
    """A PIL RGB image from what an API user may hold: a PIL image, a path, or an ``HxW``/``HxWxC`` uint8 array."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else to_rgb(item)
    if isinstance(item, str | Path):
        return decode_image(item)
    import numpy as np

    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise BadInputError(
            f"expected a PIL image, an image path or a uint8 HxW/HxWxC array, got {type(item).__name__} "
            f"{getattr(arr, 'shape', '')} {arr.dtype}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return to_rgb(Image.fromarray(arr))
