"""Everything a run builds before its first step: the backbone, the data and its split, the model with its head
(random or from a probe, LP-FT), the plan of phases, and the resume check against an existing run directory."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError
from tlkit.finetuning.freeze import resolve_unfreeze
from tlkit.finetuning.options import (
    DEFAULT_HEAD,
    DEFAULT_UNFREEZE,
    DEFAULT_VAL_SPLIT,
    RESUME_FREE,
    FinetuneInputs,
    FinetuneOptions,
)
from tlkit.finetuning.schedule import Plan, gradual_plan, parse_schedule, simple_plan

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone, Block
    from tlkit.data.base import Dataset
    from tlkit.finetuning.model import TransferModel
    from tlkit.finetuning.probe_head import ProbeHead, StartProbe
    from tlkit.finetuning.run_files import RunFiles


def resolve_backbone(
    backbone: str | Backbone,
    weights: str | None = None,
    input_size: int | None = None,
    backbone_options: Mapping[str, Any] | None = None,
) -> Backbone:
    """A :class:`Backbone` from a name or an instance, with the weights and input-size overrides applied."""
    from tlkit.contract.backbone import Backbone
    from tlkit.host.api import get_backbone

    options = dict(backbone_options or {})
    if input_size is not None:
        options["preprocess"] = {**dict(options.get("preprocess") or {}), "input_size": [3, input_size, input_size]}
    if isinstance(backbone, Backbone):
        changes = dict(options)
        if weights is not None and weights != backbone.weights:
            changes["weights"] = weights
        return backbone.replace(**changes) if changes else backbone
    return get_backbone(backbone, weights=weights or "pretrained", **options)


@dataclass
class TrainingData:
    """The training set, the validation set (given, or split off the training set) and what the config records."""

    train: Dataset
    val: Dataset | None
    class_names: list[str]
    val_split: float | None
    info: dict[str, Any]


def load_data(backbone: Backbone, inputs: FinetuneInputs, opts: FinetuneOptions) -> TrainingData:
    """Open ``inputs.train`` (and ``inputs.val``), check the labels, and split off validation if none was given."""
    from tlkit.data.split import stratified_split
    from tlkit.finetuning.data import require_labels

    train = _open(inputs.train, backbone.modality, inputs)
    require_labels(train, "fine-tune on")
    class_names = list(train.class_names)
    if len(class_names) < 2:
        raise BadInputError(f"{train.root}: fine-tuning a classifier needs at least 2 classes")
    val: Dataset | None = None
    val_split = opts.val_split if inputs.val is None else None
    if inputs.val is not None:
        val = _open(inputs.val, backbone.modality, inputs)
        require_labels(val, "validate on")
        if list(val.class_names) != class_names:
            raise BadInputError(
                f"{val.root}: validation classes {val.class_names} differ from the training classes {class_names}; "
                f"use the same class folders"
            )
    else:
        val_split = DEFAULT_VAL_SPLIT if val_split is None else val_split
        if val_split > 0:
            labels = [r.label for r in train.records]
            tr, va = stratified_split(labels, val_split, opts.seed, class_names)
            train, val = train.subset(tr), train.subset(va)
    info = {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "fingerprint": backbone.fingerprint(),
        "train": str(Path(train.root).resolve()),
        "train_fingerprint": train.fingerprint(),
        "val": str(Path(val.root).resolve()) if val is not None else None,
        "val_fingerprint": val.fingerprint() if val is not None else None,
        "val_split": val_split,
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
    }
    return TrainingData(train, val, class_names, val_split, info)


def _open(data: Any, modality: str, inputs: FinetuneInputs) -> Dataset:
    from tlkit.data.base import Dataset
    from tlkit.host.readers import open_dataset

    if isinstance(data, Dataset):
        return data
    return open_dataset(data, modality=modality, reader=inputs.reader, **dict(inputs.reader_options))


@dataclass
class BuiltModel:
    """The model to train, its head's registered name and parameters, and the probe it started from (LP-FT)."""

    model: TransferModel
    head_name: str
    head_params: dict[str, Any]
    probe: ProbeHead | None
    start: StartProbe | None = None


