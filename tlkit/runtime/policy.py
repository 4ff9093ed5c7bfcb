"""The runtime policy table: what ``auto`` means, per stage and device type. Data, not code.

Every command and API entry point resolves its device, precision, batch size and workers from this one table (see
:func:`tlkit.runtime.resolve`). ``docs/runtime.md`` is generated from :func:`policy_markdown`, and the CLI's ``--help``
texts come from :func:`option_help`, so the table, the docs and the help cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The stages that run on a device. ``train`` fits heads on cached features (no backbone forward pass).
STAGES = ("extract", "train", "finetune", "predict")
#: Device types tlkit knows. Anything else torch accepts (``xpu``, ``hpu``) runs with the CPU's policy values.
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: Precisions a user may ask for. ``auto`` resolves through :data:`AUTO_PRECISION`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: What ``--precision auto`` becomes, by device type. Identical for every stage that runs a backbone, so a head
#: trained on features extracted in one precision is applied to features computed in the same precision.
#: ``bf16-native`` is bf16 where the CPU computes bf16 natively (AVX512-BF16 or AMX), else fp32: without native
#: support oneDNN emulates bf16 and autocast is several times slower than fp32 (docs/benchmarks.md).
#: ``bf16-or-fp16`` is bf16 on GPUs that support it, else fp16 with a gradient scaler.
AUTO_PRECISION = {"cpu": "bf16-native", "cuda": "bf16-or-fp16", "mps": "fp16"}
#: Head training on cached features computes in fp32 everywhere: the head is small and its numbers must be exact.
HEAD_PRECISION = "fp32"


@dataclass(frozen=True)
class StagePolicy:
    """What ``auto`` becomes for one stage on one device type.

    ``batch_size``: the starting batch for ``--batch-size auto`` (``None``: the stage has no automatic batch; its
    batch is a training hyperparameter). ``backoff``: whether ``auto`` halves the batch on out-of-memory.
    ``workers_cap``: the most DataLoader workers ``--workers auto`` starts (one core always stays with the main
    process, and under torchrun a node's cores are shared between its ranks).
    """

    batch_size: int | None
    backoff: bool
    workers_cap: int


#: The table, keyed by (stage, device type).
POLICY: dict[tuple[str, str], StagePolicy] = {
    # Extraction: decoding is the bottleneck on a GPU (use the cores); on a CPU the forward pass needs them too.
    ("extract", "cpu"): StagePolicy(batch_size=32, backoff=True, workers_cap=4),
    ("extract", "cuda"): StagePolicy(batch_size=256, backoff=True, workers_cap=32),
    ("extract", "mps"): StagePolicy(batch_size=64, backoff=True, workers_cap=8),
    # Heads on cached features read from memory or HDF5 in the main process.
    ("train", "cpu"): StagePolicy(batch_size=None, backoff=False, workers_cap=0),
    ("train", "cuda"): StagePolicy(batch_size=None, backoff=False, workers_cap=0),
    ("train", "mps"): StagePolicy(batch_size=None, backoff=False, workers_cap=0),
    # Fine-tuning: --batch-size is the (global) training batch, a hyperparameter; workers decode and augment.
    ("finetune", "cpu"): StagePolicy(batch_size=None, backoff=False, workers_cap=8),
    ("finetune", "cuda"): StagePolicy(batch_size=None, backoff=False, workers_cap=8),
    ("finetune", "mps"): StagePolicy(batch_size=None, backoff=False, workers_cap=8),
    # Predict and evaluate on raw items: a forward pass like extraction, without a cache to resume.
    ("predict", "cpu"): StagePolicy(batch_size=32, backoff=True, workers_cap=4),
    ("predict", "cuda"): StagePolicy(batch_size=256, backoff=True, workers_cap=32),
    ("predict", "mps"): StagePolicy(batch_size=64, backoff=True, workers_cap=8),
}


def stage_policy(stage: str, device_type: str) -> StagePolicy:
    """The row for ``stage`` on ``device_type`` (unknown device types use the CPU row)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    return POLICY[(stage, device_type if device_type in DEVICE_TYPES else "cpu")]


_AUTO_PRECISION_TEXT = {
    "bf16-native": "bf16 with native bf16 (AVX512-BF16/AMX), else fp32",
    "bf16-or-fp16": "bf16 if supported, else fp16",
    "fp16": "fp16",
}


def option_help(option: str, stage: str) -> str:
    """``--help`` text for a runtime option of ``stage``, written from the table."""
    if option == "device":
        return "auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps."
    if option == "precision":
        rules = "; ".join(f"{d}: {_AUTO_PRECISION_TEXT[AUTO_PRECISION[d]]}" for d in DEVICE_TYPES)
        return f"auto, fp32, bf16 or fp16. auto is {rules}."
    if option == "batch_size":
        rows = [(d, stage_policy(stage, d)) for d in DEVICE_TYPES]
        starts = ", ".join(f"{d} {p.batch_size}" for d, p in rows if p.batch_size)
        return f"auto or N. auto starts at {starts} and halves on out-of-memory."
    if option == "workers":
        caps = ", ".join(f"{d} {stage_policy(stage, d).workers_cap}" for d in DEVICE_TYPES)
        return f"DataLoader worker processes: auto or N. auto is the cores less one, at most {caps}."
    raise ValueError(f"unknown runtime option {option!r}")


def policy_markdown() -> str:
    """The policy table as Markdown (``docs/runtime.md`` embeds it; a test keeps the page current)."""
    lines = [
        "| stage | device | precision `auto` | batch `auto` | out-of-memory back-off | workers `auto` (at most) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage in STAGES:
        for device in DEVICE_TYPES:
            p = POLICY[(stage, device)]
            prec = HEAD_PRECISION if stage == "train" else _AUTO_PRECISION_TEXT[AUTO_PRECISION[device]]
            batch = str(p.batch_size) if p.batch_size else "— (a hyperparameter)"
            lines.append(
                f"| {stage} | {device} | {prec} | {batch} | {'yes' if p.backoff else 'no'} | {p.workers_cap} |"
            )
    return "\n".join(lines) + "\n"
