"""The fine-tuning engine: :class:`Finetuner` trains one run on one process. Use :func:`tlkit.finetune`.

One run: a backbone plus a head (:class:`tlkit.finetuning.model.TransferModel`) trained on raw items, with

- a plan of phases (:mod:`tlkit.finetuning.schedule`): head first, then blocks unfrozen from the top down;
- discriminative learning rates over parameter groups created up front (:mod:`tlkit.finetuning.optim`);
- the BatchNorm policy re-applied after every ``train()`` (:mod:`tlkit.finetuning.bn`);
- augmentation from the backbone's training transform, evaluation with its eval transform
  (:mod:`tlkit.finetuning.data`);
- the resolved runtime's device, autocast and gradient scaler; gradient accumulation and clipping, gradient
  checkpointing, early stopping on validation (:mod:`tlkit.finetuning.evaluation`); optionally an exponential moving
  average of the weights, which is then what is validated and kept (:mod:`tlkit.finetuning.ema`);
- an atomic checkpoint every epoch, so ``resume=True`` continues after a crash or ``kill -9`` and a deterministic CPU
  run ends with the same weights as an uninterrupted one (:mod:`tlkit.finetuning.state`).

Every file is written through :class:`tlkit.finetuning.run_files.RunFiles`; progress goes to an optional callback.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError
from tlkit.finetuning.ema import WeightAverage
from tlkit.finetuning.evaluation import BestEpoch, predict, validation_metrics
from tlkit.finetuning.freeze import FreezeRow, freeze_report
from tlkit.finetuning.mixing import BatchMixer, check_mixing
from tlkit.finetuning.optim import HEAD, backbone_rate, block_rates
from tlkit.finetuning.options import DEFAULT_IMAGE_AUGMENT
from tlkit.finetuning.prepare import (
    build_model,
    check_resume,
    existing_run,
    first_epochs,
    load_data,
    phase_plan,
    resolve_backbone,
)
from tlkit.finetuning.result import Callback, FinetuneEvent, FinetuneResult
from tlkit.runtime.progress import StageClock

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.data.base import Dataset
    from tlkit.finetuning.data import LoaderBatch
    from tlkit.finetuning.options import FinetuneInputs, FinetuneOptions
    from tlkit.finetuning.probe_head import StartProbe
    from tlkit.finetuning.run_files import RunFiles
    from tlkit.runtime import Runtime


class Finetuner:
    """Prepares and runs one fine-tuning run with a resolved :class:`tlkit.runtime.Runtime`.

    Seams for the DDP trainer (:mod:`tlkit.finetuning.distributed`): the whole trainable thing is ``self.model`` (one
    ``nn.Module``) and the training step calls ``self.forward_module`` (a ``DistributedDataParallel`` wrapper there);
    shuffling goes through ``self.sampler`` (anything with ``set_epoch``); every parameter group exists from the start;
    and every write goes through ``self.files`` (writes only on rank 0).
    """

    def __init__(
        self, inputs: FinetuneInputs, opts: FinetuneOptions, runtime: Runtime, callback: Callback | None = None
    ) -> None:
        opts.validate(has_val=inputs.val is not None)
        self.inputs, self.opts, self.runtime, self.callback = inputs, opts, runtime, callback
        self.device = runtime.device
        self.files = self._run_files(inputs.output)
        self.skipped: dict[str, Any] = {}
        self.global_step = 0
        #: What the run did before training (the start probe), for the ``start`` event.
        self.start_message = ""

    def _run_files(self, output: str | os.PathLike[str]) -> RunFiles:
        from tlkit.finetuning.run_files import RunFiles

        return RunFiles(output)

    # -- helpers ---------------------------------------------------------------------------------------------------
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

    # -- preparation -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the backbone and the data, check an existing run, build the model, the plan, the optimizer and the
        loaders."""
        import torch

        inputs, opts = self.inputs, self.opts
        self.backbone = resolve_backbone(inputs.backbone, inputs.weights, inputs.input_size, inputs.backbone_options)
        check_mixing(opts.mixup, opts.cutmix, self.backbone.modality)
        self.data = load_data(self.backbone, inputs, opts)
        self.class_names = self.data.class_names
        self.args = opts.to_args()
        self.existing = existing_run(self.files, inputs.resume)
        if self.existing is not None:
            check_resume(self.files.dir, self.existing, self.args, self.data.info)
        self.built = build_model(self.backbone, opts, self.class_names, self._start_probe())
        self.model = self.built.model
        self.plan, self.trainable_by_phase = phase_plan(opts, self.model.blocks, self.backbone.modality)
        self._attach_adapters()
        self._build_optimizer()
        self.average = None
        if opts.ema:  # the head and the blocks some phase unfreezes: nothing else changes
            blocks = {HEAD}.union(*self.trainable_by_phase)
            groups = [g for g in self.optimizer.param_groups if g["block"] in blocks]
            self.average = WeightAverage(self.model, opts.ema, only=[p for g in groups for p in g["params"]])
        self._build_loaders()
        self.freeze = self._freeze_report()
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        self.mixer = BatchMixer(opts.mixup, opts.cutmix, len(self.class_names))

    def _start_probe(self) -> StartProbe | None:
        """LP-FT by default: a linear probe fitted on frozen features of the training split, to start the head from
        (``None`` when the run has a head or a probe of its own, or resumes from a checkpoint that holds the head)."""
        from tlkit.finetuning.probe_head import fit_start_probe

        if not self.opts.starts_from_probe():
            return None
        if self.existing is not None and self.files.checkpoint_meta() is not None:
            return None
        clock = StageClock(lambda e: self._emit("probe", step=e.done, steps=e.total, items_per_s=e.rate), "features")
        start = fit_start_probe(
            self.backbone, self.data.train, len(self.class_names), self.runtime, self.opts.batch_size, self.opts.seed,
            callback=clock, loss_floor=self.opts.probe_loss_floor,
        )  # fmt: skip
        chosen = start.summary()
        if chosen["cv_accuracy"] is not None:
            message = (
                f"linear probe on {start.items} frozen embeddings: {chosen['cv_accuracy']:.3f} ± "
                f"{chosen['cv_accuracy_std']:.3f} cross-validated accuracy (L2 strength {chosen['lambda']:.1e}); "
                f"fine-tuning starts from it"
            )
        else:
            message = f"linear probe on {start.items} frozen embeddings (too few per class to cross-validate)"
        if start.temperature > 1:
            message += (
                f"; its logits divided by {start.temperature:.2f} to leave a training loss of {start.start_loss:.3f} "
                f"(fitted: {start.train_loss:.3f}; floor {self.opts.probe_loss_floor:g} of chance)"
            )
        self.start_message = message
        return start

    def _attach_adapters(self) -> None:
        """With ``adapter``: adapters in every block the plan trains, the base frozen (:mod:`.adapters`)."""
        from tlkit.finetuning.adapters import parse_adapter

        spec = parse_adapter(self.opts.adapter)
        if spec is None:
            return
        self.trainable_by_phase = self.model.attach_adapters(spec, self.trainable_by_phase, seed=self.opts.seed)
        adapters = self.model.adapters
        assert adapters is not None
        adapters.base = {k: self.data.info[k] for k in ("backbone", "weights", "fingerprint")}
        adapters.base["name"] = adapters.base.pop("backbone")
        recorded = (self.existing or {}).get("adapter") or {}
        if recorded and recorded.get("base_digest") != adapters.digest:
            raise BadInputError(
                f"{self.files.dir}: the base backbone's weights differ from those the run started on (digest "
                f"{adapters.digest[:12]}… ≠ {str(recorded.get('base_digest'))[:12]}…); its adapters cannot resume "
                f"on it: restore the original weights, or write a new run to another {{output}}",
                param="output",
            )

    def _build_optimizer(self) -> None:
        import torch

        from tlkit.finetuning.optim import build_param_groups, make_optimizer
        from tlkit.runtime.batching import prefers_channels_last

        opts, blocks = self.opts, self.model.blocks
        with_adapters = self.model.adapters is not None
        backbone_lr = backbone_rate(
            opts.lr, opts.backbone_lr_ratio, opts.backbone_lr, self.backbone.modality, adapters=with_adapters
        )
        self.rates = block_rates([b.name for b in blocks], backbone_lr, opts.layer_decay)
        self.model.to(self.device)
        # CNN speed: NHWC convolutions (the same rule as extraction), and cuDNN autotuning on fixed-size images
        self.channels_last = prefers_channels_last(self.model.backbone, self.backbone.modality)
        if self.channels_last:
            torch.backends.cudnn.benchmark = self.runtime.device_type == "cuda"
            self.model.to(memory_format=torch.channels_last)
        #: What the training step calls: the model itself, or a wrapper around it (DDP sets this).
        self.forward_module: torch.nn.Module = self.model
        groups = build_param_groups(
            self.model.backbone, blocks, self.model.head, self.rates, opts.lr, opts.weight_decay
        )
        self.optimizer = make_optimizer(opts.optimizer, groups)
        self.scaler = self.runtime.scaler()

    def _build_loaders(self) -> None:
        from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader

        opts, bb = self.opts, self.backbone
        augment = opts.augment
        if augment is None and bb.modality == "image" and bb.augment is None:
            augment = DEFAULT_IMAGE_AUGMENT  # fine-tuning's default: a light crop and flip (docs/finetuning.md)
        train_bb = bb if augment in (None, "default", "none") else bb.replace(augment=augment)
        self.train_items = ItemDataset(self.data.train, train_bb, train=opts.augment != "none")
        self.sampler: Any = EpochSampler(len(self.train_items), opts.seed)
        drop_last = opts.bn_policy == "train" and len(self.train_items) > opts.batch_size
        self.train_loader: Any = make_loader(
            self.train_items, opts.batch_size, self.sampler, self.runtime, opts.seed, drop_last
        )
        self.val_loader: Any = None
        if self.data.val is not None and len(self.data.val):
            val_items = ItemDataset(self.data.val, bb, train=False)
            in_order = EpochSampler(len(val_items), 0, shuffle=False)
            self.val_loader = make_loader(val_items, opts.batch_size, in_order, self.runtime)

    def _freeze_report(self) -> list[FreezeRow]:
        blocks = self.model.blocks
        since = first_epochs(self.plan, self.trainable_by_phase)
        ever_trainable = [b.name for b in blocks if b.name in since]
        policy = self.model.bn_policy
        assert policy is not None  # build_model sets it
        policy.set_trainable(ever_trainable)
        head_params = sum(p.numel() for p in self.model.head.parameters())
        modes = policy.block_modes(blocks)
        adapters = self.model.adapters
        counts = {"params": adapters.base_params, "adapter_params": adapters.adapter_params} if adapters else {}
        return freeze_report(
            self.model.backbone, blocks, ever_trainable, self.rates, modes, head_params, self.opts.lr,
            since_epoch=since, **counts,
        )  # fmt: skip

    def _config(self) -> dict[str, Any]:
        from tlkit.runs.rundir import new_config

        bb, built = self.backbone, self.built
        init = bb.init_kwargs()
        weights = init.pop("weights")
        return new_config(
            "finetune",
            backbone={
                "name": bb.name,
                "weights": weights,
                "options": init,
                "fingerprint": self.data.info["fingerprint"],
            },
            head={
                "name": built.head_name,
                "kind": "torch",
                "params": built.head_params,
                "in_dim": bb.spec.embed_dim,
                "n_classes": len(self.class_names),
            },
            class_names=self.class_names,
            layer=None,
            finetuned=True,
            data=self.data.info,
            args=self.args,
            runtime=self.runtime.to_dict(),
            plan=self.plan.to_list(),
            init_head=self._init_head_record(),
            adapter=self.model.adapters.record() if self.model.adapters is not None else None,
            status="running",
        )

    def _init_head_record(self) -> dict[str, Any] | None:
        probe, start = self.built.probe, self.built.start
        if probe is not None:
            return {"run": str(probe.run_dir), "fingerprint": probe.fingerprint}
        return start.summary() if start is not None else None

    # -- the run -----------------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        self.files.lock()
        try:
            self._prepare_run()
            return self._train()
        finally:
            self.files.unlock()

    def _prepare_run(self) -> None:
        self.prepare()

    def _train(self) -> FinetuneResult:
        total = self.plan.total_epochs
        self.best = BestEpoch(self.opts.monitor, self.opts.early_stopping)
        start_epoch, history = self._start()
        self.files.write_metrics(history)
        self._emit(
            "start", epochs=total, freeze=self.freeze, plan=self.plan.describe(), epoch=start_epoch,
            message=self.start_message,
        )  # fmt: skip
        if start_epoch == 0 and self.built.start is not None and self.val_loader is not None:
            self._validate_start()
        epoch = start_epoch
        while epoch < total and not self.best.stopped:
            self._epoch(epoch, start_epoch, history)
            epoch += 1
        return self._finish(history, epoch, start_epoch if self.resumed else None)

    def _validate_start(self) -> None:
        """Epoch 0: the model as it starts (frozen backbone, head from the start probe) is the first candidate for the
        best model on validation, so a run keeps the probe when no epoch of fine-tuning beats it."""
        if self.best.update(self._validate(), 0, self.plan.total_epochs):
            self.files.save_best(self.model, {"epoch": 0, "best": self.best.best})

    def _start(self) -> tuple[int, list[dict[str, Any]]]:
        """A fresh run writes its config; a resumed one restores its last checkpoint. Returns the first epoch to
        train (0-based) and the metrics of the epochs before it."""
        ckpt = self.files.checkpoint_meta() if self.existing is not None else None
        self.resumed = ckpt is not None
        if self.existing is None or ckpt is None:
            self.files.write_config(self._config())
            return 0, []
        state = self.files.load_checkpoint(self.model, self.optimizer, self.scaler, self.average)
        self.global_step = int(state["global_step"])
        self.best.restore(state)
        self.files.write_config({**self.existing, "status": "running", "runtime": self.runtime.to_dict()})
        return int(state["epoch"]), list(state["history"])

    def _epoch(self, epoch: int, start_epoch: int, history: list[dict[str, Any]]) -> None:
        """Train 0-based ``epoch``, validate, keep the best model, checkpoint, and append its row to ``history``."""
        phase_index = self.plan.phase_index(epoch)
        trainable = self.trainable_by_phase[phase_index]
        if epoch in (self.plan.phases[phase_index].start, start_epoch):
            self._emit("phase", epoch=epoch + 1, phase=phase_index, trainable=trainable)
            if epoch == self.plan.phases[phase_index].start:
                self.best.new_phase()
        row: dict[str, Any] = {"epoch": epoch + 1, "phase": phase_index, "unfrozen": trainable}
        row.update(self._train_epoch(epoch))
        has_val = self.val_loader is not None
        with self._averaged():  # with --ema, the average is what is validated and kept
            row.update(self._validate())
            if self.best.update(row if has_val else {}, epoch + 1, self.plan.total_epochs - epoch - 1) and has_val:
                self.files.save_best(self.model, {"epoch": epoch + 1, "best": self.best.best})
        history.append(row)
        state = {"epoch": epoch + 1, "global_step": self.global_step, "phase": phase_index, **self.best.state()}
        self.files.save_checkpoint(self.model, self.optimizer, self.scaler, {**state, "history": history}, self.average)
        self.files.append_metrics(row)
        self._emit("epoch_end", epoch=epoch + 1, epochs=self.plan.total_epochs, phase=phase_index, metrics=row)

    def _averaged(self) -> contextlib.AbstractContextManager[None]:
        """The model holds the weight average inside the block (``--ema``), or its own weights without one."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    # -- training ----------------------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        from tlkit.finetuning.optim import set_group_rates
        from tlkit.finetuning.schedule import lr_factor

        opts = self.opts
        phase_index = self.plan.phase_index(epoch)
        phase = self.plan.phases[phase_index]
        trainable = self.trainable_by_phase[phase_index]
        self.model.set_trainable(trainable)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._seed_epoch(epoch)
        self.model.train()
        n_batches = len(self.train_loader)
        steps = math.ceil(n_batches / opts.accumulate)
        first_step, phase_steps = (epoch - phase.start) * steps, phase.epochs * steps
        meter = EpochMeter(self.device)
        factor = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        self._emit("epoch_start", epoch=epoch + 1, epochs=self.plan.total_epochs, phase=phase_index, steps=n_batches)
        for i, batch in enumerate(self.train_loader):
            self._note_skipped(batch.skipped, self.data.train)
            if batch.inputs is not None:
                self._forward_backward(batch, meter)
            if (i + 1) % opts.accumulate == 0 or i + 1 == n_batches:
                factor = lr_factor(first_step + i // opts.accumulate, phase_steps, opts.lr_schedule, opts.warmup)
                set_group_rates(self.optimizer, trainable, factor)
                self._optimizer_step(params)
            if self.callback is not None:
                self._emit_step(meter, epoch, phase_index, i + 1, n_batches)
        if not meter.seen:  # every training item was skipped: an error, never a run that trained on nothing
            first = next(iter(self.skipped.values()), None)
            why = f" (first: {first.id}: {first.reason})" if first is not None else ""
            raise BadInputError(f"{self.data.train.root}: none of the training items could be used{why}")
        return meter.row(opts.lr * factor)

    def _forward_backward(self, batch: LoaderBatch, meter: EpochMeter) -> None:
        from tlkit.runtime.batching import to_device

        inputs = to_device(batch.inputs, self.device, self.channels_last)
        labels = batch.labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixer.active:  # mixup / cutmix: mixed images against mixed (soft) targets
            inputs, targets = self.mixer(inputs, labels)
        with self.runtime.autocast():
            logits = self.forward_module(inputs)
        loss = self.criterion(logits.float(), targets)
        self.scaler.scale(loss / self.opts.accumulate).backward()
        meter.add(loss, logits, labels)

    def _optimizer_step(self, params: Sequence[torch.nn.Parameter]) -> None:
        import torch

        if any(p.grad is not None for p in params):
            if self.opts.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.opts.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.average is not None:
                self.average.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def _emit_step(self, meter: EpochMeter, epoch: int, phase: int, step: int, steps: int) -> None:
        loss, accuracy = meter.running(refresh=step == steps)
        elapsed = time.perf_counter() - meter.start
        self._emit(
            "step", epoch=epoch + 1, epochs=self.plan.total_epochs, phase=phase, step=step, steps=steps,
            items=meter.seen, loss=loss, accuracy=accuracy, items_per_s=meter.seen / elapsed if elapsed > 0 else None,
        )  # fmt: skip

    def _note_skipped(self, skipped: Sequence[tuple[int, str]], dataset: Dataset) -> None:
        from tlkit.data.base import Skipped

        for index, reason in skipped:
            rid = dataset.records[index].id
            if rid not in self.skipped:
                if self.inputs.on_error == "fail":
                    raise BadInputError(
                        f"{rid}: {reason} ({{param}} is fail; make it skip to skip bad items)", param="on_error"
                    )
                self.skipped[rid] = Skipped(rid, reason)

    # -- evaluation --------------------------------------------------------------------------------------------------
    def _predict(self, loader: Any, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, float]:
        """Labels, predictions and mean loss of the model on ``loader`` (eval mode, eval transform)."""
        return predict(
            self.model,
            loader,
            self.runtime,
            self.criterion,
            channels_last=self.channels_last,
            on_skipped=lambda skipped: self._note_skipped(skipped, dataset),
        )

    def _validate(self) -> dict[str, float]:
        if self.val_loader is None or self.data.val is None:
            return {}
        return validation_metrics(*self._predict(self.val_loader, self.data.val))

    def _final_predictions(self) -> tuple[np.ndarray, np.ndarray, str]:
        """The saved model's predictions on the validation set, or on the training set (eval transform) without."""
        from tlkit.finetuning.data import EpochSampler, ItemDataset, make_loader

        if self.val_loader is not None and self.data.val is not None:
            y, p, _ = self._predict(self.val_loader, self.data.val)
            return y, p, "val"
        items = ItemDataset(self.data.train, self.backbone, train=False)
        in_order = EpochSampler(len(items), 0, shuffle=False)
        y, p, _ = self._predict(make_loader(items, self.opts.batch_size, in_order, self.runtime), self.data.train)
        return y, p, "train"

    def _finish(self, history: list[dict[str, Any]], epochs_run: int, resumed_from: int | None) -> FinetuneResult:
        from tlkit.runs.metrics import classification_report

        best_state = self.files.best_model_state() if self.val_loader is not None else None
        if best_state is not None:
            self.model.load_run_state(best_state)
        elif self.average is not None:  # no validation: the final model is the average
            self.average.load_live()
        self.files.save_model(self.model)
        y, p, evaluated_on = self._final_predictions()
        report = classification_report(y.tolist(), p.tolist(), self.class_names)
        result = FinetuneResult(
            run_dir=self.files.dir,
            report=report,
            evaluated_on=evaluated_on,
            monitor=self.opts.monitor if self.val_loader is not None else "last epoch",
            best_epoch=int(self.best.best["epoch"]) if self.best.best.get("value") is not None else epochs_run,
            best_value=self.best.best.get("value"),
            epochs_run=epochs_run,
            total_epochs=self.plan.total_epochs,
            stopped_early=self.best.stopped,
            resumed_from=resumed_from,
            plan=self.plan.describe(),
            freeze=self.freeze,
            history=history,
            skipped=list(self.skipped.values()),
        )
        self._record(result)
        self._emit("done", epoch=epochs_run, epochs=self.plan.total_epochs, message=result.summary())
        return result

    def _record(self, result: FinetuneResult) -> None:
        """``report.json`` and the plots; the config's status and result."""
        report = result.report
        extra = {
            "evaluated_on": result.evaluated_on,
            "best_epoch": result.best_epoch,
            "monitor": result.monitor,
            "skipped": [s.to_dict() for s in result.skipped],
        }
        self.files.write_report(report, extra, result.history)
        config = self.files.read_config()
        config.update(
            status="complete",
            result={
                "accuracy": report.accuracy,
                "balanced_accuracy": report.balanced_accuracy,
                "macro_f1": report.macro_f1,
                "evaluated_on": result.evaluated_on,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
            },
        )
        self.files.write_config(config)


