"""Processes that read data beside the one that runs the model (DataLoader workers, listing processes): how they
start.

A process forked from ``tlkit extract`` inherits every object its parent holds (torch, the model, tlkit, the
listing: about 190,000 objects). Python's garbage collector walks all of them at each full collection, in every
such process: time spent on objects the process never frees, and a write to each one's header, which copies the
memory pages it shares with its parent. :func:`freeze_inherited` moves them out of the collector's sight
(:func:`gc.freeze`, as CPython's documentation advises for processes that fork without exec); the objects the
process makes itself are collected as usual. With the ``spawn`` start method the process's own imports are frozen
instead, which is harmless. ``benchmarks/worker_gc.py`` measures it (docs/benchmarks.md, issue 18).
"""

from __future__ import annotations

import gc


def freeze_inherited(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn`` and a process pool's ``initializer``: the objects this process inherited are
    left out of its garbage collections (see the module's docstring)."""
    del worker_id
    gc.freeze()


__all__ = ["freeze_inherited"]
