"""Data for the extraction benchmarks, made offline: photo-like JPEGs and Fashion-MNIST PNG folders."""

from __future__ import annotations

import gzip
import platform
import subprocess
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina")


def photo_folder(root: Path, n: int, size: tuple[int, int] = (500, 375), classes: int = 2, seed: int = 0) -> Path:
    """``n`` JPEGs (quality 90, ``size``) cut at random from scikit-image's sample photos, in ``classes`` folders:
    real decode and resize costs, like a folder of camera pictures."""
    import numpy as np
    import skimage.data
    from PIL import Image

    root = Path(root)
    if root.exists() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = src.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img_{i:05d}.jpg", quality=90)
    return root


def fashion_folders(root: Path, n_train: int, n_test: int, seed: int = 0) -> tuple[Path, Path]:
    """Balanced random subsets of Fashion-MNIST (Debian package ``dataset-fashion-mnist``) as class folders of PNG."""
    import numpy as np
    from PIL import Image

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.frombuffer(gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        y = np.frombuffer(gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        return x.reshape(-1, 28, 28), y

    if not FASHION.exists():
        raise SystemExit(f"{FASHION} is missing: apt-get install -y dataset-fashion-mnist")
    rng = np.random.default_rng(seed)
    out = []
    for split, n, name in (("train", n_train, "train"), ("t10k", n_test, "test")):
        d = Path(root) / name
        out.append(d)
        if d.exists() and sum(1 for _ in d.rglob("*.png")) == n:
            continue
        x, y = load(split)
        per = n // 10
        for c in range(10):
            idx = rng.choice(np.nonzero(y == c)[0], per, replace=False)
            cd = d / f"{c}"
            cd.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(x[i], "L").save(cd / f"{i:05d}.png")
    return out[0], out[1]


def digits_folders(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's digits (1,797 8x8 images, shipped with scikit-learn) upscaled to 32x32 PNGs, split 2:1."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    cut = len(order) * 2 // 3
    out = []
    for name, idx in (("train", order[:cut]), ("test", order[cut:])):
        d = Path(root) / name
        out.append(d)
        for i in idx:
            img = (digits.images[i] * (255 / 16)).astype(np.uint8)
            cd = d / str(digits.target[i])
            cd.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").resize((32, 32), Image.NEAREST).save(cd / f"{i:04d}.png")
    return out[0], out[1]


def machine() -> str:
    """One line about the machine: CPU model, cores, torch version, load."""
    import os

    import torch

    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}, "
        f"torch threads {torch.get_num_threads()}, load {load:.1f}"
    )


def report(result: dict[str, object], path: str | None) -> None:
    """Print a benchmark's result as JSON, and write it to ``path`` when one is given."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
