"""Fine-tuning with DistributedDataParallel: the distributed mode of :func:`tlkit.finetune`.

``torchrun --nproc-per-node N -m tlkit finetune …`` re-enters the same command on every rank; :func:`tlkit.finetune`
resolves a runtime with ``world_size = N`` (``cuda:LOCAL_RANK`` on a GPU node, the node's cores shared between its
ranks' workers) and runs :class:`DistributedFinetuner`: the single-process engine
(:class:`tlkit.finetuning.engine.Finetuner`) with only what is distributed changed:

- **Batch size.** ``batch_size`` stays the *global* batch: each rank loads ``batch_size / world_size`` items per
  step (it must divide evenly), DDP averages the gradients, so one optimizer step sees the same number of items
  and the same learning rate applies as in a single-process run. ``accumulate`` multiplies both alike.
- **Data.** ``torch.utils.data.DistributedSampler`` (seeded by ``seed``, ``set_epoch`` every epoch) gives each rank
  a disjoint share of the training set. Augmentation and dropout draw from a per-rank seed derived from
  ``(seed, epoch, rank)``, so a resumed run repeats exactly what the uninterrupted one drew. Validation is split
  across ranks too, and the predictions are gathered, so every rank computes the same metrics.
- **Frozen parameters across phases.** DDP registers only the parameters that have ``requires_grad`` when it is
  built, and silently never synchronises one unfrozen later (each rank would drift apart). So the model is wrapped
  anew whenever a phase changes the set of trainable parameters, and only then; the optimizer is untouched, as all
  its parameter groups exist from the start. Within a phase the graph is fixed, so ``static_graph=True``: trainable
  parameters that the forward pass never reaches (a pooler, say) are found once instead of with
  ``find_unused_parameters``' graph walk at every step, and no "Expected to have finished reduction" error is raised
  (the bug class of mmdetection issue 9899).
- **Agreement.** After every epoch rank 0's buffers (BatchNorm statistics) are broadcast and a checksum of every
  parameter is compared across ranks; a mismatch stops the run instead of saving a model only rank 0 had.
- **Files.** Rank 0 writes the config, metrics, checkpoints, model and report; the other ranks wait at a barrier
  after each write, so every rank reads the same checkpoint on resume. Metrics are reduced across ranks.
- **Backend.** NCCL when the ranks train on CUDA devices (one GPU per rank, ``cuda:LOCAL_RANK``), gloo otherwise.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError, TlkitError
from tlkit.finetuning.engine import Finetuner
from tlkit.finetuning.run_files import RunFiles
from tlkit.runtime import distributed as D

if TYPE_CHECKING:
    import numpy as np
    from torch.utils.data import DataLoader

    from tlkit.data.base import Dataset
    from tlkit.finetuning.data import LoaderBatch, Sample
    from tlkit.finetuning.options import FinetuneInputs, FinetuneOptions
    from tlkit.finetuning.result import Callback, FinetuneResult
    from tlkit.runtime import Runtime


def finetune_ddp(
    inputs: FinetuneInputs, opts: FinetuneOptions, runtime: Runtime, callback: Callback | None = None
) -> FinetuneResult:
    """Run :class:`DistributedFinetuner` on this rank inside the launcher's process group (NCCL for CUDA devices,
    gloo otherwise). :func:`tlkit.finetune` calls it when ``runtime.world_size > 1``."""
    trainer = DistributedFinetuner(inputs, opts, runtime, callback if runtime.is_main else None)
    with D.process_group(D.backend_for(runtime.device), D.timeout_seconds(D.TRAIN_TIMEOUT_S)):
        return trainer.run()


class DistRunFiles(RunFiles):
    """Rank 0 writes; every rank then meets at a barrier, so no rank reads a file before it is written."""

    def write_config(self, config: Mapping[str, Any]) -> None:
        super().write_config(config)
        D.barrier()

    def save_checkpoint(
        self, model: Any, optimizer: Any, scaler: Any, state: dict[str, Any], average: Any = None
    ) -> None:
        super().save_checkpoint(model, optimizer, scaler, state, average)
        D.barrier()

    def save_best(self, model: Any, state: dict[str, Any]) -> None:
        super().save_best(model, state)
        D.barrier()

    def save_model(self, model: Any) -> None:
        super().save_model(model)
        D.barrier()

    def write_report(self, report: Any, extra: Mapping[str, Any], history: Any) -> None:
        super().write_report(report, extra, history)
        D.barrier()


class RankSlice:
    """Items ``rank, rank + world, …``: a disjoint share per rank without the padding ``DistributedSampler`` adds
    (evaluation must count every item exactly once)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class NonEmptyBatches:
    """Every rank must run the same number of forward/backward passes, or the others wait forever in DDP's
    all-reduce. A batch whose items were all unreadable is therefore replaced by the rank's previous good batch
    (or the next one, at the start of an epoch); its skip reasons are kept. ``items`` counts what was trained on."""

    def __init__(self, loader: DataLoader[Sample]) -> None:
        self.loader = loader
        self.items = 0

    @property
    def generator(self) -> Any:
        return self.loader.generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[LoaderBatch]:
        self.items = 0
        last: LoaderBatch | None = None
        waiting: list[LoaderBatch] = []
        for batch in self.loader:
            if batch.inputs is None:
                if last is None:
                    waiting.append(batch)
                    continue
                batch = dataclasses.replace(last, skipped=batch.skipped)
            else:
                for empty in waiting:
                    stand_in = dataclasses.replace(batch, skipped=empty.skipped)
                    self.items += len(stand_in)
                    yield stand_in
                waiting = []
                last = batch
            self.items += len(batch)
            yield batch
        if waiting:
            first = waiting[0].skipped[0] if waiting[0].skipped else ("?", "unreadable")
            raise BadInputError(
                f"every item one rank drew this epoch was unreadable (first: item {first[0]}: {first[1]}); remove the "
                f"bad items ({{param}} fail names them)",
                param="on_error",
            )


