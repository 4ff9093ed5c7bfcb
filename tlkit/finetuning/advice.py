"""``tlkit advise TRAIN [--backbone NAME]``: the decision guide, made executable, and what the defaults do.

The guide crosses two questions: is the dataset small or large, and is its domain close to the pretraining data?

- small (under :data:`SMALL_PER_CLASS` items per class): a head on frozen features, cross-validated on the cache
  (from earlier layers too, ``--layers all`` then ``--layer auto``, when the domain differs);
- otherwise: ``tlkit finetune`` with its defaults, LP-FT of every block (a linear probe on frozen features first,
  then all blocks at a tenth of the head's rate, light augmentation, the best epoch on validation). The defaults
  were chosen by measurement (docs/finetuning.md): on Fashion-MNIST and on text they beat the frozen head. For
  low-resolution images (upscaled at least twice to the model's input) the command adds ``--lr 0.003``: three times
  the default rates, the backbone still a tenth of the head's (measured on Fashion-MNIST, 28 px at 224).

Size comes from the data (items per class). Domain similarity is estimated, when a backbone is given, by a quick
linear probe on a small sample of frozen features: a probe far above chance means the pretrained features already
separate the classes. Every printed command runs as printed, and carries every option advise was given that the
command takes (``--weights``, the preprocessing options, the reader and its options), so the commands extract or
fine-tune what was probed.
"""

from __future__ import annotations

import shlex
import statistics
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.contract.image import preprocess_args
from tlkit.finetuning.optim import BACKBONE_LR_RATIO_BY_MODALITY, DEFAULT_BACKBONE_LR_RATIO, DEFAULT_HEAD_LR
from tlkit.finetuning.options import (
    DEFAULT_EPOCHS,
    DEFAULT_IMAGE_AUGMENT,
    DEFAULT_UNFREEZE,
    DEFAULT_VAL_SPLIT,
    EPOCHS_BY_MODALITY,
)
from tlkit.runtime.progress import ProgressCallback, StageClock

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset
    from tlkit.runtime import Runtime

SMALL_PER_CLASS = 100
LARGE_PER_CLASS = 1000
SIMILAR_SKILL = 0.7  # probe accuracy rescaled so chance = 0 and perfect = 1
DIFFERENT_SKILL = 0.4
#: Images whose (median) shorter side is at most this share of the model's input side are low-resolution: the model
#: sees them upscaled several times (Fashion-MNIST's 28 px at 224 is 1/8).
LOW_RES_SHARE = 0.5
#: The head rate ``advise`` recommends for low-resolution images (the backbone keeps its ratio, so 3e-4): the
#: features of upscaled images are further from what the backbone learned and adapt better at a faster rate
#: (measured on Fashion-MNIST, docs/finetuning.md#low-resolution-images).
LOW_RES_HEAD_LR = 3e-3
#: Images read to measure their size.
SIZE_SAMPLE = 32


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
    #: Images with a backbone: the median shorter side of a sample, the model's input side, and whether the images
    #: are low-resolution (at most :data:`LOW_RES_SHARE` of it).
    image_side: int | None = None
    input_side: int | None = None
    low_resolution: bool = False
    #: The :func:`tlkit.finetune` options the recommended finetune command sets beyond the defaults (``{"lr": 0.003}``
    #: for low-resolution images), so the Python API runs the same recipe: ``tlkit.finetune(bb, train, out,
    #: **advice.finetune_options)``. Empty when the command is the plain default or no finetune is recommended.
    finetune_options: dict[str, Any] = field(default_factory=dict)

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

    from tlkit.finetuning.probe_head import frozen_features
    from tlkit.runtime import resolve

    runtime = runtime or resolve("extract", env=False)
    labels = np.asarray([r.label for r in dataset.records])
    rng = np.random.default_rng(seed)
    per = max(2, max_items // max(1, len(dataset.class_names)))
    chosen: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.extend(rng.permutation(idx)[:per].tolist())
    x, y = frozen_features(backbone, dataset.subset(sorted(chosen)), runtime, callback=callback)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=stratify)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean()), int(len(y))


