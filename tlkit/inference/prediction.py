"""Prediction and evaluation with a trained run: ``tlkit predict``/``evaluate`` and ``tlkit.predict``/``evaluate``.

Two kinds of run are accepted:

- a **head run** (``tlkit train``, config kind ``"head"``): its input is a feature cache, or raw items that are first
  extracted with the run's backbone (same weights, preprocessing and precision), then the head is applied. A cache
  whose backbone fingerprint or precision differs from that of the run's training cache is refused;
- a **fine-tuned run** (``tlkit finetune``, kind ``"finetune"``): raw items go through the whole fine-tuned model
  (:meth:`tlkit.TransferModel.from_run`). A cache cannot be used: its features come from the base backbone.

Both run on the ``predict`` row of the runtime policy (:func:`tlkit.runtime.resolve`). Raw items for a head run are
embedded in the precision its training features were computed in (recorded at fit, in the run's ``extract``
section); a fine-tuned model computes in the resolved precision (autocast), as fine-tuning does.

(The module is not called ``predict`` so that it never shadows the ``tlkit.predict`` function.)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError, FingerprintMismatchError
from tlkit.inference.results import DEFAULT_TOP_K, Evaluation, Predictions

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.runtime import Runtime, RuntimeOptions

HEAD_KIND = "head"
FINETUNE_KIND = "finetune"

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
        layer = self.config.get("layer")
        return None if layer is None else str(layer)

    @property
    def fingerprint(self) -> str:
        return str((self.config.get("backbone") or {}).get("fingerprint"))

    @property
    def precision(self) -> str | None:
        """The precision the head's training features were computed in (``None`` where the run does not say)."""
        precision = (self.config.get("extract") or {}).get("precision")
        return None if precision is None else str(precision)

    def to(self, device: torch.device) -> HeadRun:
        """Move a torch head to ``device`` (an estimator stays where it is)."""
        if self.kind == "torch":
            self.head = self.head.to(device)
        return self

    def probabilities(self, features: Any) -> np.ndarray:
        """``[N, C]`` probabilities for features ``[N, D]`` (array or tensor)."""
        import torch

        from tlkit.heads import head_probabilities

        x = torch.as_tensor(features, dtype=torch.float32)
        if self.kind == "torch":
            x = x.to(next(iter(self.head.state_dict().values())).device)
        return head_probabilities(self.head, self.kind, x, len(self.class_names))


def load_head_run(
    run_dir: str | os.PathLike[str], device: str | torch.device = "cpu", allow_estimators: Sequence[str] = ()
) -> HeadRun:
    """Rebuild the head of a ``tlkit train`` run (torch heads from ``head.safetensors`` on ``device``, estimators
    from ``head.skops``). The config's head is checked first (:func:`tlkit.heads.allow.check_head_record`) and each
    file against its checksum; ``allow_estimators`` trusts more estimator classes (``--allow-estimator``)."""
    from tlkit.heads.allow import check_head_record
    from tlkit.heads.sklearn_head import ESTIMATOR_FILE, HEAD_FIX, allowing, load_estimator
    from tlkit.runs.rundir import CONFIG, HEAD_WEIGHTS, load_tensors, read_config

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.get("kind") != HEAD_KIND:
        raise BadInputError(f"{run_dir}: a {config.get('kind')!r} run, not a head run written by tlkit train")
    head_cfg = config["head"]
    with allowing(allow_estimators):
        name, params = check_head_record(head_cfg, run_dir / CONFIG)
        kind = head_cfg.get("kind", "torch")
        if kind == "estimator":
            return HeadRun(run_dir, config, load_estimator(run_dir / ESTIMATOR_FILE, checksum=True), kind)
    from tlkit.heads import build_head
    from tlkit.heads.torch_heads import load_head_state
    from tlkit.runtime import resolve_device

    head = build_head(name, int(head_cfg["in_dim"]), int(head_cfg["n_classes"]), **params)
    state = load_tensors(run_dir / HEAD_WEIGHTS, HEAD_FIX)
    load_head_state(head, state, run_dir / HEAD_WEIGHTS, name)
    dev = resolve_device(device) if isinstance(device, str) else device
    return HeadRun(run_dir, config, head.to(dev).eval(), kind)


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
    x: Any  # [N, D] float32 features, or a fine-tuned model's [N, C] probabilities
    labels: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]]


