"""``tlkit export RUN_DIR --format onnx|torchscript``: a fine-tuned model as a standalone file, checked.

The exported graph maps the backbone's preprocessed inputs (an image tensor, or ``input_ids``/``attention_mask``
and the like, in the order ``collate`` gives them) to class logits. Preprocessing stays outside the graph; a JSON
sidecar next to the file records it, with the class names and the input names. Before it is published, the
exported model runs on an example batch and its logits are compared with the original model's.

``model.onnx`` holds its weights, so the file alone is the model. Weights over :data:`EMBED_LIMIT` (protobuf, which
stores an ONNX model, stops at 2 GiB) go to ``model.onnx.data`` beside it, which must travel with it.

Writing is all or nothing: everything is written and checked in a private folder beside the output
(``.model.onnx.XXXX.tmp/``), then moved into place, the model file last; a failure leaves the folder as it was.
"""

from __future__ import annotations

import os
import shutil
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
#: Weights up to this many bytes are stored inside the ``.onnx`` file; above it, in ``NAME.onnx.data`` beside it.
#: torch's own threshold, well under protobuf's 2 GiB limit on one serialised model.
EMBED_LIMIT = 1536 << 20


@dataclass
class ExportResult:
    """Where the model went and how well the exported copy matches the original."""

    path: Path
    format: str
    inputs: list[str]
    max_abs_diff: float
    checked_with: str
    sidecar: Path
    #: ``NAME.onnx.data``, the weights of a model too large to hold them itself; it travels with :attr:`path`.
    data: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["sidecar"] = str(self.path), str(self.sidecar)
        d["data"] = str(self.data) if self.data else None
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


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _failed(format: str, exc: BaseException) -> TlkitError:
    first = (str(exc).splitlines() or [""])[0]
    return TlkitError(f"{format} export failed ({type(exc).__name__}: {first}); nothing was written")


def _export_onnx(module: nn.Module, args: tuple[Any, ...], names: list[str], path: Path, image: bool) -> None:
    """Write ``path``: one self-contained file, or, above :data:`EMBED_LIMIT`, with ``NAME.data`` beside it."""
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
                program = torch.onnx.export(
                    module,
                    args,
                    None,  # saved below, where tlkit decides where the weights go
                    dynamo=True,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_shapes=shapes,
                    verbose=False,
                )
            break
        except Exception as exc:  # a model that specialises on its sequence length: retry with a dynamic batch only
            last = exc
    else:
        raise _failed("ONNX", last or RuntimeError("no attempt"))
    if program is None:  # pragma: no cover - dynamo=True always returns the program
        raise TlkitError("ONNX export failed: the exporter returned no program; nothing was written")
    try:
        program.save(str(path), external_data=_weight_bytes(module) > EMBED_LIMIT)
    except Exception as exc:  # noqa: BLE001 - the exporter's errors are many; the message keeps its first line
        raise _failed("ONNX", exc) from exc


def _export_torchscript(module: nn.Module, args: tuple[Any, ...], path: Path) -> None:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, args, check_trace=False)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(path))
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; the message keeps the first line
        raise _failed("TorchScript", exc) from exc


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

    ``output`` defaults to ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.torchscript.pt``. An ONNX model holds its
    weights, except above :data:`EMBED_LIMIT`, where they go to ``OUTPUT.data`` beside it. Nothing is published
    unless the export succeeds and, with ``check``, reproduces the original's logits to :data:`TOLERANCE`;
    otherwise :class:`tlkit.errors.TlkitError` is raised and the output's folder is left as it was.
    """
    import torch

    from tlkit.fileio import output_file, staging_folder, writer_lock
    from tlkit.finetuning.model import TransferModel

    if format not in FORMATS:
        raise ConfigError(f"{{param}} must be one of {', '.join(FORMATS)}, not {format!r}", param="format")
    run_dir = Path(run_dir)
    default = f"model{SUFFIX[format]}"
    path = output_file(Path(output) if output else run_dir / default, default, ConfigError)
    model = TransferModel.from_run(run_dir, device="cpu")
    batch = example_batch(model)
    keys, args = _flatten(batch)
    names = keys or ["input"]
    module = _wrapper(model, keys)
    with torch.inference_mode():
        expected = model(batch).float()
    # a run with adapters exports one plain network: the adapters merged into the weights (peft merge_and_unload);
    # the check compares the merged export with the unmerged model's logits
    model.merge_adapters()
    spec = model.backbone_wrapper.spec
    sidecar = {
        "format": format,
        "inputs": names,
        "output": "logits",
        "class_names": model.class_names,
        "backbone": spec.name,
        "modality": spec.modality,
        "preprocess": spec.preprocess,
        "run_dir": str(run_dir),
    }
    with writer_lock(path.with_name(path.name + ".lock"), path, noun="export", error=ConfigError):
        with staging_folder(path) as stage:
            staged = stage / path.name
            if format == "onnx":
                _export_onnx(module, args, names, staged, spec.modality == "image")
            else:
                _export_torchscript(module, args, staged)
            diff, checked_with = (
                _check_export(staged, format, names, args, expected) if check else (float("nan"), "not checked")
            )
            data = _install(stage, path, sidecar)
    return ExportResult(path, format, names, diff, checked_with, path.with_name(path.name + ".json"), data)


def _install(stage: Path, path: Path, sidecar: dict[str, Any]) -> Path | None:
    """Move the checked export from ``stage`` into place; the external-data file, if any.

    The old model file goes first and the new one comes last, so that a crash in between leaves no model file,
    never one beside another export's weights or sidecar. Then what an earlier export left that nothing refers to
    now goes too: a weights file the new model does not use, and hidden temporaries of interrupted exports.
    """
    from tlkit.fileio import publish
    from tlkit.runs.rundir import write_json

    write_json(stage / (path.name + ".json"), sidecar)
    companions = sorted(p for p in stage.iterdir() if p.name != path.name and not p.name.startswith("."))
    path.unlink(missing_ok=True)
    for p in companions:
        publish(p, path.with_name(p.name))
    publish(stage / path.name, path)
    data = path.with_name(path.name + ".data")
    used = any(p.name == data.name for p in companions)
    if not used:
        data.unlink(missing_ok=True)
    for old in path.parent.iterdir():  # interrupted exports' temporaries; older tlkit's hidden weights files
        if old != stage and old.name.startswith(f".{path.name}.") and ".tmp" in old.name:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return data if used else None
