"""LP-FT: start fine-tuning from a linear probe: a head run of ``tlkit train`` (``--init-head``), or, by default, one
that the run fits itself on frozen features of its training split (:func:`fit_start_probe`).

A head run (config kind ``"head"``) holds ``head.safetensors`` and a config with ``backbone`` {name, weights,
options, fingerprint}, ``head`` {name, kind, params, in_dim, n_classes} and ``class_names``. Its fingerprint must
equal the fine-tuned backbone's: a probe trained on other features (other weights, preprocessing or pooling) would
start from the wrong place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, FingerprintMismatchError
from tlkit.finetuning.options import DEFAULT_PROBE_LOSS_FLOOR
from tlkit.heads.allow import check_head_record
from tlkit.runs.rundir import HEAD_WEIGHTS, load_tensors, read_config

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset
    from tlkit.runtime import Runtime


@dataclass
class ProbeHead:
    """A trained head to start from: its registered name, parameters and weights."""

    run_dir: Path
    name: str
    params: dict[str, Any]
    in_dim: int
    n_classes: int
    state: dict[str, torch.Tensor]
    fingerprint: str


def load_probe_head(run_dir: str | os.PathLike[str], backbone: Backbone, class_names: Sequence[str]) -> ProbeHead:
    """Read a head run and check that it fits ``backbone`` and the training classes; clear errors otherwise."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    check_head_record(config.get("head"), run_dir / "config.json")  # registered, plain parameters, right kind
    _check(config, f"{{param}} {run_dir}", backbone, class_names)
    head = config["head"]
    state = load_tensors(run_dir / HEAD_WEIGHTS, "copy the run directory again, or rerun tlkit train")
    if state and all(k.startswith("head.") for k in state):
        state = {k[5:]: v for k, v in state.items()}
    return ProbeHead(
        run_dir=run_dir,
        name=str(head["name"]),
        params=dict(head.get("params") or {}),
        in_dim=int(head["in_dim"]),
        n_classes=int(head["n_classes"]),
        state=state,
        fingerprint=str(config["backbone"]["fingerprint"]),
    )


def _check(config: dict[str, Any], where: str, backbone: Backbone, class_names: Sequence[str]) -> None:
    """A head run, of a torch head, on the final embedding of this very backbone, for the same classes.
    ``where`` names the parameter as ``{param}`` (the CLI shows the flag)."""
    if config.get("kind") != "head":
        raise BadInputError(
            f"{where}: a {config.get('kind')!r} run; pass a head run written by tlkit train",
            param="init_head",
        )
    head = config.get("head") or {}
    if head.get("kind", "torch") != "torch":
        raise BadInputError(
            f"{where}: head {head.get('name')!r} is a scikit-learn estimator; fine-tuning needs a torch "
            f"head (train a linear or mlp probe)",
            param="init_head",
        )
    layer = config.get("layer")
    if layer not in (None, "", "final", "last"):
        raise BadInputError(
            f"{where}: the head was trained on layer {layer!r}, but fine-tuning feeds the final embedding; train "
            f"the probe on the final layer",
            param="init_head",
        )
    recorded = (config.get("backbone") or {}).get("fingerprint")
    actual = backbone.fingerprint()
    if recorded != actual:
        bname = (config.get("backbone") or {}).get("name", "?")
        _check_preprocess(config, where, backbone)
        raise FingerprintMismatchError(
            f"{where}: its head was trained on features of {bname} with fingerprint {recorded}, but "
            f"this backbone ({backbone.name}, weights {backbone.weights}) has fingerprint {actual}; train the probe "
            f"on a cache extracted with the same backbone, weights and preprocessing",
            param="init_head",
        )
    probe_classes = list(config.get("class_names") or [])
    if probe_classes != list(class_names):
        raise BadInputError(
            f"{where}: the probe's classes {probe_classes} differ from the training data's "
            f"{list(class_names)}; train the probe on the same classes",
            param="init_head",
        )
    if int(head.get("in_dim", -1)) != backbone.spec.embed_dim:
        raise BadInputError(
            f"{where}: the head takes {head.get('in_dim')}-d features but {backbone.name} gives "
            f"{backbone.spec.embed_dim}-d",
            param="init_head",
        )


def _check_preprocess(config: dict[str, Any], where: str, backbone: Backbone) -> None:
    """When the probe's backbone differs from ``backbone`` only in preprocessing (another input size), say so and
    name the options that give the probe's."""
    from tlkit.contract.image import IMAGE_OPTIONS, format_option, preprocess_changes
    from tlkit.errors import TlkitError
    from tlkit.host.api import backbone_from_record

    try:
        probe_bb = backbone_from_record(config.get("backbone") or {}, weights=backbone.weights)
        if probe_bb.name != backbone.name or probe_bb.fingerprint() == backbone.fingerprint():
            return
        theirs, ours = probe_bb.spec.preprocess, backbone.spec.preprocess
    except TlkitError:
        return
    changes = preprocess_changes(theirs, ours)
    if not changes:
        return
    keys = [k for k in IMAGE_OPTIONS if theirs.get(k) != ours.get(k) and k in theirs]
    fix = " ".join("{" + k + "} " + format_option(k, theirs[k]) for k in keys)
    raise FingerprintMismatchError(
        f"{where}: the probe was trained on features preprocessed otherwise ({'; '.join(changes)}, probe → this "
        f"run); {'give ' + fix + ' to fine-tune as the probe was extracted, or ' if fix else ''}train the probe on "
        f"a cache extracted with this run's preprocessing",
        params=("init_head", *keys),
    )