def _read_cache(path: Path, run: HeadRun) -> _Features:
    """The run's layer from a cache, after checking that the features are those the head was trained on."""
    import numpy as np

    from tlkit.cache import FeatureCache

    with FeatureCache(path) as cache:
        _check_cache(cache, path, run)
        array = cache.features if run.layer is None else cache.layer(run.layer)
        x = np.asarray(array[:], dtype=np.float32)
        labels = np.asarray(cache.labels[:], dtype=np.int64)
        skipped = [(str(s.get("id")), str(s.get("reason"))) for s in cache.skipped]
        return _Features(list(cache.ids), x, labels, [str(c) for c in cache.class_names], skipped)


def _check_cache(cache: Any, path: Path, run: HeadRun) -> None:
    """Same backbone fingerprint, same precision and the run's layer: else the head would see other features."""
    from tlkit.heads.record import extract_section

    if str(cache.fingerprint) != run.fingerprint:
        bb = (run.config.get("backbone") or {}).get("name", "?")
        cache_bb = (cache.backbone or {}).get("name", "?")
        raise FingerprintMismatchError(
            f"{path}: its features come from {cache_bb} with fingerprint {cache.fingerprint}, but the head in "
            f"{run.run_dir} was trained on {bb} features with fingerprint {run.fingerprint}; extract the input "
            f"with the run's backbone and options (or pass the raw items: tlkit extracts them for you)"
        )
    precision = extract_section(cache).get("precision")
    if run.precision is not None and precision is not None and precision != run.precision:
        raise FingerprintMismatchError(
            f"{path}: its features were computed in {precision}, but the head in {run.run_dir} was trained on "
            f"{run.precision} features; extract the input with precision {run.precision} (or pass the raw items: "
            f"tlkit extracts them for you)"
        )
    if run.layer is not None and run.layer not in cache.layer_names:
        raise BadInputError(
            f"{path}: the head was trained on layer {run.layer!r}, which this cache lacks; "
            f"extract with --layers {run.layer}"
        )


def _head_runtime(run: HeadRun, options: RuntimeOptions) -> Runtime:
    """The ``predict`` runtime for raw items of a head run: in the precision of its training features."""
    from tlkit.runtime import resolve

    recorded = run.precision or "auto"
    if options.precision not in ("auto", recorded):
        raise ConfigError(
            f"{run.run_dir}: the head was trained on {recorded} features; {{param}} {options.precision} would "
            f"compute other features; drop {{param}} (the run's precision is used)",
            param="precision",
        )
    try:
        return resolve("predict", dataclasses.replace(options, precision=recorded))
    except ConfigError as exc:
        if exc.param != "precision":
            raise
        raise ConfigError(
            f"{run.run_dir}: the head was trained on {run.precision} features, which cannot be computed here "
            f"({exc}); predict on another device, or train the head on features extracted in another precision"
        ) from None


def _extract_raw(input_path: Path, run: HeadRun, runtime: Runtime, progress: Progress | None) -> _Features:
    """Extract raw items with the run's backbone and extraction settings into a temporary cache, then read it
    like any cache (so the fingerprint and precision checks apply here too)."""
    from tlkit.extraction import extract
    from tlkit.heads.record import EXTRACT_FIELDS
    from tlkit.host.api import backbone_from_record

    backbone = backbone_from_record(run.config.get("backbone") or {})
    recorded = run.config.get("extract") or {}
    settings = {k: recorded[k] for k in EXTRACT_FIELDS if k != "precision" and recorded.get(k) is not None}
    # extract() resolves its options again; an automatic batch stays "auto" so that it keeps its back-off.
    batch = "auto" if runtime.auto_batch or runtime.batch_size is None else runtime.batch_size
    with tempfile.TemporaryDirectory(prefix="tlkit-predict-") as tmp:
        cache_path = Path(tmp) / "features.h5"
        extract(
            backbone, input_path, cache_path, device=str(runtime.device), precision=runtime.precision,
            batch_size=batch, workers=runtime.workers, layers=[run.layer] if run.layer is not None else "last",
            progress=progress, **settings,
        )  # fmt: skip
        return _read_cache(cache_path, run)


