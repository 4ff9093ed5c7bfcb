"""Fine-tuning in bf16 autocast against fp32 on the CPU: test accuracy (fidelity) and training throughput.

The runtime resolves ``--precision auto`` to bf16 for every stage on a CPU with native bf16 (AVX512-BF16/AMX), fine-
tuning included (docs/runtime.md). This benchmark backs that default with two measurements on real data:

1. **fidelity**: ``tlkit.finetune`` of EfficientNet-Lite0 (the example plugin's ImageNet weights) on a Fashion-MNIST
   sample, once in fp32 and once in bf16 for each seed, each scored with ``tlkit.evaluate`` in its own precision
   on a disjoint test sample from t10k that chose nothing. Goal: mean bf16 accuracy within 0.5 points of fp32.
2. **throughput**: training items/s of one epoch (``metrics.jsonl``'s ``items_per_s``), bf16 and fp32 alternated
   A B A B after a warm-up, median of ``--reps``. The headline is the ratio bf16/fp32.

    python benchmarks/finetune_precision.py --per-class 40 --test-per-class 100 --seeds 3 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    native = sorted(set(flags) & {"avx512_bf16", "amx_bf16"})
    return f"{model}; native bf16: {', '.join(native) or 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=40, help="training items per class")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--unfreeze", default="last:3")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5, help="timed one-epoch runs per precision")
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
    common = {
        "unfreeze": args.unfreeze,
        "head": "linear",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": "cpu",
        "val_split": 0.0,
    }
    print(f"machine: {cpu_flags()}; torch {torch.__version__}; {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = fashion_mnist_folder(root / "train", "train", args.per_class, seed=0)
        test = fashion_mnist_folder(root / "test", "t10k", args.test_per_class, seed=1)

        accuracy: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for seed in range(args.seeds):
            for precision in ("fp32", "bf16"):
                run = root / f"acc-{precision}-{seed}"
                tlkit.finetune(backbone, train, run, precision=precision, seed=seed, epochs=args.epochs, **common)
                ev = tlkit.evaluate(run, test, precision=precision, workers=args.workers, device="cpu")
                accuracy[precision].append(ev.report.accuracy)
                print(f"seed {seed} {precision}: test accuracy {ev.report.accuracy:.4f}", flush=True)

        speed: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for rep in range(args.reps + 1):  # the first round is the warm-up
            for precision in ("fp32", "bf16"):
                run = root / f"speed-{precision}-{rep}"
                result = tlkit.finetune(backbone, train, run, precision=precision, epochs=1, head_epochs=0, **common)
                ips = float(result.history[-1]["items_per_s"])
                if rep:
                    speed[precision].append(ips)
                print(f"rep {rep} {precision}: {ips:.1f} training items/s{' (warm-up)' if not rep else ''}", flush=True)

    fp32, bf16 = statistics.mean(accuracy["fp32"]), statistics.mean(accuracy["bf16"])
    s32, s16 = statistics.median(speed["fp32"]), statistics.median(speed["bf16"])
    print()
    print(
        f"| effnet/lite0 @ {size}px, Fashion-MNIST {args.per_class}/class train, {args.test_per_class}/class test, "
        f"--unfreeze {args.unfreeze}, {args.epochs} epochs, {args.seeds} seeds | fp32 | bf16 |"
    )
    print("|---|---|---|")
    print(f"| test accuracy, mean over seeds | {fp32:.4f} | {bf16:.4f} |")
    print(f"| training items/s, median of {args.reps} | {s32:.1f} | {s16:.1f} |")
    print(f"accuracy bf16 - fp32: {100 * (bf16 - fp32):+.2f} points")
    print(f"throughput bf16/fp32: {s16 / s32:.2f}x")


if __name__ == "__main__":
    main()
