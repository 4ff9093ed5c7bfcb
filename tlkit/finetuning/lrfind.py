"""``tlkit lr-find``: the learning-rate range test (Smith, 2017) on the chosen unfreeze spec.

The rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` mini-batches while the loss is recorded;
the run stops early once the smoothed loss exceeds four times its minimum. The rate is the *head's*: every backbone
group keeps its discriminative ratio (and layer decay), exactly as ``tlkit finetune`` would use them. The suggestion
is the rate at the smoothed loss's minimum divided by ten, a conservative, widely used rule; the steepest descent
point is reported too. Nothing is saved except the plot: the test trains a throw-away copy.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone


@dataclass
class LRFindResult:
    """The range test: rates tried, raw and smoothed losses, and the suggested head rate."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    steepest_lr: float
    min_loss_lr: float
    diverged: bool
    plot: Path | None
    unfreeze: str

    def summary(self) -> str:
        return (
            f"suggested --lr {self.suggested_lr:.2e} (loss minimum at {self.min_loss_lr:.2e}, steepest descent at "
            f"{self.steepest_lr:.2e}; unfreeze {self.unfreeze})"
        )


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
    """``(suggested, steepest, minimum)`` rates from a smoothed loss curve."""
    if not lrs:
        raise ConfigError("the range test recorded no steps; give more --steps or more data")
    i_min = min(range(len(smoothed)), key=lambda i: smoothed[i])
    min_lr = lrs[i_min]
    steepest = min_lr
    if i_min >= 2:
        logs = [math.log10(x) for x in lrs[: i_min + 1]]
        grads = [(smoothed[i + 1] - smoothed[i]) / (logs[i + 1] - logs[i]) for i in range(i_min)]
        steepest = lrs[min(range(len(grads)), key=lambda i: grads[i])]
    return min_lr / 10, steepest, min_lr


def plot_lr_find(result: LRFindResult, path: str | os.PathLike[str]) -> None:
    from tlkit.runs.plots import _pyplot
    from tlkit.runs.rundir import atomic_write_with

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="red", linestyle="--", label=f"suggested {result.suggested_lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate (backbone scaled by its ratio)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, unfreeze {result.unfreeze}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def lr_find(
    backbone: str | Backbone,
    train: Any,
    *,
    unfreeze: str = "last:1",
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 100,
    output: str | os.PathLike[str] | None = "lr_find.png",
    weights: str | None = None,
    input_size: int | None = None,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    callback: Callable[[int, int, float, float], None] | None = None,
    **options: Any,
) -> LRFindResult:
    """Run the range test; ``options`` are :class:`tlkit.finetuning.engine.FinetuneOptions` fields (``head``,
    ``backbone_lr_ratio``, ``layer_decay``, ``batch_size``, ``bn_policy``, ``precision``, ``seed``, ...).
    ``callback(step, steps, lr, loss)`` reports progress. Writes the plot to ``output`` unless it is ``None``."""
    import torch

    from tlkit.runtime.amp import autocast
    from tlkit.finetuning.data import to_device
    from tlkit.finetuning.engine import FinetuneEngine, FinetuneOptions
    from tlkit.finetuning.optim import set_group_rates

    if not 0 < start_lr < end_lr:
        raise ConfigError(f"need 0 < --start-lr < --end-lr, not {start_lr} and {end_lr}")
    if steps < 5:
        raise ConfigError(f"--steps must be at least 5, not {steps}")
    opts = FinetuneOptions(unfreeze=unfreeze, epochs=1, head_epochs=0, val_split=0.0, **options)
    with tempfile.TemporaryDirectory(prefix="tlkit-lrfind-") as tmp:
        engine = FinetuneEngine(
            backbone,
            train,
            Path(tmp) / "run",
            opts,
            weights=weights,
            input_size=input_size,
            reader=reader,
            reader_options=reader_options,
        )
        engine.prepare()
    model, optimizer, device = engine.model, engine.optimizer, engine.device
    trainable = engine.trainable_by_phase[-1]
    model.set_trainable(trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    criterion = torch.nn.CrossEntropyLoss()
    engine._seed_epoch(0)
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, beta, best = 0.0, 0.9, math.inf
    diverged = False
    batches = iter(engine.train_loader)
    epoch = 0
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            engine._seed_epoch(epoch)
            batches = iter(engine.train_loader)
            batch = next(batches)
        if batch.inputs is None:
            continue
        set_group_rates(optimizer, trainable, lr / opts.lr)
        with autocast(device, engine.precision):
            logits = model(to_device(batch.inputs, device))
        loss = criterion(logits.float(), batch.labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0 if opts.grad_clip is None else opts.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (len(losses) + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        best = min(best, smooth)
        if callback is not None:
            callback(i + 1, steps, lr, smooth)
        if not math.isfinite(smooth) or (len(losses) > 5 and smooth > 4 * best):
            diverged = True
            break
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    lrs_f, sm_f = [lrs[i] for i in finite], [smoothed[i] for i in finite]
    suggested, steepest, min_lr = suggest(lrs_f, sm_f)
    result = LRFindResult(
        lrs, losses, smoothed, suggested, steepest, min_lr, diverged, Path(output) if output else None, unfreeze
    )
    if output:
        plot_lr_find(result, output)
    return result
