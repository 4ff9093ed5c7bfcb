"""``tlkit demo``: the whole feature-extraction job on a small sample that ships inside tlkit, offline.

The sample (``tlkit/demo/data``) is 1,000 Fashion-MNIST images (MIT licence) in class folders: 80 training and 20
held-out images per class, cut by ``scripts/make_demo_data.py`` (the held-out folder is called ``val/``; a data
folder may call it ``test/``). The demo extracts features with the example plugin's EfficientNet-Lite0 ImageNet
weights (packaged, so nothing is downloaded) and trains the default head on the training cache, which chooses its
regularisation by 5-fold cross-validation on the training images (the validation split: the folds). The held-out
images chose nothing, so their accuracy, the test accuracy, is an honest estimate; each figure it prints names its
split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, UnknownNameError

if TYPE_CHECKING:
    from tlkit.heads import TrainResult
    from tlkit.inference import Evaluation

DATA = Path(__file__).resolve().parent / "data"
DEMO_BACKBONE = "effnet/lite0"
#: Fashion-MNIST is 28 px: 160 px inputs are plenty, and three times cheaper than the model's native 224.
INPUT_SIZE = 160
EPOCHS = 30
#: Names of the held-out folder, in order of preference: it is the demo's test split.
TEST_FOLDERS = ("test", "val")


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the paths it wrote and the held-out evaluation."""

    output: Path
    train_cache: Path
    test_cache: Path
    train: TrainResult
    evaluation: Evaluation
    seconds: float

    @property
    def val_cache(self) -> Path:
        """The held-out cache (an older name: it is the test split, which chose nothing)."""
        return self.test_cache

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    @property
    def accuracy(self) -> float:
        return self.evaluation.accuracy

    @property
    def validation(self) -> tuple[float, float | None]:
        """The cross-validated accuracy (mean, standard deviation over the folds) of what the head chose."""
        chosen = (self.train.selection or {}).get("chosen") or {}
        if "cv_accuracy" in chosen:
            return float(chosen["cv_accuracy"]), float(chosen["cv_accuracy_std"])
        return self.train.accuracy, None

    def summary(self) -> str:
        n = self.evaluation.report.n
        classes = len(self.evaluation.report.class_names)
        val, std = self.validation
        folds = (self.train.selection or {}).get("folds")
        train_acc = self.train.history[-1].get("train_accuracy") if self.train.history else None
        lines = [
            f"accuracy {self.accuracy:.3f} on the test split: {n} held-out Fashion-MNIST images that chose nothing "
            f"({classes} classes, chance {1 / max(classes, 1):.2f}); {self.seconds:.0f} s in all",
            f"validation: {val:.3f}" + (f" ± {std:.3f}" if std is not None else "") + _how(folds),
        ]
        if train_acc is not None:
            lines.append(f"train: {train_acc:.3f} (the {self.train.n_train} images the head was fitted on)")
        lines += [
            f"run:   {self.run_dir}",
            f"plots: {self.run_dir / 'confusion.png'}; test report: {self.evaluation_dir}",
            f"cache: {self.train_cache} (train), {self.test_cache} (test)",
        ]
        return "\n".join(lines)

    @property
    def evaluation_dir(self) -> Path:
        return self.run_dir / "eval-test"


def _how(folds: int | None) -> str:
    return f" ({folds}-fold cross-validation on the train split; it chose the head's L2 strength)" if folds else ""


def run_demo(
    output: str | os.PathLike[str] = "tlkit-demo",
    *,
    backbone: str = DEMO_BACKBONE,
    device: str = "auto",
    data: str | os.PathLike[str] = DATA,
    epochs: int = EPOCHS,
    extract_progress: Callable[[str], Any] | None = None,
    train_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Extract, train and evaluate on the packaged sample; returns a :class:`DemoResult`.

    :param output: folder for ``train.h5``, ``test.h5`` and the run directory ``run/``.
    :param backbone: the backbone (default ``effnet/lite0`` from the example plugin ``tlkit-effnet-lite``).
    :param data: a folder with ``train/`` and ``test/`` (or ``val/``) class folders (default: the packaged sample).
    :param epochs: kept for callers of earlier versions; the default head is fitted, not trained for epochs.
    :param extract_progress: ``extract_progress(title)`` returns a progress callback for one extraction.
    :param train_progress: a callback for :class:`tlkit.heads.TrainEvent` objects.
    :param log: receives one line per step.
    """
    from tlkit.extraction import extract
    from tlkit.heads import train_head
    from tlkit.host.api import get_backbone
    from tlkit.inference.prediction import evaluate

    started = time.perf_counter()
    say = log or (lambda msg: None)
    out, data = Path(output), Path(data)
    held_out = next((data / name for name in TEST_FOLDERS if (data / name).is_dir()), None)
    if not (data / "train").is_dir() or held_out is None:
        raise BadInputError(f"{data}: the demo needs train/ and test/ (or val/) class folders")
    folders = {"train": data / "train", "test": held_out}
    try:
        bb = get_backbone(backbone, weights="pretrained", preprocess={"input_size": [3, INPUT_SIZE, INPUT_SIZE]})
    except UnknownNameError as exc:
        if backbone != DEMO_BACKBONE:
            raise
        raise BadInputError(
            f"the demo uses {DEMO_BACKBONE} from the example plugin, which is not installed: "
            f"pip install -e plugins/examples/tlkit-effnet-lite (from a tlkit checkout), or pass another {{param}}",
            param="backbone",
        ) from exc
    out.mkdir(parents=True, exist_ok=True)
    caches = {}
    for split, folder in folders.items():
        caches[split] = out / f"{split}.h5"
        say(f"extracting {split} features ({folder.name}/) with {backbone} at {INPUT_SIZE} px -> {caches[split]}")
        callback = extract_progress(f"extract {split}") if extract_progress else None
        extract(bb, folder, caches[split], device=device, progress=callback)
        if callback is not None and hasattr(callback, "close"):
            callback.close()
    say("training the default head on the train split (its L2 strength chosen by 5-fold cross-validation)")
    trained = train_head(caches["train"], out / "run", device=device, overwrite=True, progress=train_progress)
    say(f"evaluating on the test split, {caches['test']}, which chose nothing")
    evaluation = evaluate(trained.run_dir, caches["test"], output_dir=trained.run_dir / "eval-test", device=device)
    return DemoResult(out, caches["train"], caches["test"], trained, evaluation, time.perf_counter() - started)