def image_side(dataset: Dataset, sample: int = SIZE_SAMPLE, seed: int = 0) -> int | None:
    """The median shorter side, in pixels, of up to ``sample`` images of ``dataset`` drawn at random and decoded by
    its reader; ``None`` when none of them decodes."""
    import numpy as np

    from tlkit.data.base import load_or_skip
    from tlkit.data.image import as_rgb_image
    from tlkit.host.readers import get_reader

    reader = get_reader(dataset)
    order = np.random.default_rng(seed).permutation(len(dataset.records))[:sample]
    sides = []
    for i in order.tolist():
        item, reason = load_or_skip(reader, dataset.records[i])
        if reason is None:
            try:
                sides.append(min(as_rgb_image(item).size))
            except Exception:  # an item the model could not take either: it does not count
                continue
    return int(statistics.median(sides)) if sides else None


def input_side(backbone: Backbone) -> int | None:
    """The shorter side of an image backbone's input (``input_size`` ``[C, H, W]``), or ``None``."""
    size = backbone.spec.preprocess.get("input_size") if backbone.modality == "image" else None
    if isinstance(size, list | tuple) and len(size) >= 2:
        return int(min(size[-2:]))
    return None


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
    preprocess: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Advice:
    """Read the dataset (items, classes, items per class), optionally probe ``backbone``, and recommend.

    ``weights`` and ``preprocess`` (overrides, as ``tlkit.get_backbone`` takes them) make the probed backbone, and the
    printed commands repeat them, with ``reader`` and ``reader_options``. ``callback(done, total)`` and ``progress``
    (:class:`tlkit.runtime.progress.ProgressEvent` objects of stage ``features``) follow the probe's forward pass."""
    from tlkit.data.base import Dataset
    from tlkit.finetuning.data import require_labels
    from tlkit.host.readers import open_dataset
    from tlkit.runtime import RuntimeOptions, resolve

    bb = None
    if backbone is not None:
        from tlkit.host.api import get_backbone

        bb = get_backbone(backbone, weights=weights or "pretrained", preprocess=dict(preprocess or {}))
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
        clock = StageClock(progress, "features")
        clock(0, 0, f"loading {bb.name}")

        def step(done: int, total: int) -> None:
            clock(done, total)
            if callback is not None:
                callback(done, total)

        probe, n_probe = probe_accuracy(bb, dataset, probe_items, runtime=runtime, callback=step)
    k = max(2, len(per_class))
    domain = "unknown"
    if probe is not None:
        skill = (probe - 1 / k) / (1 - 1 / k)
        domain = "similar" if skill >= SIMILAR_SKILL else ("different" if skill < DIFFERENT_SKILL else "partly similar")
    sides: tuple[int | None, int | None] = (None, None)
    if bb is not None and bb.modality == "image" and dataset.modality == "image":
        sides = (image_side(dataset), input_side(bb))
    carried = command_options(weights, preprocess, reader, reader_options)
    return _recommend(dataset, per_class, median, size, probe, n_probe, domain, backbone, carried, sides)


def command_options(
    weights: str | None,
    preprocess: Mapping[str, Any] | None,
    reader: str | None,
    reader_options: Mapping[str, Any] | None,
) -> str:
    """The options every printed ``extract``/``finetune`` command repeats (shell-quoted), so it reads and builds
    what advise read and probed."""
    args: list[str] = []
    if weights not in (None, "pretrained"):
        args += ["--weights", str(weights)]
    args += preprocess_args(preprocess or {})
    if reader:
        args += ["--reader", reader]
    for key, value in (reader_options or {}).items():
        args += ["--reader-option", f"{key}={value}"]
    return "".join(" " + shlex.quote(a) for a in args)


def _recommend(
    dataset: Any,
    per_class: dict[str, int],
    median: float,
    size: str,
    probe: float | None,
    n_probe: int,
    domain: str,
    backbone: str | None,
    carried: str = "",
    sides: tuple[int | None, int | None] = (None, None),
) -> Advice:
    bb = shlex.quote(backbone) if backbone else "BACKBONE"
    data = shlex.quote(str(dataset.root))
    values = list(per_class.values())
    image_px, input_px = sides
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
        image_side=image_px,
        input_side=input_px,
        low_resolution=image_px is not None and input_px is not None and image_px <= LOW_RES_SHARE * input_px,
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
    if advice.image_side is not None and advice.input_side is not None:
        scale = advice.input_side / max(1, advice.image_side)
        r.append(
            f"the images are {advice.image_side} px on their shorter side (median of a sample) and the model takes "
            f"{advice.input_side} px: "
            + (f"low-resolution, upscaled {scale:.3g}×" if advice.low_resolution else "not low-resolution")
        )
    if size == "small":
        _feature_extraction(advice, bb, data, carried)
    else:
        _default_finetune(advice, bb, data, dataset.modality, carried)
    _warn(advice, values)
    return advice


