"""``--workers auto`` by measurement: the rule (:func:`tlkit.runtime.resolution.measured_workers`) and the loader
that times its first batches and then starts that many worker processes, as far ahead as the batches' size allows
(:func:`tlkit.runtime.workers.prefetch_depth`)."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from tlkit.runtime import RuntimeOptions, resolve
from tlkit.runtime.resolution import IDLE_MAIN_SHARE, MIN_WORKER_SHARE, Runtime, measured_workers
from tlkit.runtime.workers import DEFAULT_PREFETCH, MAX_PREFETCH, PREFETCH_BYTES, prefetch_depth


def runtime(workers: int, auto: bool = True, device: str = "cpu") -> Runtime:
    rt = resolve("extract", RuntimeOptions.of("cpu", "fp32", 8, workers), env=None)
    return replace(rt, auto_workers=auto, device_name=device)


def test_auto_is_a_cap_and_an_explicit_count_is_kept() -> None:
    assert resolve("extract", RuntimeOptions.of("cpu", "fp32", 8, "auto"), env=None).auto_workers
    explicit = resolve("extract", RuntimeOptions.of("cpu", "fp32", 8, 3), env=None)
    assert not explicit.auto_workers and measured_workers(explicit, 10.0, 1.0) == 3


@pytest.mark.parametrize(
    ("prepare", "step", "device", "cap", "want"),
    [
        (0.01, 1.0, "cpu", 4, 0),  # preparing is 1% of a step: no worker process
        (MIN_WORKER_SHARE * 1.0 + 0.01, 1.0, "cpu", 4, 1),
        (0.5, 1.0, "cpu", 4, 1),  # one worker prepares a batch per step
        (2.5, 1.0, "cpu", 4, 3),
        (9.0, 1.0, "cpu", 4, 4),  # never more than the cap
        (2.5, 1.0, "cuda", 8, 4),  # on an accelerator one more, for uneven items
        (0.5, 1.0, "cuda", 0, 0),  # a cap of 0 (one core) stays 0
    ],
)
def test_the_rule(prepare: float, step: float, device: str, cap: int, want: int) -> None:
    assert measured_workers(runtime(cap, device=device), prepare, step) == want


def test_the_main_core_gets_a_worker_only_when_the_main_process_is_nearly_idle() -> None:
    """Cores less one is the cap, unless the main process would idle: with a worker on each of 2 cores it is busy
    ``2 * step / prepare`` of the time, and at most :data:`IDLE_MAIN_SHARE` of it gives the second worker."""
    idle_step = IDLE_MAIN_SHARE * 1.0 / 2
    assert measured_workers(runtime(1), 1.0, idle_step, cores=2) == 2  # reading is the whole job: both cores read
    assert measured_workers(runtime(1), 1.0, idle_step * 1.2, cores=2) == 1  # the main process works: it keeps its core
    assert measured_workers(runtime(1, device="cuda"), 1.0, idle_step, cores=2) == 1  # only on the CPU
    assert measured_workers(runtime(4), 1.0, 0.01, cores=8) == 4  # capped by the policy (4), not by the cores: kept


def test_the_loader_times_its_first_batches_then_serves_the_rest(tmp_path: Path) -> None:
    import tlkit
    from tlkit import open_dataset
    from tlkit.data.samples import make_image_folder
    from tlkit.extraction.loader import PROBE_BATCHES, make_loader
    from tlkit.host.readers import get_reader

    ds = open_dataset(make_image_folder(tmp_path / "img", classes=2, per_class=9, size=(24, 24)))
    bb = tlkit.get_backbone("fake/image")
    loader = make_loader(ds.records, get_reader(ds), bb, runtime(1), batch=3, window=6)
    seen = [p for b in loader for p in b.positions]
    assert sorted(seen) == list(range(len(ds.records)))
    assert len(loader.timings) == PROBE_BATCHES - 1  # the first batch warms up
    prepare, step = (statistics.median(v) for v in zip(*loader.timings, strict=True))
    assert loader.workers == measured_workers(runtime(1), prepare, step)
    for n in (5, 3 * PROBE_BATCHES):  # fewer batches than the probe, and exactly as many
        few = make_loader(ds.records[:n], get_reader(ds), bb, runtime(1), batch=3, window=6)
        assert sum(len(b.positions) for b in few) == n and few.workers == 0  # all prepared here: no worker started


@pytest.mark.parametrize(
    ("workers", "batch_bytes", "want"),
    [
        (2, None, DEFAULT_PREFETCH),  # size not known (no probe): torch's default
        (2, 200_000, MAX_PREFETCH),  # small batches: each worker runs further ahead
        (2, PREFETCH_BYTES // (2 * 3), 3),  # three fit, four do not
        (2, 38 << 20, DEFAULT_PREFETCH),  # a batch of 256 224x224 uint8 images: never fewer than the default
        (0, 1, DEFAULT_PREFETCH),
    ],
)
def test_prefetch_depth(workers: int, batch_bytes: int | None, want: int) -> None:
    assert prefetch_depth(workers, batch_bytes) == want


def test_workers_start_frozen_and_prefetch_as_deep_as_the_probe_batches_allow(tmp_path: Path) -> None:
    import tlkit
    from tlkit import open_dataset
    from tlkit.data.samples import make_image_folder
    from tlkit.data.workers import freeze_inherited
    from tlkit.extraction.loader import make_loader
    from tlkit.host.readers import get_reader

    ds = open_dataset(make_image_folder(tmp_path / "img", classes=2, per_class=9, size=(24, 24)))
    bb = tlkit.get_backbone("fake/image")
    loader = make_loader(ds.records, get_reader(ds), bb, runtime(1), batch=3, window=6)
    assert loader._data_loader([], 1).prefetch_factor == DEFAULT_PREFETCH  # type: ignore[attr-defined]
    assert sum(len(b.positions) for b in loader) == len(ds.records)
    assert loader.batch_bytes == 3 * 3 * 32 * 32 * 4  # the probe's batches: 3 float32 images at 32x32
    dl = loader._data_loader([], 1)
    assert dl.worker_init_fn is freeze_inherited  # type: ignore[attr-defined]
    assert dl.prefetch_factor == prefetch_depth(1, loader.batch_bytes) == MAX_PREFETCH  # type: ignore[attr-defined]
