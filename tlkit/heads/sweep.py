"""Linear probes by the grid: ``sweep=True`` trains every (learning rate, weight decay) pair at once and keeps the
best on validation, and ``layer="auto"`` probes each cached layer the same way to choose the one to train on."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.heads.fit import Fitted, build_torch_head, cpu_threads, loss_weights, standardizer
from tlkit.heads.options import FINAL, NEEDS_VAL, Progress, TrainEvent, TrainOptions, ignore

if TYPE_CHECKING:
    import torch

    from tlkit.heads.probes import LinearProbeBank
    from tlkit.heads.tables import FeatureTable, Standardizer

Tables = Callable[[str | None], "tuple[FeatureTable, FeatureTable | None]"]


def choose_layer(
    layers: Sequence[str | None], tables: Tables, opts: TrainOptions, emit: Progress, on_val: bool = False
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Probe each layer with the ``auto`` head's cross-validated logistic regression and keep the best: by its k-fold
    CV accuracy on the training rows, or, ``on_val`` (a validation cache given for the purpose), by the accuracy on
    the validation rows of the probe fitted on the training rows. Ties go to the lower loss.

    Returns the layer and each layer's score: ``accuracy``, ``accuracy_std`` (over folds; ``None`` on validation),
    ``loss`` and ``on`` (``"cv"`` or ``"val"``).
    """
    from tlkit.heads.auto import fit_logistic_cv
    from tlkit.heads.fit import standardizer

    scores: dict[str, dict[str, Any]] = {}
    best: tuple[float, float, str | None] | None = None
    for i, name in enumerate(layers, start=1):
        emit(TrainEvent("layer", step=i, steps=len(layers), message=name or FINAL))
        train, val = tables(name)
        n_classes = len(train.source.class_names)
        norm = standardizer(train)
        weights = loss_weights(train, opts.class_weight, n_classes)
        theta, selection = fit_logistic_cv(
            norm(train.all_features()), train.y, n_classes, folds=opts.folds, seed=opts.seed,
            row_weight=weights[train.y] if weights is not None else None,
        )  # fmt: skip
        if on_val and val is not None:
            acc, loss, std, where = *_linear_scores(theta, norm(val.all_features()), val.y), None, "val"
        elif selection.chosen is not None:
            chosen = selection.chosen
            acc, loss, std, where = chosen.accuracy, chosen.loss, chosen.accuracy_std, "cv"
        else:
            raise ConfigError(f"{{param}} auto: too few items per class to cross-validate; {NEEDS_VAL}", param="layer")
        scores[name or FINAL] = {"accuracy": acc, "accuracy_std": std, "loss": loss, "on": where}
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, name)
    return (best[2] if best else None), scores


