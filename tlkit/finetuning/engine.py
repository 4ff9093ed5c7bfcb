"""The fine-tuning engine and ``tlkit.finetune(...)``.

One run: a backbone plus a head (:class:`tlkit.runs.model.TransferModel`) trained on raw items, with

- a plan of phases (:mod:`tlkit.finetuning.schedule`): head first, then blocks unfrozen from the top down;
- discriminative learning rates over parameter groups created up front (:mod:`tlkit.finetuning.optim`);
- the BatchNorm policy re-applied after every ``train()`` (:mod:`tlkit.finetuning.bn`);
- augmentation from the backbone's training transform, evaluation with its eval transform (:mod:`tlkit.finetuning.data`);
- AMP, gradient accumulation and clipping, gradient checkpointing, early stopping on validation;
- an atomic checkpoint every epoch, so ``resume=True`` continues after a crash or ``kill -9`` and a deterministic CPU
  run ends with the same weights as an uninterrupted one (:mod:`tlkit.finetuning.state`).

Every file is written through :class:`tlkit.finetuning.run_files.RunFiles`; progress goes to an optional callback.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.finetuning.bn import DEFAULT_BN_POLICY, check_bn_policy
from tlkit.errors import BadInputError, ConfigError
from tlkit.finetuning.freeze import FreezeRow, check_unfreeze_syntax, freeze_report, resolve_unfreeze
from tlkit.finetuning.optim import DEFAULT_HEAD_LR, OPTIMIZERS, backbone_rate, block_rates
from tlkit.finetuning.schedule import Plan, check_lr_schedule, gradual_plan, parse_schedule, simple_plan

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset, Skipped
    from tlkit.runs.metrics import ClassificationReport

DEFAULT_EPOCHS = 5
DEFAULT_HEAD = "mlp"
DEFAULT_UNFREEZE = "last:1"
DEFAULT_VAL_SPLIT = 0.2
MONITORS = ("val_accuracy", "val_loss")
#: Arguments that may differ on --resume without changing the result.
RESUME_FREE = ("device", "workers")


@dataclass
class FinetuneOptions:
    """Every training choice, validated. ``to_args()`` is stored in ``config.json`` and compared on resume."""

    head: str | None = None
    head_params: dict[str, Any] = field(default_factory=dict)
    unfreeze: str | None = None
    schedule: str | None = None
    gradual: bool = False
    gradual_every: int = 1
    head_epochs: int | None = None
    epochs: int | None = None
    lr: float = DEFAULT_HEAD_LR
    backbone_lr_ratio: float | None = None
    backbone_lr: float | None = None
    layer_decay: float | None = None
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    warmup: float = 0.1
    batch_size: int = 32
    accumulate: int = 1
    precision: str = "auto"
    augment: str | None = None
    bn_policy: str = DEFAULT_BN_POLICY
    init_head: str | None = None
    early_stopping: int | None = None
    monitor: str = "val_accuracy"
    grad_clip: float | None = 1.0
    grad_checkpointing: bool = False
    label_smoothing: float = 0.0
    val_split: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None

    def validate(self, has_val: bool) -> None:
        """Reject conflicting or impossible options before anything loads."""
        if self.schedule and self.gradual:
            raise ConfigError("give --schedule or --gradual, not both")
        if self.schedule and self.unfreeze is not None:
            raise ConfigError("--schedule names what each phase unfreezes; drop --unfreeze (or drop --schedule)")
        if self.schedule and self.head_epochs is not None:
            raise ConfigError("--schedule sets the head-only epochs itself (head:N); drop --head-epochs")
        if has_val and self.val_split is not None:
            raise ConfigError("give --val or --val-split, not both")
        backbone_rate(self.lr, self.backbone_lr_ratio, self.backbone_lr)
        block_rates([], 0.0, self.layer_decay)
        check_bn_policy(self.bn_policy)
        check_lr_schedule(self.lr_schedule)
        if self.unfreeze is not None:
            check_unfreeze_syntax(self.unfreeze)
        if self.schedule:
            plan = parse_schedule(self.schedule)
            if self.epochs is not None and self.epochs != plan.total_epochs:
                raise ConfigError(
                    f"--epochs {self.epochs} disagrees with --schedule {self.schedule!r} ({plan.total_epochs} epochs); "
                    f"drop --epochs"
                )
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, not {self.epochs}")
        if self.head_epochs is not None and self.head_epochs < 0:
            raise ConfigError(f"--head-epochs must be ≥ 0, not {self.head_epochs}")
        if self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("--batch-size and --accumulate must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"--warmup is a fraction of each phase in [0, 1), not {self.warmup}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"--monitor must be one of {', '.join(MONITORS)}, not {self.monitor!r}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"--early-stopping needs a patience of at least 1 epoch, not {self.early_stopping}")
        if self.val_split is not None and not 0 <= self.val_split < 1:
            raise ConfigError(f"--val-split must be in [0, 1), not {self.val_split}")
        no_val = not has_val and self.val_split == 0
        if no_val and self.early_stopping:
            raise ConfigError("--early-stopping watches validation; give --val or a --val-split above 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"--grad-clip must be positive (or omitted), not {self.grad_clip}")

    def to_args(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneEvent:
    """A progress event for the ``callback``.

    ``kind`` is ``"start"`` (``freeze`` and ``plan`` filled), ``"phase"`` (``trainable`` filled), ``"epoch_start"``,
    ``"step"``, ``"epoch_end"`` (``metrics`` filled) or ``"done"``. ``epoch`` is 1-based; ``loss`` and ``accuracy``
    are running training averages for the epoch.
    """

    kind: str
    epoch: int = 0
    epochs: int = 0
    phase: int = 0
    step: int = 0
    steps: int = 0
    items: int = 0
    loss: float | None = None
    accuracy: float | None = None
    items_per_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    freeze: list[FreezeRow] = field(default_factory=list)
    plan: str = ""
    message: str = ""


@dataclass
class FinetuneResult:
    """What ``tlkit.finetune`` returns.

    Attributes:
        run_dir: the run directory (``model.safetensors``, ``config.json``, ``metrics.jsonl``, ``report.json``,
            ``curves.png``, ``confusion.png``, ``checkpoints/``).
        report: metrics of the saved model on the validation set (on the training set, eval transform, when
            there is no validation set; see ``evaluated_on``).
        evaluated_on: ``"val"`` or ``"train"``.
        monitor, best_epoch, best_value: the metric that picked the saved model, its 1-based epoch and value.
        epochs_run, total_epochs: epochs completed, and epochs planned.
        stopped_early: whether early stopping ended the run.
        resumed_from: the epoch a ``resume=True`` run continued from (``None`` for a fresh run).
        plan: the phases, in ``--schedule`` syntax.
        freeze: the freeze report (every block with parameters, trainability, rate, BatchNorm mode).
        history: the ``metrics.jsonl`` rows.
        skipped: bad items that were skipped, with reasons.
    """

    run_dir: Path
    report: ClassificationReport
    evaluated_on: str
    monitor: str
    best_epoch: int
    best_value: float | None
    epochs_run: int
    total_epochs: int
    stopped_early: bool
    resumed_from: int | None
    plan: str
    freeze: list[FreezeRow]
    history: list[dict[str, Any]]
    skipped: list[Skipped]

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.safetensors"

    def summary(self) -> str:
        where = "validation" if self.evaluated_on == "val" else "training set (no validation)"
        return f"{self.report.summary()} on {where}; best epoch {self.best_epoch}/{self.total_epochs}" + (
            " (stopped early)" if self.stopped_early else ""
        )


Callback = Callable[[FinetuneEvent], None]


def finetune(
    backbone: str | Backbone,
    train: str | os.PathLike[str] | Dataset,
    output: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | Dataset | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    backbone_options: Mapping[str, Any] | None = None,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    on_error: str = "skip",
    resume: bool = False,
    callback: Callback | None = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on the labelled items under ``train``; write the run to ``output``.

    ``backbone`` is a name (``"timm/resnet18"``) or a :class:`tlkit.Backbone`; ``train``/``val`` are paths (or
    datasets from :func:`tlkit.open_dataset`). ``weights`` is ``pretrained``, ``none`` or a local path;
    ``input_size`` overrides an image model's input size. Every other keyword is a :class:`FinetuneOptions` field:
    ``head``, ``head_params``, ``unfreeze``, ``schedule``, ``gradual``, ``gradual_every``, ``head_epochs``, ``epochs``,
    ``lr``, ``backbone_lr_ratio``, ``backbone_lr``, ``layer_decay``, ``weight_decay``, ``optimizer``,
    ``lr_schedule``, ``warmup``, ``batch_size``, ``accumulate``, ``precision``, ``augment``, ``bn_policy``,
    ``init_head``, ``early_stopping``, ``monitor``, ``grad_clip``, ``grad_checkpointing``, ``label_smoothing``,
    ``val_split``, ``seed``, ``device``, ``workers``.

    ``resume=True`` continues the run in ``output`` from its last checkpoint; it refuses different arguments.
    Returns a :class:`FinetuneResult`.
    """
    known = {f.name for f in fields(FinetuneOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if options.get("init_head") is not None:
        options["init_head"] = str(Path(options["init_head"]).expanduser().resolve())
    opts = FinetuneOptions(**options)
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"--on-error must be skip or fail, not {on_error!r}")
    engine = FinetuneEngine(
        backbone,
        train,
        output,
        opts,
        val=val,
        weights=weights,
        input_size=input_size,
        backbone_options=backbone_options,
        reader=reader,
        reader_options=reader_options,
        on_error=on_error,
        resume=resume,
        callback=callback,
    )
    return engine.run()


def resolve_backbone(
    backbone: str | Backbone,
    weights: str | None = None,
    input_size: int | None = None,
    backbone_options: Mapping[str, Any] | None = None,
) -> Backbone:
    """A :class:`Backbone` from a name or an instance, with the weights and input-size overrides applied."""
    from tlkit.host.api import get_backbone
    from tlkit.contract.backbone import Backbone

    options = dict(backbone_options or {})
    if input_size is not None:
        options["preprocess"] = {**dict(options.get("preprocess") or {}), "input_size": [3, input_size, input_size]}
    if isinstance(backbone, Backbone):
        changes = dict(options)
        if weights is not None and weights != backbone.weights:
            changes["weights"] = weights
        return backbone.replace(**changes) if changes else backbone
    return get_backbone(backbone, weights=weights or "pretrained", **options)


def _open(data: Any, modality: str, reader: str | None, reader_options: Mapping[str, Any]) -> Dataset:
    from tlkit.data.base import Dataset
    from tlkit.data.open import open_dataset

    if isinstance(data, Dataset):
        return data
    return open_dataset(data, modality=modality, reader=reader, **dict(reader_options))


def freeze_preview(
    backbone: Backbone,
    unfreeze: str,
    *,
    lr: float = DEFAULT_HEAD_LR,
    backbone_lr_ratio: float | None = None,
    backbone_lr: float | None = None,
    layer_decay: float | None = None,
    bn_policy: str = DEFAULT_BN_POLICY,
) -> list[FreezeRow]:
    """The freeze report for one unfreeze spec, without training (``tlkit blocks NAME --unfreeze SPEC``)."""
    from tlkit.finetuning.bn import BatchNormPolicy

    blocks = backbone.blocks()
    trainable = resolve_unfreeze(unfreeze, blocks)
    rates = block_rates([b.name for b in blocks], backbone_rate(lr, backbone_lr_ratio, backbone_lr), layer_decay)
    policy = BatchNormPolicy(backbone.module, blocks, bn_policy)
    policy.set_trainable(trainable)
    rows = freeze_report(backbone.module, blocks, trainable, rates, policy.block_modes(blocks), 0, lr)
    return rows[:-1]


class FinetuneEngine:
    """Prepares and runs one fine-tuning run. Use :func:`finetune`.

    Seams for distributed training: the whole trainable thing is ``self.model`` (one ``nn.Module``) and the training
    step calls ``self.forward_module`` (set it to a ``DistributedDataParallel`` wrapper); shuffling goes through
    ``self.sampler`` (anything with ``set_epoch``, such as ``DistributedSampler``); every parameter group exists from
    the start; and every write goes through ``self.files`` (``RunFiles(is_main=False)`` on other ranks).
    """

    def __init__(
        self,
        backbone: str | Backbone,
        train: Any,
        output: str | os.PathLike[str],
        opts: FinetuneOptions,
        *,
        val: Any = None,
        weights: str | None = None,
        input_size: int | None = None,
        backbone_options: Mapping[str, Any] | None = None,
        reader: str | None = None,
        reader_options: Mapping[str, Any] | None = None,
        on_error: str = "skip",
        resume: bool = False,
        callback: Callback | None = None,
        is_main: bool = True,
    ) -> None:
        from tlkit.finetuning.run_files import RunFiles

        self.opts = opts
        self.opts.validate(has_val=val is not None)
        self.backbone_in = backbone
        self.train_in, self.val_in = train, val
        self.weights, self.input_size = weights, input_size
        self.backbone_options = dict(backbone_options or {})
        self.reader, self.reader_options = reader, dict(reader_options or {})
        self.on_error = on_error
        self.resume = resume
        self.callback = callback
        self.files = RunFiles(output, is_main=is_main)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _emit(self, kind: str, **kw: Any) -> None:
        if self.callback is not None:
            self.callback(FinetuneEvent(kind, **kw))

    def _epoch_seed(self, epoch: int) -> int:
        return (self.opts.seed * 1_000_003 + epoch * 7919) % (2**31)

    def _seed_epoch(self, epoch: int) -> None:
        """Everything random in an epoch (shuffle, augmentation, dropout) derives from (seed, epoch) alone, so a
        resumed epoch draws exactly what the uninterrupted run drew."""
        import numpy as np
        import torch

        s = self._epoch_seed(epoch)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        self.sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(s)

    # -- preparation -----------------------------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        from tlkit.finetuning.data import require_labels, stratified_split

        bb = self.backbone
        self.train_set = _open(self.train_in, bb.modality, self.reader, self.reader_options)
        require_labels(self.train_set, "fine-tune on")
        self.class_names = list(self.train_set.class_names)
        if len(self.class_names) < 2:
            raise BadInputError(f"{self.train_set.root}: fine-tuning a classifier needs at least 2 classes")
        self.val_set: Dataset | None = None
        self.val_split = self.opts.val_split if self.val_in is None else None
        if self.val_in is not None:
            self.val_set = _open(self.val_in, bb.modality, self.reader, self.reader_options)
            require_labels(self.val_set, "validate on")
            if list(self.val_set.class_names) != self.class_names:
                raise BadInputError(
                    f"{self.val_set.root}: validation classes {self.val_set.class_names} differ from the training "
                    f"classes {self.class_names}; use the same class folders"
                )
        else:
            frac = DEFAULT_VAL_SPLIT if self.val_split is None else self.val_split
            self.val_split = frac
            if frac > 0:
                labels = [r.label for r in self.train_set.records]
                tr, va = stratified_split(labels, frac, self.opts.seed, self.class_names)
                full = self.train_set
                self.train_set, self.val_set = full.subset(tr), full.subset(va)

    def _build_model(self) -> None:
        import torch

        from tlkit.heads.torch_heads import build_head, is_fitted_head
        from tlkit.runs.model import TransferModel
        from tlkit.finetuning.probe_head import load_probe_head

        bb = self.backbone
        opts = self.opts
        self.probe = None
        head_name, head_params = opts.head or DEFAULT_HEAD, dict(opts.head_params)
        if opts.init_head:
            self.probe = load_probe_head(opts.init_head, bb, self.class_names)
            same_head = opts.head in (None, self.probe.name)
            if not same_head or (opts.head_params and opts.head_params != self.probe.params):
                raise ConfigError(
                    f"--init-head {self.probe.run_dir} holds a {self.probe.name!r} head with {self.probe.params}; "
                    f"drop --head/--head-param or make them match"
                )
            head_name, head_params = self.probe.name, dict(self.probe.params)
        self.head_name, self.head_params = head_name, head_params
        torch.manual_seed(opts.seed)  # random-init weights (weights="none", new layers) are reproducible too
        bb.load()
        head = build_head(head_name, bb.spec.embed_dim, len(self.class_names), **head_params)
        if not isinstance(head, torch.nn.Module) or is_fitted_head(head):
            raise ConfigError(
                f"head {head_name!r} is not trained by gradients; fine-tuning needs linear, mlp or another torch head"
            )
        if self.probe is not None:
            try:
                head.load_state_dict(self.probe.state, strict=True)
            except RuntimeError as exc:
                raise BadInputError(
                    f"--init-head {self.probe.run_dir}: head.safetensors does not fit a {head_name} head "
                    f"({str(exc).splitlines()[0]})"
                ) from exc
        self.model = TransferModel(bb, head, class_names=self.class_names)
        self.model.set_bn_policy(opts.bn_policy)
        if opts.grad_checkpointing and not bb.set_grad_checkpointing(True):
            warnings.warn(f"{bb.name} does not support gradient checkpointing; training without it", stacklevel=2)

    def _build_plan(self) -> None:
        opts = self.opts
        blocks = self.model.blocks
        names = [b.name for b in blocks]
        if opts.schedule:
            plan = parse_schedule(opts.schedule)
        else:
            epochs = opts.epochs if opts.epochs is not None else DEFAULT_EPOCHS
            unfreeze = opts.unfreeze or ("all" if opts.gradual else DEFAULT_UNFREEZE)
            targets = resolve_unfreeze(unfreeze, blocks)
            head_epochs = opts.head_epochs
            if head_epochs is None:  # the seed's rule: a random head trains alone first; a probe already did
                head_epochs = 0 if (opts.init_head or not targets) else (1 if epochs >= 2 else 0)
            if opts.gradual:
                plan = gradual_plan(targets, epochs, head_epochs, opts.gradual_every)
            else:
                plan = simple_plan(unfreeze, epochs, head_epochs)
        self.plan: Plan = plan
        self.trainable_by_phase = [resolve_unfreeze(p.unfreeze, blocks) for p in plan.phases]
        since: dict[str, int] = {}
        for phase, trainable in zip(plan.phases, self.trainable_by_phase, strict=True):
            for name in trainable:
                since.setdefault(name, phase.start + 1)
        self.since = since
        self.ever_trainable = [n for n in names if n in since]

    def _build_optimizer(self) -> None:
        import torch

        from tlkit.runtime.amp import make_scaler, resolve_device, resolve_precision
        from tlkit.finetuning.optim import build_param_groups, make_optimizer

        opts = self.opts
        self.device = resolve_device(opts.device)
        self.precision = resolve_precision(opts.precision, self.device)
        blocks = self.model.blocks
        self.backbone_lr = backbone_rate(opts.lr, opts.backbone_lr_ratio, opts.backbone_lr)
        self.rates = block_rates([b.name for b in blocks], self.backbone_lr, opts.layer_decay)
        self.model.to(self.device)
        # GPU speed for CNNs: NHWC convolutions and cuDNN autotuning on fixed-size images
        self.channels_last = self.device.type == "cuda" and self.backbone.modality == "image"
        if self.channels_last:
            torch.backends.cudnn.benchmark = True
            self.model.to(memory_format=torch.channels_last)
        #: What the training step calls: the model itself, or a wrapper around it (DDP sets this).
        self.forward_module: torch.nn.Module = self.model
        groups = build_param_groups(
            self.model.backbone, blocks, self.model.head, self.rates, opts.lr, opts.weight_decay
        )
        self.optimizer = make_optimizer(opts.optimizer, groups)
        self.scaler = make_scaler(self.device, self.precision)

    def _build_loaders(self) -> None:
        from tlkit.finetuning.data import EpochSampler, ItemDataset, default_workers, make_loader

        opts = self.opts
        workers = default_workers() if opts.workers is None else opts.workers
        train_bb = (
            self.backbone if opts.augment in (None, "default", "none") else self.backbone.replace(augment=opts.augment)
        )
        self.train_items = ItemDataset(self.train_set, train_bb, train=opts.augment != "none")
        self.sampler = EpochSampler(len(self.train_items), opts.seed)
        drop_last = opts.bn_policy == "train" and len(self.train_items) > opts.batch_size
        self.train_loader = make_loader(
            self.train_items, opts.batch_size, self.sampler, workers, self.device, opts.seed, drop_last
        )
        self.val_loader = None
        if self.val_set is not None and len(self.val_set):
            val_items = ItemDataset(self.val_set, self.backbone, train=False)
            self.val_loader = make_loader(
                val_items, opts.batch_size, EpochSampler(len(val_items), 0, shuffle=False), workers, self.device
            )

    def _config(self) -> dict[str, Any]:
        from tlkit.runs.rundir import new_config

        bb = self.backbone
        init = bb.init_kwargs()
        weights = init.pop("weights")
        return new_config(
            "finetune",
            backbone={"name": bb.name, "weights": weights, "options": init, "fingerprint": self.fingerprint},
            head={
                "name": self.head_name,
                "kind": "torch",
                "params": self.head_params,
                "in_dim": bb.spec.embed_dim,
                "n_classes": len(self.class_names),
            },
            class_names=self.class_names,
            layer=None,
            finetuned=True,
            data=self.data_info,
            args=self.args,
            plan=self.plan.to_list(),
            init_head=({"run": str(self.probe.run_dir), "fingerprint": self.probe.fingerprint} if self.probe else None),
            status="running",
        )

    def _check_resume(self, config: dict[str, Any]) -> None:
        """Refuse to continue a run with different arguments or data."""
        old = config.get("args", {})
        diffs = [
            f"--{k.replace('_', '-')} {old.get(k)!r} → {v!r}"
            for k, v in self.args.items()
            if k not in RESUME_FREE and old.get(k) != v
        ]
        old_data = config.get("data", {})
        for key in ("backbone", "weights", "fingerprint", "train", "train_fingerprint", "val", "val_fingerprint"):
            if old_data.get(key) != self.data_info.get(key):
                diffs.append(f"{key} {old_data.get(key)!r} → {self.data_info.get(key)!r}")
        if diffs:
            raise ConfigError(
                f"{self.files.dir}: --resume with different arguments than the run was started with "
                f"({'; '.join(diffs)}); rerun with the original arguments, or write a new run with another -o"
            )

    def prepare(self) -> None:
        """Load the backbone and the data, build the model, the plan and the optimizer; check resume."""
        self.backbone = resolve_backbone(self.backbone_in, self.weights, self.input_size, self.backbone_options)
        self.fingerprint = self.backbone.fingerprint()
        self.args = self.opts.to_args()
        self._prepare_data()
        self.data_info = {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights,
            "fingerprint": self.fingerprint,
            "train": str(Path(self.train_set.root).resolve()),
            "train_fingerprint": self.train_set.fingerprint(),
            "val": str(Path(self.val_set.root).resolve()) if self.val_set is not None else None,
            "val_fingerprint": self.val_set.fingerprint() if self.val_set is not None else None,
            "val_split": self.val_split,
            "n_train": len(self.train_set),
            "n_val": len(self.val_set) if self.val_set is not None else 0,
        }
        self.existing = self.files.read_config() if self.files.exists() else None
        if self.existing is not None:
            if not self.resume:
                raise ConfigError(
                    f"{self.files.dir}: already holds a run; pass --resume to continue it, or choose a new -o"
                )
            if self.existing.get("kind") != "finetune":
                raise ConfigError(f"{self.files.dir}: holds a {self.existing.get('kind')!r} run, not a fine-tuning run")
            self._check_resume(self.existing)
        self._build_model()
        self._build_plan()
        self._build_optimizer()
        self._build_loaders()
        blocks = self.model.blocks
        self.model.bn_policy.set_trainable(self.ever_trainable)
        self.freeze = freeze_report(
            self.model.backbone,
            blocks,
            self.ever_trainable,
            self.rates,
            self.model.bn_policy.block_modes(blocks),
            sum(p.numel() for p in self.model.head.parameters()),
            self.opts.lr,
            since_epoch=self.since,
        )

    # -- training --------------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch

        from tlkit.runtime.amp import autocast
        from tlkit.finetuning.data import to_device
        from tlkit.finetuning.optim import set_group_rates
        from tlkit.finetuning.schedule import lr_factor

        opts, model, opt, scaler = self.opts, self.model, self.optimizer, self.scaler
        phase_index = self.plan.phase_index(epoch)
        phase = self.plan.phases[phase_index]
        trainable = self.trainable_by_phase[phase_index]
        model.set_trainable(trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        self._seed_epoch(epoch)
        model.train()
        n_batches = len(self.train_loader)
        steps = math.ceil(n_batches / opts.accumulate)
        first_step = (epoch - phase.start) * steps
        phase_steps = phase.epochs * steps
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        shown_loss: float | None = None
        shown_acc: float | None = None
        factor = 0.0
        opt.zero_grad(set_to_none=True)
        start = time.perf_counter()
        self._emit("epoch_start", epoch=epoch + 1, epochs=self.plan.total_epochs, phase=phase_index, steps=n_batches)
        for i, batch in enumerate(self.train_loader):
            self._note_skipped(batch.skipped, self.train_set)
            if batch.inputs is not None:
                inputs = to_device(batch.inputs, self.device, self.channels_last)
                labels = batch.labels.to(self.device, non_blocking=True)
                with autocast(self.device, self.precision):
                    logits = self.forward_module(inputs)
                loss = self.criterion(logits.float(), labels)
                scaler.scale(loss / opts.accumulate).backward()
                n = int(labels.numel())
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += n
            if (i + 1) % opts.accumulate == 0 or i + 1 == n_batches:
                factor = lr_factor(first_step + i // opts.accumulate, phase_steps, opts.lr_schedule, opts.warmup)
                set_group_rates(opt, trainable, factor)
                if any(p.grad is not None for p in params):
                    if opts.grad_clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                opt.zero_grad(set_to_none=True)
                self.global_step += 1
            if self.callback is not None:
                if seen and ((i + 1) % 10 == 0 or i + 1 == n_batches or shown_loss is None):
                    shown_loss, shown_acc = float(loss_sum) / seen, float(correct) / seen
                elapsed = time.perf_counter() - start
                self._emit(
                    "step",
                    epoch=epoch + 1,
                    epochs=self.plan.total_epochs,
                    phase=phase_index,
                    step=i + 1,
                    steps=n_batches,
                    items=seen,
                    loss=shown_loss,
                    accuracy=shown_acc,
                    items_per_s=seen / elapsed if elapsed > 0 else None,
                )
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(loss_sum) / seen if seen else float("nan"),
            "train_accuracy": float(correct) / seen if seen else float("nan"),
            "lr": opts.lr * factor,
            "seconds": seconds,
            "items_per_s": seen / seconds if seconds > 0 else 0.0,
        }

    def _predict(self, loader: Any, dataset: Dataset) -> tuple[Any, Any, float]:
        """Labels, predictions and mean loss of the model on ``loader`` (eval mode, eval transform)."""
        import numpy as np
        import torch

        from tlkit.runtime.amp import autocast
        from tlkit.finetuning.data import to_device

        self.model.eval()
        labels_all, preds_all = [], []
        loss_sum, n = 0.0, 0
        with torch.inference_mode():
            for batch in loader:
                self._note_skipped(batch.skipped, dataset)
                if batch.inputs is None:
                    continue
                labels = batch.labels.to(self.device)
                with autocast(self.device, self.precision):
                    logits = self.model(to_device(batch.inputs, self.device, self.channels_last))
                loss_sum += float(self.criterion(logits.float(), labels)) * int(labels.numel())
                n += int(labels.numel())
                labels_all.append(batch.labels.numpy())
                preds_all.append(logits.argmax(1).cpu().numpy())
        y = np.concatenate(labels_all) if labels_all else np.zeros(0, int)
        p = np.concatenate(preds_all) if preds_all else np.zeros(0, int)
        return y, p, loss_sum / n if n else float("nan")

    def _validate(self) -> dict[str, float]:
        import numpy as np

        if self.val_loader is None:
            return {}
        y, p, loss = self._predict(self.val_loader, self.val_set)
        recalls = [float((p[y == c] == c).mean()) for c in np.unique(y)]
        return {
            "val_loss": loss,
            "val_accuracy": float((y == p).mean()) if len(y) else float("nan"),
            "val_balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        }

    def _note_skipped(self, skipped: Sequence[tuple[int, str]], dataset: Dataset) -> None:
        from tlkit.data.base import Skipped

        for index, reason in skipped:
            rid = dataset.records[index].id
            if rid not in self.skipped:
                if self.on_error == "fail":
                    raise BadInputError(f"{rid}: {reason} (--on-error fail; use --on-error skip to skip bad items)")
                self.skipped[rid] = Skipped(rid, reason)

    def _improved(self, metrics: Mapping[str, float]) -> bool:
        if not metrics:
            return True  # no validation: the latest model is the best we know
        value, loss = metrics[self.opts.monitor], metrics["val_loss"]
        best = self.best
        if best.get("value") is None:
            return True
        if self.opts.monitor == "val_loss":
            return value < best["value"]
        return value > best["value"] or (value == best["value"] and loss < best["loss"])

    def run(self) -> FinetuneResult:
        import torch

        self.files.lock()
        try:
            self.prepare()
            self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=self.opts.label_smoothing)
            return self._run()
        finally:
            self.files.unlock()

    def _run(self) -> FinetuneResult:
        total = self.plan.total_epochs
        self.skipped: dict[str, Any] = {}
        self.global_step = 0
        self.best: dict[str, Any] = {"value": None, "loss": None, "epoch": 0}
        bad_epochs = 0
        stopped = False
        start_epoch = 0
        history: list[dict[str, Any]] = []
        resumed_from = None
        ckpt = self.files.checkpoint_meta() if self.existing is not None else None
        if ckpt is not None:
            state = self.files.load_checkpoint(self.model, self.optimizer, self.scaler)
            start_epoch = resumed_from = int(state["epoch"])
            self.global_step = int(state["global_step"])
            self.best = dict(state["best"])
            bad_epochs = int(state["bad_epochs"])
            stopped = bool(state["stopped"])
            history = list(state["history"])
            self.files.write_config({**self.existing, "status": "running"})
        else:
            self.files.write_config(self._config())
        self.files.write_metrics(history)
        self._emit("start", epochs=total, freeze=self.freeze, plan=self.plan.describe(), epoch=start_epoch)
        epoch = start_epoch
        while epoch < total and not stopped:
            phase_index = self.plan.phase_index(epoch)
            if epoch == self.plan.phases[phase_index].start or epoch == start_epoch:
                self._emit("phase", epoch=epoch + 1, phase=phase_index, trainable=self.trainable_by_phase[phase_index])
                if epoch == self.plan.phases[phase_index].start:
                    bad_epochs = 0  # a new phase gets its full patience
            row = {"epoch": epoch + 1, "phase": phase_index, "unfrozen": self.trainable_by_phase[phase_index]}
            row.update(self._train_epoch(epoch))
            row.update(self._validate())
            if self._improved(row if self.val_loader is not None else {}):
                self.best = {
                    "value": row.get(self.opts.monitor),
                    "loss": row.get("val_loss"),
                    "epoch": epoch + 1,
                }
                bad_epochs = 0
                if self.val_loader is not None:
                    self.files.save_best(self.model, {"epoch": epoch + 1, "best": self.best})
            else:
                bad_epochs += 1
            epoch += 1
            if self.opts.early_stopping and bad_epochs >= self.opts.early_stopping and epoch < total:
                stopped = True
            history.append(row)
            self.files.save_checkpoint(
                self.model,
                self.optimizer,
                self.scaler,
                {
                    "epoch": epoch,
                    "global_step": self.global_step,
                    "phase": phase_index,
                    "best": self.best,
                    "bad_epochs": bad_epochs,
                    "stopped": stopped,
                    "history": history,
                },
            )
            self.files.append_metrics(row)
            self._emit("epoch_end", epoch=epoch, epochs=total, phase=phase_index, metrics=row)
        return self._finish(history, epoch, stopped, resumed_from)

    def _finish(
        self, history: list[dict[str, Any]], epochs_run: int, stopped: bool, resumed_from: int | None
    ) -> FinetuneResult:
        from tlkit.runs.metrics import classification_report

        best_state = self.files.best_model_state() if self.val_loader is not None else None
        if best_state is not None:
            self.model.load_state_dict(best_state, strict=True)
        self.files.save_model(self.model)
        if self.val_loader is not None:
            y, p, _ = self._predict(self.val_loader, self.val_set)
            evaluated_on = "val"
        else:
            from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader

            items = ItemDataset(self.train_set, self.backbone, train=False)
            loader = make_loader(items, self.opts.batch_size, EpochSampler(len(items), 0, False), 0, self.device)
            y, p, _ = self._predict(loader, self.train_set)
            evaluated_on = "train"
        report = classification_report(y, p, self.class_names)
        skipped = list(self.skipped.values())
        result = FinetuneResult(
            run_dir=self.files.dir,
            report=report,
            evaluated_on=evaluated_on,
            monitor=self.opts.monitor if self.val_loader is not None else "last epoch",
            best_epoch=int(self.best.get("epoch") or epochs_run),
            best_value=self.best.get("value"),
            epochs_run=epochs_run,
            total_epochs=self.plan.total_epochs,
            stopped_early=stopped,
            resumed_from=resumed_from,
            plan=self.plan.describe(),
            freeze=self.freeze,
            history=history,
            skipped=skipped,
        )
        extra = {
            "evaluated_on": evaluated_on,
            "best_epoch": result.best_epoch,
            "monitor": result.monitor,
            "skipped": [s.to_dict() for s in skipped],
        }
        self.files.write_report(report, extra, history)
        config = self.files.read_config()
        config.update(
            status="complete",
            result={
                "accuracy": report.accuracy,
                "balanced_accuracy": report.balanced_accuracy,
                "macro_f1": report.macro_f1,
                "evaluated_on": evaluated_on,
                "best_epoch": result.best_epoch,
                "epochs_run": epochs_run,
                "stopped_early": stopped,
            },
        )
        self.files.write_config(config)
        self._emit("done", epoch=epochs_run, epochs=self.plan.total_epochs, message=result.summary())
        return result
