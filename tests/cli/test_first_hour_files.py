"""What a new user's first hour leaves on disk (issue 16, points 1, 3, 8 and 9), through ``tlkit`` subprocesses.

- ``tlkit export --format onnx`` writes one self-contained ``model.onnx`` that works copied alone; re-exports add
  no files; a failed export (the exporter raises, or the exported graph computes other numbers) leaves the folder
  exactly as it was.
- A finished command leaves no lock files, and its files have the permissions of any new file (the umask).
- A command that fails before writing anything leaves nothing: no ``OUT.h5.work``, no lock, no folder it created,
  so the corrected command runs without ``--overwrite``.
- A folder where a file is expected (and the reverse) is one line naming the problem and the fix.

The backbone is ``fake/image`` from a plugin installed as ``pip install`` would (a ``*.dist-info`` in a site
directory on ``PYTHONPATH``), so that an export can be made to fail the way a model that cannot be exported does.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

PLUGIN = '''
import os

import torch

from tlkit.plugin import hookimpl
from tlkit.testing import FakeImageBackbone


class ExportTrap(FakeImageBackbone):
    """fake/image, except while torch exports or traces it, as ``TRAP`` says: ``raise`` (the exporter fails) or
    ``shift`` (the exported graph computes other numbers than the model, so the export's check fails)."""

    def embed(self, batch):
        out = super().embed(batch)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            trap = os.environ.get("TRAP", "")
            if trap == "raise":
                raise RuntimeError("this backbone cannot be exported")
            if trap == "shift":
                out = out + 1.0
        return out


@hookimpl
def tlkit_register_backbones(register):
    register("trap/image", ExportTrap)
'''

FAST = ["--workers", "0", "--batch-size", "8", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "tlkit_trap").mkdir()
    (site / "tlkit_trap" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "tlkit_trap-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tlkit-trap\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tlkit]\ntrap = tlkit_trap\n")
    return site


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), classes=2, per_class=6, size=(32, 32))


def tlkit(site: Path, *args: object, trap: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m tlkit ARGS`` with the plugin installed, under umask 022 (so modes can be compared)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.update({"TRAP": trap, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    for var in ("TLKIT_PLUGINS", "TLKIT_DEBUG"):
        env.pop(var, None)
    out = subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=600, umask=0o022,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def listing(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``folder``, hidden ones included: ``{relative path: (mode, size, head)}``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        head = p.read_bytes()[:64] + p.read_bytes()[-64:] if p.is_file() else b""
        out[str(p.relative_to(folder))] = (stat.S_IMODE(st.st_mode), st.st_size if p.is_file() else 0, head)
    return out


def modes(folder: Path) -> dict[str, int]:
    return {k: v[0] for k, v in listing(folder).items() if (folder / k).is_file()}


@pytest.fixture(scope="module")
def run(site: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned run of the trap backbone (which behaves as fake/image unless ``TRAP`` is set)."""
    out = tmp_path_factory.mktemp("ft") / "run"
    tlkit(site, "finetune", "trap/image", images, "-o", out, "--epochs", "1", "--val-split", "0.25", *FAST)
    return out


# -- point 1: a portable ONNX export, written all or nothing -------------------------------------------------------
def original_logits(site: Path, run: Path, items: list[object]) -> tuple[torch.Tensor, np.ndarray]:
    """The run's preprocessed batch of ``items`` and its own logits on it (the plugin registered in this process
    for the rebuild)."""
    import importlib.util

    import tlkit
    from tlkit.finetuning.model import TransferModel

    spec = importlib.util.spec_from_file_location("tlkit_trap_here", site / "tlkit_trap" / "__init__.py")
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    tlkit.register_plugin(plugin, name="trap")
    try:
        model = TransferModel.from_run(run)
        batch = model.preprocess(items)
        with torch.inference_mode():
            return batch, model(batch).numpy()
    finally:
        tlkit.unregister_plugin("trap")


def test_onnx_export_is_one_file_that_works_copied_alone_and_reexports_add_nothing(
    site: Path, run: Path, tmp_path: Path, fresh_plugins: object
) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from tlkit.testing import sample_images

    before = set(listing(run))
    legacy = run / ".model.onnx.0123abcd.tmp.data"  # the hidden weights file older tlkit left beside model.onnx
    legacy.write_bytes(b"\0" * 1024)
    out = tlkit(site, "export", run, "--format", "onnx")
    assert "weights too large" not in out.stdout
    added = set(listing(run)) - before
    assert added == {"model.onnx", "model.onnx.json"}, added  # no lock, no temporary, no external data
    assert modes(run)["model.onnx"] == 0o644
    first = listing(run)
    tlkit(site, "export", run, "--format", "onnx")  # again: the same files, nothing added
    assert set(listing(run)) == set(first)

    alone = tmp_path / "deploy"
    alone.mkdir()
    shutil.copy(run / "model.onnx", alone / "model.onnx")
    proto = onnx.load(str(alone / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    batch, want = original_logits(site, run, sample_images(5, size=(41, 29), seed=11))  # not the export's batch size
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(alone / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": batch.numpy()})[0]
    except ImportError:
        got = ReferenceEvaluator(proto).run(None, {"input": batch.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_failed_export_leaves_the_folder_exactly_as_it_was(site: Path, run: Path, tmp_path: Path) -> None:
    tlkit(site, "export", run, "--format", "onnx")  # a good export that a failed one must not touch
    before = listing(run)
    err = one_line_error(tlkit(site, "export", run, "--format", "onnx", trap="raise", check=False))
    assert "ONNX export failed" in err and "nothing was written" in err
    assert listing(run) == before
    err = one_line_error(tlkit(site, "export", run, "--format", "torchscript", trap="raise", check=False))
    assert "TorchScript export failed" in err and "cannot be exported" in err
    assert listing(run) == before
    err = one_line_error(tlkit(site, "export", run, "--format", "onnx", trap="shift", check=False))
    assert "logits differ from the original's" in err  # checked before anything is published
    assert listing(run) == before
    new = tmp_path / "exports" / "m.onnx"  # a folder the failed export had to create goes too
    one_line_error(tlkit(site, "export", run, "-o", new, trap="raise", check=False))
    assert list(tmp_path.iterdir()) == []


# -- points 9 and 3: no clutter, the umask's permissions, a failed start leaves nothing ----------------------------
HOLDER = """
import sys
from tlkit.cache import cache_lock

with cache_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_finished_commands_leave_no_locks_and_files_get_the_umask(site: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "feats" / "c.h5"
    tlkit(site, "extract", "trap/image", images, "-o", cache, *FAST, "--quiet")
    assert modes(cache.parent) == {"c.h5": 0o644}  # no c.h5.lock, no owner note, no work folder
    # a writer killed with -9 leaves its lock file; it blocks nobody, and the next writer clears it
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = one_line_error(tlkit(site, "extract", "trap/image", images, "-o", cache, *FAST, check=False))
        assert f"being written by another tlkit process (pid {holder.pid} on host" in busy
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        if holder.stdout is not None:
            holder.stdout.close()
    assert (cache.parent / "c.h5.lock").exists()
    assert "up to date" in tlkit(site, "extract", "trap/image", images, "-o", cache, *FAST).stdout
    assert sorted(os.listdir(cache.parent)) == ["c.h5"]

    head = tmp_path / "runs" / "head"
    tlkit(site, "train", cache, "-o", head, "--epochs", "2")
    files = modes(head)
    assert ".lock" not in files and "head.safetensors" in files
    assert set(files.values()) == {0o644}, files  # safetensors writes 0o600 files; tlkit's are the user's own
    run_dir = tmp_path / "runs" / "ft"
    tlkit(site, "finetune", "trap/image", images, "-o", run_dir, "--epochs", "1", "--val-split", "0.25", *FAST)
    files = modes(run_dir)
    assert ".lock" not in files and "model.safetensors" in files and "checkpoints/best.safetensors" in files
    assert set(files.values()) == {0o644}, files


def test_a_command_that_fails_before_writing_leaves_nothing(site: Path, images: Path, tmp_path: Path) -> None:
    bad = tmp_path / "weights" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a weights file")
    before = sorted(os.listdir(tmp_path))
    cache = tmp_path / "new" / "sub" / "c.h5"
    err = one_line_error(
        tlkit(site, "extract", "trap/image", images, "-o", cache, "--weights", bad, *FAST, check=False)
    )
    assert str(bad) in err
    assert sorted(os.listdir(tmp_path)) == before  # no c.h5.work, no c.h5.lock, no new/sub/
    done = tlkit(site, "extract", "trap/image", images, "-o", cache, *FAST)  # the corrected command, no --overwrite
    assert "12 items" in done.stdout and sorted(os.listdir(cache.parent)) == ["c.h5"]

    for args in (
        ("finetune", "trap/image", images, "-o", tmp_path / "runs" / "ft", "--weights", bad, *FAST),
        ("train", images, "-o", tmp_path / "runs" / "head"),  # a folder of images where a cache is expected
    ):
        one_line_error(tlkit(site, *args, check=False))
        assert not (tmp_path / "runs").exists()  # the run folder (and its parent) the command created are gone


# -- point 8: a folder where a file is expected, and the reverse ---------------------------------------------------
def test_a_folder_for_a_file_and_a_file_for_a_folder_are_one_line(
    site: Path, images: Path, run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    err = one_line_error(tlkit(site, "extract", "trap/image", images, "-o", folder, "--overwrite", *FAST, check=False))
    assert err == f"Error: {folder} is a folder; give --output a file path ending .h5, such as {folder}/features.h5"
    assert sorted(os.listdir(tmp_path)) == ["out"] and not any(folder.iterdir())
    err = one_line_error(tlkit(site, "export", run, "-o", folder, check=False))
    assert err == f"Error: {folder} is a folder; give --output a file path ending .onnx, such as {folder}/model.onnx"

    not_a_cache = "is a folder, not a cache file; give the .h5 file written by tlkit extract"
    err = one_line_error(tlkit(site, "train", images, "-o", tmp_path / "head", check=False))
    assert err == f"Error: {images} {not_a_cache}"
    cache = tmp_path / "c.h5"
    tlkit(site, "extract", "trap/image", images, "-o", cache, *FAST, "--quiet")
    err = one_line_error(tlkit(site, "train", cache, "--val", folder, "-o", tmp_path / "head", check=False))
    assert err == f"Error: {folder} {not_a_cache}"
    assert one_line_error(tlkit(site, "cache", "info", folder, check=False)) == f"Error: {folder} {not_a_cache}"
    report = tlkit(site, "cache", "verify", folder, check=False)
    assert report.returncode != 0 and f"{folder} {not_a_cache}" in report.stdout + report.stderr
    assert "corrupt" not in report.stdout + report.stderr
    err = one_line_error(tlkit(site, "cache", "export", cache, "-o", folder, "--format", "csv", check=False))
    assert err == f"Error: {folder} is a folder; give --output a file path ending .csv, such as {folder}/features.csv"

    not_a_run = "is a file, not a run directory; give the -o folder of tlkit train or tlkit finetune"
    for args in (
        ("evaluate", cache, images),
        ("predict", cache, images, "-o", tmp_path / "p.csv"),
        ("export", cache),
        ("finetune", "trap/image", images, "-o", tmp_path / "ft", "--init-head", cache, *FAST),
    ):
        err = one_line_error(tlkit(site, *args, check=False))
        assert err.startswith("Error: ") and err.endswith(f"{cache} {not_a_run}"), err
    assert sorted(os.listdir(tmp_path)) == ["c.h5", "out"]
