"""``tlkit export RUN_DIR --format onnx|torchscript``: a fine-tuned model as a standalone file, checked.

The exported graph maps the backbone's preprocessed inputs (an image tensor, or ``input_ids``/``attention_mask``
and the like, in the order ``collate`` gives them) to class logits. Preprocessing stays outside the graph; a JSON
sidecar next to the file records it, with the class names and the input names. After writing, the exported model
runs on an example batch and its logits are compared with the original model's.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError, TlkitError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit.finetuning.model import TransferModel

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: Largest |exported − original| logit difference accepted by the check (fp32).
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """Where the model went and how well the exported copy matches the original."""

    path: Path
    format: str
    inputs: list[str]
    max_abs_diff: float
    checked_with: str
    sidecar: Path

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["sidecar"] = str(self.path), str(self.sidecar)
        return d


def _wrapper(model: TransferModel, names: list[str] | None) -> nn.Module:
    """A module taking positional tensors: the batch tensor itself, or the mapping's values in ``names`` order."""
    from torch import nn

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            batch = tensors[0] if names is None else dict(zip(names, tensors, strict=True))
            logits: torch.Tensor = self.model(batch)
            return logits

    return Positional().eval()


def example_batch(model: TransferModel) -> Any:
    """A small evaluation batch for the model's modality, made with its own preprocessing."""
    bb = model.backbone_wrapper
    modality = bb.spec.modality
    if modality == "image":
        from tlkit.data.samples import sample_images

        return bb.preprocess(sample_images(2), train=False)
    if modality == "text":
        from tlkit.data.samples import sample_texts

        return bb.preprocess(sample_texts()[:2], train=False)
    if modality == "audio":
        import numpy as np

        from tlkit.data.audio import AudioClip

        rate = int(bb.spec.preprocess.get("sample_rate", 16000))
        rng = np.random.default_rng(0)
        clips = [AudioClip((0.1 * rng.standard_normal(rate)).astype("float32"), rate) for _ in range(2)]
        return bb.preprocess(clips, train=False)
    raise TlkitError(f"cannot build an example batch for modality {modality!r}")


def _flatten(batch: Any) -> tuple[list[str] | None, tuple[torch.Tensor, ...]]:
    import torch

    if isinstance(batch, torch.Tensor):
        return None, (batch,)
    if isinstance(batch, dict):
        names = list(batch)
        return names, tuple(batch[n] for n in names)
    raise TlkitError(f"cannot export a model whose batches are {type(batch).__name__}; expected a tensor or a dict")


def _export_onnx(module: nn.Module, args: tuple[Any, ...], names: list[str], path: Path, image: bool) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("length", min=1)
    variable = [{0: batch} if image or a.ndim < 2 else {0: batch, 1: seq} for a in args]
    # forward(*tensors) takes one variadic argument, so the shapes are one tuple inside the outer tuple
    attempts = [(tuple(variable),), (tuple({0: batch} for _ in args),)]
    last: Exception | None = None
    for shapes in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=True,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_shapes=shapes,
                    verbose=False,
                )
            return
        except Exception as exc:  # a model that specialises on its sequence length: retry with a dynamic batch only
            last = exc
    raise TlkitError(f"ONNX export failed: {type(last).__name__}: {str(last).splitlines()[0] if last else ''}")


def _run_onnx(path: Path, names: list[str], args: tuple[Any, ...]) -> tuple[Any, str]:
    feeds = {n: a.cpu().numpy() for n, a in zip(names, args, strict=True)}
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs: Any = session.run(None, feeds)
        return outputs[0], "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        reference: Any = ReferenceEvaluator(str(path)).run(None, feeds)
        return reference[0], "onnx.reference"


def _check_export(
    path: Path, format: str, names: list[str], args: tuple[Any, ...], expected: torch.Tensor
) -> tuple[float, str]:
    """Run the exported file on the example inputs; the largest logit difference from ``expected``, and the
    runtime that ran it. Raises :class:`TlkitError` past :data:`TOLERANCE`."""
    import torch

    if format == "onnx":
        out, checked_with = _run_onnx(path, names, args)
        got = torch.as_tensor(out)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            with torch.inference_mode():
                got = loaded(*args)
        checked_with = "torch.jit.load"
    diff = float((got.float() - expected).abs().max())
    if not diff <= TOLERANCE:
        raise TlkitError(
            f"{path}: the exported model's logits differ from the original's by {diff:.3g} (> {TOLERANCE}); "
            f"the model has operations the {format} exporter does not reproduce"
        )
    return diff, checked_with


def export_model(
    run_dir: str | os.PathLike[str],
    format: str = "onnx",
    output: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> ExportResult:
    """Export the fine-tuned model in ``run_dir`` to ONNX or TorchScript and check its outputs.

    ``output`` defaults to ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.torchscript.pt``. Raises
    :class:`tlkit.errors.TlkitError` when the exported model's logits differ from the original's by more than
    :data:`TOLERANCE`.
    """
    import torch

    from tlkit.fileio import atomic_write_with
    from tlkit.finetuning.model import TransferModel
    from tlkit.runs.rundir import write_json

    if format not in FORMATS:
        raise ConfigError(f"{{param}} must be one of {', '.join(FORMATS)}, not {format!r}", param="format")
    run_dir = Path(run_dir)
    model = TransferModel.from_run(run_dir, device="cpu")
    path = Path(output) if output else run_dir / f"model{SUFFIX[format]}"
    batch = example_batch(model)
    keys, args = _flatten(batch)
    names = keys or ["input"]
    module = _wrapper(model, keys)
    with torch.inference_mode():
        expected = model(batch).float()
    image = model.backbone_wrapper.spec.modality == "image"
    if format == "onnx":
        atomic_write_with(path, lambda tmp: _export_onnx(module, args, names, Path(tmp), image))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, args, check_trace=False)  # type: ignore[no-untyped-call]
            atomic_write_with(path, lambda tmp: torch.jit.save(traced, tmp))
    diff, checked_with = _check_export(path, format, names, args, expected) if check else (float("nan"), "not checked")
    sidecar = path.with_name(path.name + ".json")
    spec = model.backbone_wrapper.spec
    write_json(
        sidecar,
        {
            "format": format,
            "inputs": names,
            "output": "logits",
            "class_names": model.class_names,
            "backbone": spec.name,
            "modality": spec.modality,
            "preprocess": spec.preprocess,
            "run_dir": str(run_dir),
        },
    )
    return ExportResult(path, format, names, diff, checked_with, sidecar)
