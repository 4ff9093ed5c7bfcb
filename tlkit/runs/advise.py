"""``tlkit advise TRAIN [--backbone NAME]``: the seed's decision guide, made executable.

The guide crosses two questions: is the dataset small or large, and is its domain close to the pretraining data?

- small, similar domain: feature extraction (a head on frozen features) — fine-tuning would overfit;
- small, different domain: feature extraction, trying earlier layers (``--layers all`` then ``--layer auto``);
- large, similar domain: fine-tune the top blocks at a low backbone rate, head first;
- large, different domain: fine-tune more of the network, top-down, with layer-wise decay.

Size comes from the data (items per class). Domain similarity is estimated, when a backbone is given, by a quick
linear probe on a small sample of frozen features: a probe far above chance means the pretrained features already
separate the classes.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SMALL_PER_CLASS = 100
LARGE_PER_CLASS = 1000
SIMILAR_SKILL = 0.7  # probe accuracy rescaled so chance = 0 and perfect = 1
DIFFERENT_SKILL = 0.4


@dataclass
class Advice:
    """The recommendation and the facts behind it."""

    n_items: int
    n_classes: int
    per_class: dict[str, int]
    min_per_class: int
    median_per_class: float
    size: str  # "small" | "medium" | "large"
    probe_accuracy: float | None
    probe_items: int
    domain: str  # "similar" | "partly similar" | "different" | "unknown"
    strategy: str  # "feature-extraction" | "lp-ft" | "fine-tune"
    unfreeze: str | None
    commands: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_accuracy(
    backbone: Any,
    dataset: Any,
    max_items: int = 600,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[float, int]:
    """Held-out accuracy of a logistic-regression probe on frozen features of a stratified sample."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlkit.finetuning.data import EpochSampler, ItemDataset, default_workers, make_loader

    labels = np.asarray([r.label for r in dataset.records])
    rng = np.random.default_rng(seed)
    per = max(2, max_items // max(1, len(dataset.class_names)))
    chosen: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.extend(rng.permutation(idx)[:per].tolist())
    sample = dataset.subset(sorted(chosen))
    backbone.load()
    items = ItemDataset(sample, backbone, train=False)
    loader = make_loader(
        items,
        batch_size,
        EpochSampler(len(items), 0, shuffle=False),
        default_workers() if workers is None else workers,
        torch.device("cpu"),
    )
    feats, ys = [], []
    done = 0
    with torch.inference_mode():
        for batch in loader:
            done += len(batch) + len(batch.skipped)
            if batch.inputs is not None:
                feats.append(backbone.embed(batch.inputs).float().numpy())
                ys.append(batch.labels.numpy())
            if callback is not None:
                callback(done, len(items))
    x, y = np.concatenate(feats), np.concatenate(ys)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=stratify)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean()), int(len(y))