@dataclass
class StartProbe:
    """The linear probe a default run fits on frozen features of its training split before fine-tuning (LP-FT):
    the weights of an ``nn.Linear`` head on raw embeddings, what the cross-validation chose, and the temperature its
    weights were divided by to keep the training loss at the floor (:func:`temper`), with the loss before and after."""

    state: dict[str, torch.Tensor]
    selection: dict[str, Any]
    items: int
    temperature: float = 1.0
    train_loss: float | None = None
    start_loss: float | None = None

    def summary(self) -> dict[str, Any]:
        chosen = self.selection.get("chosen") or {}
        return {
            "auto": True,
            "items": self.items,
            "lambda": chosen.get("lambda"),
            "cv_accuracy": chosen.get("cv_accuracy"),
            "cv_accuracy_std": chosen.get("cv_accuracy_std"),
            "seconds": self.selection.get("seconds"),
            "temperature": self.temperature,
            "train_loss": self.train_loss,
            "start_loss": self.start_loss,
        }


def temper(logits: torch.Tensor, labels: torch.Tensor, n_classes: int, floor: float) -> tuple[float, float, float]:
    """The temperature ``T >= 1`` at which the cross-entropy of ``logits / T`` on ``labels`` reaches ``floor * ln K``
    (1 when the loss is already there), with the loss at ``T = 1`` and at ``T``. Dividing by ``T`` keeps every
    prediction; the loss rises towards ln K as ``T`` grows, so bisection on ``log T`` finds it."""
    import math

    import torch

    def loss(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / t, labels))

    base = loss(1.0)
    target = floor * math.log(n_classes)
    if n_classes < 2 or floor <= 0 or base >= target:
        return 1.0, base, base
    low, high = 0.0, math.log(1e6)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if loss(math.exp(mid)) < target else (low, mid)
    t = math.exp(high)
    return t, base, loss(t)


def frozen_features(
    backbone: Backbone,
    dataset: Dataset,
    runtime: Runtime,
    batch_size: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (evaluation transform, no gradients) and labels of ``dataset``; items that fail to load are left
    out. The backbone is loaded and moved to the runtime's device."""
    import numpy as np
    import torch

    from tlkit.contract.backbone import check_first_output
    from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader
    from tlkit.runtime.batching import to_device

    backbone.load()
    backbone.module.to(runtime.device)
    items = ItemDataset(dataset, backbone, train=False)
    loader = make_loader(items, batch_size or runtime.batch_size or 32, EpochSampler(len(items), 0, False), runtime)
    feats: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    done = 0
    was_training = backbone.module.training
    backbone.module.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                done += len(batch) + len(batch.skipped)
                if batch.inputs is not None:
                    with runtime.autocast():
                        out = backbone.embed(to_device(batch.inputs, runtime.device))
                    if not feats:  # the contract's check of the first batch (width, modality)
                        check_first_output(backbone, out)
                    feats.append(out.float().cpu().numpy())
                    ys.append(batch.labels.numpy())
                if callback is not None:
                    callback(done, len(items))
    finally:
        backbone.module.train(was_training)
    if not feats:
        raise BadInputError(f"{dataset.root}: no training item could be loaded")
    return np.concatenate(feats), np.concatenate(ys)


def fit_start_probe(
    backbone: Backbone,
    dataset: Dataset,
    n_classes: int,
    runtime: Runtime,
    batch_size: int,
    seed: int = 0,
    callback: Callable[[int, int], None] | None = None,
    loss_floor: float = DEFAULT_PROBE_LOSS_FLOOR,
) -> StartProbe:
    """LP-FT's first stage: a linear probe on frozen features of ``dataset``, its L2 strength chosen by k-fold
    cross-validation (:func:`tlkit.heads.auto.fit_logistic_cv`, the default head of ``tlkit train``), with the
    standardisation (scale floored as ``tlkit train`` floors it) folded into the weights, and the weights divided by
    the temperature that keeps its training loss at ``loss_floor`` of chance (:data:`DEFAULT_PROBE_LOSS_FLOOR`).
    ``callback(done, total)`` follows the forward pass over ``dataset``."""
    import torch

    from tlkit.heads.auto import fit_logistic_cv
    from tlkit.heads.fit import SCALE_FLOOR

    x_np, y_np = frozen_features(backbone, dataset, runtime, batch_size, callback=callback)
    x = torch.from_numpy(x_np).double()
    y = torch.from_numpy(y_np).long()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    scale = std.clamp_min(max(SCALE_FLOOR * float(std.median()), 1e-12))
    theta, selection = fit_logistic_cv((x - mean) / scale, y, n_classes, seed=seed)
    weight = theta[:, :-1] / scale
    bias = theta[:, -1] - weight @ mean
    t, before, after = temper(x @ weight.T + bias, y, n_classes, loss_floor)
    state = {"weight": (weight / t).float().contiguous(), "bias": (bias / t).float().contiguous()}
    return StartProbe(state, selection.to_dict(), len(y), t, before, after)
