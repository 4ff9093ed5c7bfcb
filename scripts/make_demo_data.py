"""Cut the demo sample that ships inside tlkit (``tlkit/demo/data``) from Fashion-MNIST.

Fashion-MNIST (Zalando Research, MIT licence) comes from the Debian package ``dataset-fashion-mnist``. The sample is
the first ``--train`` images of each class in the training set and the first ``--val`` of each class in the test
set, written as 28x28 greyscale PNGs in class folders::

    tlkit/demo/data/train/<class>/NNNNN.png
    tlkit/demo/data/val/<class>/NNNNN.png

The output is deterministic (same source, same bytes), so a test can check that the shipped sample is what this
script makes.

    python scripts/make_demo_data.py                  # rewrite tlkit/demo/data
    python scripts/make_demo_data.py --out /tmp/demo  # somewhere else
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "tlkit" / "demo" / "data"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
TRAIN_PER_CLASS = 80
VAL_PER_CLASS = 20


def read_idx(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of one split (``train`` or ``t10k``)."""
    images = np.frombuffer(gzip.open(source / f"{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(source / f"{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 28, 28), labels


def write_split(images: np.ndarray, labels: np.ndarray, per_class: int, out: Path) -> int:
    """The first ``per_class`` images of each class as PNGs; returns the number written."""
    written = 0
    for c, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[index], "L").save(folder / f"{index:05d}.png", optimize=True)
            written += 1
    return written


def make(source: Path = SOURCE, out: Path = OUT, train: int = TRAIN_PER_CLASS, val: int = VAL_PER_CLASS) -> int:
    """Write the sample under ``out`` (replacing ``out/train`` and ``out/val``); returns the number of files."""
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{source}: Fashion-MNIST not found; apt-get install dataset-fashion-mnist")
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
    n = write_split(*read_idx(source, "train"), train, out / "train")
    n += write_split(*read_idx(source, "t10k"), val, out / "val")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with the Fashion-MNIST .gz files")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: tlkit/demo/data)")
    parser.add_argument("--train", type=int, default=TRAIN_PER_CLASS, help="training images per class")
    parser.add_argument("--val", type=int, default=VAL_PER_CLASS, help="validation images per class")
    args = parser.parse_args()
    n = make(args.source, args.out, args.train, args.val)
    size = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"wrote {n} PNGs ({size / 1024:.0f} KB) under {args.out}")


if __name__ == "__main__":
    main()
