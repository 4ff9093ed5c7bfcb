"""Linear probes by the grid: ``sweep=True`` trains every (learning rate, weight decay) pair at once and keeps the
best on validation, and ``layer="auto"`` probes each cached layer the same way to choose the one to train on."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.heads.fit import Fitted, build_torch_head, cpu_threads, loss_weights
from tlkit.heads.options import FINAL, NEEDS_VAL, Progress, TrainEvent, TrainOptions, ignore

if TYPE_CHECKING:
    import torch

    from tlkit.heads.probes import LinearProbeBank
    from tlkit.heads.tables import FeatureTable, Standardizer

Tables = Callable[[str | None], "tuple[FeatureTable, FeatureTable | None]"]


def choose_layer(
    layers: Sequence[str | None], tables: Tables, opts: TrainOptions, emit: Progress
) -> tuple[str | None, dict[str, float]]:
    """Probe each layer with linear probes (the sweep's grid, or the one lr/weight decay); the best validation
    accuracy wins, then the lower loss. Returns the layer and every layer's score."""
    scores: dict[str, float] = {}
    best: tuple[float, float, str | None] | None = None
    lrs, wds = opts.grid()
    for i, name in enumerate(layers, start=1):
        emit(TrainEvent("layer", step=i, steps=len(layers), message=name or FINAL))
        train, val = tables(name)
        probe = fit_sweep(train, val, opts, len(train.source.class_names), ignore, lrs=lrs, wds=wds)
        acc, loss = float(probe.val_accuracy or 0.0), float(probe.val_loss or math.inf)
        scores[name or FINAL] = acc
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, name)
    return (best[2] if best else None), scores


def fit_sweep(
    train: FeatureTable,
    val: FeatureTable | None,
    opts: TrainOptions,
    n_classes: int,
    emit: Progress,
    *,
    lrs: Sequence[float] | None = None,
    wds: Sequence[float] | None = None,
) -> Fitted:
    """Train every (lr, weight decay) pair of the grid (default: the sweep's) as one :class:`LinearProbeBank`;
    keep each probe's best epoch, and return the best probe as an ``nn.Linear``."""

    from tlkit.heads.probes import LinearProbeBank

    if val is None:
        raise ConfigError(f"probing needs validation data; {NEEDS_VAL}")
    grid = [(float(a), float(b)) for a in (lrs or opts.sweep_lrs) for b in (wds or opts.sweep_wds)]
    init = build_torch_head("linear", {}, train.dim, n_classes, opts.seed)
    bank = LinearProbeBank(init, [g[0] for g in grid], [g[1] for g in grid], train.device)
    track = _BestProbes(bank)
    norm = train.moments() if opts.standardize else None
    epoch = _SweepEpochs(bank, train, val, opts, n_classes, norm)
    per_epoch: list[dict[str, torch.Tensor]] = []
    stale, stopped = 0, False
    with cpu_threads(train.device, epoch.batch_size * bank.weight.numel()):
        for e in range(1, opts.epochs + 1):
            row = epoch()
            improved = track.update(e, row["val_accuracy"], row["val_loss"])
            per_epoch.append(row)
            best_now = {"val_accuracy": float(row["val_accuracy"].max()), "probes": bank.size}
            emit(TrainEvent("epoch", epoch=e, epochs=opts.epochs, metrics={**best_now, "seconds": epoch.seconds}))
            stale = 0 if improved else stale + 1
            if opts.early_stopping is not None and stale >= opts.early_stopping:
                stopped = True
                break
    return track.result(grid, per_epoch, stopped, norm)


