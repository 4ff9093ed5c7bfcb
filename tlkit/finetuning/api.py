"""``tlkit.finetune(...)``: the one entry point for fine-tuning, in one process or on every rank of a torchrun job.

It builds the options, resolves the runtime once (``tlkit.runtime.resolve("finetune", ...)``, which reads the
launcher's rank and world size), and hands both to the engine: :class:`tlkit.finetuning.engine.Finetuner` in one
process, the DDP trainer of :mod:`tlkit.finetuning.distributed` when the runtime spans several processes. The CLI
and ``torchrun -m tlkit finetune`` call this same function.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.finetuning.options import FinetuneInputs, FinetuneOptions
from tlkit.finetuning.result import Callback, FinetuneResult

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.data.base import Dataset


def finetune(
    backbone: str | Backbone,
    train: str | os.PathLike[str] | Dataset,
    output: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | Dataset | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    preprocess: Mapping[str, Any] | None = None,
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
    ``input_size`` overrides an image model's input size (a side in pixels), and ``preprocess`` any preprocessing
    value, as ``tlkit.get_backbone(..., preprocess=...)`` takes them (``{"input_size": [3, 96, 96]}``): a probe
    given as ``init_head`` must come from features made with the same preprocessing. Every other keyword is a
    :class:`FinetuneOptions` field:
    ``head``, ``head_params``, ``unfreeze``, ``schedule``, ``gradual``, ``gradual_every``, ``head_epochs``, ``epochs``,
    ``lr``, ``backbone_lr_ratio``, ``backbone_lr``, ``layer_decay``, ``weight_decay``, ``optimizer``,
    ``lr_schedule``, ``warmup``, ``batch_size``, ``accumulate``, ``precision``, ``augment``, ``bn_policy``,
    ``init_head``, ``linear_probe``, ``probe_loss_floor``, ``ema``, ``early_stopping``, ``monitor``, ``grad_clip``,
    ``grad_checkpointing``, ``label_smoothing``, ``mixup``, ``cutmix``, ``val_split``, ``seed``, ``device``,
    ``workers``. ``device``, ``precision`` and ``workers`` default to ``auto``, resolved by the runtime policy
    (``docs/runtime.md``).

    The defaults (LP-FT of every block: a cross-validated linear probe on frozen features of the training split starts
    the head, then all blocks train at ``backbone_lr_ratio`` 0.1 for 10 epochs, 3 for text, with a light image
    augmentation) were chosen by measurement: ``docs/finetuning.md``.

    Under ``torchrun`` with several processes, call it on every rank with the same arguments: it trains with
    DistributedDataParallel, ``batch_size`` is the global batch (divided evenly between the ranks), ``callback`` runs
    on rank 0 only, and every rank returns the same result.

    ``resume=True`` continues the run in ``output`` from its last checkpoint; it refuses different arguments.
    Returns a :class:`FinetuneResult`.
    """
    from tlkit.finetuning.prepare import resolve_backbone
    from tlkit.runtime import resolve

    check_option_names(finetune, options)
    opts = FinetuneOptions.from_kwargs(options)
    inputs = FinetuneInputs(
        backbone, train, Path(output), val=val, weights=weights, input_size=input_size,
        backbone_options=with_preprocess_option(backbone_options, preprocess, input_size), reader=reader,
        reader_options=dict(reader_options or {}), on_error=on_error, resume=resume,
    )  # fmt: skip
    # Weights that cannot be had (no network and nothing cached, a missing path) fail in one line now, as in tlkit
    # extract: before the engine imports the model library or reads any data.
    named = resolve_backbone(inputs.backbone, inputs.weights, inputs.input_size, inputs.backbone_options)
    named.check_weights_available()
    runtime = resolve("finetune", opts.runtime_options())
    if runtime.distributed:
        from tlkit.finetuning.distributed import finetune_ddp

        return finetune_ddp(inputs, opts, runtime, callback)
    from tlkit.finetuning.engine import Finetuner

    return Finetuner(inputs, opts, runtime, callback).run()


def check_option_names(function: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse keywords that neither ``function`` (its own keyword parameters) nor :class:`FinetuneOptions` takes; the
    message lists every name it does take, from those two places, so the list cannot leave one out."""
    own = [
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    ]
    known = sorted({*own, *(f.name for f in fields(FinetuneOptions))})
    unknown = sorted(set(options) - set(known))
    if unknown:
        message = f"unknown {function.__name__} option(s) {', '.join(unknown)}"
        close = difflib.get_close_matches(unknown[0], known, n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
        raise ConfigError(f"{message}; known: {', '.join(known)}")


def with_preprocess_option(
    backbone_options: Mapping[str, Any] | None, preprocess: Mapping[str, Any] | None, input_size: int | None = None
) -> dict[str, Any]:
    """``backbone_options`` with ``preprocess`` merged into its ``preprocess`` overrides; ``input_size`` may not be
    given twice."""
    out = dict(backbone_options or {})
    if input_size is not None and "input_size" in {**dict(out.get("preprocess") or {}), **dict(preprocess or {})}:
        raise ConfigError(
            "give {input_size} or an input_size in {preprocess}, not both", params=("input_size", "preprocess")
        )
    if preprocess:
        out["preprocess"] = {**dict(out.get("preprocess") or {}), **dict(preprocess)}
    return out


__all__ = ["check_option_names", "finetune", "with_preprocess_option"]
