"""Head training on cached features: ``tlkit train`` and ``tlkit.train_head(...)``.

Features come from a cache (:mod:`tlkit.heads.tables` loads them as tensors when they fit, streams them otherwise), so
an epoch costs a pass over ``[N, D]`` floats, not a backbone forward. Three ways to fit a head:

- torch heads (``linear``, ``mlp``, plugin heads) train with AdamW, with early stopping and the best checkpoint
  chosen on validation (:mod:`tlkit.heads.fit`);
- ``fit_features`` heads (``knn``) and scikit-learn estimators (``sklearn``) are fitted once on every training row;
- ``sweep=True`` trains a grid of linear probes at once (:mod:`tlkit.heads.sweep`) and keeps the best on validation.

``layer="auto"`` first probes every cached layer and trains the head on the one that validates best.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.heads.options import (
    CROSS_VALIDATED,
    DEFAULT_EPOCHS,
    DEFAULT_FOLDS,
    DEFAULT_LR,
    DEFAULT_LRS,
    DEFAULT_WDS,
    DEFAULT_WEIGHT_DECAY,
    FINAL,
    Progress,
    TrainEvent,
    TrainOptions,
    ignore,
)

if TYPE_CHECKING:
    from tlkit.cache import FeatureCache
    from tlkit.heads.fit import Fitted
    from tlkit.heads.probes import ProbeScore
    from tlkit.heads.tables import FeatureTable
    from tlkit.runs.metrics import ClassificationReport
    from tlkit.runtime import Runtime


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
        selection: what cross-validation tried and chose, as ``config.json`` records it under
            ``train.selection``: for the ``auto`` head every regularisation strength with its CV accuracy (mean and
            standard deviation over the folds) and the chosen one; for a sweep the grid's CV scores; for
            ``layer="auto"`` each layer's score (``layers``).
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
    selection: dict[str, Any] | None = None

    @property
    def accuracy(self) -> float:
        return self.report.accuracy

    def summary(self) -> str:
        where = "validation" if self.evaluated_on == "val" else "training set (no validation)"
        text = f"{self.report.summary()} on {where}"
        chosen = (self.selection or {}).get("chosen") or {}
        if self.evaluated_on == "train" and "cv_accuracy" in chosen:  # the honest figure first
            text = f"cross-validated accuracy {chosen['cv_accuracy']:.4f} ± {chosen['cv_accuracy_std']:.4f}; {text}"
        if self.epochs_run > 1:
            text += f"; best epoch {self.best_epoch}/{self.epochs_run}"
            text += " (stopped early)" if self.stopped_early else ""
        if self.sweep:
            by = "cross-validation" if (self.selection or {}).get("folds") else "validation"
            text += f"; sweep of {len(self.sweep)} probes chose lr {self.best_lr:g}"
            text += f", weight decay {self.best_weight_decay:g} by {by}"
        if "lambda" in chosen:
            text += f"; logistic regression, L2 {chosen['lambda']:.0e} chosen by {self.selection['folds']}-fold CV"  # type: ignore[index]
            text += f" (CV accuracy {chosen['cv_accuracy']:.4f} ± {chosen['cv_accuracy_std']:.4f})"
        if self.layer_scores:
            text += f"; layer {self.layer or FINAL}"
        return text


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
    folds: int = DEFAULT_FOLDS,
    device: str = "auto",
    in_memory: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    allow_estimators: Sequence[str] = (),
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
        of the training rows, between 32 and 1024 (:func:`tlkit.heads.options.auto_batch_size`).
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
    :param device: ``auto`` (CUDA, then Apple MPS, then the CPU), ``cpu``, ``cuda[:N]`` or ``mps``; heads train in
        fp32 (the ``train`` row of the runtime policy, :mod:`tlkit.runtime.policy`).
    :param in_memory: load features as tensors (``True``), stream them from the file (``False``), or decide from
        their size and the free memory (``None``).
    :param overwrite: replace an existing run directory.
    :param allow_estimators: import paths of estimator classes outside scikit-learn to allow for the ``sklearn``
        head (``--allow-estimator``; see ``docs/security.md``).
    :param progress: a callback receiving :class:`TrainEvent` objects.
    """
    from tlkit.heads.options import check_validation, resolve_head
    from tlkit.heads.record import check_run_dir
    from tlkit.heads.sklearn_head import allowing
    from tlkit.runs.rundir import run_lock
    from tlkit.runtime import RuntimeOptions, resolve

    started = time.perf_counter()
    head_name, head_params = resolve_head(head, head_params, sweep)
    val_split = check_validation(val, val_split, cross_validates=sweep or head_name in CROSS_VALIDATED)
    opts = TrainOptions(
        head_name, head_params, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        class_weight=class_weight, early_stopping=early_stopping, seed=seed, sweep=sweep,
        sweep_lrs=tuple(sweep_lrs or DEFAULT_LRS), sweep_wds=tuple(sweep_wds or DEFAULT_WDS),
        standardize=standardize, views=views, folds=folds,
    )  # fmt: skip
    opts.check(has_val=val is not None or bool(val_split))
    runtime = resolve("train", RuntimeOptions.of(device=device))
    run_dir = Path(output)
    check_run_dir(run_dir, overwrite)
    with run_lock(run_dir), allowing(allow_estimators), contextlib.ExitStack() as stack:
        job = _Job(cache, val, val_split, layer, opts, runtime, in_memory, progress or ignore, stack)
        result = job.run(run_dir)
    result.seconds = time.perf_counter() - started
    job.emit(TrainEvent("done", epoch=result.epochs_run, epochs=epochs, message=result.summary()))
    return result