class EpochMeter:
    """An epoch's running training loss and accuracy, summed on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.start = time.perf_counter()
        self._shown: tuple[float | None, float | None] = (None, None)
        self._read_at = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = int(labels.numel())
        self.loss_sum += loss.detach().double() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += n

    #: Seconds between reads of the running loss from an accelerator (each read waits for the device to finish);
    #: on the CPU, where a read costs nothing, it is read after every batch.
    REFRESH_SECONDS = 0.5

    def running(self, refresh: bool) -> tuple[float | None, float | None]:
        """Loss and accuracy so far, read from the device when ``refresh``, on the CPU, when never read before, or
        :data:`REFRESH_SECONDS` after the last read."""
        now = time.perf_counter()
        due = self.loss_sum.device.type == "cpu" or now - self._read_at >= self.REFRESH_SECONDS
        if self.seen and (refresh or due or self._shown[0] is None):
            self._shown = (float(self.loss_sum) / self.seen, float(self.correct) / self.seen)
            self._read_at = now
        return self._shown

    def row(self, lr: float) -> dict[str, Any]:
        seconds = time.perf_counter() - self.start
        seen = self.seen
        return {
            "train_loss": float(self.loss_sum) / seen if seen else float("nan"),
            "train_accuracy": float(self.correct) / seen if seen else float("nan"),
            "lr": lr,
            "seconds": seconds,
            "items_per_s": seen / seconds if seconds > 0 else 0.0,
        }


__all__ = ["EpochMeter", "Finetuner"]
