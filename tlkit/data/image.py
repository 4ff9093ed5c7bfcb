"""The image reader: class folders, flat folders and manifests of JPEG, PNG, WebP, BMP, TIFF and GIF files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tlkit.data.base import Reader, Record
from tlkit.data.listing import os_error_reason
from tlkit.errors import BadInputError, BadItemError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Pillow's decompression-bomb guard, kept on: images above this many pixels are refused.
MAX_IMAGE_PIXELS = 178_956_970


class ImageReader(Reader):
    name = "image"
    modality = "image"
    extensions = IMAGE_EXTENSIONS

    def load(self, record: Record) -> Any:
        return decode_image(record.source, record.id)


def decode_image(path: str | os.PathLike[str], item_id: str | None = None) -> Any:
    """Decode ``path`` to an RGB ``PIL.Image``: EXIF orientation applied; grey, CMYK, palette, alpha and 16-bit
    images converted; GIFs and other multi-frame files give their first frame. Raises :class:`BadItemError` with
    the reason (empty, truncated, not an image, unreadable, too large)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    item_id = item_id or str(path)
    try:
        if os.path.getsize(path) == 0:
            raise BadItemError(item_id, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
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
