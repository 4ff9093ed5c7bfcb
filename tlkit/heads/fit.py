"""Fitting one head on a pair of feature tables.

- torch heads (``linear``, ``mlp``, plugin heads) train with AdamW, keeping the best epoch on validation, with
  optional early stopping and standardised inputs folded into the saved head;
- ``fit_features`` heads (``knn``) and scikit-learn estimators are fitted once on every training row.

A grid of linear probes trained at once is :mod:`tlkit.heads.sweep`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.heads.options import Progress, TrainEvent, TrainOptions

if TYPE_CHECKING:
    import torch

    from tlkit.heads.probes import ProbeScore
    from tlkit.heads.tables import FeatureTable, Standardizer

#: Below this many multiply-adds per optimiser step, CPU training runs on one thread. Head-sized matrix products
#: gain little from more threads on an idle machine and lose a lot on a busy one: an MLP step on 100 x 1280
#: features took 15 ms on one thread and 310 ms on two, on a shared 2-core machine.
SMALL_STEP_MACS = 1 << 28


#: The smallest feature scale standardisation divides by, relative to the median scale (:func:`standardizer`).
SCALE_FLOOR = 1e-2


@dataclass
class Fitted:
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
    #: what cross-validation tried and chose (the ``auto`` head, a cross-validated sweep), for ``config.json``
    selection: dict[str, Any] | None = None


def build_torch_head(name: str, params: dict[str, Any], in_dim: int, n_classes: int, seed: int) -> Any:
    """Build the head from a freshly seeded RNG, so a seed gives the same initial weights every time."""
    import torch

    from tlkit.heads.torch_heads import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_head(name, in_dim, n_classes, **params)


@contextlib.contextmanager
def cpu_threads(device: torch.device, macs_per_step: int) -> Iterator[None]:
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


def standardizer(train: FeatureTable) -> Standardizer:
    """The training rows' per-dimension mean and standard deviation, with a floor on the scale.

    A dimension's scale is at least :data:`SCALE_FLOOR` times the median scale of the dimensions (a constant
    dimension keeps scale 1: it is 0 once centred). Without the floor, standardisation divides a near-constant feature
    (rounding noise, a dead unit) by its tiny spread: a head then learns a weight of ``w / 1e-7`` on it, whose logits
    explode on any item where the feature moves (a fine-tuned backbone, another precision). With it, a head's weight
    on raw features is at most ``1 / SCALE_FLOOR`` times what the same standardised weight gives a typical feature,
    and features that vary 100 times less than the typical one (below the bf16 store's relative resolution, 2^-8, in
    a cache of such features) are regularised as if they varied that much.
    """
    from tlkit.heads.tables import Standardizer

    norm = train.moments()
    median = float(norm.std.median()) if len(norm.std) else 1.0
    return Standardizer(norm.mean, norm.std.clamp_min(max(SCALE_FLOOR * median, 1e-12)))


def loss_weights(train: FeatureTable, class_weight: str | None, n_classes: int) -> torch.Tensor | None:
    """Per-class loss weights for ``class_weight="balanced"``, else ``None``."""
    from tlkit.heads.tables import class_weights

    return class_weights(train.y, n_classes) if class_weight == "balanced" else None


def first_linear(head: Any) -> Any:
    """The ``nn.Linear`` that sees the raw features first (the head itself, or the first layer of a Sequential),
    or ``None`` when the head starts otherwise (then training does not standardise)."""
    from torch import nn

    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[0], nn.Linear):
        return head[0]
    return None


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


def fit_torch(
    head: Any, train: FeatureTable, val: FeatureTable | None, opts: TrainOptions, n_classes: int, emit: Progress
) -> Fitted:
    """AdamW over the table's batches for ``opts.epochs``; the saved state is the best validation epoch's (the last
    epoch's without validation), with the standardisation folded into the first linear layer."""
    import copy

    import torch

    device = train.device
    head = head.to(device)
    epoch_fn = _TorchEpochs(head, train, val, opts, n_classes)
    selector = _Selector()
    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(head.state_dict())
    stopped = False
    work = opts.batch_for(len(train)) * sum(p.numel() for p in head.parameters())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cpu_threads(device, work):
        torch.manual_seed(opts.seed)  # dropout
        for epoch in range(1, opts.epochs + 1):
            row = epoch_fn(epoch)
            if val is not None and selector.update(epoch, row["val_accuracy"], row["val_loss"]):
                best_state = copy.deepcopy(head.state_dict())
            history.append(row)
            emit(TrainEvent("epoch", epoch=epoch, epochs=opts.epochs, metrics=row))
            if val is not None and opts.early_stopping is not None and selector.stale >= opts.early_stopping:
                stopped = True
                break
    best_epoch = selector.best_epoch if val is not None else len(history)
    if val is not None:
        head.load_state_dict(best_state)
    if epoch_fn.norm is not None:
        epoch_fn.norm.fold_into(first_linear(head))
    head.eval()
    best = history[best_epoch - 1]
    return Fitted(head, history, best_epoch, len(history), stopped, best.get("val_accuracy"), best.get("val_loss"))


class _TorchEpochs:
    """One training epoch of a torch head, then its validation scores: ``epochs(n)`` returns the metrics row."""

    def __init__(
        self, head: Any, train: FeatureTable, val: FeatureTable | None, opts: TrainOptions, n_classes: int
    ) -> None:
        import torch
        from torch import nn

        from tlkit.heads.probes import HeadAdamW

        self.head, self.train, self.val = head, train, val
        self.batch_size = opts.batch_for(len(train))
        self.weights = loss_weights(train, opts.class_weight, n_classes)
        self.loss_fn = nn.CrossEntropyLoss(weight=self.weights)
        self.optimizer = HeadAdamW(head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.norm = standardizer(train) if opts.standardize and first_linear(head) is not None else None
        self.scale: Callable[[Any], Any] = self.norm if self.norm is not None else (lambda x: x)

    def __call__(self, epoch: int) -> dict[str, Any]:
        from torch import nn

        from tlkit.heads.scoring import table_logits

        t0 = time.perf_counter()
        self.head.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in self.train.batches(self.batch_size, self.generator):
            logits = self.head(self.scale(x))
            loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        self.head.eval()
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1)}
        row["train_accuracy"] = correct / max(seen, 1)
        if self.val is not None:
            logits = table_logits(self.head, self.val, self.scale)
            row["val_loss"] = float(nn.functional.cross_entropy(logits, self.val.y, weight=self.weights))
            row["val_accuracy"] = float((logits.argmax(1) == self.val.y).float().mean())
        row["seconds"] = time.perf_counter() - t0
        return row


