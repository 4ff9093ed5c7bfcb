"""What prediction and evaluation return: :class:`Predictions` (class probabilities per item, written as CSV) and
:class:`Evaluation` (metrics of a run on a labelled set)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from tlkit.runs.metrics import ClassificationReport

DEFAULT_TOP_K = 3


@dataclass
class Predictions:
    """Class probabilities for a set of items.

    Attributes:
        ids: the items' stable ids (relative paths, ``file.csv:line``), in input order; skipped items are absent.
        class_names: the run's classes, in column order of ``probabilities``.
        probabilities: ``[N, C]`` float array (a softmax; for scikit-learn estimators without ``predict_proba``, a
            softmax of ``decision_function`` scores).
        labels: the true class index of each item in the run's class order (``-1`` unknown), or ``None`` when the
            input had no labels.
        skipped: ``(id, reason)`` for items that could not be read.
    """

    ids: list[str]
    class_names: list[str]
    probabilities: np.ndarray
    labels: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class index of each item."""
        predicted: np.ndarray = self.probabilities.argmax(axis=1)
        return predicted

    @property
    def predicted_names(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted]

    def top_k(self, k: int = DEFAULT_TOP_K) -> list[list[tuple[str, float]]]:
        """For each item, the ``k`` most probable ``(class name, probability)`` pairs, best first."""
        import numpy as np

        k = max(1, min(int(k), len(self.class_names)))
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]

    def rows(self, k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """One dict per item: ``id``, ``predicted``, ``probability``, ``label`` (when known), then ``top{i}`` and
        ``top{i}_probability`` for i = 1..k."""
        out = []
        for i, top in enumerate(self.top_k(k)):
            row: dict[str, Any] = {"id": self.ids[i], "predicted": top[0][0], "probability": round(top[0][1], 6)}
            if self.labels is not None:
                row["label"] = self.class_names[self.labels[i]] if self.labels[i] >= 0 else ""
            for j, (name, p) in enumerate(top, start=1):
                row[f"top{j}"] = name
                row[f"top{j}_probability"] = round(p, 6)
            out.append(row)
        return out

    def to_csv(self, path: str | os.PathLike[str], k: int = DEFAULT_TOP_K) -> Path:
        """Write :meth:`rows` as CSV (atomically) and return the path.

        Text cells are spreadsheet-safe and valid UTF-8 (:func:`tlkit.data.ids.csv_cell`: a leading ``=``, ``+``,
        ``-`` or ``@`` gets a ``'`` prefix; bytes of non-UTF-8 file names appear as ``\\xNN``). Skipped items are
        listed in :func:`skipped_path` (``id,reason``); a stale listing from an earlier run is removed."""
        from tlkit.data.ids import csv_cell
        from tlkit.fileio import atomic_write

        rows = [{c: csv_cell(v) if isinstance(v, str) else v for c, v in row.items()} for row in self.rows(k)]
        k = max(1, min(int(k), len(self.class_names)))
        columns = ["id", "predicted", "probability"] + (["label"] if self.labels is not None else [])
        columns += [c for j in range(1, k + 1) for c in (f"top{j}", f"top{j}_probability")]
        with atomic_write(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        listing = skipped_path(path)
        if self.skipped:
            with atomic_write(listing, "w") as fh:
                writer_ = csv.writer(fh, lineterminator="\n")
                writer_.writerow(["id", "reason"])
                writer_.writerows([csv_cell(i), csv_cell(reason)] for i, reason in self.skipped)
        else:
            listing.unlink(missing_ok=True)
        return Path(path)


def skipped_path(path: str | os.PathLike[str]) -> Path:
    """Where :meth:`Predictions.to_csv` lists the skipped items: ``NAME.skipped.csv`` beside ``NAME.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.skipped.csv")


@dataclass
class Evaluation:
    """Metrics of a run on a labelled set.

    Attributes:
        report: accuracy, balanced accuracy, macro-F1, the per-class report and the confusion matrix.
        predictions: the underlying :class:`Predictions` (with ``labels``).
        output_dir: where ``report.json``, ``predictions.csv`` and ``confusion.png`` were written (``None``: not
            written).
    """

    report: ClassificationReport
    predictions: Predictions
    output_dir: Path | None = None

    @property
    def accuracy(self) -> float:
        return self.report.accuracy

    @property
    def report_path(self) -> Path | None:
        return self.output_dir / "report.json" if self.output_dir else None

    @property
    def confusion_path(self) -> Path | None:
        return self.output_dir / "confusion.png" if self.output_dir else None

    def summary(self) -> str:
        text = self.report.summary()
        if self.predictions.skipped:
            text += f"; {len(self.predictions.skipped)} item(s) skipped"
        return text
