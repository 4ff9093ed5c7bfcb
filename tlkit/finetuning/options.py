"""What a fine-tuning run is given: :class:`FinetuneOptions` (every training choice, validated) and
:class:`FinetuneInputs` (the backbone, the data and the run directory).

``FinetuneOptions`` keeps the runtime choices (``device``, ``precision``, ``workers``) as the user gave them, ``auto``
included: they are recorded in the run config and compared on resume. The engine never reads them; it receives the
:class:`tlkit.runtime.Runtime` that :func:`runtime_options` and :func:`tlkit.runtime.resolve` make of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.finetuning.bn import DEFAULT_BN_POLICY, check_bn_policy
from tlkit.finetuning.freeze import check_unfreeze_syntax
from tlkit.finetuning.mixing import check_mixing
from tlkit.finetuning.optim import DEFAULT_HEAD_LR, OPTIMIZERS, backbone_rate, block_rates
from tlkit.finetuning.schedule import check_lr_schedule, parse_schedule

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset
    from tlkit.runtime import RuntimeOptions

#: Epochs when neither ``epochs`` nor a ``schedule`` is given: :data:`EPOCHS_BY_MODALITY` for the backbone's
#: modality, else this (measured: docs/finetuning.md).
DEFAULT_EPOCHS = 10
EPOCHS_BY_MODALITY = {"text": 3}
#: The head when none is given: linear, started from a linear probe on frozen features (LP-FT, ``linear_probe``).
DEFAULT_HEAD = "linear"
DEFAULT_UNFREEZE = "all"
#: An image backbone's training augmentation when neither ``augment`` nor the backbone's own option is given.
DEFAULT_IMAGE_AUGMENT = "light"
#: The fraction of the training items held out to validate each epoch when no ``val`` is given (measured:
#: docs/benchmarks.md, "Fine-tuning defaults": on 2,000 sentences, 10 % held out scored as well as none, 20 % lost a
#: point; the hold-out still picks the best epoch and lets the probe's epoch 0 compete).
DEFAULT_VAL_SPLIT = 0.1
#: The least training loss the start probe leaves for fine-tuning, as a fraction of chance (ln K for K classes). A
#: probe fitted to near-zero training loss (0.05 of chance on Fashion-MNIST with EfficientNet-Lite0) sends the backbone
#: almost no gradient, so the features barely adapt; its logits are then divided by the temperature that lifts the
#: loss to this floor, which keeps every prediction (Ren et al. 2023, "How to prepare your task head for finetuning":
#: the training loss at the start of fine-tuning is the "energy" the features adapt with). 0.25 is about what one
#: epoch of a random linear head leaves there (0.24; measured: docs/benchmarks.md, "Fine-tuning defaults").
DEFAULT_PROBE_LOSS_FLOOR = 0.25
MONITORS = ("val_accuracy", "val_loss")
ON_ERROR = ("skip", "fail")
#: Arguments that may differ on resume without changing the result.
RESUME_FREE = ("device", "workers")


@dataclass
class FinetuneOptions:
    """Every training choice, validated. ``to_args()`` is stored in ``config.json`` and compared on resume."""

    head: str | None = None
    head_params: dict[str, Any] = field(default_factory=dict)
    unfreeze: str | None = None
    adapter: str | None = None
    schedule: str | None = None
    gradual: bool = False
    gradual_every: int = 1
    head_epochs: int | None = None
    epochs: int | None = None
    lr: float = DEFAULT_HEAD_LR
    backbone_lr_ratio: float | None = None
    backbone_lr: float | None = None
    layer_decay: float | None = None
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    warmup: float = 0.1
    batch_size: int = 32
    accumulate: int = 1
    precision: str = "auto"
    augment: str | None = None
    bn_policy: str = DEFAULT_BN_POLICY
    init_head: str | None = None
    linear_probe: bool | None = None
    probe_loss_floor: float = DEFAULT_PROBE_LOSS_FLOOR
    ema: float | None = None
    early_stopping: int | None = None
    monitor: str = "val_accuracy"
    grad_clip: float | None = 1.0
    grad_checkpointing: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    val_split: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> FinetuneOptions:
        """Options from the keyword arguments of :func:`tlkit.finetune`; unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown finetune option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(options)
        if values.get("init_head") is not None:
            values["init_head"] = str(Path(values["init_head"]).expanduser().resolve())
        return cls(**values)

    def validate(self, has_val: bool) -> None:
        """Reject conflicting or impossible options before anything loads."""
        self._check_phases()
        self._check_numbers()
        self._check_validation(has_val)
        backbone_rate(self.lr, self.backbone_lr_ratio, self.backbone_lr)
        block_rates([], 0.0, self.layer_decay)
        check_bn_policy(self.bn_policy)
        check_lr_schedule(self.lr_schedule)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"{{param}} must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}", param="optimizer"
            )
        if self.monitor not in MONITORS:
            raise ConfigError(f"{{param}} must be one of {', '.join(MONITORS)}, not {self.monitor!r}", param="monitor")

    def starts_from_probe(self) -> bool:
        """Whether the run first fits a linear probe on frozen features of its training split and starts the head
        from it (LP-FT): ``linear_probe``, by default on when neither ``head`` nor ``init_head`` is given."""
        if self.init_head:
            return False
        return self.head is None if self.linear_probe is None else self.linear_probe

    def default_epochs(self, modality: str) -> int:
        """``epochs``, or the default for a backbone of ``modality``."""
        return self.epochs if self.epochs is not None else EPOCHS_BY_MODALITY.get(modality, DEFAULT_EPOCHS)

    def _check_phases(self) -> None:
        if self.linear_probe and self.init_head:
            raise ConfigError(
                "{init_head} already starts from a probe; drop {linear_probe}", params=("init_head", "linear_probe")
            )
        if self.linear_probe and self.head not in (None, DEFAULT_HEAD):
            raise ConfigError(
                f"{{linear_probe}} starts a linear head; drop {{head}} {self.head!r} or {{linear_probe}}",
                params=("linear_probe", "head"),
            )
        if self.schedule and self.gradual:
            raise ConfigError("give {schedule} or {gradual}, not both", params=("schedule", "gradual"))
        if self.schedule and self.unfreeze is not None:
            raise ConfigError(
                "{schedule} names what each phase unfreezes; drop {unfreeze} (or drop {schedule})",
                params=("schedule", "unfreeze"),
            )
        if self.schedule and self.head_epochs is not None:
            raise ConfigError(
                "{schedule} sets the head-only epochs itself (head:N); drop {head_epochs}",
                params=("schedule", "head_epochs"),
            )
        if self.unfreeze is not None:
            check_unfreeze_syntax(self.unfreeze)
        if self.adapter is not None:
            from tlkit.finetuning.adapters import parse_adapter

            parse_adapter(self.adapter)
        if self.schedule:
            plan = parse_schedule(self.schedule)
            if self.epochs is not None and self.epochs != plan.total_epochs:
                raise ConfigError(
                    f"{{epochs}} {self.epochs} disagrees with {{schedule}} {self.schedule!r} ({plan.total_epochs} "
                    f"epochs); drop {{epochs}}",
                    params=("epochs", "schedule"),
                )

    def _check_numbers(self) -> None:
        at_least = {
            "epochs": (self.epochs, 1),
            "head_epochs": (self.head_epochs, 0),
            "batch_size": (self.batch_size, 1),
        }
        at_least.update(accumulate=(self.accumulate, 1), early_stopping=(self.early_stopping, 1))
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                raise ConfigError(f"{{param}} must be at least {low}, not {value}", param=name)
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"{{param}} is a fraction of each phase in [0, 1), not {self.warmup}", param="warmup")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"{{param}} must be positive (or omitted), not {self.grad_clip}", param="grad_clip")
        if not 0 <= self.probe_loss_floor < 1:
            raise ConfigError(
                f"{{param}} is a fraction of chance's loss in [0, 1), not {self.probe_loss_floor}",
                param="probe_loss_floor",
            )
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(
                f"{{param}} is a decay per optimizer step in (0, 1), e.g. 0.99, not {self.ema}", param="ema"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{{param}} must be in [0, 1), not {self.label_smoothing}", param="label_smoothing")
        check_mixing(self.mixup, self.cutmix)

    def _check_validation(self, has_val: bool) -> None:
        if has_val and self.val_split is not None:
            raise ConfigError("give {val} or {val_split}, not both", params=("val", "val_split"))
        if self.val_split is not None and not 0 <= self.val_split < 1:
            raise ConfigError(f"{{param}} must be in [0, 1), not {self.val_split}", param="val_split")
        if not has_val and self.val_split == 0 and self.early_stopping:
            raise ConfigError(
                "{early_stopping} watches validation; give {val} or a {val_split} above 0",
                params=("early_stopping", "val", "val_split"),
            )

    def to_args(self) -> dict[str, Any]:
        return asdict(self)

    def runtime_options(self) -> RuntimeOptions:
        """The raw runtime choices, for :func:`tlkit.runtime.resolve` (``"finetune"``)."""
        from tlkit.runtime import RuntimeOptions

        return RuntimeOptions.of(device=self.device, precision=self.precision, workers=self.workers)


@dataclass(frozen=True)
class FinetuneInputs:
    """What a run trains and where it writes: everything :func:`tlkit.finetune` takes besides the options.

    ``backbone`` is a name or a :class:`tlkit.Backbone`; ``train``/``val`` are paths or datasets from
    :func:`tlkit.open_dataset`; ``weights``, ``input_size`` and ``backbone_options`` adjust a named backbone;
    ``reader``/``reader_options`` open paths; ``on_error`` is ``skip`` or ``fail``; ``resume`` continues ``output``.
    """

    backbone: str | Backbone
    train: str | os.PathLike[str] | Dataset
    output: Path
    val: str | os.PathLike[str] | Dataset | None = None
    weights: str | None = None
    input_size: int | None = None
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    reader: str | None = None
    reader_options: Mapping[str, Any] = field(default_factory=dict)
    on_error: str = "skip"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"{{param}} must be skip or fail, not {self.on_error!r}", param="on_error")


__all__ = ["FinetuneInputs", "FinetuneOptions"]