def build_model(
    backbone: Backbone, opts: FinetuneOptions, class_names: Sequence[str], start: StartProbe | None = None
) -> BuiltModel:
    """Load the backbone and put a head on it: a random one, the probe of ``opts.init_head``, or ``start`` (the
    linear probe a default run fitted on its own training split)."""
    import torch

    from tlkit.finetuning.model import TransferModel
    from tlkit.finetuning.probe_head import load_probe_head
    from tlkit.heads.torch_heads import build_head, is_fitted_head

    probe = None
    head_name, head_params = opts.head or DEFAULT_HEAD, dict(opts.head_params)
    if opts.init_head:
        probe = load_probe_head(opts.init_head, backbone, class_names)
        if opts.head not in (None, probe.name) or (opts.head_params and opts.head_params != probe.params):
            raise ConfigError(
                f"{{init_head}} {probe.run_dir} holds a {probe.name!r} head with {probe.params}; drop {{head}} and "
                f"the head parameters, or make them match",
                params=("init_head", "head"),
            )
        head_name, head_params = probe.name, dict(probe.params)
    torch.manual_seed(opts.seed)  # random-init weights (weights="none", new layers) are reproducible too
    backbone.load()
    head = build_head(head_name, backbone.spec.embed_dim, len(class_names), **head_params)
    if not isinstance(head, torch.nn.Module) or is_fitted_head(head):
        raise ConfigError(
            f"head {head_name!r} is not trained by gradients; fine-tuning needs linear, mlp or another torch head"
        )
    if start is not None:
        head.load_state_dict(start.state, strict=True)
    if probe is not None:
        try:
            head.load_state_dict(probe.state, strict=True)
        except RuntimeError as exc:
            raise BadInputError(
                f"{{param}} {probe.run_dir}: head.safetensors does not fit a {head_name} head "
                f"({str(exc).splitlines()[0]})",
                param="init_head",
            ) from exc
    model = TransferModel(backbone, head, class_names=class_names)
    model.set_bn_policy(opts.bn_policy)
    if opts.grad_checkpointing and not backbone.set_grad_checkpointing(True):
        warnings.warn(f"{backbone.name} does not support gradient checkpointing; training without it", stacklevel=3)
    return BuiltModel(model, head_name, head_params, probe, start)


def phase_plan(opts: FinetuneOptions, blocks: Sequence[Block], modality: str = "image") -> tuple[Plan, list[list[str]]]:
    """The plan of phases, and the blocks each phase trains (default epochs by the backbone's ``modality``)."""
    if opts.schedule:
        plan = parse_schedule(opts.schedule)
    else:
        epochs = opts.default_epochs(modality)
        unfreeze = opts.unfreeze or ("all" if opts.gradual else DEFAULT_UNFREEZE)
        targets = resolve_unfreeze(unfreeze, blocks)
        head_epochs = opts.head_epochs
        if head_epochs is None:  # a random head trains alone first; a probe (given or fitted) already did
            starts_from_probe = opts.init_head or opts.starts_from_probe()
            head_epochs = 0 if (starts_from_probe or not targets) else (1 if epochs >= 2 else 0)
        if opts.gradual:
            plan = gradual_plan(targets, epochs, head_epochs, opts.gradual_every)
        else:
            plan = simple_plan(unfreeze, epochs, head_epochs)
    return plan, [resolve_unfreeze(p.unfreeze, blocks) for p in plan.phases]


def first_epochs(plan: Plan, trainable_by_phase: Sequence[Sequence[str]]) -> dict[str, int]:
    """The 1-based epoch from which each block that ever trains is trainable."""
    since: dict[str, int] = {}
    for phase, trainable in zip(plan.phases, trainable_by_phase, strict=True):
        for name in trainable:
            since.setdefault(name, phase.start + 1)
    return since


def existing_run(files: RunFiles, resume: bool) -> dict[str, Any] | None:
    """The config of the run already in the directory (``None`` if empty); refused unless ``resume``."""
    if not files.exists():
        return None
    if not resume:
        raise ConfigError(
            f"{files.dir}: already holds a run; pass {{resume}} to continue it, or choose a new {{output}}",
            params=("resume", "output"),
        )
    config = files.read_config()
    if config.get("kind") != "finetune":
        raise ConfigError(f"{files.dir}: holds a {config.get('kind')!r} run, not a fine-tuning run")
    return config


def check_resume(run_dir: Path, config: Mapping[str, Any], args: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Refuse to continue a run with different arguments (but ``RESUME_FREE`` ones) or different data."""
    old = config.get("args", {})
    changed = [k for k, v in args.items() if k not in RESUME_FREE and old.get(k) != v]
    diffs = [f"{{{k}}} {old.get(k)!r} → {args[k]!r}" for k in changed]
    old_data = config.get("data", {})
    for key in ("backbone", "weights", "fingerprint", "train", "train_fingerprint", "val", "val_fingerprint"):
        if old_data.get(key) != data.get(key):
            diffs.append(f"{key} {old_data.get(key)!r} → {data.get(key)!r}")
    if diffs:
        raise ConfigError(
            f"{run_dir}: {{resume}} with different arguments than the run was started with ({'; '.join(diffs)}); "
            f"rerun with the original arguments, or write a new run with another {{output}}",
            params=("resume", "output", *changed),
        )


__all__ = [
    "BuiltModel",
    "TrainingData",
    "build_model",
    "check_resume",
    "existing_run",
    "first_epochs",
    "load_data",
    "phase_plan",
    "resolve_backbone",
]
