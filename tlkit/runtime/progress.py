"""Progress events that the engines emit and the CLI renders.

The library never draws a bar: it calls ``progress(event)`` and the caller decides what to show (llm's
``embed-multi`` works the same way). Events are small frozen dataclasses, cheap to emit once per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Stages in the order an extraction goes through them.
STAGES = ("plan", "extract", "commit", "assemble", "done")
#: Stages of the other long jobs: ``features`` counts items through a frozen forward pass for a probe (``tlkit
#: advise --backbone``, the linear probe that starts fine-tuning and ``tlkit lr-find``), ``lr-find`` the range
#: test's training steps (``info`` holds ``lr`` and the smoothed ``loss``).
OTHER_STAGES = ("features", "lr-find")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long-running job.

    ``stage`` is one of :data:`STAGES` or :data:`OTHER_STAGES`. ``done``/``total`` count items for ``extract`` and
    ``features`` (skipped items count as done), rows for ``assemble`` and steps for ``lr-find``. ``elapsed`` is
    seconds since the job (or the stage, for the other stages) started.
    """

    stage: str
    done: int
    total: int
    skipped: int = 0
    elapsed: float = 0.0
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Items per second so far (0 before the first item)."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or ``None`` when unknown."""
        if self.rate <= 0 or self.total <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Call ``callback`` if there is one; a failing progress callback must not kill a long extraction."""
    if callback is None:
        return
    try:
        callback(event)
    except Exception:  # noqa: BLE001 - display problems are not extraction problems
        pass


class StageClock:
    """Emits the :class:`ProgressEvent` objects of one stage, timed from the clock's creation:
    ``clock(done, total)`` (the ``(done, total)`` callback a frozen forward pass takes) or
    ``clock(done, total, message, **info)``. ``callback`` may be ``None`` (nothing is emitted)."""

    def __init__(self, callback: ProgressCallback | None, stage: str) -> None:
        self.callback = callback
        self.stage = stage
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int, message: str = "", **info: Any) -> None:
        elapsed = time.perf_counter() - self.start
        emit(self.callback, ProgressEvent(self.stage, done, total, elapsed=elapsed, message=message, info=info))


__all__ = ["OTHER_STAGES", "STAGES", "ProgressCallback", "ProgressEvent", "StageClock", "emit"]
