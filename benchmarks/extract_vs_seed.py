"""Benchmark 2: ``tlkit extract`` with its defaults against the seed's textbook PyTorch extraction loop.

A: ``tlkit.extract(backbone, folder, cache)`` with default options (precision/batch size/workers ``auto``,
   channels_last for CNNs, preprocessing from the model's pretrained config), the backbone already built.
B: the seed's loop: ``ImageFolder`` + ``Resize(256)``/``CenterCrop(224)``/``ToTensor``/``Normalize(ImageNet)``,
   ``DataLoader(batch_size=32, num_workers=0)``, fp32, ``torch.no_grad()``, ``model(x)`` (the same timm model,
   built with ``num_classes=0`` so it returns pooled features), features gathered into one numpy array.

Same image folder, model and thread count. Runs alternate A B A B ... after one warm-up each; figures are medians
of ``--reps``. The last line is the headline ratio of throughputs A/B (goal >= 2 on a CPU, >= 5 on a GPU).

    python benchmarks/extract_vs_seed.py                                   # timm/resnet18, 128 photos
    python benchmarks/extract_vs_seed.py --backbone timm/resnet50 --device cuda --images 2048
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _extract_data import machine, photo_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="timm/resnet18")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--device", default="auto", help="device for both A and B")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", default="500x375", help="WxH of the generated JPEGs (default 500x375)")
    ap.add_argument(
        "--decode", default="reduced", choices=["reduced", "exact", "device"], help="tlkit's decoding (A only)"
    )
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    import tlkit
    from tlkit.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="tlkit-bench2-"))
    data = args.data or photo_folder(tmp / "photos", args.images, size=_size(args.size))
    dev = resolve_device(args.device)
    bb = tlkit.get_backbone(args.backbone, weights="none").load()
    seed_model = timm.create_model(args.backbone.removeprefix("timm/"), pretrained=False, num_classes=0).eval()
    seed_model.to(dev)
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    folder = ImageFolder(str(data), transform=tf)
    n = len(folder)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_a() -> float:
        out = tmp / "a.h5"
        out.unlink(missing_ok=True)
        sync()
        t = time.perf_counter()
        res = tlkit.extract(bb, data, out, device=args.device, decode=args.decode)
        sync()
        run_a.res = res  # type: ignore[attr-defined]
        return time.perf_counter() - t

    def run_b() -> float:
        sync()
        t = time.perf_counter()
        feats = []
        with torch.no_grad():
            for x, _ in DataLoader(folder, batch_size=32, num_workers=0):
                feats.append(seed_model(x.to(dev)).cpu().numpy())
        np.concatenate(feats)
        sync()
        return time.perf_counter() - t

    run_a(), run_b()  # warm-up
    ta, tb = [], []
    for _ in range(args.reps):
        ta.append(run_a())
        tb.append(run_b())
    a, b = n / statistics.median(ta), n / statistics.median(tb)
    res = run_a.res  # type: ignore[attr-defined]
    print(f"# {machine()}")
    print(f"# {args.backbone} (random init), {n} images {args.size} from {data}, {args.reps} reps; tlkit defaults "
          f"resolved to device {res.device}, precision {res.precision}, batch {res.batch_size}, workers "
          f"{res.workers} (measured), decode {args.decode}")  # fmt: skip
    print(f"{'run':<40}{'median s':>10}{'items/s':>10}")
    print(f"{'A: tlkit.extract, defaults':<40}{statistics.median(ta):>10.2f}{a:>10.1f}")
    print(f"{'B: seed loop (ImageFolder, bs 32, fp32)':<40}{statistics.median(tb):>10.2f}{b:>10.1f}")
    print(f"headline: tlkit extract vs the seed's loop A/B = {a / b:.2f}x (goal >= 2x on a CPU, >= 5x on a GPU)")
    shutil.rmtree(tmp, ignore_errors=True)


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


if __name__ == "__main__":
    main()