class _SweepEpochs:
    """One epoch of the whole probe bank, then its validation scores: ``epoch()`` returns per-probe tensors."""

    def __init__(
        self,
        bank: LinearProbeBank,
        train: FeatureTable,
        val: FeatureTable,
        opts: TrainOptions,
        n_classes: int,
        norm: Standardizer | None,
    ) -> None:
        import torch

        self.bank, self.train, self.val = bank, train, val
        self.batch_size = opts.batch_for(len(train))
        self.weights = loss_weights(train, opts.class_weight, n_classes)
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.scale: Callable[[Any], Any] = norm if norm is not None else (lambda x: x)
        self.seconds = 0.0

    def __call__(self) -> dict[str, torch.Tensor]:
        import torch

        from tlkit.heads.scoring import EVAL_BATCH

        t0 = time.perf_counter()
        p, device = self.bank.size, self.train.device
        loss_sum = torch.zeros(p, device=device)
        correct = torch.zeros(p, device=device)
        seen = 0
        for x, y in self.train.batches(self.batch_size, self.generator):
            loss, logits = self.bank.step(self.scale(x), y, self.weights)
            loss_sum += loss * len(y)
            correct += (logits.argmax(2) == y).sum(1)
            seen += len(y)
        with torch.no_grad():
            vx = self.val.batches(EVAL_BATCH, augment=False)
            logits = torch.cat([self.bank.logits(self.scale(x)) for x, _ in vx], dim=1)
            vloss = self.bank.losses(logits, self.val.y, self.weights)
            vacc = (logits.argmax(2) == self.val.y).float().mean(1)
        self.seconds = time.perf_counter() - t0
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": vloss,
            "val_accuracy": vacc,
            "seconds": torch.full((p,), self.seconds),
        }


class _BestProbes:
    """Each probe's best validation epoch so far (accuracy first, then lower loss) and its weights there."""

    def __init__(self, bank: LinearProbeBank) -> None:
        import torch

        p, device = bank.size, bank.weight.device
        self.bank = bank
        self.acc = torch.full((p,), -1.0, device=device)
        self.loss = torch.full((p,), math.inf, device=device)
        self.epoch = torch.zeros(p, dtype=torch.long, device=device)
        self.weight, self.bias = bank.weight.clone(), bank.bias.clone()

    def update(self, epoch: int, vacc: torch.Tensor, vloss: torch.Tensor) -> bool:
        """Record the probes that improved this epoch; whether any did."""
        import torch

        improved = (vacc > self.acc) | ((vacc == self.acc) & (vloss < self.loss))
        self.acc = torch.where(improved, vacc, self.acc)
        self.loss = torch.where(improved, vloss, self.loss)
        self.epoch = torch.where(improved, torch.full_like(self.epoch, epoch), self.epoch)
        self.weight[improved], self.bias[improved] = self.bank.weight[improved], self.bank.bias[improved]
        return bool(improved.any())

    def result(
        self,
        grid: list[tuple[float, float]],
        per_epoch: list[dict[str, torch.Tensor]],
        stopped: bool,
        norm: Standardizer | None,
    ) -> Fitted:
        """The best probe as a fitted ``nn.Linear`` (standardisation folded in), with every cell's score."""
        from torch import nn

        from tlkit.heads.probes import ProbeScore

        scores = [
            ProbeScore(lr, wd, int(self.epoch[i]), float(self.acc[i]), float(self.loss[i]))
            for i, (lr, wd) in enumerate(grid)
        ]
        chosen = max(range(len(grid)), key=lambda i: (scores[i].val_accuracy, -scores[i].val_loss))
        n_classes, dim = self.weight.shape[1:]
        head = nn.Linear(int(dim), int(n_classes)).to(self.weight.device)
        head.load_state_dict({"weight": self.weight[chosen], "bias": self.bias[chosen]})
        if norm is not None:
            norm.fold_into(head)
        head.eval()
        history = [
            {"epoch": e, **{k: float(v[chosen]) for k, v in row.items()}} for e, row in enumerate(per_epoch, start=1)
        ]
        best = scores[chosen]
        return Fitted(
            head, history, best.best_epoch, len(per_epoch), stopped, best.val_accuracy, best.val_loss,
            scores, grid[chosen][0], grid[chosen][1],
        )  # fmt: skip