def fit_once(head: Any, train: FeatureTable, val: FeatureTable | None, emit: Progress) -> Fitted:
    """A ``fit_features`` head (k-NN): one fit on every training row."""
    from torch import nn

    from tlkit.heads.scoring import table_logits

    emit(TrainEvent("fit", epochs=1, message="fitting"))
    t0 = time.perf_counter()
    head = head.to(train.device)
    head.fit_features(train.all_features(), train.y)
    head.eval()
    row: dict[str, Any] = {"epoch": 1}
    if val is not None:
        logits = table_logits(head, val)
        row["val_loss"] = float(nn.functional.cross_entropy(logits, val.y))
        row["val_accuracy"] = float((logits.argmax(1) == val.y).float().mean())
    return _one_shot(head, row, t0, emit)


def fit_estimator(
    train: FeatureTable, val: FeatureTable | None, opts: TrainOptions, n_classes: int, emit: Progress
) -> Fitted:
    """A scikit-learn estimator: one ``fit`` on every training row (NumPy, float32)."""
    import numpy as np

    from tlkit.heads.scoring import head_probabilities
    from tlkit.heads.sklearn_head import seed_estimator
    from tlkit.heads.torch_heads import build_head

    est = build_head(opts.head, train.dim, n_classes, **opts.head_params)
    seed_estimator(est, opts.seed)
    if opts.class_weight:
        keys = [k for k in est.get_params() if k == "class_weight" or k.endswith("__class_weight")]
        if not keys:
            raise ConfigError(f"{{param}}: {type(est).__name__} has no class_weight parameter", param="class_weight")
        est.set_params(**{k: opts.class_weight for k in keys})
    steps = [type(step).__name__ for _, step in getattr(est, "steps", [])] or [type(est).__name__]
    emit(TrainEvent("fit", epochs=1, message=f"fitting {' + '.join(steps)}"))
    t0 = time.perf_counter()
    x = train.all_features().cpu().numpy()
    y = train.y.cpu().numpy()
    try:
        est.fit(x, y)
    except ValueError as exc:
        raise ConfigError(f"head {opts.head}: fitting {type(est).__name__} failed ({exc})") from exc
    row: dict[str, Any] = {"epoch": 1, "train_accuracy": float((est.predict(x) == y).mean())}
    if val is not None:
        probs = head_probabilities(est, "estimator", val.all_features(), n_classes)
        vy = val.y.cpu().numpy()
        row["val_loss"] = float(-np.log(np.clip(probs[np.arange(len(vy)), vy], 1e-12, None)).mean())
        row["val_accuracy"] = float((probs.argmax(1) == vy).mean())
    return _one_shot(est, row, t0, emit)


def _one_shot(head: Any, row: dict[str, Any], started: float, emit: Progress) -> Fitted:
    row["seconds"] = time.perf_counter() - started
    emit(TrainEvent("epoch", epoch=1, epochs=1, metrics=row))
    return Fitted(head, [row], 1, 1, False, row.get("val_accuracy"), row.get("val_loss"))
