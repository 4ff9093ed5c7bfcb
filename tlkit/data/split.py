"""Holding out a validation set: a stratified split of labelled items, shared by head training and fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence

from tlkit.errors import BadInputError


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int, class_names: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) with about ``fraction`` of each class in val (at least one per class)."""
    import numpy as np

    if not 0 < fraction < 1:
        raise BadInputError(f"{{param}} must be between 0 and 1 (exclusive), not {fraction}", param="val_split")
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == c)
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        if len(idx) < 2:
            raise BadInputError(
                f"class {name!r} has {len(idx)} item; {{param}} {fraction} needs at least 2 per class "
                f"(add items, or give a separate validation set)",
                param="val_split",
            )
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return sorted(train), sorted(val)


__all__ = ["stratified_split"]