class _Job:
    """One call of :func:`train_head` inside the run lock: open the caches, choose the layer, fit, write the run."""

    def __init__(
        self,
        cache: Any,
        val: Any,
        val_split: float | None,
        layer: str | None,
        opts: TrainOptions,
        runtime: Runtime,
        in_memory: bool | None,
        emit: Progress,
        stack: contextlib.ExitStack,
    ) -> None:
        from tlkit.heads.sources import TrainingData, candidate_layers, open_cache

        self.opts, self.runtime, self.emit, self.layer, self.val_split = opts, runtime, emit, layer, val_split
        self.cache, self.path = open_cache(cache, stack)
        self.val_arg = val
        val_opened = open_cache(val, stack) if val is not None else None
        self.data = TrainingData(
            (self.cache, self.path), val_opened, val_split, seed=opts.seed, device=runtime.device,
            in_memory=in_memory, views=opts.views,
        )  # fmt: skip
        self.layers = candidate_layers(self.cache, layer, self.path)
        if opts.views and self.layers != [None]:
            raise ConfigError(
                "{param} are cached for the final features only; drop the layer or the views", param="views"
            )

    def run(self, run_dir: Path) -> TrainResult:
        from tlkit.heads.options import AUTO_LAYER
        from tlkit.heads.record import clear_run_dir, run_config, write_run
        from tlkit.heads.scoring import table_probabilities
        from tlkit.heads.sources import check_classes_present
        from tlkit.heads.sweep import choose_layer
        from tlkit.runs.metrics import classification_report

        opts = self.opts
        self.emit(TrainEvent("start", epochs=opts.epochs, message=str(self.path)))
        layer, layer_scores = self.layers[0], None
        layer_choice = None
        if self.layer == AUTO_LAYER:
            layer, layer_choice = choose_layer(self.layers, self.data, opts, self.emit, on_val=self.val_arg is not None)
            layer_scores = {name: float(score["accuracy"]) for name, score in layer_choice.items()}
        train, val = self.data(layer)
        check_classes_present(train, self.path)
        n_classes = len(train.source.class_names)
        fitted = fit_head(train, val, opts, n_classes, self.emit, val_given=self.val_arg is not None)
        selection = dict(fitted.selection or {})
        if layer_choice is not None:
            selection["layers"] = layer_choice
        scored = val if val is not None else train
        probs = table_probabilities(fitted.head, opts.kind, scored, n_classes)
        report = classification_report(scored.y.cpu().numpy(), probs.argmax(1), train.source.class_names)
        config = run_config(
            self.cache, fitted, train, val, layer=layer, layer_scores=layer_scores,
            head=_head_section(opts),
            train_args={**self._train_args(opts.batch_for(len(train))), "selection": selection or None},
        )  # fmt: skip
        clear_run_dir(run_dir)
        write_run(run_dir, fitted, config, report, val is not None)
        return TrainResult(
            run_dir=run_dir, head=opts.head, head_params=opts.head_params, layer=layer, report=report,
            evaluated_on="val" if val is not None else "train", best_epoch=fitted.best_epoch,
            epochs_run=fitted.epochs_run, stopped_early=fitted.stopped_early, history=fitted.history,
            sweep=fitted.sweep, best_lr=fitted.best_lr, best_weight_decay=fitted.best_weight_decay,
            layer_scores=layer_scores, n_train=len(train), n_val=len(val) if val is not None else 0, seconds=0.0,
            selection=selection or None,
        )  # fmt: skip

    def _train_args(self, batch_size: int) -> dict[str, Any]:
        """The ``train`` section's arguments: the options as used, the inputs, and the resolved runtime."""
        val = self.val_arg
        return {
            **self.opts.record(batch_size),
            "device": str(self.runtime.device),
            "runtime": self.runtime.to_dict(),
            "cache": str(self.path),
            "val": str(val) if val is not None else None,
            "val_split": self.val_split if val is None else None,
        }


