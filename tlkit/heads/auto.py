"""The default head, ``auto``: L2-regularised multinomial logistic regression, its regularisation strength chosen by
stratified k-fold cross-validation on the training rows, then refitted on all of them.

This is the linear-probe protocol of CLIP (Radford et al. 2021): full-batch L-BFGS over a log-spaced grid of
regularisation strengths, warm-started from strong to weak regularisation. Here every fold is solved in one batched
computation: the weights of the ``K`` fold models are one tensor ``[K, C, D+1]``; one matrix product gives every
fold's logits on every row (its training rows for the loss, its held-out rows for the score), and each fold keeps its
own L-BFGS history and line search (:func:`lbfgs`). The path stops once the cross-validated loss has not improved
for :data:`PATIENCE` grid points. Features are standardised with a floor on the scale
(:func:`tlkit.heads.fit.standardizer`), and the standardisation is folded into the saved ``nn.Linear``, so the run's
``head.safetensors`` is an ordinary linear head for ``predict``, ``export`` and ``finetune --init-head``.

The objective of each fold, for regularisation strength ``lam``: the mean cross-entropy of its training rows plus
``lam / 2 * ||W||^2`` (the bias is not regularised). scikit-learn's ``C`` is ``1 / (lam * n_rows)``.

No ``torch.optim`` (its first use imports ``torch._dynamo``, seconds of start-up for a fit that takes less).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tlkit.heads.fit import Fitted
    from tlkit.heads.options import Progress, TrainOptions
    from tlkit.heads.tables import FeatureTable

#: Regularisation strengths tried, strong to weak: 10 down to 1e-6 in half-decade steps.
LAMBDAS: tuple[float, ...] = tuple(10.0 ** (1 - i / 2) for i in range(15))
DEFAULT_FOLDS = 5
#: Grid points without a better cross-validated loss before the path stops.
PATIENCE = 3
#: The path's stopping test (largest gradient entry): the held-out scores settle long before the weights do; the
#: refit on every row runs to the full tolerance of :func:`fit_logistic`.
PATH_GTOL = 1e-3
#: L-BFGS memory (pairs of steps and gradient changes kept per fold).
HISTORY = 10


@dataclass
class Candidate:
    """One regularisation strength with its cross-validated scores (mean and standard deviation over folds)."""

    lam: float
    accuracy: float
    accuracy_std: float
    loss: float
    loss_std: float
    iterations: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "lambda": self.lam, "cv_accuracy": self.accuracy, "cv_accuracy_std": self.accuracy_std,
            "cv_loss": self.loss, "cv_loss_std": self.loss_std, "iterations": self.iterations,
        }  # fmt: skip


@dataclass
class Selection:
    """What the cross-validation tried and chose."""

    folds: int
    chosen: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    refit_iterations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "logistic regression, L2 strength by stratified k-fold CV (L-BFGS)",
            "folds": self.folds,
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "refit_iterations": self.refit_iterations,
            "seconds": self.seconds,
        }


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold index ``[N]`` of each row: every class dealt round-robin over the folds after a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    labels = y.cpu()
    out = torch.empty(len(labels), dtype=torch.long)
    offset = 0
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        out[rows] = (torch.arange(len(rows)) + offset) % folds
        offset += len(rows)  # classes continue where the last one stopped: fold sizes stay even
    return out


class _Problem:
    """The regularised cross-entropy of ``K`` models at once; model ``k`` sees the rows where ``mask[k]`` is 1.

    ``xa`` is ``[N, D+1]`` (standardised features and a column of ones), ``weight`` the per-row loss weight.
    """

    def __init__(
        self, xa: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, n_classes: int, row_weight: torch.Tensor | None
    ) -> None:
        self.xa, self.y, self.n_classes = xa, y, n_classes
        w = mask * (row_weight if row_weight is not None else 1.0)  # [K, N]
        self.coef = w / w.sum(1, keepdim=True).clamp_min(1e-12)  # each model's mean over its rows
        self.onehot = torch.nn.functional.one_hot(y, n_classes).to(xa.dtype)  # [N, C]
        self.lam = 0.0

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """``[N, K, C]`` logits of every model on every row."""
        k, c, d1 = theta.shape
        return (self.xa @ theta.reshape(k * c, d1).T).reshape(len(self.xa), k, c)

    def value(self, theta: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Each model's objective ``[K]``."""
        ce = torch.logsumexp(logits, 2) - logits.gather(2, self.y.view(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]
        return (self.coef * ce.T).sum(1) + 0.5 * self.lam * theta[:, :, :-1].pow(2).sum((1, 2))

    def gradient(self, theta: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Each model's gradient ``[K, C, D+1]``."""
        k, c, d1 = theta.shape
        resid = (logits.softmax(2) - self.onehot.unsqueeze(1)) * self.coef.T.unsqueeze(2)  # [N, K, C]
        grad = (resid.reshape(len(self.xa), k * c).T @ self.xa).reshape(k, c, d1)
        grad[:, :, :-1] += self.lam * theta[:, :, :-1]
        return grad


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def lbfgs(
    problem: _Problem, theta: torch.Tensor, max_iter: int, gtol: float, ftol: float = 1e-9
) -> tuple[torch.Tensor, int]:
    """Minimise every model's objective from ``theta`` ``[K, C, D+1]`` by L-BFGS with a backtracking (Armijo) line
    search, each model with its own history, step and stopping test; returns the solution and the iterations run.

    A model stops when its largest gradient entry is below ``gtol`` or an accepted step lowers its objective by less
    than ``ftol`` (relative); the loop ends when all have stopped or after ``max_iter`` iterations.
    """
    k = theta.shape[0]
    view = (k, 1, 1)
    logits = problem.logits(theta)
    f = problem.value(theta, logits)
    g = problem.gradient(theta, logits)
    active = g.flatten(1).abs().amax(1) > gtol
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[torch.Tensor] = []
    it = 0
    while it < max_iter and bool(active.any()):
        it += 1
        direction = -_two_loop(g, s_hist, y_hist, rho_hist)
        slope = _dot(g, direction)
        bad = slope >= 0  # not a descent direction (should not happen): restart from the gradient
        if bool(bad.any()):
            direction[bad] = -g[bad]
            slope = _dot(g, direction)
        step = torch.ones(k, dtype=theta.dtype, device=theta.device)
        if not s_hist:
            step = (1.0 / g.flatten(1).abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        step = torch.where(active, step, torch.zeros_like(step))
        new_theta, new_logits, new_f = theta, logits, f
        pending = active.clone()
        for _ in range(30):
            trial = theta + step.view(view) * direction
            trial_logits = problem.logits(trial)
            trial_f = problem.value(trial, trial_logits)
            ok = pending & (trial_f <= f + 1e-4 * step * slope)
            if bool(ok.any()):
                new_theta = torch.where(ok.view(view), trial, new_theta)
                new_logits = torch.where(ok.view(1, k, 1), trial_logits, new_logits)
                new_f = torch.where(ok, trial_f, new_f)
            pending &= ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        failed = pending  # no acceptable step: this model has converged as far as float precision allows
        new_g = problem.gradient(new_theta, new_logits)
        s, yv = new_theta - theta, new_g - g
        sy = _dot(s, yv)
        rho = torch.where(sy > 1e-10, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))  # rho 0: pair ignored
        s_hist.append(s)
        y_hist.append(yv)
        rho_hist.append(rho)
        if len(s_hist) > HISTORY:
            del s_hist[0], y_hist[0], rho_hist[0]
        small_change = (f - new_f) <= ftol * f.abs().clamp_min(1.0)
        theta, logits, g = new_theta, new_logits, new_g
        f = new_f
        active &= ~failed & ~small_change & (g.flatten(1).abs().amax(1) > gtol)
    return theta, it


def _two_loop(
    g: torch.Tensor, s_hist: Sequence[torch.Tensor], y_hist: Sequence[torch.Tensor], rho_hist: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The L-BFGS two-loop recursion, per model: an approximation of ``H^-1 g``."""
    if not s_hist:
        return g.clone()
    view = (-1, 1, 1)
    q = g.clone()
    alphas = []
    for s, yv, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        alpha = rho * _dot(s, q)
        q -= alpha.view(view) * yv
        alphas.append(alpha)
    s, yv, rho = s_hist[-1], y_hist[-1], rho_hist[-1]
    gamma = torch.where(rho > 0, _dot(s, yv) / _dot(yv, yv).clamp_min(1e-20), torch.ones_like(rho))
    r = q * gamma.view(view)
    for s, yv, rho, alpha in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        beta = rho * _dot(yv, r)
        r += s * (alpha - beta).view(view)
    return r


def _scores(problem: _Problem, theta: torch.Tensor, held_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each fold model's accuracy and mean cross-entropy ``[K]`` on its held-out rows (``held_out`` ``[K, N]``)."""
    logits = problem.logits(theta)  # [N, K, C]
    y = problem.y
    correct = (logits.argmax(2) == y.view(-1, 1)).to(theta.dtype).T  # [K, N]
    ce = (torch.logsumexp(logits, 2) - logits.gather(2, y.view(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]).T
    n = held_out.sum(1).clamp_min(1)
    return (correct * held_out).sum(1) / n, (ce * held_out).sum(1) / n


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lam: float,
    *,
    row_weight: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One logistic regression on every row of ``x`` ``[N, D]`` at L2 strength ``lam``: the weights ``[C, D+1]``
    (last column the bias) and the L-BFGS iterations it took."""
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    problem = _Problem(xa, y, torch.ones(1, len(y), dtype=x.dtype, device=x.device), n_classes, row_weight)
    problem.lam = float(lam)
    start = init.view(1, n_classes, -1) if init is not None else xa.new_zeros(1, n_classes, xa.shape[1])
    theta, iters = lbfgs(problem, start, max_iter=1000, gtol=1e-6 if x.dtype == torch.float64 else 1e-5)
    return theta[0], iters


def row_space(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(z, basis)`` with ``z = x @ basis`` ``[N, r]`` and orthonormal ``basis`` ``[D, r]`` spanning the rows of
    ``x`` ``[N, D]``, when there are fewer rows than dimensions (else ``None``: nothing to gain).

    An L2-regularised linear model's weights lie in the span of its training rows (any component outside it changes
    no logit and only adds to the penalty), and ``||w @ basis|| = ||w||`` inside it: a fit on ``z`` is the same fit,
    and every cross-validation fold's rows are in the span too. ``w = w_z @ basis.T`` maps the weights back.
    """
    n, d = x.shape
    if n >= 0.9 * d:
        return None
    gram = (x.double() @ x.double().T).cpu()  # [N, N]; eigenvalues are the squared singular values of x
    evals, evecs = torch.linalg.eigh(gram)
    keep = evals > 1e-10 * float(evals.max().clamp_min(1e-300))
    scale = evals[keep].sqrt()
    z = (evecs[:, keep] * scale).to(x)
    basis = ((x.double().T @ evecs[:, keep].to(x.device)) / scale.to(x.device)).to(x.dtype)
    return z, basis


def fit_logistic_cv(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    folds: int = DEFAULT_FOLDS,
    lambdas: Sequence[float] = LAMBDAS,
    row_weight: torch.Tensor | None = None,
    seed: int = 0,
    on_candidate: Any = None,
) -> tuple[torch.Tensor, Selection]:
    """Choose the L2 strength by stratified ``folds``-fold CV on standardised features ``x`` ``[N, D]``, refit on every
    row; returns the weights ``[C, D+1]`` (last column the bias) and the :class:`Selection`.

    The path runs strong to weak over ``lambdas``, each point warm-started from the last and solved to
    :data:`PATH_GTOL` (the held-out scores settle long before the weights do), and stops :data:`PATIENCE` points after
    the best; then the two strengths half a step either side of the best are tried too, and the best of all is refitted
    on every row to the full tolerance. With fewer rows than dimensions everything runs on the rows' span
    (:func:`row_space`). With fewer than 2 items in some class there is no cross-validation: the middle of the grid
    is fitted on all rows. ``on_candidate(candidate, index, total)`` is called after each grid point (progress).
    """
    from tlkit.heads.fit import cpu_threads

    t0 = time.perf_counter()
    macs = len(x) * (min(x.shape[1], len(x)) + 1) * max(folds, 1) * n_classes  # one step's matrix product
    with cpu_threads(x.device, macs):  # OpenMP threads on a small problem wait on each other more than they work
        return _fit_logistic_cv(x, y, n_classes, folds, lambdas, row_weight, seed, on_candidate, t0)


def _fit_logistic_cv(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    folds: int,
    lambdas: Sequence[float],
    row_weight: torch.Tensor | None,
    seed: int,
    on_candidate: Any,
    t0: float,
) -> tuple[torch.Tensor, Selection]:
    reduced = row_space(x)
    z = reduced[0] if reduced is not None else x

    def back(theta: torch.Tensor) -> torch.Tensor:
        if reduced is None:
            return theta
        return torch.cat([theta[:, :-1] @ reduced[1].T, theta[:, -1:]], 1)

    counts = torch.bincount(y, minlength=n_classes)
    k = int(min(folds, int(counts[counts > 0].min()) if len(y) else 0))
    if k < 2:
        theta, iters = fit_logistic(z, y, n_classes, lambdas[len(lambdas) // 2], row_weight=row_weight)
        return back(theta), Selection(0, None, [], iters, time.perf_counter() - t0)
    xa = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], 1)
    fold_of = stratified_folds(y, k, seed).to(z.device)
    held_out = (fold_of.view(1, -1) == torch.arange(k, device=z.device).view(-1, 1)).to(z.dtype)  # [K, N]
    problem = _Problem(xa, y, 1 - held_out, n_classes, row_weight)
    solved: list[tuple[Candidate, torch.Tensor]] = []
    total = len(lambdas) + 2

    def solve(lam: float, start: torch.Tensor) -> torch.Tensor:
        problem.lam = float(lam)
        theta, iters = lbfgs(problem, start, max_iter=300, gtol=PATH_GTOL)
        acc, loss = _scores(problem, theta, held_out)
        cand = Candidate(float(lam), float(acc.mean()), float(acc.std()), float(loss.mean()), float(loss.std()), iters)
        solved.append((cand, theta))
        if on_candidate is not None:
            on_candidate(cand, len(solved), total)
        return theta

    theta, stale = xa.new_zeros(k, n_classes, xa.shape[1]), 0
    for lam in lambdas:
        theta = solve(lam, theta)
        if max(solved, key=_rank)[1] is theta:
            stale = 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    grid = [c.lam for c, _ in solved]
    best = grid.index(max(solved, key=_rank)[0].lam)
    for other in (best - 1, best + 1):  # half a step either side of the best, warm-started from it
        if 0 <= other < len(grid):
            solve(math.sqrt(grid[best] * grid[other]), solved[best][1])
    chosen, chosen_theta = max(solved, key=_rank)
    candidates = sorted((c for c, _ in solved), key=lambda c: -c.lam)
    final, iters = fit_logistic(z, y, n_classes, chosen.lam, row_weight=row_weight, init=chosen_theta.mean(0))
    return back(final), Selection(k, chosen, candidates, iters, time.perf_counter() - t0)


def _rank(item: tuple[Candidate, torch.Tensor]) -> tuple[float, float]:
    """Higher is better: the lower CV loss (cross-entropy, a proper scoring rule: smooth in the strength, where the
    accuracy of a few hundred held-out rows moves by single rows and its maximum over a flat plateau is noise), then
    the higher CV accuracy."""
    return -item[0].loss, item[0].accuracy


def sklearn_c(lam: float, n_rows: int) -> float:
    """scikit-learn's ``C`` for the same objective (``C * sum(loss) + ||w||^2 / 2``)."""
    return 1.0 / (lam * max(n_rows, 1)) if lam > 0 else math.inf


def fit_auto(
    train: FeatureTable, val: FeatureTable | None, opts: TrainOptions, n_classes: int, emit: Progress
) -> Fitted:
    """The ``auto`` head on a training table: the regularisation by cross-validation, the refit on every row, the
    standardisation folded into an ``nn.Linear``; scored on ``val`` when there is one (which chose nothing)."""
    from torch import nn

    from tlkit.heads.fit import Fitted, loss_weights, standardizer
    from tlkit.heads.options import TrainEvent, views_fitted_once
    from tlkit.heads.scoring import table_logits

    if train.use_views:
        raise views_fitted_once(opts.head)
    t0 = time.perf_counter()
    emit(TrainEvent("fit", epochs=1, message=f"cross-validating a logistic regression ({opts.folds} folds)"))
    norm = standardizer(train) if opts.standardize else None
    x = train.all_features()
    weights = loss_weights(train, opts.class_weight, n_classes)

    def progress(cand: Candidate, index: int, total: int) -> None:
        metrics = {"lambda": cand.lam, "cv_accuracy": cand.accuracy, "cv_accuracy_std": cand.accuracy_std}
        emit(TrainEvent("cv", step=index, steps=total, message=f"lambda {cand.lam:.0e}", metrics=metrics))

    theta, selection = fit_logistic_cv(
        norm(x) if norm is not None else x, train.y, n_classes, folds=opts.folds, seed=opts.seed,
        row_weight=weights[train.y] if weights is not None else None, on_candidate=progress,
    )  # fmt: skip
    head = nn.Linear(train.dim, n_classes).to(x.device)
    with torch.no_grad():
        head.weight.copy_(theta[:, :-1])
        head.bias.copy_(theta[:, -1])
    if norm is not None:
        norm.fold_into(head)
    head.eval()
    row: dict[str, Any] = {"epoch": 1}
    train_logits = table_logits(head, train)
    row["train_loss"] = float(nn.functional.cross_entropy(train_logits, train.y, weight=weights))
    row["train_accuracy"] = float((train_logits.argmax(1) == train.y).float().mean())
    if selection.chosen is not None:
        row["cv_accuracy"], row["cv_accuracy_std"] = selection.chosen.accuracy, selection.chosen.accuracy_std
        row["lambda"] = selection.chosen.lam
    if val is not None:
        logits = table_logits(head, val)
        row["val_loss"] = float(nn.functional.cross_entropy(logits, val.y, weight=weights))
        row["val_accuracy"] = float((logits.argmax(1) == val.y).float().mean())
    row["seconds"] = time.perf_counter() - t0
    emit(TrainEvent("epoch", epoch=1, epochs=1, metrics=row))
    info = {"head": "linear", **selection.to_dict()}
    if selection.chosen is not None:
        info["sklearn_C"] = sklearn_c(selection.chosen.lam, len(train))
    return Fitted(head, [row], 1, 1, False, row.get("val_accuracy"), row.get("val_loss"), selection=info)