def _linear_scores(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the linear model ``theta`` ``[C, D+1]`` (bias last) on ``x``."""
    from torch import nn

    logits = x @ theta[:, :-1].T + theta[:, -1]
    return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def fit_sweep(
    train: FeatureTable,
    val: FeatureTable | None,
    opts: TrainOptions,
    n_classes: int,
    emit: Progress,
    *,
    lrs: Sequence[float] | None = None,
    wds: Sequence[float] | None = None,
    cross_validate: bool = False,
) -> Fitted:
    """Train every (lr, weight decay) pair of the grid (default: the sweep's) as one :class:`LinearProbeBank`;
    keep each probe's best epoch, and return the best probe as an ``nn.Linear``.

    ``cross_validate``: choose the cell and the epoch by k-fold CV on ``train`` instead (:func:`fit_sweep_cv`).
    """

    from tlkit.heads.probes import LinearProbeBank

    if cross_validate:
        return fit_sweep_cv(train, val, opts, n_classes, emit, lrs=lrs, wds=wds)
    if val is None:
        raise ConfigError(f"probing needs validation data; {NEEDS_VAL}")
    grid = [(float(a), float(b)) for a in (lrs or opts.sweep_lrs) for b in (wds or opts.sweep_wds)]
    init = build_torch_head("linear", {}, train.dim, n_classes, opts.seed)
    bank = LinearProbeBank(init, [g[0] for g in grid], [g[1] for g in grid], train.device)
    track = _BestProbes(bank)
    norm = standardizer(train) if opts.standardize else None
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


def fit_sweep_cv(
    train: FeatureTable,
    val: FeatureTable | None,
    opts: TrainOptions,
    n_classes: int,
    emit: Progress,
    *,
    lrs: Sequence[float] | None = None,
    wds: Sequence[float] | None = None,
) -> Fitted:
    """The sweep chosen by stratified k-fold CV: the grid is trained on each fold's training rows (standardised by
    their own moments) and scored each epoch on its held-out rows; the (cell, epoch) with the best mean accuracy
    (then lower mean loss) is retrained on every training row for that many epochs. Each cell reports its best
    epoch's mean accuracy and its standard deviation over the folds. ``val``, when given (a held-out share), only
    scores the result: it chose nothing."""
    import torch

    from tlkit.heads.auto import stratified_folds
    from tlkit.heads.probes import ProbeScore
    from tlkit.heads.tables import FeatureTable

    grid = [(float(a), float(b)) for a in (lrs or opts.sweep_lrs) for b in (wds or opts.sweep_wds)]
    counts = torch.bincount(train.y.cpu(), minlength=n_classes)
    k = int(min(opts.folds, int(counts[counts > 0].min())))
    if k < 2:
        raise ConfigError(f"{{param}}: too few items per class for cross-validation; {NEEDS_VAL}", param="sweep")
    fold_of = stratified_folds(train.y, k, opts.seed).numpy()
    accs, losses = [], []
    for f in range(k):
        emit(TrainEvent("cv", step=f, steps=k, message=f"fold {f + 1}/{k}"))
        part = {name: FeatureTable(
            train.source, train.rows[mask], train.device, in_memory=train.in_memory, use_views=train.use_views and tr
        ) for name, mask, tr in (("train", fold_of != f, True), ("val", fold_of == f, False))}  # fmt: skip
        rows, _ = _train_bank(part["train"], part["val"], opts, n_classes, grid, opts.epochs, ignore)
        accs.append(torch.stack([r["val_accuracy"].cpu() for r in rows]))  # [E, P]
        losses.append(torch.stack([r["val_loss"].cpu() for r in rows]))
    acc, loss = torch.stack(accs), torch.stack(losses)  # [K, E, P]
    mean_acc, mean_loss, std_acc = acc.mean(0), loss.mean(0), acc.std(0)
    rank = mean_acc.double() - 1e-9 * mean_loss.double()  # accuracy first; the loss breaks ties
    best_epoch = rank.argmax(0)  # [P]
    scores = [
        ProbeScore(lr, wd, int(best_epoch[p]) + 1, float(mean_acc[best_epoch[p], p]),
                   float(mean_loss[best_epoch[p], p]), float(std_acc[best_epoch[p], p]))
        for p, (lr, wd) in enumerate(grid)
    ]  # fmt: skip
    chosen = max(range(len(grid)), key=lambda p: (scores[p].val_accuracy, -scores[p].val_loss))
    epochs = scores[chosen].best_epoch
    rows, head = _train_bank(train, val, opts, n_classes, [grid[chosen]], epochs, emit)
    history = [{"epoch": e, **{key: float(v[0]) for key, v in row.items()}} for e, row in enumerate(rows, start=1)]
    last = history[-1]
    selection = {
        "method": f"linear probe grid, (lr, weight decay, epochs) by stratified {k}-fold CV",
        "folds": k,
        "chosen": {**scores[chosen].to_dict()},
    }
    return Fitted(
        head, history, epochs, epochs, False, last.get("val_accuracy"), last.get("val_loss"), scores,
        grid[chosen][0], grid[chosen][1], selection=selection,
    )  # fmt: skip


def _train_bank(
    train: FeatureTable,
    val: FeatureTable | None,
    opts: TrainOptions,
    n_classes: int,
    grid: list[tuple[float, float]],
    epochs: int,
    emit: Progress,
) -> tuple[list[dict[str, torch.Tensor]], Any]:
    """Train the grid for ``epochs`` on ``train`` (standardised by its own moments); every epoch's per-probe scores,
    and the first probe after the last epoch as an ``nn.Linear`` with the standardisation folded in."""
    from torch import nn

    from tlkit.heads.probes import LinearProbeBank

    init = build_torch_head("linear", {}, train.dim, n_classes, opts.seed)
    bank = LinearProbeBank(init, [g[0] for g in grid], [g[1] for g in grid], train.device)
    norm = standardizer(train) if opts.standardize else None
    epoch = _SweepEpochs(bank, train, val, opts, n_classes, norm)
    rows = []
    with cpu_threads(train.device, epoch.batch_size * bank.weight.numel()):
        for e in range(1, epochs + 1):
            rows.append(epoch())
            emit(TrainEvent("epoch", epoch=e, epochs=epochs, metrics={"probes": bank.size, "seconds": epoch.seconds}))
    head = nn.Linear(train.dim, n_classes).to(train.device)
    head.load_state_dict(bank.state(0))
    if norm is not None:
        norm.fold_into(head)
    return rows, head.eval()


class _SweepEpochs:
    """One epoch of the whole probe bank, then its validation scores: ``epoch()`` returns per-probe tensors."""

    def __init__(
        self,
        bank: LinearProbeBank,
        train: FeatureTable,
        val: FeatureTable | None,
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
        row = {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        if self.val is not None:
            with torch.no_grad():
                vx = self.val.batches(EVAL_BATCH, augment=False)
                logits = torch.cat([self.bank.logits(self.scale(x)) for x, _ in vx], dim=1)
                row["val_loss"] = self.bank.losses(logits, self.val.y, self.weights)
                row["val_accuracy"] = (logits.argmax(2) == self.val.y).float().mean(1)
        self.seconds = time.perf_counter() - t0
        row["seconds"] = torch.full((p,), self.seconds)
        return row


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
