"""Prediction and evaluation with a trained run: ``tlkit predict``/``evaluate`` and ``tlkit.predict``/``evaluate``.

Two kinds of run are accepted:

- a **head run** (``tlkit train``, config kind ``"head"``): its input is a feature cache, or raw items that are first
  extracted with the run's backbone (same weights, preprocessing and precision), then the head is applied. A cache
  whose backbone fingerprint differs from the run's is refused;
- a **fine-tuned run** (``tlkit finetune``, kind ``"finetune"``): raw items go through the whole fine-tuned model
  (:meth:`tlkit.TransferModel.from_run`). A cache cannot be used: its features come from the base backbone.

(The module is not called ``predict`` so that it never shadows the ``tlkit.predict`` function.)
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, FingerprintMismatchError

if TYPE_CHECKING:
    import numpy as np

    from tlkit.runs.metrics import ClassificationReport

HEAD_KIND = "head"
FINETUNE_KIND = "finetune"
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
        return self.probabilities.argmax(axis=1)

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
        """Write :meth:`rows` as CSV (atomically) and return the path."""
        from tlkit.runs.rundir import atomic_write

        rows = self.rows(k)
        k = max(1, min(int(k), len(self.class_names)))
        columns = ["id", "predicted", "probability"] + (["label"] if self.labels is not None else [])
        columns += [c for j in range(1, k + 1) for c in (f"top{j}", f"top{j}_probability")]
        with atomic_write(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return Path(path)


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


Progress = Callable[[Any], None]


# -- runs ------------------------------------------------------------------------------------------------------
@dataclass
class HeadRun:
    """A loaded head run: config, the fitted head and its kind (``torch`` or ``estimator``)."""

    run_dir: Path
    config: dict[str, Any]
    head: Any
    kind: str

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names") or [])

    @property
    def layer(self) -> str | None:
        return self.config.get("layer")

    @property
    def fingerprint(self) -> str:
        return str((self.config.get("backbone") or {}).get("fingerprint"))

    def probabilities(self, features: Any) -> np.ndarray:
        """``[N, C]`` probabilities for features ``[N, D]`` (array or tensor)."""
        import torch

        from tlkit.heads.training import head_probabilities

        x = torch.as_tensor(features, dtype=torch.float32)
        if self.kind == "torch":
            x = x.to(next(iter(self.head.state_dict().values())).device)
        return head_probabilities(self.head, self.kind, x, len(self.class_names))


def load_head_run(run_dir: str | os.PathLike[str], device: str = "cpu") -> HeadRun:
    """Rebuild the head of a ``tlkit train`` run (torch heads from ``head.safetensors``, estimators from
    ``head.skops``)."""
    from tlkit.runs.rundir import HEAD_WEIGHTS, load_tensors, read_config

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.get("kind") != HEAD_KIND:
        raise BadInputError(f"{run_dir}: a {config.get('kind')!r} run, not a head run written by tlkit train")
    head_cfg = config["head"]
    kind = head_cfg.get("kind", "torch")
    if kind == "estimator":
        from tlkit.heads.sklearn_head import ESTIMATOR_FILE, load_estimator

        return HeadRun(run_dir, config, load_estimator(run_dir / ESTIMATOR_FILE), kind)
    from tlkit.runtime.amp import resolve_device
    from tlkit.heads.torch_heads import build_head

    head = build_head(head_cfg["name"], int(head_cfg["in_dim"]), int(head_cfg["n_classes"]), **head_cfg["params"])
    state = load_tensors(run_dir / HEAD_WEIGHTS)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(
            f"{run_dir / HEAD_WEIGHTS}: weights do not fit head {head_cfg['name']} ({str(exc).splitlines()[0]}); "
            f"the run directory is damaged"
        ) from exc
    return HeadRun(run_dir, config, head.to(resolve_device(device)).eval(), kind)


def run_kind(run_dir: str | os.PathLike[str]) -> str:
    from tlkit.runs.rundir import read_config

    return str(read_config(run_dir).get("kind"))


def is_cache(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file (a feature cache) rather than raw items."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


# -- features --------------------------------------------------------------------------------------------------
@dataclass
class _Features:
    ids: list[str]
    x: Any  # [N, D] float32 array
    labels: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]]


def _read_cache(path: Path, run: HeadRun) -> _Features:
    """The run's layer from a cache, after checking that the features come from the run's backbone."""
    import numpy as np

    from tlkit.cache.core import FeatureCache

    with FeatureCache(path) as cache:
        if str(cache.fingerprint) != run.fingerprint:
            bb = (run.config.get("backbone") or {}).get("name", "?")
            cache_bb = (cache.backbone or {}).get("name", "?")
            raise FingerprintMismatchError(
                f"{path}: its features come from {cache_bb} with fingerprint {cache.fingerprint}, but the head in "
                f"{run.run_dir} was trained on {bb} features with fingerprint {run.fingerprint}; extract the input "
                f"with the run's backbone and options (or pass the raw items: tlkit extracts them for you)"
            )
        layer = run.layer
        if layer is not None and layer not in cache.layer_names:
            raise BadInputError(
                f"{path}: the head was trained on layer {layer!r}, which this cache lacks; "
                f"extract with --layers {layer}"
            )
        array = cache.features if layer is None else cache.layer(layer)
        x = np.asarray(array[:], dtype=np.float32)
        labels = np.asarray(cache.labels[:], dtype=np.int64)
        ids = list(cache.ids)
        skipped = [(str(s.get("id")), str(s.get("reason"))) for s in cache.skipped]
        return _Features(ids, x, labels, [str(c) for c in cache.class_names], skipped)


def _extract_raw(
    input_path: Path, run: HeadRun, batch_size: Any, device: str, workers: Any, progress: Any
) -> _Features:
    """Extract raw items with the run's backbone and extraction settings into a temporary cache, then read it
    like any cache (so the fingerprint check applies here too)."""
    from tlkit.host.api import get_backbone
    from tlkit.extraction.engine import extract

    bb = run.config.get("backbone") or {}
    options = dict(bb.get("options") or {})
    options.pop("weights", None)
    backbone = get_backbone(bb["name"], weights=bb.get("weights") or "pretrained", **options)
    recorded = run.config.get("extract") or {}
    kwargs: dict[str, Any] = {
        "device": device,
        "progress": progress,
        "layers": [run.layer] if run.layer is not None else "last",
    }
    for key in ("precision", "store_dtype", "reader", "reader_options"):
        if recorded.get(key) is not None:
            kwargs[key] = recorded[key]
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if workers is not None:
        kwargs["workers"] = workers
    with tempfile.TemporaryDirectory(prefix="tlkit-predict-") as tmp:
        cache_path = Path(tmp) / "features.h5"
        extract(backbone, input_path, cache_path, **kwargs)
        return _read_cache(cache_path, run)


def _finetuned(run_dir: Path, input_path: Path, batch_size: Any, device: str, workers: Any) -> tuple[_Features, Any]:
    """Probabilities from a fine-tuned model on raw items; returns the features record (``x`` = probabilities)."""
    import numpy as np
    import torch

    from tlkit.runtime.amp import resolve_device
    from tlkit.data import open_dataset
    from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader, to_device
    from tlkit.runs.model import TransferModel

    if is_cache(input_path):
        raise BadInputError(
            f"{input_path}: a feature cache, but {run_dir} is a fine-tuned model whose backbone differs from the one "
            f"that made the cache; pass the raw items instead"
        )
    dev = resolve_device(device)
    model = TransferModel.from_run(run_dir, device=dev)
    backbone = model.backbone_wrapper
    dataset = open_dataset(input_path, modality=backbone.spec.modality)
    items = ItemDataset(dataset, backbone, train=False)
    n_workers = 0 if workers is None else int(workers)
    loader = make_loader(items, int(batch_size or 32), EpochSampler(len(items), 0, shuffle=False), n_workers, dev)
    probs = np.zeros((len(items), len(model.class_names)), dtype=np.float64)
    done = np.zeros(len(items), dtype=bool)
    skipped: list[tuple[str, str]] = []
    with torch.inference_mode():
        for batch in loader:
            skipped += [(dataset.records[i].id, reason) for i, reason in batch.skipped]
            if batch.inputs is None:
                continue
            logits = model(to_device(batch.inputs, dev)).float()
            idx = batch.indices.numpy()
            probs[idx] = logits.softmax(1).cpu().numpy()
            done[idx] = True
    keep = np.flatnonzero(done)
    labels = np.array([r.label for r in dataset.records], dtype=np.int64)[keep]
    feats = _Features([dataset.records[i].id for i in keep], probs[keep], labels, list(dataset.class_names), skipped)
    return feats, model


def _align_labels(labels: np.ndarray, input_classes: Sequence[str], run_classes: Sequence[str], where: Path) -> Any:
    """Map the input's label indices to the run's class order by name; ``None`` when the input has no labels."""
    import numpy as np

    if not input_classes or not (labels >= 0).any():
        return None
    index = {c: i for i, c in enumerate(run_classes)}
    unknown = [c for c in input_classes if c not in index]
    if unknown:
        raise BadInputError(
            f"{where}: class(es) {', '.join(unknown)} are not among the run's classes ({', '.join(run_classes)}); "
            f"the head cannot predict them"
        )
    remap = np.array([index[c] for c in input_classes], dtype=np.int64)
    return np.where(labels >= 0, remap[np.clip(labels, 0, None)], -1)


# -- the API ---------------------------------------------------------------------------------------------------
def predict(
    run_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int | str | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
) -> Predictions:
    """Predict classes for ``input`` with a trained run.

    :param run_dir: a run written by ``tlkit train`` (a head) or ``tlkit finetune`` (a fine-tuned model).
    :param input: raw items (a folder, a manifest or table) or, for a head run, a feature cache (``.h5``).
    :param output: also write the predictions as CSV here (id, predicted class, probability, top-k).
    :param top_k: how many classes with probabilities the CSV lists per item.
    :param batch_size, device, workers: for the extraction or the forward passes over raw items.
    :param progress: receives the extraction engine's :class:`tlkit.runtime.progress.ProgressEvent` objects.
    """
    run_dir, input_path = Path(run_dir), Path(input)
    if not input_path.exists():
        raise BadInputError(f"{input_path}: no such file or directory; check the input path")
    if run_kind(run_dir) == FINETUNE_KIND:
        feats, model = _finetuned(run_dir, input_path, batch_size, device, workers)
        class_names, probs = list(model.class_names), feats.x
    else:
        run = load_head_run(run_dir, device=device)
        if is_cache(input_path):
            feats = _read_cache(input_path, run)
        else:
            feats = _extract_raw(input_path, run, batch_size, device, workers, progress)
        class_names, probs = run.class_names, run.probabilities(feats.x)
    labels = _align_labels(feats.labels, feats.class_names, class_names, input_path)
    result = Predictions(feats.ids, class_names, probs, labels, feats.skipped)
    if output is not None:
        result.to_csv(output, top_k)
    return result


def evaluate(
    run_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    batch_size: int | str | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Metrics and plots of a trained run on a labelled set (raw items or, for a head run, a cache).

    :param output_dir: where to write ``report.json``, ``predictions.csv`` and ``confusion.png``; ``None`` writes
        nothing.
    """
    from tlkit.runs.metrics import classification_report

    input_path = Path(input)
    preds = predict(run_dir, input_path, batch_size=batch_size, device=device, workers=workers, progress=progress)
    if preds.labels is None:
        raise BadInputError(
            f"{input_path}: no labels; evaluate needs a labelled set (class folders, or a label column); "
            f"use tlkit predict for unlabelled items"
        )
    known = preds.labels >= 0
    report = classification_report(preds.labels[known], preds.predicted[known], preds.class_names)
    evaluation = Evaluation(report, preds, Path(output_dir) if output_dir is not None else None)
    if output_dir is not None:
        from tlkit.runs.plots import plot_confusion
        from tlkit.runs.rundir import write_json

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", {**report.to_dict(), "run": str(run_dir), "input": str(input_path)})
        preds.to_csv(out / "predictions.csv")
        plot_confusion(report.confusion, report.class_names, out / "confusion.png")
    return evaluation
