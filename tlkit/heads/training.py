"""Head training on cached features: ``tlkit train`` and ``tlkit.train_head(...)``.

Features come from a cache (:mod:`tlkit.heads.tables` loads them as tensors when they fit, streams them otherwise), so
an epoch costs a pass over ``[N, D]`` floats, not a backbone forward. Three ways to fit a head:

- torch heads (``linear``, ``mlp``, plugin heads) train with AdamW, with early stopping and the best checkpoint
  chosen on validation;
- ``fit_features`` heads (``knn``) and scikit-learn estimators (``sklearn``) are fitted once on every training row;
- ``sweep=True`` trains a grid of linear probes at once (:mod:`tlkit.heads.probes`) and keeps the best on validation.

``layer="auto"`` first probes every cached layer and trains the head on the one that validates best.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError, FingerprintMismatchError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.cache.core import FeatureCache
    from tlkit.runs.metrics import ClassificationReport
    from tlkit.heads.probes import ProbeScore
    from tlkit.heads.tables import FeatureSource, FeatureTable

DEFAULT_HEAD = "mlp"
DEFAULT_EPOCHS = 30
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_VAL_SPLIT = 0.2
#: The sweep's default grid: 7 AdamW learning rates x 5 decoupled weight decays = 35 linear probes.
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
EVAL_BATCH = 8192
AUTO_LAYER = "auto"
#: The name ``layer="auto"`` reports for the final (pooled) embedding, the ``features`` dataset.
FINAL = "features"
RUN_FILES = ("config.json", "head.safetensors", "head.skops", "metrics.jsonl", "report.json", "sweep.json")


@dataclass
class TrainEvent:
    """A progress event for the ``progress`` callback.

    ``kind`` is ``"start"``, ``"layer"`` (probing layer ``step`` of ``steps`` for ``layer="auto"``, ``message`` is
    its name), ``"epoch"`` (``epoch`` of ``epochs`` finished, ``metrics`` filled), ``"fit"`` (a one-shot head is
    being fitted) or ``"done"``.
    """

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """What :func:`train_head` returns.

    Attributes:
        run_dir: the run directory (``config.json``, ``head.safetensors`` or ``head.skops``, ``metrics.jsonl``,
            ``report.json``, ``curves.png``, ``confusion.png``, and ``sweep.json`` for a sweep).
        head, head_params: the registered head name and its parameters (a sweep gives ``"linear"``).
        layer: the cached layer the head was trained on (``None``: the final features).
        report: metrics of the saved head on the validation set (on the training set when there is no validation;
            see ``evaluated_on``).
        evaluated_on: ``"val"`` or ``"train"``.
        best_epoch, epochs_run, stopped_early: which epoch was kept, how many ran, and whether early stopping ended
            the run (one-shot heads report 1, 1, False).
        history: the ``metrics.jsonl`` rows.
        sweep: for ``sweep=True``, every grid cell with its best validation accuracy and loss (:class:`ProbeScore`).
        best_lr, best_weight_decay: the chosen cell of a sweep.
        layer_scores: for ``layer="auto"``, the best validation accuracy of a linear probe on each layer.
        n_train, n_val: items used for training and validation.
        seconds: wall time of the whole call.
    """

    run_dir: Path
    head: str
    head_params: dict[str, Any]
    layer: str | None
    report: ClassificationReport
    evaluated_on: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]]
    sweep: list[ProbeScore] | None
    best_lr: float | None
    best_weight_decay: float | None
    layer_scores: dict[str, float] | None
    n_train: int
    n_val: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.report.accuracy

    def summary(self) -> str:
        where = "validation" if self.evaluated_on == "val" else "training set (no validation)"
        text = f"{self.report.summary()} on {where}"
        if self.epochs_run > 1:
            text += f"; best epoch {self.best_epoch}/{self.epochs_run}"
            text += " (stopped early)" if self.stopped_early else ""
        if self.sweep:
            text += f"; sweep of {len(self.sweep)} probes chose lr {self.best_lr:g}"
            text += f", weight decay {self.best_weight_decay:g}"
        if self.layer_scores:
            text += f"; layer {self.layer or FINAL}"
        return text


@dataclass
class _Fitted:
    """The outcome of fitting one head on one pair of tables."""

    head: Any
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_accuracy: float | None
    val_loss: float | None
    sweep: list[ProbeScore] | None = None
    best_lr: float | None = None
    best_weight_decay: float | None = None


def train_head(
    cache: str | os.PathLike[str] | FeatureCache,
    output: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | FeatureCache | None = None,
    val_split: float | None = None,
    head: str | None = None,
    head_params: dict[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    batch_size: int | None = None,
    layer: str | None = None,
    views: bool = False,
    class_weight: str | None = None,
    early_stopping: int | None = None,
    seed: int = 0,
    sweep: bool = False,
    sweep_lrs: Sequence[float] | None = None,
    sweep_wds: Sequence[float] | None = None,
    standardize: bool = True,
    device: str = "auto",
    in_memory: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a head on a feature cache and write a run directory.

    :param cache: a cache written by ``tlkit extract``, as a path or an open :class:`tlkit.FeatureCache`
        (labelled; unlabelled rows are ignored).
    :param output: the run directory to create.
    :param val: a separate validation cache (same backbone fingerprint and classes); or ``val_split``, the
        stratified share of ``cache`` held out (default 0.2; ``0`` trains on everything, without validation).
    :param head: a registered head (``linear``, ``mlp``, ``knn``, ``sklearn``, or a plugin's); ``sklearn:ALIAS`` is
        short for ``head="sklearn", head_params={"estimator": ALIAS}``. Default ``mlp`` (``linear`` with ``sweep``).
    :param head_params: the head's parameters (``--param KEY=VALUE``).
    :param epochs, lr, weight_decay, batch_size: AdamW training of torch heads; the default batch size is an eighth
        of the training rows, between 32 and 1024 (:func:`auto_batch_size`).
    :param layer: a cached layer name (``tlkit cache info`` lists them), ``"auto"`` to probe every cached layer and
        use the best on validation, or ``None`` for the final features.
    :param views: sample one cached augmented view per item per epoch (a cache extracted with ``--views K``).
    :param class_weight: ``"balanced"`` weighs the loss by inverse class frequency.
    :param early_stopping: stop after this many epochs without a better validation score.
    :param seed: seeds initialisation, shuffling, view sampling, dropout and the validation split.
    :param sweep: train a grid of linear probes (``sweep_lrs`` × ``sweep_wds``) in one pass and keep the best.
    :param standardize: train linear and MLP heads on standardised features (mean 0, std 1 per dimension, from
        the training rows) and fold the scaling into the first layer afterwards, so the saved head takes raw
        features. It makes the defaults work whatever the backbone's feature scale.
    :param device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    :param in_memory: load features as tensors (``True``), stream them from the file (``False``), or decide from
        their size and the free memory (``None``).
    :param overwrite: replace an existing run directory.
    :param progress: a callback receiving :class:`TrainEvent` objects.
    """
    from tlkit.runtime.amp import resolve_device
    from tlkit.heads.torch_heads import split_head_name
    from tlkit.heads.tables import labelled_rows, split_rows

    started = time.perf_counter()
    head_name, head_params = _resolve_head(head, head_params, sweep)
    head_name, extra = split_head_name(head_name)
    head_params = {**extra, **head_params}
    _validate(
        head_name, epochs, lr, weight_decay, batch_size, val, val_split, early_stopping, class_weight, sweep, views
    )
    if val is None and val_split is None:
        val_split = DEFAULT_VAL_SPLIT
    emit = progress or (lambda event: None)
    dev = resolve_device(device)
    run_dir = Path(output)
    _check_run_dir(run_dir, overwrite)

    with _run_lock(run_dir), contextlib.ExitStack() as stack:
        train_cache, cache_path = _open_cache(cache, stack)
        val_cache, val_path = _open_cache(val, stack) if val is not None else (None, None)
        if val_cache is not None:
            _check_same_features(train_cache, val_cache, cache_path, val_path)
        layers = _candidate_layers(train_cache, layer, cache_path)
        if views and layers != [None]:
            raise ConfigError("--views are cached for the final features only; drop --layer or --views")
        emit(TrainEvent("start", epochs=epochs, message=str(cache_path)))

        def tables(layer_name: str | None) -> tuple[FeatureTable, FeatureTable | None]:
            source = _source(train_cache, layer_name, cache_path)
            rows = labelled_rows(source)
            if val_cache is not None:
                vsource = _source(val_cache, layer_name, val_path, class_names=source.class_names)
                vrows = labelled_rows(vsource)
                return (
                    _table(source, rows, dev, in_memory, views),
                    _table(vsource, vrows, dev, in_memory, False),
                )
            if val_split:
                train_rows, val_rows = split_rows(source, rows, float(val_split), seed)
                return _table(source, train_rows, dev, in_memory, views), _table(source, val_rows, dev, in_memory)
            return _table(source, rows, dev, in_memory, views), None

        layer_scores: dict[str, float] | None = None
        chosen_layer = layers[0]
        if layer == AUTO_LAYER:
            grid = ((sweep_lrs or DEFAULT_LRS), (sweep_wds or DEFAULT_WDS)) if sweep else ([lr], [weight_decay])
            chosen_layer, layer_scores = _choose_layer(
                layers, tables, grid, epochs, batch_size, class_weight, early_stopping, seed, standardize, emit
            )

        train_table, val_table = tables(chosen_layer)
        source = train_table.source
        n_classes = len(source.class_names)
        _check_classes_present(train_table, source, cache_path)
        batch_size = batch_size or auto_batch_size(len(train_table))
        fitted = _fit(
            head_name,
            head_params,
            train_table,
            val_table,
            n_classes=n_classes,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            class_weight=class_weight,
            patience=early_stopping,
            seed=seed,
            sweep=sweep,
            sweep_lrs=sweep_lrs,
            sweep_wds=sweep_wds,
            standardize=standardize,
            emit=emit,
        )
        eval_table = val_table if val_table is not None else train_table
        y_true = eval_table.y.cpu().numpy()
        from tlkit.heads.tables import table_probabilities  # streams a table that is not in memory

        probs = table_probabilities(fitted.head, _head_kind(head_name), eval_table, n_classes)
        from tlkit.runs.metrics import classification_report

        report = classification_report(y_true, probs.argmax(1), source.class_names)
        config = _config(
            train_cache,
            cache_path,
            val,
            val_split,
            head_name,
            head_params,
            fitted,
            source,
            chosen_layer,
            layer_scores,
            train_table,
            val_table,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            views=views,
            class_weight=class_weight,
            early_stopping=early_stopping,
            seed=seed,
            sweep=sweep,
            standardize=standardize,
            device=str(dev),
        )
        _clear_run_dir(run_dir)
        _write_run(run_dir, head_name, fitted, config, report, val_table is not None)

    result = TrainResult(
        run_dir=run_dir,
        head=head_name,
        head_params=head_params,
        layer=chosen_layer,
        report=report,
        evaluated_on="val" if val_table is not None else "train",
        best_epoch=fitted.best_epoch,
        epochs_run=fitted.epochs_run,
        stopped_early=fitted.stopped_early,
        history=fitted.history,
        sweep=fitted.sweep,
        best_lr=fitted.best_lr,
        best_weight_decay=fitted.best_weight_decay,
        layer_scores=layer_scores,
        n_train=len(train_table),
        n_val=len(val_table) if val_table is not None else 0,
        seconds=time.perf_counter() - started,
    )
    emit(TrainEvent("done", epoch=fitted.epochs_run, epochs=epochs, message=result.summary()))
    return result


