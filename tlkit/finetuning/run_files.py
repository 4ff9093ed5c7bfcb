"""Every file a fine-tuning run writes, in one place.

The engine calls these methods and never writes files itself. Under DDP only rank 0 should write: construct
:class:`RunFiles` with ``is_main=False`` on the other ranks and every write becomes a no-op (reads still work,
so each rank can resume from the same checkpoint).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tlkit.finetuning.state import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    load_model_tensors,
    load_training_state,
    read_meta,
    save_model_only,
    save_training_state,
)
from tlkit.runs.rundir import (
    CONFIG,
    METRICS,
    MODEL_WEIGHTS,
    REPORT,
    append_jsonl,
    read_config,
    read_jsonl,
    rewrite_jsonl,
    run_lock,
    save_tensors,
    write_json,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit.finetuning.ema import WeightAverage
    from tlkit.finetuning.model import TransferModel
    from tlkit.runs.metrics import ClassificationReport


class RunFiles:
    """The run directory of one ``tlkit finetune``: config, metrics, checkpoints, final model, report, plots."""

    def __init__(self, run_dir: str | os.PathLike[str], is_main: bool = True) -> None:
        self.dir = Path(run_dir)
        self.is_main = is_main
        self._lock: contextlib.ExitStack | None = None

    # -- paths ---------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / CHECKPOINT_DIR / LAST

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / CHECKPOINT_DIR / BEST

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_WEIGHTS

    def exists(self) -> bool:
        return self.config_path.is_file()

    # -- locking -------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Refuse a second writer on the same run directory (held until :meth:`unlock`)."""
        if not self.is_main:
            return
        held = contextlib.ExitStack()
        held.enter_context(run_lock(self.dir))
        self._lock = held

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- reads ---------------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        return read_config(self.dir)

    def checkpoint_meta(self) -> dict[str, Any] | None:
        return read_meta(self.last_checkpoint) if self.last_checkpoint.is_file() else None

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dir / METRICS)

    def load_checkpoint(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, average: WeightAverage | None = None
    ) -> dict[str, Any]:
        return load_training_state(self.last_checkpoint, model, optimizer, scaler, average)

    def best_model_state(self) -> dict[str, torch.Tensor] | None:
        return load_model_tensors(self.best_checkpoint) if self.best_checkpoint.is_file() else None

    # -- writes (rank 0 only) --------------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        if self.is_main:
            write_json(self.config_path, dict(config))

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` (on resume: the checkpoint's history, dropping any epoch logged after it)."""
        if self.is_main:
            rewrite_jsonl(self.dir / METRICS, rows)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        if self.is_main:
            append_jsonl(self.dir / METRICS, row)

    def save_checkpoint(
        self, model: nn.Module, optimizer: Any, scaler: Any, state: dict[str, Any], average: WeightAverage | None = None
    ) -> None:
        if self.is_main:
            save_training_state(self.last_checkpoint, model, optimizer, scaler, state, average)

    def save_best(self, model: nn.Module, state: dict[str, Any]) -> None:
        if self.is_main:
            save_model_only(self.best_checkpoint, model, state)

    def save_model(self, model: nn.Module) -> None:
        """The final model: ``model.safetensors`` with keys ``backbone.*`` and ``head.*``; with adapters,
        ``adapter.safetensors`` + ``adapter.json`` (:mod:`tlkit.finetuning.adapters`) and ``head.safetensors``."""
        if not self.is_main:
            return
        adapters = getattr(model, "adapters", None)
        if adapters is None:
            save_tensors(self.model_path, model.state_dict(), metadata={"format": "tlkit-finetune"})
            return
        from tlkit.finetuning.adapters import save_adapter_files
        from tlkit.runs.rundir import HEAD_WEIGHTS

        transfer = cast("TransferModel", model)
        save_tensors(self.dir / HEAD_WEIGHTS, transfer.head.state_dict(), metadata={"format": "tlkit-finetune-head"})
        save_adapter_files(self.dir, adapters, transfer.backbone)

    def write_report(
        self, report: ClassificationReport, extra: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
    ) -> None:
        """``report.json``, ``curves.png`` and ``confusion.png``."""
        if not self.is_main:
            return
        from tlkit.runs.plots import plot_confusion, plot_curves

        write_json(self.dir / REPORT, {**report.to_dict(), **dict(extra)})
        if history:
            plot_curves(history, self.dir / "curves.png")
        plot_confusion(report.confusion, report.class_names, self.dir / "confusion.png")
