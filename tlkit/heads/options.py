"""What :func:`tlkit.train_head` accepts: defaults, the validated options object and the progress events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tlkit.errors import ConfigError

DEFAULT_HEAD = "auto"
#: Heads that choose their own hyperparameters by cross-validation on the training rows: they train on every row by
#: default (no held-out share) and report the cross-validated score.
CROSS_VALIDATED = ("auto",)
DEFAULT_FOLDS = 5
DEFAULT_EPOCHS = 30
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_VAL_SPLIT = 0.2
#: The sweep's default grid: 7 AdamW learning rates x 5 decoupled weight decays = 35 linear probes.
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
AUTO_LAYER = "auto"
#: The name ``layer="auto"`` reports for the final (pooled) embedding, the ``features`` dataset.
FINAL = "features"
#: What "give validation data" means, for the messages of options that need it.
NEEDS_VAL = "give a validation cache, or hold out a share of the training cache"


@dataclass
class TrainEvent:
    """A progress event for the ``progress`` callback.

    ``kind`` is ``"start"``, ``"layer"`` (probing layer ``step`` of ``steps`` for ``layer="auto"``, ``message`` is
    its name), ``"cv"`` (step ``step`` of ``steps`` of a cross-validation: a regularisation strength of the ``auto``
    head, a fold of a sweep; ``message`` says which), ``"epoch"`` (``epoch`` of ``epochs`` finished, ``metrics``
    filled), ``"fit"`` (a one-shot head is being fitted) or ``"done"``.
    """

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[TrainEvent], None]


def ignore(event: TrainEvent) -> None:
    """A progress callback that draws nothing."""


@dataclass(frozen=True)
class TrainOptions:
    """How a head is fitted: :func:`tlkit.train_head`'s hyperparameters, validated by :meth:`check`.

    ``head`` is a registered head name (``sklearn:ALIAS`` already split into ``head_params``); ``batch_size``
    ``None`` is :func:`auto_batch_size` of the training rows; ``early_stopping`` is the patience in epochs.
    """

    head: str
    head_params: dict[str, Any]
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    batch_size: int | None = None
    class_weight: str | None = None
    early_stopping: int | None = None
    seed: int = 0
    sweep: bool = False
    sweep_lrs: tuple[float, ...] = DEFAULT_LRS
    sweep_wds: tuple[float, ...] = DEFAULT_WDS
    standardize: bool = True
    views: bool = False
    folds: int = DEFAULT_FOLDS

    @property
    def kind(self) -> str:
        """The head's kind in the registry: ``torch`` or ``estimator``."""
        return head_kind(self.head)

    def batch_for(self, n_rows: int) -> int:
        return self.batch_size or auto_batch_size(n_rows)

    def grid(self) -> tuple[Sequence[float], Sequence[float]]:
        """The (learning rates, weight decays) a probe tries: the sweep's grid, or the one pair."""
        return (self.sweep_lrs, self.sweep_wds) if self.sweep else ((self.lr,), (self.weight_decay,))

    def record(self, batch_size: int) -> dict[str, Any]:
        """The options as the run's ``config.json`` records them (``batch_size`` as used)."""
        return {
            "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": batch_size,
            "views": self.views, "class_weight": self.class_weight, "early_stopping": self.early_stopping,
            "seed": self.seed, "sweep": self.sweep, "standardize": self.standardize, "folds": self.folds,
        }  # fmt: skip

    def check(self, has_val: bool) -> None:
        """Raise :class:`ConfigError` for a value out of range or a combination that cannot work.

        ``has_val``: whether validation data will exist (a validation cache or a held-out share above 0).
        """
        from tlkit.host.registry import get_head_entry

        entry = get_head_entry(self.head)  # unknown head: a clear error before any data loads
        _at_least(self.epochs, 1, "epochs")
        _at_least(self.batch_size, 1, "batch_size")
        _at_least(self.early_stopping, 1, "early_stopping")
        _at_least(self.folds, 2, "folds")
        if self.lr <= 0:
            raise ConfigError(f"{{param}} must be positive, not {self.lr}", param="lr")
        if self.weight_decay < 0:
            raise ConfigError(f"{{param}} must be non-negative, not {self.weight_decay}", param="weight_decay")
        if self.early_stopping is not None and not has_val:
            raise ConfigError(f"{{param}} needs validation data; {NEEDS_VAL}", param="early_stopping")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"{{param}} must be 'balanced', not {self.class_weight!r}", param="class_weight")
        if self.views and entry.kind != "torch":
            raise views_fitted_once(self.head)


def _at_least(value: int | None, low: int, param: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{{param}} must be at least {low}, not {value}", param=param)


def views_fitted_once(head: str) -> ConfigError:
    return ConfigError(
        f"{{param}} sample a view per epoch; head {head!r} is fitted once (use linear or mlp)", param="views"
    )


def resolve_head(head: str | None, params: dict[str, Any] | None, sweep: bool) -> tuple[str, dict[str, Any]]:
    """The registered head name and its parameters (``sklearn:ALIAS`` split; a sweep trains ``linear`` heads)."""
    from tlkit.heads.torch_heads import split_head_name

    if sweep:
        if head not in (None, "linear"):
            raise ConfigError(
                f"{{param}} {head!r}: a sweep trains linear probes; drop the head or the sweep", param="head"
            )
        if params:
            raise ConfigError("{param} do not apply: a sweep trains plain linear probes", param="head_params")
        return "linear", {}
    name, extra = split_head_name(head or DEFAULT_HEAD)
    return name, {**extra, **(params or {})}


def check_validation(val: Any, val_split: float | None, cross_validates: bool = False) -> float | None:
    """The held-out share to use: ``val_split``, or the default when neither ``val`` nor ``val_split`` is given (0
    when the head ``cross_validates``: it chooses by k-fold CV on every training row and is refitted on all of them)."""
    if val is not None and val_split is not None:
        raise ConfigError("give {val} or {val_split}, not both", params=("val", "val_split"))
    if val_split is not None and not (val_split == 0 or 0 < val_split < 1):
        raise ConfigError(f"{{param}} must be in (0, 1), or 0 for no validation; not {val_split}", param="val_split")
    if val is None and val_split is None:
        return 0.0 if cross_validates else DEFAULT_VAL_SPLIT
    return val_split


def head_kind(head: str) -> str:
    """``torch`` or ``estimator``, from the head's registry entry."""
    from tlkit.host.registry import get_head_entry

    return get_head_entry(head).kind


def auto_batch_size(n_rows: int) -> int:
    """The default batch size: an eighth of the training rows, between 32 and 1024.

    Features are cheap, so large batches are fast; but a small dataset still needs several optimiser steps per
    epoch to converge in a few dozen epochs.
    """
    return int(min(1024, max(32, n_rows // 8)))
