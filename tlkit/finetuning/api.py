"""``tlkit.finetune(...)``: the one entry point for fine-tuning, in one process or on every rank of a torchrun job.

It builds the options, resolves the runtime once (``tlkit.runtime.resolve("finetune", ...)``, which reads the
launcher's rank and world size), and hands both to the engine: :class:`tlkit.finetuning.engine.Finetuner` in one
process, the DDP trainer of :mod:`tlkit.finetuning.distributed` when the runtime spans several processes. The CLI
and ``torchrun -m tlkit finetune`` call this same function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    ``init_head``, ``linear_probe``, ``early_stopping``, ``monitor``, ``grad_clip``, ``grad_checkpointing``,
    ``label_smoothing``, ``val_split``, ``seed``, ``device``, ``workers``. ``device``, ``precision`` and ``workers``
    default to ``auto``, resolved by the runtime policy (``docs/runtime.md``).

    The defaults (LP-FT of every block: a cross-validated linear probe on frozen features of the training split starts
    the head, then all blocks train at ``backbone_lr_ratio`` 0.1 for 10 epochs, 3 for text, with a light image
    augmentation) were chosen by measurement: ``docs/finetuning.md``.

    Under ``torchrun`` with several processes, call it on every rank with the same arguments: it trains with
    DistributedDataParallel, ``batch_size`` is the global batch (divided evenly between the ranks), ``callback`` runs
    on rank 0 only, and every rank returns the same result.

    ``resume=True`` continues the run in ``output`` from its last checkpoint; it refuses different arguments.
    Returns a :class:`FinetuneResult`.
    """
    from tlkit.runtime import resolve

    opts = FinetuneOptions.from_kwargs(options)
    inputs = FinetuneInputs(
        backbone, train, Path(output), val=val, weights=weights, input_size=input_size,
        backbone_options=dict(backbone_options or {}), reader=reader, reader_options=dict(reader_options or {}),
        on_error=on_error, resume=resume,
    )  # fmt: skip
    runtime = resolve("finetune", opts.runtime_options())
    if runtime.distributed:
        from tlkit.finetuning.distributed import finetune_ddp

        return finetune_ddp(inputs, opts, runtime, callback)
    from tlkit.finetuning.engine import Finetuner

    return Finetuner(inputs, opts, runtime, callback).run()


__all__ = ["finetune"]
