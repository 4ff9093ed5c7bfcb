"""Training phases (what is unfrozen when) and the learning-rate shape within a phase.

A plan is a list of phases, each an unfreeze spec held for some epochs. Three ways to get one:

- ``--schedule "head:2,last:1:2,last:3:4"``: explicit phases, ``SPEC:EPOCHS`` separated by commas (inside a phase,
  join block names with ``+``);
- ``--gradual``: after the head epochs, one more block of the ``--unfreeze`` set every K epochs, from the top down;
- neither: ``--head-epochs`` head-only epochs, then ``--unfreeze`` for the remaining epochs.

Within each phase the learning rate warms up linearly, then follows a cosine (or one-cycle, or constant) shape.
The rate at any optimizer step is a pure function of the plan and the step, so a resumed run recomputes it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tlkit.errors import ConfigError
from tlkit.finetuning.freeze import check_unfreeze_syntax

LR_SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass(frozen=True)
class Phase:
    """``unfreeze`` (a spec) is in force for ``epochs`` epochs, starting at 0-based epoch ``start``."""

    unfreeze: str
    epochs: int
    start: int

    @property
    def end(self) -> int:
        return self.start + self.epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]

    @property
    def total_epochs(self) -> int:
        return self.phases[-1].end if self.phases else 0

    def phase_index(self, epoch: int) -> int:
        """The index of the phase that 0-based ``epoch`` belongs to."""
        for i, p in enumerate(self.phases):
            if p.start <= epoch < p.end:
                return i
        raise IndexError(f"epoch {epoch} is outside the plan ({self.total_epochs} epochs)")

    def phase_at(self, epoch: int) -> Phase:
        return self.phases[self.phase_index(epoch)]

    def describe(self) -> str:
        """The plan in ``--schedule`` syntax."""
        return ",".join(f"{_spec_text(p.unfreeze)}:{p.epochs}" for p in self.phases)

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.phases]


def _spec_text(spec: str) -> str:
    return "head" if spec.strip().lower() in ("none", "head") else spec.replace(",", "+")


def _phases(pairs: Sequence[tuple[str, int]]) -> Plan:
    phases = []
    start = 0
    for spec, epochs in pairs:
        if epochs > 0:
            phases.append(Phase(spec, epochs, start))
            start += epochs
    if not phases:
        raise ConfigError("the training plan has no epochs; give {param} ≥ 1 or phases with ≥ 1 epoch", param="epochs")
    return Plan(tuple(phases))


def parse_schedule(text: str) -> Plan:
    """Parse ``"head:2,last:1:2,last:3:4"``: each phase is ``SPEC:EPOCHS`` (the last colon splits)."""
    pairs = []
    for raw in (text or "").split(","):
        part = raw.strip()
        if not part:
            continue
        spec, sep, n = part.rpartition(":")
        if not sep or not spec:
            raise ConfigError(
                f"{{param}} phase {part!r} needs SPEC:EPOCHS, e.g. head:2 or last:1:3 (phases separated by commas)",
                param="schedule",
            )
        try:
            epochs = int(n)
        except ValueError:
            raise ConfigError(
                f"{{param}} phase {part!r}: {n!r} is not a whole number of epochs", param="schedule"
            ) from None
        if epochs < 1:
            raise ConfigError(f"{{param}} phase {part!r}: each phase needs at least 1 epoch", param="schedule")
        check_unfreeze_syntax(spec)
        pairs.append((spec, epochs))
    if not pairs:
        raise ConfigError("{param} is empty; give phases like head:2,last:1:3", param="schedule")
    return _phases(pairs)


def simple_plan(unfreeze: str, epochs: int, head_epochs: int) -> Plan:
    """``head_epochs`` head-only epochs, then ``unfreeze`` for the rest."""
    if head_epochs > epochs:
        raise ConfigError(
            f"{{head_epochs}} {head_epochs} is more than {{epochs}} {epochs}", params=("head_epochs", "epochs")
        )
    return _phases([("none", head_epochs), (unfreeze, epochs - head_epochs)])


def gradual_plan(targets: Sequence[str], epochs: int, head_epochs: int, every: int) -> Plan:
    """Unfreeze ``targets`` (block names, earliest first) one at a time from the top, every ``every`` epochs.

    The last phase runs until ``epochs``; if ``epochs`` runs out first, the lower blocks are never unfrozen.
    """
    if every < 1:
        raise ConfigError("{param} must be at least 1 epoch", param="gradual_every")
    if not targets:
        raise ConfigError(
            "{gradual} needs blocks to unfreeze; {unfreeze} none leaves nothing to unfreeze gradually",
            params=("gradual", "unfreeze"),
        )
    pairs: list[tuple[str, int]] = [("none", min(head_epochs, epochs))]
    left = epochs - pairs[0][1]
    top_down = list(reversed(targets))
    for k in range(1, len(top_down) + 1):
        if left <= 0:
            break
        n = left if k == len(top_down) else min(every, left)
        pairs.append(("+".join(reversed(top_down[:k])), n))
        left -= n
    return _phases(pairs)


def check_lr_schedule(kind: str) -> str:
    if kind not in LR_SCHEDULES:
        raise ConfigError(f"{{param}} must be one of {', '.join(LR_SCHEDULES)}, not {kind!r}", param="lr_schedule")
    return kind


def lr_factor(step: int, total: int, kind: str = "cosine", warmup: float = 0.1) -> float:
    """The multiplier on each group's base rate at optimizer ``step`` (0-based) of a phase of ``total`` steps.

    ``warmup`` is the fraction of the phase spent in linear warm-up (cosine and constant). One-cycle follows
    torch's ``OneCycleLR`` shape: a cosine rise from 1/25 over the first 30 %, then a cosine fall to 1/10⁴.
    """
    total = max(1, total)
    step = min(max(0, step), total - 1)
    if kind == "onecycle":
        rise = max(1, int(round(0.3 * total)))
        if step < rise:
            return _cos_between(1 / 25, 1.0, step / rise)
        return _cos_between(1.0, 1e-4, (step - rise) / max(1, total - rise))
    warm = int(math.floor(warmup * total))
    if step < warm:
        return (step + 1) / (warm + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
