"""Fine-tuning overhead: `tlkit.finetune` step time against a hand-written PyTorch loop.

Both train the same backbone (random init, so no download) with the same unfrozen blocks, the same per-block
learning rates, the same augmentation (the backbone's training transform), batch size, workers, precision and
threads. The hand-written loop is the textbook one: ImageFolder + DataLoader(shuffle=True), only the trainable
parameters in AdamW (one group per unfrozen block plus the head), frozen BatchNorm put back in eval mode after
``model.train()``, forward, backward, step. tlkit adds its own machinery: every group created up front, the
learning-rate schedule, gradient clipping, progress events, skipped-item handling.

A step's time is the interval between two consecutive steps (data wait included); the first ``--warmup`` steps of
each run are dropped. Runs alternate A B A B ...; the figure is the median over ``--reps`` runs of each run's median
step. The last line is the headline ratio (goal ≤ 1.05).

    python benchmarks/finetune_overhead.py --backbone timm/resnet18 --input-size 112 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def make_data(root: Path, items: int, classes: int) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(root, classes=classes, per_class=items // classes, size=(144, 144), seed=1)


def run_tlkit(args: argparse.Namespace, data: Path, out: Path) -> tuple[float, float]:
    import tlkit

    stamps: list[tuple[float, float]] = []

    def on_event(ev) -> None:
        if ev.kind == "step":
            stamps.append((time.perf_counter(), time.process_time()))

    start = time.perf_counter()
    tlkit.finetune(
        args.backbone,
        data,
        out,
        weights="none",
        input_size=args.input_size,
        unfreeze=args.unfreeze,
        head_epochs=0,
        epochs=1,
        val_split=0.0,
        batch_size=args.batch_size,
        workers=args.workers,
        precision="fp32",
        device="cpu",
        head="linear",
        callback=on_event,
    )
    return _step_times(stamps, args.warmup), time.perf_counter() - start


def _step_times(stamps: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Median wall and process-CPU time between consecutive steps, after ``warmup`` steps."""
    pairs = list(zip(stamps, stamps[1:], strict=False))[warmup:]
    return statistics.median(b[0] - a[0] for a, b in pairs), statistics.median(b[1] - a[1] for a, b in pairs)


def run_manual(args: argparse.Namespace, data: Path) -> tuple[float, float]:
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    import tlkit
    from tlkit.finetuning.freeze import resolve_unfreeze

    start = time.perf_counter()
    torch.manual_seed(0)
    size = args.input_size
    bb = tlkit.get_backbone(args.backbone, weights="none", preprocess={"input_size": [3, size, size]})
    bb.load()
    model = bb.module
    blocks = bb.blocks()
    trainable = set(resolve_unfreeze(args.unfreeze, blocks))
    named = dict(model.named_parameters())
    dataset = ImageFolder(str(data), transform=lambda img: bb.preprocess_item(img, train=True))
    head = torch.nn.Linear(bb.spec.embed_dim, len(dataset.classes))
    groups = []
    for b in blocks:
        for p in b.params:
            named[p].requires_grad_(b.name in trainable)
        if b.name in trainable:
            groups.append({"params": [named[p] for p in b.params], "lr": 1e-5})
    groups.append({"params": list(head.parameters()), "lr": 1e-3})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    trainable_params = {p for b in blocks if b.name in trainable for p in b.params}
    frozen_bn = [
        m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and f"{name}.weight" not in trainable_params
    ]
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    model.train()
    for m in frozen_bn:
        m.eval()
    loss_fn = torch.nn.CrossEntropyLoss()
    stamps: list[tuple[float, float]] = []
    for x, y in loader:
        loss = loss_fn(head(bb.embed(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stamps.append((time.perf_counter(), time.process_time()))
    return _step_times(stamps, args.warmup), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="timm/resnet18")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--items", type=int, default=320)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unfreeze", default="last:2")
    parser.add_argument("--workers", type=int, default=0, help="0 keeps data loading in the timed process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    runs: dict[str, list[tuple[tuple[float, float], float]]] = {"tlkit finetune": [], "hand-written loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.items, args.classes)
        run_manual(args, data)  # warm-up: imports, allocator, page cache
        for rep in range(args.reps):
            runs["tlkit finetune"].append(run_tlkit(args, data, Path(tmp) / f"run{rep}"))
            runs["hand-written loop"].append(run_manual(args, data))
            (a_wall, a_cpu), _ = runs["tlkit finetune"][-1]
            (b_wall, b_cpu), _ = runs["hand-written loop"][-1]
            print(
                f"rep {rep + 1}: tlkit {a_wall * 1e3:.0f} ms/step ({a_cpu * 1e3:.0f} ms CPU), "
                f"hand-written {b_wall * 1e3:.0f} ms/step ({b_cpu * 1e3:.0f} ms CPU)",
                flush=True,
            )
    med = {
        name: (
            statistics.median(r[0][0] for r in rows),
            statistics.median(r[0][1] for r in rows),
            statistics.median(r[1] for r in rows),
        )
        for name, rows in runs.items()
    }
    print()
    print(
        f"| {args.backbone} @ {args.input_size}px, batch {args.batch_size}, unfreeze {args.unfreeze}, "
        f"{args.threads} thread(s), {args.workers} workers | step (wall) | step (process CPU) | 1 epoch, end to end |"
    )
    print("|---|---|---|---|")
    for name, (wall, cpu, total) in med.items():
        print(f"| {name} | {wall * 1e3:.0f} ms | {cpu * 1e3:.0f} ms | {total:.1f} s |")
    (a_wall, a_cpu, _), (b_wall, b_cpu, _) = med.values()
    print(f"step-time ratio tlkit / hand-written: wall {a_wall / b_wall:.3f}, CPU {a_cpu / b_cpu:.3f}")


if __name__ == "__main__":
    main()