def advise(
    train: Any,
    backbone: str | None = None,
    *,
    weights: str | None = None,
    probe_items: int = 600,
    modality: str | None = None,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> Advice:
    """Read the dataset (items, classes, items per class), optionally probe ``backbone``, and recommend."""
    from tlkit.data.base import Dataset
    from tlkit.data.open import open_dataset
    from tlkit.finetuning.data import require_labels

    bb = None
    if backbone is not None:
        from tlkit.host.api import get_backbone

        bb = get_backbone(backbone, weights=weights or "pretrained")
        modality = bb.modality
    if isinstance(train, Dataset):
        dataset = train
    else:
        dataset = open_dataset(train, modality=modality or "image", reader=reader, **dict(reader_options or {}))
    require_labels(dataset, "advise on")
    counts = Counter(r.label for r in dataset.records)
    per_class = {name: counts.get(i, 0) for i, name in enumerate(dataset.class_names)}
    values = list(per_class.values())
    median = float(statistics.median(values))
    size = "small" if median < SMALL_PER_CLASS else ("large" if median >= LARGE_PER_CLASS else "medium")
    probe = None
    n_probe = 0
    if bb is not None:
        probe, n_probe = probe_accuracy(bb, dataset, probe_items, workers=workers, callback=callback)
    k = max(2, len(per_class))
    domain = "unknown"
    if probe is not None:
        skill = (probe - 1 / k) / (1 - 1 / k)
        domain = "similar" if skill >= SIMILAR_SKILL else ("different" if skill < DIFFERENT_SKILL else "partly similar")
    n_blocks = len(bb.blocks()) if bb is not None else None
    return _recommend(dataset, per_class, median, size, probe, n_probe, domain, backbone, n_blocks)


def _recommend(
    dataset: Any,
    per_class: dict[str, int],
    median: float,
    size: str,
    probe: float | None,
    n_probe: int,
    domain: str,
    backbone: str | None,
    n_blocks: int | None,
) -> Advice:
    bb = backbone or "BACKBONE"
    data = str(dataset.root)
    values = list(per_class.values())
    advice = Advice(
        n_items=len(dataset.records),
        n_classes=len(per_class),
        per_class=per_class,
        min_per_class=min(values),
        median_per_class=median,
        size=size,
        probe_accuracy=probe,
        probe_items=n_probe,
        domain=domain,
        strategy="feature-extraction",
        unfreeze=None,
    )
    r, cmds, warn = advice.reasons, advice.commands, advice.warnings
    r.append(f"{advice.n_items} labelled items in {advice.n_classes} classes, median {median:g} per class: {size} data")
    if probe is not None:
        r.append(
            f"a linear probe on {n_probe} items of frozen {bb} features reaches {probe:.1%} (chance "
            f"{1 / advice.n_classes:.1%}): the domain looks {domain} to the pretraining data"
        )
    else:
        r.append("no --backbone given, so the domain gap is unknown; add --backbone NAME for a quick probe")
    half = max(2, (n_blocks or 4) // 2)
    extract = f"tlkit extract {bb} {data} -o cache.h5"
    if size == "small":
        r.append("with little data, fine-tuning overfits and destroys pretrained features: train a head on frozen ones")
        if domain == "different":
            r.append("the domain differs, so earlier (more generic) layers may transfer better than the last one")
            cmds += [
                f"tlkit extract {bb} {data} -o cache.h5 --layers all",
                "tlkit train cache.h5 -o head-run --head linear --layer auto",
            ]
        else:
            cmds += [extract, "tlkit train cache.h5 -o head-run --head mlp --early-stopping 5"]
        r.append("augment: with so few items per class, cached augmented views help (--views 4 at extraction)")
    elif size == "medium" or domain == "similar":
        advice.strategy, advice.unfreeze = "lp-ft", "last:1" if domain == "similar" else "last:2"
        r.append(
            "enough data to adapt the top of the network: train a linear probe on the cache first (seconds), then "
            "fine-tune from it (LP-FT) so the random head does not distort the pretrained features"
        )
        r.append("the backbone learns 100× slower than the head (1e-5 vs 1e-3): a normal rate would destroy it")
        cmds += [
            extract,
            "tlkit train cache.h5 -o probe --head linear",
            f"tlkit finetune {bb} {data} -o ft-run --init-head probe --unfreeze {advice.unfreeze} --lr 1e-3 "
            f"--backbone-lr-ratio 0.01 --epochs 8 --early-stopping 3",
        ]
    else:
        advice.strategy, advice.unfreeze = "fine-tune", "all" if domain == "different" else f"last:{half}"
        r.append(
            "plenty of data and a domain gap: fine-tune deep into the network, unfreezing top-down one block at a "
            "time, with earlier blocks at lower rates (layer decay)"
        )
        cmds += [
            f"tlkit lr-find {bb} {data} --unfreeze {advice.unfreeze}",
            f"tlkit finetune {bb} {data} -o ft-run --unfreeze {advice.unfreeze} --gradual --gradual-every 2 "
            f"--head-epochs 1 --layer-decay 0.75 --backbone-lr-ratio 0.1 --epochs 15 --early-stopping 4",
        ]
    if advice.min_per_class < 5:
        warn.append(
            f"the smallest class has {advice.min_per_class} items; validation scores will be noisy and --val-split "
            f"needs at least 2 per class"
        )
    if advice.min_per_class and max(values) / advice.min_per_class > 5:
        warn.append("classes are imbalanced (over 5×): use --class-weight balanced and watch balanced accuracy")
    r.append("watch validation closely: keep --val-split (default 0.2) and use --early-stopping")
    return advice