#: Items a fine-tuned prediction's loader plans together (text and audio are length-bucketed within it).
PREDICT_WINDOW = 1024


def _finetuned(run_dir: Path, input_path: Path, runtime: Runtime) -> tuple[_Features, list[str]]:
    """Probabilities of a fine-tuned model on raw items (``x`` of the features record), and its class names.

    The items are read and preprocessed by extraction's loader, so they decode as ``tlkit extract`` does: large
    JPEGs at a reduced size for the model's resize, images as ``uint8`` batches normalised where the model runs,
    batches prepared on every core between forward passes on a CPU (measured workers elsewhere), and
    ``channels_last`` for convolutional networks."""
    import numpy as np
    import torch

    from tlkit.extraction.loader import make_loader
    from tlkit.finetuning.data import worker_copy
    from tlkit.finetuning.model import TransferModel
    from tlkit.host.readers import get_reader, open_dataset
    from tlkit.runtime.batching import Backoff, prefers_channels_last, slice_batch, to_device

    if is_cache(input_path):
        raise BadInputError(
            f"{input_path}: a feature cache, but {run_dir} is a fine-tuned model whose backbone differs from the one "
            f"that made the cache; pass the raw items instead"
        )
    model = TransferModel.from_run(run_dir, device=runtime.device)
    wrapper = model.backbone_wrapper
    dataset = open_dataset(input_path, modality=wrapper.spec.modality)
    channels_last = prefers_channels_last(model, wrapper.modality)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch_size = int(runtime.batch_size or 1)  # the predict stage always has one
    n = len(dataset.records)
    loader = make_loader(
        dataset.records, get_reader(dataset), worker_copy(wrapper), runtime, batch=batch_size,
        window=max(batch_size, PREDICT_WINDOW),
    )  # fmt: skip
    probs = np.zeros((n, len(model.class_names)), dtype=np.float64)
    done = np.zeros(n, dtype=bool)
    skipped: list[tuple[str, str]] = [(s.id, s.reason) for s in dataset.skipped]  # named at listing time
    backoff: Backoff[torch.Tensor] = Backoff(runtime)

    def forward(inputs: Any, a: int, b: int) -> torch.Tensor:
        with runtime.autocast():
            probs: torch.Tensor = model(slice_batch(inputs, a, b)).float().softmax(1)
        return probs

    with torch.inference_mode():
        for batch in loader:
            skipped += [(dataset.records[i].id, reason) for i, reason in batch.bad]
            if batch.inputs is None:
                continue
            inputs = to_device(batch.inputs, runtime.device, channels_last)
            idx = np.asarray(batch.positions, dtype=np.int64)
            out = backoff.run(len(idx), functools.partial(forward, inputs), lambda parts: torch.cat(list(parts)))
            probs[idx] = out.cpu().numpy()
            done[idx] = True
    keep = np.flatnonzero(done)
    labels = np.array([r.label for r in dataset.records], dtype=np.int64)[keep]
    ids = [dataset.records[int(i)].id for i in keep]
    return _Features(ids, probs[keep], labels, list(dataset.class_names), skipped), list(model.class_names)


def _align_labels(
    labels: np.ndarray, input_classes: Sequence[str], run_classes: Sequence[str], where: Path
) -> np.ndarray | None:
    """Map the input's label indices to the run's class order by name; ``None`` when the input has no labels."""
    from tlkit.heads import remap_labels

    if not input_classes or not (labels >= 0).any():
        return None
    return remap_labels(
        labels, input_classes, run_classes, where=where, whose="the run's", fix="the head cannot predict them"
    )


#: The skip reason of an item whose features (or the model's output) hold NaN or Inf: it gets no prediction.
NONFINITE_REASON = "NaN/Inf features; no prediction (find them with tlkit cache verify, then re-extract)"


