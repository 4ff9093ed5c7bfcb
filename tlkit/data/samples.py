"""Small generated inputs for tests and conformance checks (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def sample_images(n: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Any]:
    """``n`` RGB PIL images of random noise plus a colour gradient, varied per image and deterministic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    w, h = size
    for i in range(n):
        base = np.zeros((h, w, 3), np.float64)
        base[..., i % 3] = np.linspace(0, 255, w)[None, :]
        img = (0.6 * base + 0.4 * rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)
        out.append(Image.fromarray(img, "RGB"))
    return out


def sample_texts() -> list[str]:
    """Sentences of varied length, for batch-invariance checks on text backbones."""
    return [
        "A cat sat on the mat.",
        "Transfer learning adapts a pretrained model to a new task with little data.",
        "ok",
        "The quick brown fox jumps over the lazy dog while the band plays on, " * 3,
    ]


def make_image_folder(
    root: str | os.PathLike[str],
    classes: int = 2,
    per_class: int = 4,
    size: tuple[int, int] = (40, 40),
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write a class-folder image dataset whose classes differ in colour (so a working head separates them)."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = size
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.uniform(0, 80, (h, w, 3))
            img[..., c % 3] += 150
            Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(d / f"img_{i:04d}.{fmt}")
    return root
