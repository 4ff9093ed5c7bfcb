"""What fine-tuning reports: :class:`FinetuneEvent` (progress, for a callback) and :class:`FinetuneResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.finetuning.freeze import FreezeRow

if TYPE_CHECKING:
    from tlkit.data.base import Skipped
    from tlkit.runs.metrics import ClassificationReport


@dataclass
class FinetuneEvent:
    """A progress event for the ``callback``.

    ``kind`` is ``"probe"`` (before the start, while the default linear probe's frozen features are computed:
    ``step`` of ``steps`` items, ``items_per_s``), ``"start"`` (``freeze`` and ``plan`` filled; ``message`` says how
    the head starts when a probe was fitted), ``"phase"`` (``trainable`` filled), ``"epoch_start"``,
    ``"step"`` (after every batch), ``"epoch_end"`` (``metrics`` filled) or ``"done"``. ``epoch`` is 1-based;
    ``loss`` and ``accuracy`` are running training averages for the epoch, read from the device after every batch on
    the CPU and at most every half second on an accelerator.
    """

    kind: str
    epoch: int = 0
    epochs: int = 0
    phase: int = 0
    step: int = 0
    steps: int = 0
    items: int = 0
    loss: float | None = None
    accuracy: float | None = None
    items_per_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    freeze: list[FreezeRow] = field(default_factory=list)
    plan: str = ""
    message: str = ""


@dataclass
class FinetuneResult:
    """What ``tlkit.finetune`` returns.

    Attributes:
        run_dir: the run directory (``model.safetensors``, ``config.json``, ``metrics.jsonl``, ``report.json``,
            ``curves.png``, ``confusion.png``, ``checkpoints/``).
        report: metrics of the saved model on the validation set (on the training set, eval transform, when
            there is no validation set; see ``evaluated_on``).
        evaluated_on: ``"val"`` or ``"train"``.
        monitor, best_epoch, best_value: the metric that picked the saved model, its 1-based epoch (0: the model as it
            started, when it started from a fitted probe and no epoch beat it) and value.
        epochs_run, total_epochs: epochs completed, and epochs planned.
        stopped_early: whether early stopping ended the run.
        resumed_from: the epoch a ``resume=True`` run continued from (``None`` for a fresh run).
        plan: the phases, in ``--schedule`` syntax.
        freeze: the freeze report (every block with parameters, trainability, rate, BatchNorm mode).
        history: the ``metrics.jsonl`` rows.
        skipped: bad items that were skipped, with reasons.
    """

    run_dir: Path
    report: ClassificationReport
    evaluated_on: str
    monitor: str
    best_epoch: int
    best_value: float | None
    epochs_run: int
    total_epochs: int
    stopped_early: bool
    resumed_from: int | None
    plan: str
    freeze: list[FreezeRow]
    history: list[dict[str, Any]]
    skipped: list[Skipped]

    @property
    def model_path(self) -> Path:
        """``model.safetensors``, or for a run that trained adapters ``adapter.safetensors``."""
        adapter = self.run_dir / "adapter.safetensors"
        return adapter if adapter.is_file() else self.run_dir / "model.safetensors"

    def summary(self) -> str:
        where = "validation" if self.evaluated_on == "val" else "training set (no validation)"
        return f"{self.report.summary()} on {where}; best epoch {self.best_epoch}/{self.total_epochs}" + (
            " (stopped early)" if self.stopped_early else ""
        )


Callback = Callable[[FinetuneEvent], None]

__all__ = ["Callback", "FinetuneEvent", "FinetuneResult"]