def auto_batch_size(n_rows: int) -> int:
    """The default batch size: an eighth of the training rows, between 32 and 1024.

    Features are cheap, so large batches are fast; but a small dataset still needs several optimiser steps per
    epoch to converge in a few dozen epochs.
    """
    return int(min(1024, max(32, n_rows // 8)))


def _choose_layer(
    layers: Sequence[str | None],
    tables: Callable[[str | None], tuple[FeatureTable, FeatureTable | None]],
    grid: tuple[Sequence[float], Sequence[float]],
    epochs: int,
    batch_size: int | None,
    class_weight: str | None,
    patience: int | None,
    seed: int,
    standardize: bool,
    emit: Progress,
) -> tuple[str | None, dict[str, float]]:
    """Probe each layer with linear probes (the sweep's grid, or the one lr/weight decay); the best validation
    accuracy wins, then the lower loss. Returns the layer and every layer's score."""
    scores: dict[str, float] = {}
    best: tuple[float, float, str | None] | None = None
    for i, name in enumerate(layers, start=1):
        emit(TrainEvent("layer", step=i, steps=len(layers), message=name or FINAL))
        train, val = tables(name)
        probe = _fit_sweep(
            train, val, n_classes=len(train.source.class_names), lrs=grid[0], wds=grid[1], epochs=epochs,
            batch_size=batch_size or auto_batch_size(len(train)), class_weight=class_weight, patience=patience,
            seed=seed, standardize=standardize, emit=lambda e: None,
        )  # fmt: skip
        acc, loss = float(probe.val_accuracy or 0.0), float(probe.val_loss or math.inf)
        scores[name or FINAL] = acc
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, name)
    return (best[2] if best else None), scores


# -- validation of options -------------------------------------------------------------------------------------
def _resolve_head(head: str | None, params: dict[str, Any] | None, sweep: bool) -> tuple[str, dict[str, Any]]:
    if sweep:
        if head not in (None, "linear"):
            raise ConfigError(f"--sweep trains linear probes; drop --head {head} (or drop --sweep)")
        if params:
            raise ConfigError("--sweep trains plain linear probes; drop --param")
        return "linear", {}
    return head or DEFAULT_HEAD, dict(params or {})


def _validate(
    head: str,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int | None,
    val: Any,
    val_split: float | None,
    early_stopping: int | None,
    class_weight: str | None,
    sweep: bool,
    views: bool,
) -> None:
    from tlkit.host.registry import get_head_entry

    entry = get_head_entry(head)  # unknown head: a clear error before any data loads
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, not {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if lr <= 0 or weight_decay < 0:
        raise ConfigError("--lr must be positive and --weight-decay non-negative")
    if val is not None and val_split is not None:
        raise ConfigError("give --val or --val-split, not both")
    if val_split is not None and not (val_split == 0 or 0 < val_split < 1):
        raise ConfigError(f"--val-split must be in (0, 1), or 0 for no validation; not {val_split}")
    no_val = val is None and val_split == 0
    if early_stopping is not None:
        if early_stopping < 1:
            raise ConfigError(f"--early-stopping needs a patience of at least 1 epoch, not {early_stopping}")
        if no_val:
            raise ConfigError("--early-stopping needs validation data; give --val or a --val-split above 0")
    if sweep and no_val:
        raise ConfigError("--sweep picks the best probe on validation; give --val or a --val-split above 0")
    if class_weight not in (None, "balanced"):
        raise ConfigError(f"--class-weight must be 'balanced', not {class_weight!r}")
    if views and entry.kind != "torch":
        raise ConfigError(f"--views sample a view per epoch; head {head!r} is fitted once (use linear or mlp)")


def _head_kind(head: str) -> str:
    from tlkit.host.registry import get_head_entry

    return get_head_entry(head).kind


# -- caches ----------------------------------------------------------------------------------------------------
def _open_cache(cache: Any, stack: contextlib.ExitStack) -> tuple[Any, Path]:
    """An open cache and its path: a path is opened (and closed with ``stack``); an open cache is used as is."""
    if hasattr(cache, "features"):
        return cache, Path(getattr(cache, "path", "<cache>"))
    from tlkit.cache.core import FeatureCache

    path = Path(cache)
    return stack.enter_context(FeatureCache(path)), path


def _source(cache: Any, layer: str | None, path: Path, class_names: Sequence[str] | None = None) -> FeatureSource:
    """The features of ``layer`` in ``cache`` with labels; ``class_names`` remaps a val cache's labels by name."""
    import numpy as np

    from tlkit.heads.tables import FeatureSource

    names = [str(c) for c in cache.class_names]
    labels = np.asarray(cache.labels[:], dtype=np.int64)
    if class_names is not None and names != list(class_names):
        index = {c: i for i, c in enumerate(class_names)}
        unknown = [c for c in names if c not in index]
        if unknown:
            raise BadInputError(
                f"{path}: class(es) {', '.join(unknown)} are not among the training classes "
                f"({', '.join(class_names)}); validate on the same classes"
            )
        remap = np.array([index[c] for c in names], dtype=np.int64)
        labels = np.where(labels >= 0, remap[np.clip(labels, 0, None)], -1)
        names = list(class_names)
    features = cache.features if layer is None else cache.layer(layer)
    views = cache.views if layer is None else None
    return FeatureSource(str(path), features, labels, names, views)


def _candidate_layers(cache: Any, layer: str | None, path: Path) -> list[str | None]:
    """``[None]`` for the final features, ``[name]`` for one layer, every cached layer plus the final one for auto."""
    available = list(cache.layer_names)
    if layer is None or layer == FINAL:
        return [None]
    if layer == AUTO_LAYER:
        if not available:
            raise BadInputError(
                f"{path}: --layer auto needs cached layers, and this cache has none; extract with --layers all"
            )
        return [*available, None]
    if layer not in available:
        from tlkit.errors import UnknownNameError

        hint = "extract with --layers all to cache every block" if not available else f"cached in {path}"
        raise UnknownNameError("layer", layer, available, hint=hint)
    return [layer]


def _check_same_features(train: Any, val: Any, train_path: Path, val_path: Path) -> None:
    if train.fingerprint != val.fingerprint:
        raise FingerprintMismatchError(
            f"--val {val_path}: its features come from backbone fingerprint {val.fingerprint}, but {train_path} has "
            f"{train.fingerprint}; extract both with the same backbone, weights and preprocessing"
        )


def _check_classes_present(table: FeatureTable, source: FeatureSource, path: Path) -> None:
    import torch

    counts = torch.bincount(table.y.cpu(), minlength=len(source.class_names))
    if int((counts > 0).sum()) < 2:
        raise BadInputError(f"{path}: the training rows hold fewer than two classes; a classifier needs at least two")


def _table(
    source: FeatureSource, rows: np.ndarray, device: torch.device, in_memory: bool | None, views: bool = False
) -> FeatureTable:
    from tlkit.heads.tables import FeatureTable

    return FeatureTable(source, rows, device, in_memory=in_memory, use_views=views)


# -- fitting ---------------------------------------------------------------------------------------------------
def _fit(
    head_name: str,
    head_params: dict[str, Any],
    train: FeatureTable,
    val: FeatureTable | None,
    *,
    n_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    class_weight: str | None,
    patience: int | None,
    seed: int,
    sweep: bool,
    sweep_lrs: Sequence[float] | None,
    sweep_wds: Sequence[float] | None,
    standardize: bool,
    emit: Progress,
) -> _Fitted:
    from tlkit.heads.torch_heads import is_fitted_head

    if sweep:
        return _fit_sweep(
            train,
            val,
            n_classes=n_classes,
            lrs=sweep_lrs or DEFAULT_LRS,
            wds=sweep_wds or DEFAULT_WDS,
            epochs=epochs,
            batch_size=batch_size,
            class_weight=class_weight,
            patience=patience,
            seed=seed,
            standardize=standardize,
            emit=emit,
        )
    if _head_kind(head_name) == "estimator":
        return _fit_estimator(head_name, head_params, train, val, n_classes, class_weight, seed, emit)
    head = _build_torch_head(head_name, head_params, train.dim, n_classes, seed)
    if is_fitted_head(head):
        if train.use_views:
            raise ConfigError(f"--views sample a view per epoch; head {head_name!r} is fitted once (use linear or mlp)")
        if class_weight:
            raise ConfigError(f"--class-weight does not apply to head {head_name!r}, which is fitted, not trained")
        return _fit_once(head, train, val, n_classes, emit)
    return _fit_torch(
        head,
        train,
        val,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        class_weight=class_weight,
        patience=patience,
        seed=seed,
        n_classes=n_classes,
        standardize=standardize,
        emit=emit,
    )


def _build_torch_head(name: str, params: dict[str, Any], in_dim: int, n_classes: int, seed: int) -> Any:
    """Build the head from a freshly seeded RNG, so a seed gives the same initial weights every time."""
    import torch

    from tlkit.heads.torch_heads import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_head(name, in_dim, n_classes, **params)


#: Below this many multiply-adds per optimiser step, CPU training runs on one thread. Head-sized matrix products
#: gain little from more threads on an idle machine and lose a lot on a busy one: an MLP step on 100 x 1280
#: features took 15 ms on one thread and 310 ms on two, on a shared 2-core machine.
SMALL_STEP_MACS = 1 << 28


@contextlib.contextmanager
def cpu_threads(device: torch.device, macs_per_step: int) -> Any:
    """Use one intra-op thread for small CPU workloads; restore the previous setting afterwards."""
    import torch

    if device.type != "cpu" or macs_per_step >= SMALL_STEP_MACS or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _weights(train: FeatureTable, class_weight: str | None, n_classes: int) -> torch.Tensor | None:
    from tlkit.heads.tables import class_weights

    return class_weights(train.y, n_classes) if class_weight == "balanced" else None


class _Selector:
    """Keeps the best validation score (accuracy first, then lower loss) and counts epochs without one."""

    def __init__(self) -> None:
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.stale = 0

    def update(self, epoch: int, accuracy: float, loss: float) -> bool:
        score = (accuracy, -loss)
        if self.best is None or score > self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False


def _evaluate_logits(head: Any, table: FeatureTable, scale: Callable[[Any], Any] | None = None) -> torch.Tensor:
    import torch

    scale = scale or (lambda x: x)
    with torch.no_grad():
        return torch.cat([head(scale(x)).float() for x, _ in table.batches(EVAL_BATCH, augment=False)])


def first_linear(head: Any) -> Any:
    """The ``nn.Linear`` that sees the raw features first (the head itself, or the first layer of a Sequential),
    or ``None`` when the head starts otherwise (then training does not standardise)."""
    from torch import nn

    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[0], nn.Linear):
        return head[0]
    return None


def _fit_torch(
    head: Any,
    train: FeatureTable,
    val: FeatureTable | None,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    class_weight: str | None,
    patience: int | None,
    seed: int,
    n_classes: int,
    standardize: bool,
    emit: Progress,
) -> _Fitted:
    import copy

    import torch
    from torch import nn

    from tlkit.heads.probes import HeadAdamW

    device = train.device
    head = head.to(device)
    weights = _weights(train, class_weight, n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = HeadAdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    selector = _Selector()
    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(head.state_dict())
    norm = train.moments() if standardize and first_linear(head) is not None else None
    scale = norm if norm is not None else (lambda x: x)
    stopped = False
    work = batch_size * sum(p.numel() for p in head.parameters())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cpu_threads(device, work):
        torch.manual_seed(seed)  # dropout
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            head.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in train.batches(batch_size, generator):
                logits = head(scale(x))
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
            head.eval()
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
            }
            if val is not None:
                logits = _evaluate_logits(head, val, scale)
                row["val_loss"] = float(nn.functional.cross_entropy(logits, val.y, weight=weights))
                row["val_accuracy"] = float((logits.argmax(1) == val.y).float().mean())
                if selector.update(epoch, row["val_accuracy"], row["val_loss"]):
                    best_state = copy.deepcopy(head.state_dict())
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            emit(TrainEvent("epoch", epoch=epoch, epochs=epochs, metrics=row))
            if val is not None and patience is not None and selector.stale >= patience:
                stopped = True
                break
    if val is None:
        best_state, best_epoch = head.state_dict(), len(history)
    else:
        best_epoch = selector.best_epoch
    head.load_state_dict(best_state)
    if norm is not None:
        norm.fold_into(first_linear(head))
    head.eval()
    best_row = history[best_epoch - 1]
    return _Fitted(
        head, history, best_epoch, len(history), stopped, best_row.get("val_accuracy"), best_row.get("val_loss")
    )


def _fit_sweep(
    train: FeatureTable,
    val: FeatureTable | None,
    *,
    n_classes: int,
    lrs: Sequence[float],
    wds: Sequence[float],
    epochs: int,
    batch_size: int,
    class_weight: str | None,
    patience: int | None,
    seed: int,
    standardize: bool,
    emit: Progress,
) -> _Fitted:
    """Train every (lr, weight decay) pair as one :class:`LinearProbeBank`; keep each probe's best epoch."""
    import torch
    from torch import nn

    from tlkit.heads.probes import LinearProbeBank, ProbeScore

    if val is None:
        raise ConfigError("probing needs validation data; give --val or a --val-split above 0")
    grid = [(float(a), float(b)) for a in lrs for b in wds]
    init = _build_torch_head("linear", {}, train.dim, n_classes, seed)
    bank = LinearProbeBank(init, [g[0] for g in grid], [g[1] for g in grid], train.device)
    weights = _weights(train, class_weight, n_classes)
    generator = torch.Generator().manual_seed(seed)
    p = bank.size
    best_acc = torch.full((p,), -1.0, device=train.device)
    best_loss = torch.full((p,), math.inf, device=train.device)
    best_epoch = torch.zeros(p, dtype=torch.long, device=train.device)
    best_w, best_b = bank.weight.clone(), bank.bias.clone()
    per_epoch: list[dict[str, torch.Tensor]] = []
    norm = train.moments() if standardize else None
    scale = norm if norm is not None else (lambda x: x)
    stale, stopped = 0, False
    with cpu_threads(train.device, batch_size * bank.weight.numel()):
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss_sum = torch.zeros(p, device=train.device)
            correct = torch.zeros(p, device=train.device)
            seen = 0
            for x, y in train.batches(batch_size, generator):
                loss, logits = bank.step(scale(x), y, weights)
                loss_sum += loss * len(y)
                correct += (logits.argmax(2) == y).sum(1)
                seen += len(y)
            with torch.no_grad():
                vx = val.batches(EVAL_BATCH, augment=False)
                logits = torch.cat([bank.logits(scale(x)) for x, _ in vx], dim=1)
                vloss = bank.losses(logits, val.y, weights)
                vacc = (logits.argmax(2) == val.y).float().mean(1)
            improved = (vacc > best_acc) | ((vacc == best_acc) & (vloss < best_loss))
            best_acc = torch.where(improved, vacc, best_acc)
            best_loss = torch.where(improved, vloss, best_loss)
            best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
            best_w[improved], best_b[improved] = bank.weight[improved], bank.bias[improved]
            seconds = time.perf_counter() - t0
            per_epoch.append(
                {
                    "train_loss": loss_sum / max(seen, 1),
                    "train_accuracy": correct / max(seen, 1),
                    "val_loss": vloss,
                    "val_accuracy": vacc,
                    "seconds": torch.full((p,), seconds),
                }
            )
            best_now = {"val_accuracy": float(vacc.max()), "probes": p, "seconds": seconds}
            emit(TrainEvent("epoch", epoch=epoch, epochs=epochs, metrics=best_now))
            stale = 0 if bool(improved.any()) else stale + 1
            if patience is not None and stale >= patience:
                stopped = True
                break
    scores = [
        ProbeScore(lr, wd, int(best_epoch[i]), float(best_acc[i]), float(best_loss[i]))
        for i, (lr, wd) in enumerate(grid)
    ]
    chosen = max(range(p), key=lambda i: (scores[i].val_accuracy, -scores[i].val_loss))
    head = nn.Linear(train.dim, n_classes).to(train.device)
    head.load_state_dict({"weight": best_w[chosen], "bias": best_b[chosen]})
    if norm is not None:
        norm.fold_into(head)
    head.eval()
    history = [
        {"epoch": e, **{k: float(v[chosen]) for k, v in row.items()}} for e, row in enumerate(per_epoch, start=1)
    ]
    return _Fitted(
        head,
        history,
        scores[chosen].best_epoch,
        len(per_epoch),
        stopped,
        scores[chosen].val_accuracy,
        scores[chosen].val_loss,
        scores,
        grid[chosen][0],
        grid[chosen][1],
    )


def _fit_once(head: Any, train: FeatureTable, val: FeatureTable | None, n_classes: int, emit: Progress) -> _Fitted:
    """A ``fit_features`` head (k-NN): one fit on every training row."""
    import torch
    from torch import nn

    emit(TrainEvent("fit", epochs=1, message="fitting"))
    t0 = time.perf_counter()
    head = head.to(train.device)
    head.fit_features(train.all_features(), train.y)
    head.eval()
    row: dict[str, Any] = {"epoch": 1}
    if val is not None:
        logits = _evaluate_logits(head, val)
        row["val_loss"] = float(nn.functional.cross_entropy(logits, val.y))
        row["val_accuracy"] = float((logits.argmax(1) == val.y).float().mean())
    row["seconds"] = time.perf_counter() - t0
    emit(TrainEvent("epoch", epoch=1, epochs=1, metrics=row))
    del torch
    return _Fitted(head, [row], 1, 1, False, row.get("val_accuracy"), row.get("val_loss"))


def _fit_estimator(
    name: str,
    params: dict[str, Any],
    train: FeatureTable,
    val: FeatureTable | None,
    n_classes: int,
    class_weight: str | None,
    seed: int,
    emit: Progress,
) -> _Fitted:
    """A scikit-learn estimator: one ``fit`` on every training row (NumPy, float32)."""
    import numpy as np

    from tlkit.heads.torch_heads import build_head
    from tlkit.heads.sklearn_head import seed_estimator

    est = build_head(name, train.dim, n_classes, **params)
    seed_estimator(est, seed)
    if class_weight:
        keys = [k for k in est.get_params() if k == "class_weight" or k.endswith("__class_weight")]
        if not keys:
            raise ConfigError(f"--class-weight: {type(est).__name__} has no class_weight parameter")
        est.set_params(**{k: class_weight for k in keys})
    steps = [type(step).__name__ for _, step in getattr(est, "steps", [])] or [type(est).__name__]
    emit(TrainEvent("fit", epochs=1, message=f"fitting {' + '.join(steps)}"))
    t0 = time.perf_counter()
    x = train.all_features().cpu().numpy()
    y = train.y.cpu().numpy()
    try:
        est.fit(x, y)
    except ValueError as exc:
        raise ConfigError(f"head {name}: fitting {type(est).__name__} failed ({exc})") from exc
    row: dict[str, Any] = {"epoch": 1, "train_accuracy": float((est.predict(x) == y).mean())}
    if val is not None:
        probs = head_probabilities(est, "estimator", val.all_features(), n_classes)
        vy = val.y.cpu().numpy()
        row["val_loss"] = float(-np.log(np.clip(probs[np.arange(len(vy)), vy], 1e-12, None)).mean())
        row["val_accuracy"] = float((probs.argmax(1) == vy).mean())
    row["seconds"] = time.perf_counter() - t0
    emit(TrainEvent("epoch", epoch=1, epochs=1, metrics=row))
    return _Fitted(est, [row], 1, 1, False, row.get("val_accuracy"), row.get("val_loss"))


def head_probabilities(head: Any, kind: str, x: torch.Tensor, n_classes: int) -> np.ndarray:
    """Class probabilities ``[N, n_classes]`` (float64 NumPy) of a fitted head on features ``x``."""
    import numpy as np
    import torch

    if kind == "estimator":
        from tlkit.heads.sklearn_head import estimator_scores

        return estimator_scores(head, x.detach().cpu().numpy(), n_classes)
    with torch.no_grad():
        parts = [head(x[i : i + EVAL_BATCH]).float().softmax(1).cpu() for i in range(0, len(x), EVAL_BATCH)]
    out = torch.cat(parts) if parts else torch.zeros(0, n_classes)
    return out.numpy().astype(np.float64)


# -- the run directory -----------------------------------------------------------------------------------------
def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInputError(f"{run_dir}: exists and is not a directory; choose another -o")
    if (run_dir / "config.json").exists() and not overwrite:
        raise BadInputError(f"{run_dir}: already holds a run; pass --overwrite to replace it, or choose another -o")
    run_dir.mkdir(parents=True, exist_ok=True)


def _clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files, config first: a half-replaced run is never mistaken for a complete one."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


class _run_lock:  # noqa: N801 - used as a context manager
    """A lock file that refuses a second writer on the same run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock: Any = None

    def __enter__(self) -> None:
        from filelock import FileLock, Timeout

        self.lock = FileLock(str(self.run_dir / ".lock"))
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"{self.run_dir}: another tlkit process is writing this run; use another -o") from None

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def _backbone_section(cache: Any) -> dict[str, Any]:
    """Name, weights, constructor options and fingerprint of the backbone that made the cache's features."""
    info = dict(cache.backbone or {})
    options = dict(info.get("init_kwargs") or info.get("options") or {})
    options.pop("weights", None)
    return {
        "name": info.get("name"),
        "weights": info.get("weights"),
        "options": options,
        "fingerprint": cache.fingerprint,
    }


def _extract_section(cache: Any) -> dict[str, Any]:
    """The extraction settings that ``tlkit predict`` must repeat on raw items to get the same features."""
    key = dict(getattr(cache, "key", None) or {})
    meta = dict(cache.meta or {})
    fields = ("precision", "store_dtype", "reader", "reader_options")
    return {k: key.get(k, meta.get(k)) for k in fields if key.get(k, meta.get(k)) is not None}


def _config(
    cache: Any,
    cache_path: Path,
    val: Any,
    val_split: float | None,
    head_name: str,
    head_params: dict[str, Any],
    fitted: _Fitted,
    source: FeatureSource,
    layer: str | None,
    layer_scores: dict[str, float] | None,
    train: FeatureTable,
    val_table: FeatureTable | None,
    **args: Any,
) -> dict[str, Any]:
    from tlkit.runs.rundir import new_config

    return new_config(
        "head",
        backbone=_backbone_section(cache),
        head={
            "name": head_name,
            "kind": _head_kind(head_name),
            "params": head_params,
            "in_dim": source.dim,
            "n_classes": len(source.class_names),
        },
        class_names=list(source.class_names),
        layer=layer,
        extract=_extract_section(cache),
        train={
            **args,
            "cache": str(cache_path),
            "val": str(val) if val is not None else None,
            "val_split": val_split if val is None else None,
            "n_train": len(train),
            "n_val": len(val_table) if val_table is not None else 0,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "stopped_early": fitted.stopped_early,
            "best_lr": fitted.best_lr,
            "best_weight_decay": fitted.best_weight_decay,
        },
        layer_scores=layer_scores,
    )


def _write_run(
    run_dir: Path, head_name: str, fitted: _Fitted, config: dict[str, Any], report: Any, has_val: bool
) -> None:
    """Weights, metrics, report and plots first; ``config.json`` last, so its presence marks a complete run."""
    from tlkit.runs.plots import plot_confusion, plot_curves
    from tlkit.runs.rundir import CONFIG, HEAD_WEIGHTS, METRICS, REPORT, rewrite_jsonl, save_tensors, write_json

    if config["head"]["kind"] == "estimator":
        from tlkit.heads.sklearn_head import ESTIMATOR_FILE, save_estimator

        save_estimator(fitted.head, run_dir / ESTIMATOR_FILE)
    else:
        state = {k: v for k, v in fitted.head.state_dict().items()}
        save_tensors(run_dir / HEAD_WEIGHTS, state, metadata={"format": "tlkit-head", "head": head_name})
    rewrite_jsonl(run_dir / METRICS, fitted.history)
    if fitted.sweep is not None:
        write_json(run_dir / "sweep.json", [s.to_dict() for s in fitted.sweep])
    write_json(run_dir / REPORT, {**report.to_dict(), "evaluated_on": "val" if has_val else "train"})
    plot_curves(fitted.history, run_dir / "curves.png")
    plot_confusion(report.confusion, report.class_names, run_dir / "confusion.png")
    write_json(run_dir / CONFIG, config)
