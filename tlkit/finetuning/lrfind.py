"""``tlkit lr-find``: the learning-rate range test (Smith, 2017) on the chosen unfreeze spec.

The rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps (the engine's own: a
mini-batch, or ``accumulate`` of them) while the loss is recorded; the run stops early once the smoothed loss exceeds
four times its minimum. The rate is the *head's*: every backbone group keeps its discriminative ratio (and layer
decay), exactly as ``tlkit finetune`` would use them. With ``adapter`` the engine sets the model up as a fine-tuning
run does (:meth:`Finetuner.prepare` injects the adapters into the blocks ``unfreeze`` names), so the test trains the
adapters and the head, at the adapters' ratio, and the base stays frozen. The suggestion is the rate at the smoothed
loss's minimum divided by ten, a conservative, widely used rule; the steepest descent point is reported too. Nothing
is saved except the plot: the test trains a throw-away copy (of a loaded :class:`tlkit.Backbone` too: the caller's
module is never changed).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.finetuning.api import check_option_names, with_preprocess_option
from tlkit.finetuning.engine import Finetuner
from tlkit.finetuning.options import DEFAULT_UNFREEZE, FinetuneInputs, FinetuneOptions
from tlkit.finetuning.result import FinetuneEvent
from tlkit.runtime import resolve
from tlkit.runtime.progress import ProgressCallback, StageClock

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.finetuning.data import LoaderBatch


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
    #: The adapter spec the test trained (as given), or ``None`` for whole blocks.
    adapter: str | None = None
    #: Parameters the test trained (the head included): with ``adapter``, the adapters' and not the base's.
    trainable_params: int = 0

    def setting(self) -> str:
        """What trained: ``unfreeze all`` or ``unfreeze all, adapter lora``."""
        return f"unfreeze {self.unfreeze}" + (f", adapter {self.adapter}" if self.adapter else "")

    def summary(self) -> str:
        return (
            f"suggested --lr {self.suggested_lr:.2e} (loss minimum at {self.min_loss_lr:.2e}, steepest descent at "
            f"{self.steepest_lr:.2e}; {self.setting()}; {self.trainable_params:,} trainable params)"
        )


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
    """``(suggested, steepest, minimum)`` rates from a smoothed loss curve."""
    if not lrs:
        raise ConfigError("the range test recorded no steps; give more {param} or more data", param="steps")
    i_min = min(range(len(smoothed)), key=lambda i: smoothed[i])
    min_lr = lrs[i_min]
    steepest = min_lr
    if i_min >= 2:
        logs = [math.log10(x) for x in lrs[: i_min + 1]]
        grads = [(smoothed[i + 1] - smoothed[i]) / (logs[i + 1] - logs[i]) for i in range(i_min)]
        steepest = lrs[min(range(len(grads)), key=lambda i: grads[i])]
    return min_lr / 10, steepest, min_lr


def plot_lr_find(result: LRFindResult, path: str | os.PathLike[str]) -> None:
    from tlkit.fileio import atomic_write_with
    from tlkit.runs.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="red", linestyle="--", label=f"suggested {result.suggested_lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate (backbone scaled by its ratio)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, {result.setting()}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def lr_find(
    backbone: str | Backbone,
    train: Any,
    *,
    unfreeze: str = DEFAULT_UNFREEZE,
    adapter: str | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 100,
    output: str | os.PathLike[str] | None = "lr_find.png",
    weights: str | None = None,
    input_size: int | None = None,
    preprocess: Mapping[str, Any] | None = None,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    callback: Callable[[int, int, float, float], None] | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> LRFindResult:
    """Run the range test on the parameters ``tlkit.finetune(..., unfreeze=unfreeze, adapter=adapter)`` would train
    (with ``adapter``, e.g. ``"lora:r=8"``: the adapters in the ``unfreeze`` blocks and the head, the base frozen).
    ``options`` are :class:`tlkit.finetuning.FinetuneOptions` fields (``head``,
    ``backbone_lr_ratio``, ``layer_decay``, ``batch_size``, ``bn_policy``, ``precision``, ``device``, ``workers``,
    ``seed``, ...); ``weights``, ``input_size`` and ``preprocess`` adjust a named backbone as in
    :func:`tlkit.finetune`. ``callback(step, steps, lr, loss)`` reports each step; ``progress`` receives
    :class:`tlkit.runtime.progress.ProgressEvent` objects: stage ``features`` while the linear probe that starts the
    head embeds the data (as fine-tuning does), then ``lr-find`` per step (``info``: ``lr`` and the smoothed
    ``loss``). Writes the plot to ``output`` unless it is ``None``. The test runs in one process, with the fine-tuning
    runtime policy."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(
            f"need 0 < {{start_lr}} < {{end_lr}}, not {start_lr} and {end_lr}", params=("start_lr", "end_lr")
        )
    if steps < 5:
        raise ConfigError(f"{{param}} must be at least 5, not {steps}", param="steps")
    check_option_names(lr_find, options)
    opts = FinetuneOptions.from_kwargs(
        {"unfreeze": unfreeze, "adapter": adapter, "epochs": 1, "head_epochs": 0, "val_split": 0.0, **options}
    )
    runtime = resolve("finetune", opts.runtime_options(), env=False)
    with tempfile.TemporaryDirectory(prefix="tlkit-lrfind-") as tmp:
        inputs = FinetuneInputs(
            _throwaway(backbone), train, Path(tmp) / "run", weights=weights, input_size=input_size, reader=reader,
            backbone_options=with_preprocess_option(None, preprocess, input_size),
            reader_options=dict(reader_options or {}),
        )  # fmt: skip
        features = StageClock(progress, "features")

        def probe(ev: FinetuneEvent) -> None:
            if ev.kind == "probe":
                features(ev.step, ev.steps)

        engine = Finetuner(inputs, opts, runtime, callback=probe)
        engine.prepare()
    curve = _range_test(engine, start_lr, end_lr, steps, callback, StageClock(progress, "lr-find"))
    finite = [i for i, s in enumerate(curve.smoothed) if math.isfinite(s)]
    suggested, steepest, min_lr = suggest([curve.lrs[i] for i in finite], [curve.smoothed[i] for i in finite])
    result = LRFindResult(
        curve.lrs, curve.losses, curve.smoothed, suggested, steepest, min_lr, curve.diverged,
        Path(output) if output else None, unfreeze, adapter, curve.trainable_params,
    )  # fmt: skip
    if output:
        plot_lr_find(result, output)
    return result


