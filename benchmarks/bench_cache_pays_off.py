"""Cache pays off: ``tlkit extract`` + 10 epochs of ``tlkit train --head mlp`` against the seed's frozen-backbone loop.

A (tlkit): two real CLI calls, end to end::

    tlkit extract BACKBONE DATA -o cache.h5 --weights none
    tlkit train cache.h5 -o run --head mlp --epochs 10 --val-split 0

B (the seed): the textbook frozen-backbone PyTorch loop in its own Python process: ``ImageFolder`` with
``Resize``/``CenterCrop`` to the model's input size and its normalisation, ``DataLoader(batch_size=32)`` with
``num_workers=0``, fp32; every epoch runs the frozen backbone forward under ``torch.no_grad()`` and trains the same
head (Dense 256, ReLU, Dropout 0.5, Adam).

Same image folder, model (random init: weights do not change the timing) and thread count. Runs alternate
A B A B ... after a warm-up; each figure is the median of ``--reps`` wall times, interpreter start-up included on
both sides. The last line is the headline ratio B / A (goal >= 8).

    python benchmarks/bench_cache_pays_off.py                      # defaults: timm/resnet18, 240 images, 5 reps
    python benchmarks/bench_cache_pays_off.py --backbone timm/resnet50 --images 480
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_data(root: Path, images: int, classes: int) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(root, classes=classes, per_class=images // classes, size=(256, 256), seed=1)


def run_tlkit(args: argparse.Namespace, data: Path, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache, run = work / "cache.h5", work / "run"
    start = time.perf_counter()
    for cmd in (
        ["extract", args.backbone, str(data), "-o", str(cache), "--weights", "none", "--quiet"],
        ["train", str(cache), "-o", str(run), "--head", "mlp", "--epochs", str(args.epochs), "--val-split", "0", "-q"],
    ):
        subprocess.run([sys.executable, "-m", "tlkit", *cmd], check=True, capture_output=True)
    return time.perf_counter() - start


def run_seed(args: argparse.Namespace, data: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--seed-loop",
            "--backbone",
            args.backbone,
            "--epochs",
            str(args.epochs),
            "--data",
            str(data),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def seed_loop(args: argparse.Namespace) -> None:
    """The seed's loop, as a practitioner writes it from the PyTorch/timm docs."""
    import timm
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    arch = args.backbone.removeprefix("timm/")
    model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    cfg = timm.data.resolve_model_data_config(model)
    size = cfg["input_size"][1:]
    tf = transforms.Compose(
        [
            transforms.Resize(int(size[0] / cfg.get("crop_pct", 0.875))),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    dataset = ImageFolder(args.data, transform=tf)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0)
    head = nn.Sequential(nn.Linear(model.num_features, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 3))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        for x, y in loader:
            with torch.no_grad():
                feats = model(x)
            loss = nn.functional.cross_entropy(head(feats), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="timm/resnet18", help="a timm/<arch> backbone (random init)")
    parser.add_argument("--images", type=int, default=240, help="images in the folder (3 classes)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5, help="alternated repetitions of A and B")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP/MKL threads for both")
    parser.add_argument("--seed-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_loop:
        seed_loop(args)
        return
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as tmp:
        data = make_data(Path(tmp) / "images", args.images, 3)
        run_tlkit(args, data, Path(tmp) / "warm")  # warm-up: page cache, compiled kernels, first imports
        times_a, times_b = [], []
        for rep in range(args.reps):
            times_a.append(run_tlkit(args, data, Path(tmp) / "a"))
            times_b.append(run_seed(args, data))
            print(f"rep {rep + 1}: tlkit {times_a[-1]:.1f} s   seed loop {times_b[-1]:.1f} s", flush=True)
    a, b = statistics.median(times_a), statistics.median(times_b)
    print(f"\n{'':32}{'median s':>10}")
    print(f"{'A tlkit extract + train (mlp)':32}{a:10.1f}")
    print(f"{'B seed loop, forward per epoch':32}{b:10.1f}")
    print(f"cache pays off ({args.backbone}, {args.images} images, {args.epochs} epochs): B/A = {b / a:.1f}x")


if __name__ == "__main__":
    main()
