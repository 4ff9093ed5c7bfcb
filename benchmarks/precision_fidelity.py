"""Benchmark 3, precision fidelity: bf16 features against fp32 features of the same real pretrained model.

EfficientNet-Lite0 with its packaged ImageNet weights (``effnet/lite0``, offline) embeds a balanced Fashion-MNIST
subset twice, through ``tlkit.extract`` with ``--precision fp32`` and ``--precision bf16``. Reported: per-row cosine
between the two (min, 1st percentile, median), the linear-probe accuracy of each (``LogisticRegression`` on the
train split, scored on the test split) and each run's throughput (the data behind ``--precision auto`` on a CPU).
The last line is the accuracy difference in points (goal: within 0.5; cosine >= 0.99 per row).

    python benchmarks/precision_fidelity.py                      # 500 train / 250 test, 160 px
    python benchmarks/precision_fidelity.py --train 2000 --test 1000 --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _extract_data import digits_folders, fashion_folders, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet/lite0")
    ap.add_argument("--weights", default="pretrained")
    ap.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="fashion-mnist",
                    help="digits ships with scikit-learn (no Debian package needed)")  # fmt: skip
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--test", type=int, default=250)
    ap.add_argument("--size", type=int, default=160, help="input size (DATA.md's reference number uses 160)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--low", default="bf16", choices=["bf16", "fp16"])
    args = ap.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import tlkit

    tmp = Path(tempfile.mkdtemp(prefix="tlkit-bench3-"))
    if args.dataset == "digits":
        train_dir, test_dir = digits_folders(tmp / "digits")
        args.train, args.test = (sum(1 for _ in d.rglob("*.png")) for d in (train_dir, test_dir))
    else:
        train_dir, test_dir = fashion_folders(tmp / "fmnist", args.train, args.test)
    bb = tlkit.get_backbone(args.backbone, weights=args.weights, preprocess={"input_size": [3, args.size, args.size]})
    feats, speed = {}, {}
    for prec in ("fp32", args.low):
        t = time.perf_counter()
        for split, d in (("train", train_dir), ("test", test_dir)):
            out = tmp / f"{split}-{prec}.h5"
            tlkit.extract(bb, d, out, precision=prec, device=args.device)
            feats[(split, prec)] = tlkit.load_features(out)
        speed[prec] = (args.train + args.test) / (time.perf_counter() - t)

    acc = {}
    for prec in ("fp32", args.low):
        Xtr, ytr = feats[("train", prec)]
        Xte, yte = feats[("test", prec)]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        acc[prec] = float((clf.fit(Xtr, ytr).predict(Xte) == yte).mean())
    A = np.concatenate([feats[("train", "fp32")][0], feats[("test", "fp32")][0]])
    B = np.concatenate([feats[("train", args.low)][0], feats[("test", args.low)][0]])
    cos = (A * B).sum(1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1)
    print(f"# {machine()}")
    print(f"# {args.backbone} ({args.weights}), {args.dataset} {args.train} train / {args.test} test at {args.size} px")
    print(f"{'precision':<10}{'probe acc':>10}{'items/s':>10}")
    for prec in ("fp32", args.low):
        print(f"{prec:<10}{acc[prec]:>10.3f}{speed[prec]:>10.1f}")
    print(f"cosine {args.low} vs fp32 per row: min {cos.min():.5f}, p1 {np.percentile(cos, 1):.5f}, "
          f"median {np.median(cos):.5f}")  # fmt: skip
    print(f"speed {args.low}/fp32 = {speed[args.low] / speed['fp32']:.2f}x")
    diff = 100 * (acc[args.low] - acc["fp32"])
    print(f"headline: probe accuracy {args.low} - fp32 = {diff:+.1f} points (goal within 0.5; cosine >= 0.99)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