def _throwaway(backbone: str | Backbone) -> str | Backbone:
    """A name as it is (the engine loads its own module); a loaded :class:`Backbone` as a shallow copy around a deep
    copy of its module, so that the test's training (and any adapters it injects) never reaches the caller's."""
    from tlkit.contract.backbone import Backbone

    if not isinstance(backbone, Backbone) or not backbone.loaded:
        return backbone
    clone = copy.copy(backbone)
    clone._module = copy.deepcopy(backbone.module)
    return clone


@dataclass
class _Curve:
    """The recorded rates and losses, with the bias-corrected exponential smoothing of fastai's range test."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False
    trainable_params: int = 0
    _avg: float = 0.0
    _best: float = math.inf

    def add(self, lr: float, loss: float, beta: float = 0.9) -> float:
        """Record one step; returns the smoothed loss and marks divergence (not finite, or 4× the best)."""
        self._avg = beta * self._avg + (1 - beta) * loss
        smooth = self._avg / (1 - beta ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        self.diverged = not math.isfinite(smooth) or (len(self.losses) > 5 and smooth > 4 * self._best)
        return smooth


def _range_test(
    engine: Finetuner,
    start_lr: float,
    end_lr: float,
    steps: int,
    callback: Callable[[int, int, float, float], None] | None,
    clock: StageClock,
) -> _Curve:
    """Train the prepared ``engine``'s model for up to ``steps`` optimizer steps at exponentially growing rates.

    Each step is the engine's own: :meth:`Finetuner._forward_backward` over ``accumulate`` batches (its loss,
    augmentation mixing and channels-last inputs), then :meth:`Finetuner._optimizer_step` (its gradient clipping and
    scaler), on the parameters of the last phase: the adapters and the head with ``adapter``."""
    from tlkit.finetuning.engine import EpochMeter
    from tlkit.finetuning.optim import set_group_rates

    model = engine.model
    trainable = engine.trainable_by_phase[-1]
    model.set_trainable(trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    engine._seed_epoch(0)
    model.train()
    engine.optimizer.zero_grad(set_to_none=True)
    curve = _Curve(trainable_params=sum(p.numel() for p in params))
    batches = _batches(engine)
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        meter = EpochMeter(engine.device)
        ended = False
        for _ in range(engine.opts.accumulate):
            batch = next(batches, None)
            if batch is None:
                ended = True
                break
            if batch.inputs is not None:
                engine._forward_backward(batch, meter)
        if not meter.seen:
            if ended:
                break
            continue
        set_group_rates(engine.optimizer, trainable, lr / engine.opts.lr)
        engine._optimizer_step(params)
        smooth = curve.add(lr, float(meter.loss_sum) / meter.seen)
        if callback is not None:
            callback(i + 1, steps, lr, smooth)
        clock(i + 1, steps, f"lr {lr:.1e}  loss {smooth:.4f}", lr=lr, loss=smooth)
        if curve.diverged or ended:
            break
    return curve


def _batches(engine: Finetuner) -> Iterator[LoaderBatch]:
    """Training batches, epoch after epoch, each epoch seeded as in a fine-tuning run (epoch 0 already is)."""
    epoch = 0
    while True:
        empty = True
        for batch in engine.train_loader:
            empty = False
            yield batch
        if empty:
            return
        epoch += 1
        engine._seed_epoch(epoch)
