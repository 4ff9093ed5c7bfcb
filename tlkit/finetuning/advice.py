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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset
    from tlkit.runtime import Runtime

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
    backbone: Backbone,
    dataset: Dataset,
    max_items: int = 600,
    seed: int = 0,
    runtime: Runtime | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[float, int]:
    """Held-out accuracy of a logistic-regression probe on frozen features of a stratified sample.

    The features are a forward pass like extraction's, so ``runtime`` is resolved for the ``extract`` stage (device,
    autocast precision, batch size and workers; by default everything ``auto``).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlkit.runtime import resolve

    runtime = runtime or resolve("extract", env=False)
    labels = np.asarray([r.label for r in dataset.records])
    rng = np.random.default_rng(seed)
    per = max(2, max_items // max(1, len(dataset.class_names)))
    chosen: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.extend(rng.permutation(idx)[:per].tolist())
    x, y = _probe_features(backbone, dataset.subset(sorted(chosen)), runtime, callback)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=stratify)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean()), int(len(y))


def _probe_features(
    backbone: Backbone, sample: Dataset, runtime: Runtime, callback: Callable[[int, int], None] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features and labels of ``sample`` (items that fail to load are left out)."""
    import numpy as np
    import torch

    from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader
    from tlkit.runtime.batching import to_device

    backbone.load()
    backbone.module.to(runtime.device)
    items = ItemDataset(sample, backbone, train=False)
    batch_size = runtime.batch_size or 32
    loader = make_loader(items, batch_size, EpochSampler(len(items), 0, shuffle=False), runtime)
    feats, ys = [], []
    done = 0
    with torch.inference_mode():
        for batch in loader:
            done += len(batch) + len(batch.skipped)
            if batch.inputs is not None:
                with runtime.autocast():
                    feats.append(backbone.embed(to_device(batch.inputs, runtime.device)).float().cpu().numpy())
                ys.append(batch.labels.numpy())
            if callback is not None:
                callback(done, len(items))
    return np.concatenate(feats), np.concatenate(ys)


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
    from tlkit.finetuning.data import require_labels
    from tlkit.host.readers import open_dataset
    from tlkit.runtime import RuntimeOptions, resolve

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
        runtime = resolve("extract", RuntimeOptions.of(workers=workers), env=False)
        probe, n_probe = probe_accuracy(bb, dataset, probe_items, runtime=runtime, callback=callback)
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
    r = advice.reasons
    r.append(f"{advice.n_items} labelled items in {advice.n_classes} classes, median {median:g} per class: {size} data")
    if probe is not None:
        r.append(
            f"a linear probe on {n_probe} items of frozen {bb} features reaches {probe:.1%} (chance "
            f"{1 / advice.n_classes:.1%}): the domain looks {domain} to the pretraining data"
        )
    else:
        r.append("no --backbone given, so the domain gap is unknown; add --backbone NAME for a quick probe")
    if size == "small":
        _feature_extraction(advice, bb, data)
    elif size == "medium" or domain == "similar":
        _lp_ft(advice, bb, data)
    else:
        _fine_tune_deep(advice, bb, data, max(2, (n_blocks or 4) // 2))
    _warn(advice, values)
    r.append("watch validation closely: keep --val-split (default 0.2) and use --early-stopping")
    return advice


def _feature_extraction(advice: Advice, bb: str, data: str) -> None:
    """Small data: a head on frozen features (from earlier layers too when the domain differs)."""
    r, cmds = advice.reasons, advice.commands
    r.append("with little data, fine-tuning overfits and destroys pretrained features: train a head on frozen ones")
    if advice.domain == "different":
        r.append("the domain differs, so earlier (more generic) layers may transfer better than the last one")
        cmds += [
            f"tlkit extract {bb} {data} -o cache.h5 --layers all",
            "tlkit train cache.h5 -o head-run --head linear --layer auto",
        ]
    else:
        cmds += [
            f"tlkit extract {bb} {data} -o cache.h5",
            "tlkit train cache.h5 -o head-run --head mlp --early-stopping 5",
        ]
    r.append("augment: with so few items per class, cached augmented views help (--views 4 at extraction)")


def _lp_ft(advice: Advice, bb: str, data: str) -> None:
    """Medium data, or a similar domain: a linear probe first, then fine-tune the top from it."""
    advice.strategy, advice.unfreeze = "lp-ft", "last:1" if advice.domain == "similar" else "last:2"
    advice.reasons.append(
        "enough data to adapt the top of the network: train a linear probe on the cache first (seconds), then "
        "fine-tune from it (LP-FT) so the random head does not distort the pretrained features"
    )
    advice.reasons.append(
        "the backbone learns 100× slower than the head (1e-5 vs 1e-3): a normal rate would destroy it"
    )
    advice.commands += [
        f"tlkit extract {bb} {data} -o cache.h5",
        "tlkit train cache.h5 -o probe --head linear",
        f"tlkit finetune {bb} {data} -o ft-run --init-head probe --unfreeze {advice.unfreeze} --lr 1e-3 "
        f"--backbone-lr-ratio 0.01 --epochs 8 --early-stopping 3",
    ]


def _fine_tune_deep(advice: Advice, bb: str, data: str, half: int) -> None:
    """Plenty of data and a domain gap: unfreeze deep, gradually, with layer decay."""
    advice.strategy, advice.unfreeze = "fine-tune", "all" if advice.domain == "different" else f"last:{half}"
    advice.reasons.append(
        "plenty of data and a domain gap: fine-tune deep into the network, unfreezing top-down one block at a "
        "time, with earlier blocks at lower rates (layer decay)"
    )
    advice.commands += [
        f"tlkit lr-find {bb} {data} --unfreeze {advice.unfreeze}",
        f"tlkit finetune {bb} {data} -o ft-run --unfreeze {advice.unfreeze} --gradual --gradual-every 2 "
        f"--head-epochs 1 --layer-decay 0.75 --backbone-lr-ratio 0.1 --epochs 15 --early-stopping 4",
    ]


def _warn(advice: Advice, values: list[int]) -> None:
    if advice.min_per_class < 5:
        advice.warnings.append(
            f"the smallest class has {advice.min_per_class} items; validation scores will be noisy and --val-split "
            f"needs at least 2 per class"
        )
    if advice.min_per_class and max(values) / advice.min_per_class > 5:
        advice.warnings.append(
            "classes are imbalanced (over 5×): use --class-weight balanced and watch balanced accuracy"
        )