def _head_section(opts: TrainOptions) -> dict[str, Any]:
    """The head as ``config.json`` records it: the ``auto`` head is saved as what it is, a ``linear`` head (so
    ``predict``, ``export`` and ``finetune --init-head`` treat it as one), with ``selected_by: auto``."""
    if opts.head in CROSS_VALIDATED:
        return {"name": "linear", "kind": "torch", "params": {}, "selected_by": opts.head}
    return {"name": opts.head, "kind": opts.kind, "params": opts.head_params}


def fit_head(
    train: FeatureTable,
    val: FeatureTable | None,
    opts: TrainOptions,
    n_classes: int,
    emit: Progress,
    val_given: bool = False,
) -> Fitted:
    """Fit the head ``opts`` names on ``train``: the ``auto`` head (cross-validated on ``train``), a sweep (by
    cross-validation on ``train``, or on ``val`` when ``val_given``: a validation cache the user chose for it), an
    estimator, a one-shot ``fit_features`` head, or a torch head trained for ``opts.epochs`` (best epoch on ``val``)."""
    from tlkit.heads.fit import build_torch_head, fit_estimator, fit_once, fit_torch
    from tlkit.heads.options import views_fitted_once
    from tlkit.heads.sweep import fit_sweep
    from tlkit.heads.tables import whole_table_error
    from tlkit.heads.torch_heads import is_fitted_head

    whole = opts.sweep or opts.head in CROSS_VALIDATED or opts.kind == "estimator"
    if whole and not train.in_memory:  # these fit on every row at once: refused before anything is loaded
        raise whole_table_error(train, "sweep" if opts.sweep else opts.head)
    if opts.sweep:
        return fit_sweep(train, val, opts, n_classes, emit, cross_validate=not val_given)
    if opts.head in CROSS_VALIDATED:
        from tlkit.heads.auto import fit_auto

        return fit_auto(train, val, opts, n_classes, emit)
    if opts.kind == "estimator":
        return fit_estimator(train, val, opts, n_classes, emit)
    head = build_torch_head(opts.head, opts.head_params, train.dim, n_classes, opts.seed)
    if is_fitted_head(head):
        if not train.in_memory:
            raise whole_table_error(train, opts.head)
        if train.use_views:
            raise views_fitted_once(opts.head)
        if opts.class_weight:
            raise ConfigError(
                f"{{param}} does not apply to head {opts.head!r}, which is fitted, not trained", param="class_weight"
            )
        return fit_once(head, train, val, emit)
    return fit_torch(head, train, val, opts, n_classes, emit)
