"""Classification metrics: one documented result object used by train, finetune and evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


@dataclass
class ClassReport:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassificationReport:
    """Accuracy, balanced accuracy, macro-F1, a per-class report and the confusion matrix (rows = true class)."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    n: int
    per_class: list[ClassReport] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"accuracy {self.accuracy:.4f}  balanced accuracy {self.balanced_accuracy:.4f}  "
            f"macro-F1 {self.macro_f1:.4f}  (n={self.n})"
        )


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, class_names: Sequence[str]) -> ClassificationReport:
    """Compute the report with scikit-learn; classes absent from both arrays still get a row."""
    import numpy as np
    from sklearn import metrics

    true, pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(class_names)))
    p, r, f, s = metrics.precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    present = s > 0
    return ClassificationReport(
        accuracy=float(np.mean(true == pred)) if len(true) else 0.0,
        balanced_accuracy=float(r[present].mean()) if present.any() else 0.0,
        macro_f1=float(f[present].mean()) if present.any() else 0.0,
        n=int(len(true)),
        per_class=[ClassReport(str(class_names[i]), float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i in labels],
        confusion=metrics.confusion_matrix(true, pred, labels=labels).tolist(),
        class_names=[str(c) for c in class_names],
    )
