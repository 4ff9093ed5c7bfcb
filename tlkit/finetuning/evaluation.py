"""Validation during fine-tuning: predictions on a loader, the epoch's validation metrics, and which epoch is best
(the monitor, ties broken by loss) with early stopping's patience."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from tlkit.finetuning.data import LoaderBatch
    from tlkit.runtime import Runtime


def predict(
    model: nn.Module,
    loader: Iterable[LoaderBatch],
    runtime: Runtime,
    criterion: Callable[..., Any],
    *,
    channels_last: bool = False,
    on_skipped: Callable[[Sequence[tuple[int, str]]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, predictions and mean loss of ``model`` on ``loader`` (eval mode, the runtime's autocast)."""
    import numpy as np
    import torch

    from tlkit.runtime.batching import to_device

    model.eval()
    labels_all, preds_all = [], []
    loss_sum, n = 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            if on_skipped is not None:
                on_skipped(batch.skipped)
            if batch.inputs is None:
                continue
            labels = batch.labels.to(runtime.device)
            with runtime.autocast():
                logits = model(to_device(batch.inputs, runtime.device, channels_last))
            loss_sum += float(criterion(logits.float(), labels)) * int(labels.numel())
            n += int(labels.numel())
            labels_all.append(batch.labels.numpy())
            preds_all.append(logits.argmax(1).cpu().numpy())
    y = np.concatenate(labels_all) if labels_all else np.zeros(0, int)
    p = np.concatenate(preds_all) if preds_all else np.zeros(0, int)
    return y, p, loss_sum / n if n else float("nan")


def validation_metrics(y: np.ndarray, p: np.ndarray, loss: float) -> dict[str, float]:
    """``val_loss``, ``val_accuracy`` and ``val_balanced_accuracy`` (the mean of per-class recalls)."""
    import numpy as np

    recalls = [float((p[y == c] == c).mean()) for c in np.unique(y)]
    return {
        "val_loss": loss,
        "val_accuracy": float((y == p).mean()) if len(y) else float("nan"),
        "val_balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
    }


@dataclass
class BestEpoch:
    """The best epoch so far by ``monitor`` (``val_accuracy``: ties go to the lower ``val_loss``) and the epochs
    since it, for early stopping. Its state is checkpointed, so a resumed run stops where the uninterrupted one would.
    """

    monitor: str
    patience: int | None
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "loss": None, "epoch": 0})
    bad_epochs: int = 0
    stopped: bool = False

    def improved(self, metrics: Mapping[str, Any]) -> bool:
        """Whether ``metrics`` (an epoch's validation metrics; empty without validation) beat the best so far."""
        if not metrics:
            return True  # no validation: the latest model is the best we know
        value, loss = float(metrics[self.monitor]), float(metrics["val_loss"])
        if self.best.get("value") is None:
            return True
        best, best_loss = float(self.best["value"]), self.best["loss"]
        if self.monitor == "val_loss":
            return value < best
        return value > best or (value == best and best_loss is not None and loss < float(best_loss))

    def update(self, metrics: Mapping[str, Any], epoch: int, epochs_left: int) -> bool:
        """Record 1-based ``epoch``'s ``metrics``; returns whether it is the new best. Sets ``stopped`` once the
        patience runs out with epochs still left."""
        better = self.improved(metrics)
        if better:
            self.best = {"value": metrics.get(self.monitor), "loss": metrics.get("val_loss"), "epoch": epoch}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.patience and self.bad_epochs >= self.patience and epochs_left > 0:
            self.stopped = True
        return better

    def new_phase(self) -> None:
        """A new phase gets its full patience."""
        self.bad_epochs = 0

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "stopped": self.stopped}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state["stopped"])


__all__ = ["BestEpoch", "predict", "validation_metrics"]
