"""Shared helpers for the fine-tuning tests: small real datasets, a head run written like `tlkit train` does,
and an engine wrapper that snapshots the model at every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tlkit.finetuning import FinetuneEvent, FinetuneOptions
from tlkit.finetuning.engine import Finetuner
from tlkit.finetuning.options import FinetuneInputs
from tlkit.runtime import resolve
from tlkit.testing import make_image_folder

#: Small, fast defaults for a run on fake/image.
FAST = {"workers": 0, "batch_size": 8, "device": "cpu", "precision": "fp32"}


def image_data(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0) -> Path:
    return make_image_folder(root, classes=classes, per_class=per_class, size=(32, 32), seed=seed)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder:
    """Runs an engine and keeps the model state at the start and after every epoch, plus every event."""

    def __init__(self, backbone: str, train: Path, output: Path, **options: Any) -> None:
        api = {k: options.pop(k) for k in ("val", "weights", "input_size") if k in options}
        opts = FinetuneOptions.from_kwargs({**FAST, **options})
        runtime = resolve("finetune", opts.runtime_options(), env=False)
        self.engine = Finetuner(FinetuneInputs(backbone, train, output, **api), opts, runtime, callback=self)
        self.states: list[dict[str, torch.Tensor]] = []
        self.events: list[FinetuneEvent] = []
        self.modes: list[dict[str, bool]] = []

    def __call__(self, ev: FinetuneEvent) -> None:
        self.events.append(ev)
        model = self.engine.model
        if ev.kind == "start":
            self.states.append(snapshot(model))
        elif ev.kind == "epoch_end":
            self.states.append(snapshot(model))
        elif ev.kind == "step" and ev.step == 1:
            # mode of every BatchNorm layer while training (after the engine's model.train())
            self.modes.append(
                {n: m.training for n, m in model.backbone.named_modules() if "BatchNorm" in type(m).__name__}
            )

    def run(self) -> Any:
        return self.engine.run()


def changed_blocks(engine: Finetuner, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Blocks any of whose parameters differ (bitwise) between two snapshots."""
    out = []
    for block in engine.model.blocks:
        if any(not torch.equal(before[f"backbone.{p}"], after[f"backbone.{p}"]) for p in block.params):
            out.append(block.name)
    return out


def write_head_run(
    run_dir: Path,
    backbone_name: str,
    fingerprint: str,
    class_names: list[str],
    head: torch.nn.Module,
    in_dim: int,
    head_name: str = "linear",
    params: dict[str, Any] | None = None,
) -> Path:
    """A head run directory in the format `tlkit train` writes (config kind "head", head.safetensors)."""
    from tlkit.runs.rundir import HEAD_WEIGHTS, new_config, save_tensors, write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / HEAD_WEIGHTS, head.state_dict())
    write_json(
        run_dir / "config.json",
        new_config(
            "head",
            backbone={"name": backbone_name, "weights": "pretrained", "options": {}, "fingerprint": fingerprint},
            head={
                "name": head_name,
                "kind": "torch",
                "params": params or {},
                "in_dim": in_dim,
                "n_classes": len(class_names),
            },
            class_names=class_names,
            layer=None,
        ),
    )
    return run_dir
