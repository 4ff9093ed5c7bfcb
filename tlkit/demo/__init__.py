"""``tlkit demo``: the whole feature-extraction job on a small sample that ships inside tlkit, offline.

The sample (``tlkit/demo/data``) is 1,000 Fashion-MNIST images (MIT licence) in class folders: 80 training and 20
validation images per class, cut by ``scripts/make_demo_data.py``. The demo extracts features with the example
plugin's EfficientNet-Lite0 ImageNet weights (packaged, so nothing is downloaded), trains a grid of linear probes
on the cache, keeps the best on validation, evaluates it and says where the run and its plots are.
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


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the paths it wrote and the held-out evaluation."""

    output: Path
    train_cache: Path
    val_cache: Path
    train: TrainResult
    evaluation: Evaluation
    seconds: float

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    @property
    def accuracy(self) -> float:
        return self.evaluation.accuracy

    def summary(self) -> str:
        n = self.evaluation.report.n
        classes = len(self.evaluation.report.class_names)
        return "\n".join(
            [
                f"accuracy {self.accuracy:.3f} on {n} held-out Fashion-MNIST images "
                f"({classes} classes, chance {1 / max(classes, 1):.2f}); {self.seconds:.0f} s in all",
                f"run:   {self.run_dir}",
                f"plots: {self.run_dir / 'curves.png'}, {self.run_dir / 'confusion.png'}",
                f"cache: {self.train_cache} (train), {self.val_cache} (val)",
            ]
        )


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

    :param output: folder for ``train.h5``, ``val.h5`` and the run directory ``run/``.
    :param backbone: the backbone (default ``effnet/lite0`` from the example plugin ``tlkit-effnet-lite``).
    :param data: a folder with ``train/`` and ``val/`` class folders (default: the packaged sample).
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
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise BadInputError(f"{data}: no {split}/ folder; the demo needs train/ and val/ class folders")
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
    for split in ("train", "val"):
        caches[split] = out / f"{split}.h5"
        say(f"extracting {split} features with {backbone} at {INPUT_SIZE} px -> {caches[split]}")
        callback = extract_progress(f"extract {split}") if extract_progress else None
        extract(bb, data / split, caches[split], device=device, progress=callback)
        if callback is not None and hasattr(callback, "close"):
            callback.close()
    say("training a grid of linear probes on the cached features (--sweep)")
    trained = train_head(
        caches["train"],
        out / "run",
        val=caches["val"],
        sweep=True,
        epochs=epochs,
        device=device,
        overwrite=True,
        progress=train_progress,
    )
    say(f"evaluating on {caches['val']}")
    evaluation = evaluate(trained.run_dir, caches["val"], output_dir=trained.run_dir / "eval-val", device=device)
    return DemoResult(out, caches["train"], caches["val"], trained, evaluation, time.perf_counter() - started)