class DistributedFinetuner(Finetuner):
    """:class:`Finetuner` for one rank of a DDP job (see the module doc). Use :func:`tlkit.finetune` under torchrun."""

    def __init__(
        self, inputs: FinetuneInputs, opts: FinetuneOptions, runtime: Runtime, callback: Callback | None = None
    ) -> None:
        if opts.batch_size % runtime.world_size:
            n = runtime.world_size
            raise ConfigError(
                f"{{param}} {opts.batch_size} is the global batch and must divide evenly between the {n} processes; "
                f"use a multiple of {n}",
                param="batch_size",
            )
        super().__init__(inputs, opts, runtime, callback)
        self._wrapped_for: tuple[str, ...] | None = None

    def _run_files(self, output: str | os.PathLike[str]) -> RunFiles:
        return DistRunFiles(output, is_main=self.runtime.is_main)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def _prepare_run(self) -> None:
        _together(self.prepare)
        D.barrier()  # every rank has read the run directory before rank 0 writes into it

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["distributed"] = {
            "world_size": self.runtime.world_size,
            "backend": D.backend_for(self.device),
            "global_batch": self.opts.batch_size,
            "per_rank_batch": self.opts.batch_size // self.runtime.world_size,
        }
        return config

    # -- data ----------------------------------------------------------------------------------------------------
    def _build_loaders(self) -> None:
        from torch.utils.data import DistributedSampler

        from tlkit.finetuning.data import make_loader

        super()._build_loaders()
        opts, rt = self.opts, self.runtime
        per_rank = opts.batch_size // rt.world_size
        self.sampler = DistributedSampler(
            self.train_items, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=opts.seed
        )
        drop_last = opts.bn_policy == "train" and len(self.sampler) > per_rank
        self.train_loader = NonEmptyBatches(
            make_loader(self.train_items, per_rank, self.sampler, rt, opts.seed, drop_last)
        )
        if self.val_loader is not None:
            items = self.val_loader.dataset
            self.val_loader = make_loader(items, per_rank, RankSlice(len(items), rt.rank, rt.world_size), rt)

    def _seed_epoch(self, epoch: int) -> None:
        import numpy as np
        import torch

        super()._seed_epoch(epoch)  # the sampler's epoch, and rank 0's seeds equal a single-process run's
        s = (self._epoch_seed(epoch) + 104_729 * self.runtime.rank) % (2**31)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        self.train_loader.generator.manual_seed(s)

    # -- training ------------------------------------------------------------------------------------------------
    def _wrap(self) -> None:
        """(Re)build the DDP wrapper when the set of trainable parameters changed (a new phase)."""
        from torch.nn.parallel import DistributedDataParallel

        names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if names == self._wrapped_for:
            return
        if self.forward_module is not self.model:
            self.forward_module = self.model
            gc.collect()  # the old wrapper's reducer hooks go with it before the new one registers its own
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else self.runtime.local_rank]
        self.forward_module = DistributedDataParallel(self.model, device_ids=device_ids, static_graph=True)
        self._wrapped_for = names

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.set_trainable(self.trainable_by_phase[self.plan.phase_index(epoch)])
        self._wrap()
        row = super()._train_epoch(epoch)
        seen = self.train_loader.items
        loss, correct, n = D.all_reduce_sum(
            [row["train_loss"] * seen if seen else 0.0, row["train_accuracy"] * seen if seen else 0.0, float(seen)],
            self.device,
        )
        (seconds,) = D.all_reduce_max([row["seconds"]], self.device)
        row.update(
            train_loss=loss / n if n else float("nan"),
            train_accuracy=correct / n if n else float("nan"),
            seconds=seconds,
            items_per_s=n / seconds if seconds > 0 else 0.0,
        )
        self._sync_buffers()
        self._check_in_sync(epoch + 1)
        return row

    def _sync_buffers(self) -> None:
        """Rank 0's buffers everywhere: BatchNorm statistics trained per rank (``bn_policy="train"``) would differ."""
        import torch.distributed as dist

        for buf in self.model.buffers():
            dist.broadcast(buf, src=0)

    def _check_in_sync(self, epoch: int) -> None:
        """Every rank must hold the same parameters (bit for bit: DDP hands every rank the same gradients)."""
        import torch
        import torch.distributed as dist

        names = [n for n, _ in self.model.named_parameters()]
        sums = torch.stack([D.bits_sum(p) for _, p in self.model.named_parameters()])
        high, low = sums.clone(), sums.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        if not torch.equal(high, low):
            bad = [n for n, differs in zip(names, (high != low).tolist(), strict=True) if differs]
            raise TlkitError(
                f"the DDP ranks disagree after epoch {epoch} on {len(bad)} parameter(s), e.g. {bad[0]}: their "
                f"gradients were not synchronised; this is a tlkit bug, please report it"
            )

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _predict(self, loader: Any, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, float]:
        import numpy as np

        y, p, loss = super()._predict(loader, dataset)
        if not isinstance(getattr(loader, "sampler", None), RankSlice):
            return y, p, loss  # a loader over every item (the training set, when there is no validation set)
        parts = D.all_gather_object((y, p, loss, len(y)))
        n = sum(part[3] for part in parts)
        total = sum(part[2] * part[3] for part in parts if part[3])
        y = np.concatenate([part[0] for part in parts])
        p = np.concatenate([part[1] for part in parts])
        return y, p, total / n if n else float("nan")

    def _finish(self, history: list[dict[str, Any]], epochs_run: int, resumed_from: int | None) -> FinetuneResult:
        merged: dict[str, Any] = {}
        for part in D.all_gather_object(self.skipped):
            merged.update(part)
        self.skipped = dict(sorted(merged.items()))
        return super()._finish(history, epochs_run, resumed_from)


def _together(fn: Any) -> None:
    """Run ``fn`` on every rank; if it fails anywhere, fail everywhere (no rank waits forever at the next barrier).
    The failing rank raises its own error, the others one that names it."""
    error: BaseException | None = None
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
        error = exc
    reports = D.all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise TlkitError(f"rank {rank} failed: {msg}")


__all__ = ["DistRunFiles", "DistributedFinetuner", "NonEmptyBatches", "RankSlice", "finetune_ddp"]
