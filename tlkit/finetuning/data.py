"""Data for fine-tuning: raw items → preprocessed batches, with augmentation for training and bad items skipped.

Training batches use ``backbone.preprocess_item(item, train=True)`` (the backbone's augmentation; audio clips are
first cropped, scaled and mixed with noise by :mod:`tlkit.finetuning.audio_augment`); evaluation always uses
``train=False``.
Decoding and preprocessing run in DataLoader workers; a bad item is dropped from its batch and reported back, so a
run ends with a skip summary instead of a crash.

Shuffling goes through a sampler with ``set_epoch(epoch)``: a seeded permutation per epoch, so a resumed run draws
the same batches as an uninterrupted one. ``torch.utils.data.DistributedSampler`` has the same interface and
replaces it under DDP. Loaders take their workers and memory pinning from the resolved runtime.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from tlkit.data.base import UNLABELLED, Dataset, load_or_skip
from tlkit.data.workers import freeze_inherited
from tlkit.errors import BadInputError
from tlkit.finetuning.audio_augment import augment_clip
from tlkit.host.readers import get_reader

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone
    from tlkit.runtime import Runtime


def worker_copy(backbone: Backbone) -> Backbone:
    """A shallow copy without the loaded network: what preprocessing in a worker process needs, cheap to pickle."""
    light = copy.copy(backbone)
    light._module = None
    return light


#: One item as a worker returns it: ``(index, model input or None, label, skip reason or None)``.
Sample = tuple[int, Any, int, str | None]


class ItemDataset(TorchDataset[Sample]):
    """Index → ``(index, model input or None, label, skip reason or None)``."""

    def __init__(self, dataset: Dataset, backbone: Backbone, train: bool) -> None:
        self.records = dataset.records
        self.reader = get_reader(dataset)
        self.backbone = worker_copy(backbone)
        self.train = train
        # audio augmentation acts on the raw waveform, the same for every audio backbone
        self.audio = dataset.modality == "audio"
        self.clip_seconds = backbone.spec.preprocess.get("clip_seconds") if self.audio and train else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        item, reason = load_or_skip(self.reader, record)
        if reason is None:
            try:
                if self.train and self.audio:
                    item = augment_clip(item, self.clip_seconds)
                return index, self.backbone.preprocess_item(item, train=self.train), record.label, None
            except Exception as exc:  # a decodable item the model's preprocessing cannot take
                reason = f"preprocessing failed ({type(exc).__name__}: {exc})"
        return index, None, record.label, reason


@dataclass
class LoaderBatch:
    """A collated batch: ``inputs`` (tensor or mapping), ``labels`` and dataset ``indices``; ``skipped`` holds
    ``(index, reason)`` for the items dropped from it. ``inputs`` is ``None`` when every item was bad."""

    inputs: Any
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.numel())


class Collate:
    """Drops bad items and collates the rest with the backbone's ``collate`` (padding for text and audio)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = worker_copy(backbone)

    def __call__(self, samples: Sequence[Sample]) -> LoaderBatch:
        good = [s for s in samples if s[3] is None]
        skipped = [(s[0], str(s[3])) for s in samples if s[3] is not None]
        inputs = self.backbone.collate([s[1] for s in good]) if good else None
        return LoaderBatch(
            inputs,
            torch.tensor([s[2] for s in good], dtype=torch.long),
            torch.tensor([s[0] for s in good], dtype=torch.long),
            skipped,
        )


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (``set_epoch``), like ``DistributedSampler`` with one replica."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    items: ItemDataset,
    batch_size: int,
    sampler: Sampler[int] | Iterable[int],
    runtime: Runtime,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[Sample]:
    """A DataLoader over ``items`` with the runtime's workers and memory pinning; worker seeds derive from ``seed``
    and the sampler's epoch (deterministic)."""
    return DataLoader(
        items,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=runtime.workers,
        collate_fn=Collate(items.backbone),
        pin_memory=runtime.pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
        worker_init_fn=freeze_inherited if runtime.workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


def require_labels(dataset: Dataset, what: str) -> None:
    if not dataset.records:
        raise BadInputError(f"{dataset.root}: no items to {what}")
    unlabelled = sum(r.label == UNLABELLED for r in dataset.records)
    if unlabelled:
        raise BadInputError(
            f"{dataset.root}: {unlabelled} of {len(dataset.records)} items have no label; fine-tuning needs "
            f"labelled data (one folder per class, or a label column)"
        )
