"""The image reader: class folders, flat folders and manifests of JPEG, PNG, WebP, BMP, TIFF and GIF files."""

from __future__ import annotations

from typing import Any

from tlkit.data.base import Reader, Record
from tlkit.errors import BadItemError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Pillow's decompression-bomb guard, kept on: images above this many pixels are refused.
MAX_IMAGE_PIXELS = 178_956_970


class ImageReader(Reader):
    name = "image"
    modality = "image"
    extensions = IMAGE_EXTENSIONS

    def load(self, record: Record) -> Any:
        return decode_image(record.source, record.id)


def decode_image(path: str, item_id: str | None = None) -> Any:
    """Decode ``path`` to an RGB ``PIL.Image``: EXIF orientation applied; grey, CMYK, palette, alpha and 16-bit
    images converted; GIFs give their first frame. Raises :class:`BadItemError` with the reason."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    item_id = item_id or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except FileNotFoundError as exc:
        raise BadItemError(item_id, "file not found") from exc
    except PermissionError as exc:
        raise BadItemError(item_id, "permission denied") from exc
    except UnidentifiedImageError as exc:
        raise BadItemError(item_id, "not an image, or an unsupported format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadItemError(item_id, f"too large (decompression-bomb limit {MAX_IMAGE_PIXELS} pixels)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadItemError(item_id, f"truncated or corrupt image ({exc})") from exc


def to_rgb(im: Any) -> Any:
    """Any PIL mode to 8-bit RGB. Alpha is composited on white; 16/32-bit greyscale is rescaled, not clipped."""
    import numpy as np
    from PIL import Image

    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
