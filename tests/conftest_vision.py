"""Shared helpers for the vision tests (imported explicitly: ``from conftest_vision import ...``).

Real photos come from scikit-image's sample data, written to disk as real JPEG/PNG/WebP files, so every test reads
images the way users do: through files and tlkit's image reader.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

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


def read_with_tlkit(folder: Path) -> tuple[list[str], list[Any]]:
    """Scan ``folder`` with tlkit's image reader and decode every item: ``(ids, PIL images)``."""
    from tlkit.data.image import ImageReader

    reader = ImageReader()
    dataset = reader.scan(folder)
    return [r.id for r in dataset.records], [reader.load(r) for r in dataset.records]


def cosines(a: Any, b: Any) -> Any:
    """Row-wise cosine similarity in float64."""
    import torch

    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def report_parity(label: str, cos: Any) -> float:
    """Print the smallest cosine of a parity check (``pytest -s`` shows it) and return it."""
    worst = float(cos.min())
    print(f"parity {label}: min cosine {worst:.10f} (1 - cos = {1 - worst:.1e})")
    return worst


def fashion_mnist(split: str, n: int) -> tuple[Any, Any]:
    """The first ``n`` images (``uint8 [n, 28, 28]``) and labels of Debian's Fashion-MNIST ``train`` or ``t10k``."""
    import numpy as np

    with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:n], labels[:n]


def randomize_batchnorm(model: Any, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial running statistics, so loading a file is checked on them too."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