def _feature_extraction(advice: Advice, bb: str, data: str, carried: str) -> None:
    """Small data: a head on frozen features (from earlier layers too when the domain differs)."""
    r, cmds = advice.reasons, advice.commands
    r.append(
        f"with under {SMALL_PER_CLASS} items per class, fine-tuning has little to learn from and a noisy validation "
        f"split to choose on: train a head on frozen features (cross-validated on the cache)"
    )
    if advice.domain == "different":
        r.append("the domain differs, so earlier (more generic) layers may transfer better than the last one")
        cmds += [
            f"tlkit extract {bb} {data} -o cache.h5{carried} --layers all",
            "tlkit train cache.h5 -o head-run --layer auto",
        ]
    else:
        cmds += [f"tlkit extract {bb} {data} -o cache.h5{carried}", "tlkit train cache.h5 -o head-run"]
    r.append(
        f"to try fine-tuning anyway: tlkit finetune {bb} {data} -o ft-run{carried} (it starts from a linear probe, "
        f"so it begins where the frozen head ends, and keeps its best epoch on validation)"
    )


def _default_finetune(advice: Advice, bb: str, data: str, modality: str, carried: str) -> None:
    """Enough data to adapt the network: the defaults of ``tlkit finetune`` (measured: docs/finetuning.md)."""
    advice.strategy, advice.unfreeze = "lp-ft", DEFAULT_UNFREEZE
    epochs = EPOCHS_BY_MODALITY.get(modality, DEFAULT_EPOCHS)
    r = advice.reasons
    r.append(
        "enough data to adapt the whole network: tlkit finetune's defaults do LP-FT. They first fit a linear probe "
        "on frozen features of the training split (its L2 strength cross-validated, like tlkit train's default "
        "head), start the head from it so that a random head never drives the backbone's first updates (tempered "
        "to leave at least a quarter of chance's training loss, so the features still adapt), then fine-tune every "
        "block (--unfreeze all)"
    )
    ratio = BACKBONE_LR_RATIO_BY_MODALITY.get(modality, DEFAULT_BACKBONE_LR_RATIO)
    r.append(
        f"the backbone learns at {ratio:g}× the head's rate ({ratio * DEFAULT_HEAD_LR:.0e} against "
        f"{DEFAULT_HEAD_LR:.0e}), with AdamW, a 10 % warm-up and cosine decay: the old default (0.01×, only the top "
        f"block) underfit and lost to the frozen probe in the measurements"
    )
    r.append(
        f"{epochs} epochs (the default for a {modality} backbone); the best epoch on a {DEFAULT_VAL_SPLIT:.0%} "
        f"validation split is kept, so a run that stops improving loses nothing"
    )
    if modality == "image":
        r.append(
            f"augmentation: a light crop (scale 0.7-1) and flip ({DEFAULT_IMAGE_AUGMENT!r}); ImageNet's "
            f"RandomResizedCrop(0.08-1) loses too much of small or upscaled images"
        )
    if modality == "image" and advice.low_resolution:
        advice.finetune_options["lr"] = LOW_RES_HEAD_LR
        r.append(
            f"the images are low-resolution, so --lr {LOW_RES_HEAD_LR:g}: the head at {LOW_RES_HEAD_LR:.0e} and the "
            f"backbone at {LOW_RES_HEAD_LR * ratio:.0e} (the same {1 / ratio:g}× ratio). Features of upscaled images "
            f"are further from what the backbone learned and adapt better at the faster rate (Fashion-MNIST, 28 px "
            f"at 224, in docs/finetuning.md)"
        )
    flags = "".join(f" --{key.replace('_', '-')} {value:g}" for key, value in advice.finetune_options.items())
    advice.commands += [f"tlkit finetune {bb} {data} -o ft-run{carried}{flags}"]


def _warn(advice: Advice, values: list[int]) -> None:
    if advice.min_per_class < 5:
        advice.warnings.append(
            f"the smallest class has {advice.min_per_class} items; validation scores will be noisy and --val-split "
            f"needs at least 2 per class"
        )
    if advice.min_per_class and max(values) / advice.min_per_class > 5:
        advice.warnings.append(
            "classes are imbalanced (over 5×): watch balanced accuracy (tlkit train takes --class-weight balanced)"
        )
