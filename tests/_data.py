"""Real data for the tests and benchmarks, made from installed packages (no downloads).

- Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (the one path to it is :data:`FASHION_MNIST`);
- photos from scikit-image's sample data, written as real JPEG/PNG/WebP files, so tests read images the way users
  do: through files and tlkit's image reader.

Tests take them through the fixtures in ``conftest.py`` (which skip when the package is missing); benchmarks import
the functions directly.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]

#: (skimage sample, file name, crop box or None, size to save at): varied content, sizes, aspect ratios and formats.
PHOTOS = (
    ("chelsea", "cat.jpg", None, (300, 225)),
    ("coffee", "coffee.png", None, (256, 171)),
    ("astronaut", "astronaut.webp", (0, 0, 400, 512), (200, 256)),
    ("rocket", "rocket.jpg", None, (142, 212)),
    ("camera", "camera_grey.png", None, (160, 160)),
)


def write_photos(folder: Path) -> list[Path]:
    """Write the :data:`PHOTOS` into ``folder`` (created) and return their paths, sorted like the reader sorts."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample, fname, box, size in PHOTOS:
        img = Image.fromarray(getattr(data, sample)())
        if box is not None:
            img = img.crop(box)
        img = img.resize(size, Image.BICUBIC)
        path = folder / fname
        img.save(path, quality=92) if path.suffix in (".jpg", ".webp") else img.save(path)
        paths.append(path)
    return sorted(paths)


def fashion_mnist(split: str, n: int | None) -> tuple[Any, Any]:
    """The first ``n`` (``None``: all) images (``uint8 [n, 28, 28]``) and labels of Debian's Fashion-MNIST
    ``train`` or ``t10k``."""
    import numpy as np

    with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:n], labels[:n]


def fashion_mnist_folder(root: Path, split: str, per_class: int, seed: int = 0) -> Path:
    """Write ``per_class`` Fashion-MNIST images of each class (a seeded sample of ``split``: train or t10k) as PNG
    class folders."""
    import numpy as np
    from PIL import Image

    images, labels = fashion_mnist(split, None)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(FASHION_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in rng.permutation(np.flatnonzero(labels == c))[:per_class]:
            Image.fromarray(images[i], "L").save(root / name / f"{i:05d}.png")
    return root


def jpeg_bytes(img: Any, **options: object) -> bytes:
    """``img`` (a PIL image) encoded as a JPEG of quality 90, with Pillow's save ``options``."""
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


def write_jpeg_kinds(root: Path, extra: Any = None) -> None:
    """Two class folders of the JPEG kinds a camera folder holds (colour, grey, progressive, EXIF-rotated, CMYK,
    wide) and a PNG, all from one 320x240 image, plus the files ``extra(image)`` returns (``{name: bytes}``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "colour.jpg": jpeg_bytes(base),
        "grey.jpg": jpeg_bytes(base.convert("L")),
        "progressive.jpg": jpeg_bytes(base, progressive=True),
        "rotated.jpg": jpeg_bytes(base, exif=exif),
        "cmyk.jpg": jpeg_bytes(base.convert("CMYK")),
        "wide.jpg": jpeg_bytes(base.resize((400, 150))),
        **(extra(base) if extra is not None else {}),
    }
    for i, (name, data) in enumerate(sorted(files.items())):
        folder = root / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    base.save(root / "c0" / "lossless.png")