def _drop_nonfinite(feats: _Features, probs: np.ndarray) -> tuple[_Features, np.ndarray]:
    """Items whose features or probabilities are not finite become named skips instead of ``nan`` rows."""
    import numpy as np

    ok = np.isfinite(probs).all(axis=1)
    if feats.x is not probs:
        ok &= np.isfinite(np.asarray(feats.x)).all(axis=1)
    if ok.all():
        return feats, probs
    flags = ok.tolist()
    skipped = feats.skipped + [(i, NONFINITE_REASON) for i, good in zip(feats.ids, flags, strict=True) if not good]
    kept = [i for i, good in zip(feats.ids, flags, strict=True) if good]
    x = feats.x[ok] if feats.x is not probs else None
    rest = _Features(kept, x, feats.labels[ok], feats.class_names, skipped)
    return rest, probs[ok]


# -- the API ---------------------------------------------------------------------------------------------------
def predict(
    run_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | str | None = None,
    progress: Progress | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> Predictions:
    """Predict classes for ``input`` with a trained run.

    :param run_dir: a run written by ``tlkit train`` (a head) or ``tlkit finetune`` (a fine-tuned model).
    :param input: raw items (a folder, a manifest or table) or, for a head run, a feature cache (``.h5``).
    :param output: also write the predictions as CSV here (id, predicted class, probability, top-k).
    :param top_k: how many classes with probabilities the CSV lists per item.
    :param batch_size, device, workers: for the extraction or the forward passes over raw items; ``None`` is
        ``auto``, resolved by the ``predict`` row of the runtime policy (``docs/runtime.md``).
    :param precision: of a fine-tuned run's forward pass (``auto`` as fine-tuning resolves it). A head run's raw
        items are always embedded in the precision of its training features; another explicit value is an error.
    :param progress: receives the extraction engine's :class:`tlkit.runtime.progress.ProgressEvent` objects.
    :param preprocess: only checked: raw items always go through the run's recorded preprocessing, and overrides
        that differ from it (another ``input_size``) are refused; the recorded values given again pass.
    """
    from tlkit.runtime import RuntimeOptions, resolve

    run_dir, input_path = Path(run_dir), Path(input)
    if not input_path.exists():
        raise BadInputError(f"{input_path}: no such file or directory; check the input path")
    if preprocess:
        from tlkit.contract.image import check_same_preprocess
        from tlkit.host.api import backbone_from_record
        from tlkit.runs.rundir import read_config

        recorded = backbone_from_record(read_config(run_dir).get("backbone") or {})
        check_same_preprocess(recorded, preprocess, str(run_dir))
    options = RuntimeOptions.of(device=device, precision=precision, batch_size=batch_size, workers=workers)
    if run_kind(run_dir) == FINETUNE_KIND:
        feats, class_names = _finetuned(run_dir, input_path, resolve("predict", options))
        probs = feats.x
    else:
        run = load_head_run(run_dir)
        if is_cache(input_path):
            runtime = resolve("predict", options)
            feats = _read_cache(input_path, run)
        else:
            runtime = _head_runtime(run, options)
            feats = _extract_raw(input_path, run, runtime, progress)
        class_names, probs = run.class_names, run.to(runtime.device).probabilities(feats.x)
    feats, probs = _drop_nonfinite(feats, probs)
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
    precision: str = "auto",
    workers: int | str | None = None,
    progress: Progress | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Metrics and plots of a trained run on a labelled set (raw items or, for a head run, a cache).

    :param output_dir: where to write ``report.json``, ``predictions.csv`` and ``confusion.png``; ``None`` writes
        nothing.
    """
    from tlkit.runs.metrics import classification_report

    input_path = Path(input)
    preds = predict(
        run_dir, input_path, batch_size=batch_size, device=device, precision=precision, workers=workers,
        progress=progress, preprocess=preprocess,
    )  # fmt: skip
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


__all__ = ["HeadRun", "evaluate", "load_head_run", "predict"]
