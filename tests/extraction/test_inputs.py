"""Issue 13, points 4-9 and 12: every input is a row or a named record, through the CLI in real subprocesses.

Permission errors need care: the tests run as root, which ignores file permissions. As root, the CLI is started
under ``setpriv`` with the ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH`` capabilities dropped, so the kernel
checks permissions for it as for anyone else (the files are root's own, so only their mode bits count).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _extract_helpers import CHILD_ENV, FP32, run_cli, write_images

from tlkit.data.ids import display_id

pytestmark = pytest.mark.usefixtures("one_thread")

DROP = "-dac_override,-dac_read_search"


def tlkit_cli(*args: object, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tlkit", *map(str, args)],
        capture_output=True, text=True, timeout=180, env=CHILD_ENV, errors="replace",
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


@pytest.fixture
def unprivileged(tmp_path) -> list[str]:
    """A command prefix under which permission bits apply (empty when not root); skipped, named, when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to make a permission error that applies")
    prefix = [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}", "--"]
    locked = tmp_path / "probe"
    locked.mkdir(mode=0)
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os, sys; os.listdir(sys.argv[1])", str(locked)],
                           capture_output=True, text=True)  # fmt: skip
    locked.rmdir()
    if probe.returncode == 0 or "PermissionError" not in probe.stderr:
        pytest.skip(f"dropping the DAC capabilities did not make permissions apply: {probe.stderr[-200:]}")
    return prefix


def extract_json(*args: object, prefix: list[str] | None = None) -> dict:
    proc = tlkit_cli("extract", "fake/image", *args, *FP32, "--json", prefix=prefix)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout)
    return result


def cache_ids(path: Path) -> list[str]:
    from tlkit.cache import FeatureCache

    with FeatureCache(path) as fc:
        return list(fc.ids)


def test_non_utf8_names_round_trip_through_cache_json_csv_and_predict(tmp_path):
    """Point 4 and the naming half of point 12: a non-UTF-8 name is an id whose bytes come back; the cache, JSON and
    CSV outputs hold it; predict names its skipped items; a label starting with '=' is escaped in CSV."""
    images = write_images(tmp_path / "train", classes=2, per_class=6)
    os.rename(images / "class_0", images / "=SUM(A1)")
    good = os.fsencode(images / "class_1") + b"/caf\xe9.png"
    os.rename(os.fsencode(images / "class_1" / "img_0000.png"), good)
    bad = os.fsencode(images / "class_1") + b"/bro\xffken.png"
    with open(bad, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "f.h5"
    result = extract_json(images, "-o", out)
    assert result["items"] == 12 and result["skipped"] == 1
    assert [os.fsencode(s["id"]) for s in result["skipped_now"]] == [b"class_1/bro\xffken.png"]
    ids = cache_ids(out)
    assert b"class_1/caf\xe9.png" in [os.fsencode(i) for i in ids]
    assert "up to date" in run_cli("extract", "fake/image", images, "-o", out, *FP32, "-q").stdout
    verify = run_cli("cache", "verify", out)
    assert verify.stdout.startswith("OK"), verify.stdout
    info = json.loads(run_cli("cache", "info", out, "--json").stdout)
    assert os.fsencode(info["skipped"][0]["id"]) == b"class_1/bro\xffken.png"

    csv_out = tmp_path / "f.csv"
    run_cli("cache", "export", out, "-o", csv_out, "--format", "csv")
    text = csv_out.read_bytes().decode("utf-8")  # valid UTF-8
    assert "class_1/caf\\xe9.png," in text and ",'=SUM(A1)," in text

    run_cli("train", out, "-o", tmp_path / "run")
    flat = tmp_path / "new"
    flat.mkdir()
    shutil.copy(os.fsencode(images / "class_1") + b"/caf\xe9.png", os.fsencode(flat) + b"/n\xe9w.png")
    shutil.copy(bad, os.fsencode(flat) + b"/bro\xffken.png")
    shutil.copy(images / "=SUM(A1)" / "img_0001.png", flat / "ok.png")
    pred = run_cli("predict", tmp_path / "run", flat, "-o", tmp_path / "p.csv")
    assert "skipped bro\\xffken.png: " in pred.stderr and "p.skipped.csv" in pred.stderr
    rows = (tmp_path / "p.csv").read_bytes().decode("utf-8").splitlines()
    assert rows[1].startswith("n\\xe9w.png,") and rows[2].startswith("ok.png,")
    assert all(",=" not in r for r in rows) and any(",'=SUM(A1)," in r for r in rows)
    listing = (tmp_path / "p.skipped.csv").read_bytes().decode("utf-8").splitlines()
    assert listing[0] == "id,reason" and listing[1].startswith("bro\\xffken.png,")
    evaluated = run_cli("evaluate", tmp_path / "run", images, "-o", tmp_path / "ev")
    assert "skipped class_1/bro\\xffken.png: " in evaluated.stderr, evaluated.stderr
    assert (tmp_path / "ev" / "predictions.skipped.csv").is_file()


def test_a_stray_file_beside_class_folders_is_named_and_the_classes_kept(tmp_path):
    """Point 5."""
    images = write_images(tmp_path / "d", classes=2, per_class=3)
    shutil.copy(images / "class_0" / "img_0000.png", images / "stray.png")
    result = extract_json(images, "-o", tmp_path / "f.h5")
    assert result["items"] == 6
    assert [s["id"] for s in result["skipped_now"]] == ["stray.png"]
    assert "outside the class folders" in result["skipped_now"][0]["reason"]
    from tlkit.cache import FeatureCache

    with FeatureCache(tmp_path / "f.h5") as fc:
        assert fc.class_names == ["class_0", "class_1"]


def test_manifest_duplicates_absolute_paths_and_conflicts(tmp_path):
    """Point 6: a duplicate is a named skip (no assembly crash), an absolute path works, a conflict is one line."""
    images = write_images(tmp_path / "d", classes=2, per_class=3)
    manifest = tmp_path / "man.csv"
    absolute = images / "class_1" / "img_0002.png"
    manifest.write_text(
        "path,label\n"
        f"{images.name}/class_0/img_0000.png,a\n{images.name}/class_1/img_0000.png,b\n"
        f"{images.name}/class_0/img_0000.png,a\n{absolute},b\n{images.name}/class_0/img_0001.png,a\n"
    )
    out = tmp_path / "m.h5"
    result = extract_json(manifest, "-o", out)
    assert result["items"] == 4
    assert result["skipped_now"] == [
        {"id": "man.csv:4", "reason": f"duplicate of line 2 ({images.name}/class_0/img_0000.png); left out"}
    ]
    assert str(absolute) in cache_ids(out)
    assert "up to date" in run_cli("extract", "fake/image", manifest, "-o", out, *FP32, "-q").stdout
    manifest.write_text(f"path,label\n{absolute},a\n{absolute},b\n")
    one_line_error(tlkit_cli("extract", "fake/image", manifest, "-o", tmp_path / "c.h5", *FP32), "man.csv:3:")


def test_links_loops_hidden_and_unreadable_folders_are_named(tmp_path, unprivileged):
    """Point 7."""
    images = write_images(tmp_path / "d", classes=2, per_class=3)
    hidden = images / "class_0" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(images / "class_0" / "img_0000.png", hidden / "img_0000-checkpoint.png")
    (images / "class_1" / "broken.png").symlink_to("missing.png")
    (images / "class_1" / "loop").symlink_to("..")
    locked = images / "class_0" / "locked"
    locked.mkdir()
    shutil.copy(images / "class_0" / "img_0000.png", locked / "x.png")
    noexec = images / "class_1" / "noexec"
    noexec.mkdir()
    shutil.copy(images / "class_0" / "img_0000.png", noexec / "y.png")
    locked.chmod(0)
    noexec.chmod(0o644)
    try:
        result = extract_json(images, "-o", tmp_path / "f.h5", prefix=unprivileged)
    finally:
        locked.chmod(0o755)
        noexec.chmod(0o755)
    assert result["items"] == 6  # the hidden checkpoint is not a row
    reasons = {s["id"]: s["reason"] for s in result["skipped_now"]}
    assert set(reasons) == {"class_0/locked/", "class_1/noexec/y.png", "class_1/broken.png", "class_1/loop/"}
    assert reasons["class_0/locked/"].startswith("permission denied")
    assert reasons["class_1/noexec/y.png"].startswith("permission denied")
    assert reasons["class_1/broken.png"].startswith("broken symbolic link")
    assert reasons["class_1/loop/"].startswith("symbolic link loop")


def test_a_permission_skip_is_retried_after_the_fix(tmp_path, unprivileged):
    """Point 8: chmod changes neither size nor mtime, and the item still comes back on the next run."""
    images = write_images(tmp_path / "d", classes=2, per_class=3)
    item = images / "class_0" / "img_0001.png"
    item.chmod(0)
    out = tmp_path / "f.h5"
    first = extract_json(images, "-o", out, prefix=unprivileged)
    assert first["items"] == 5
    assert first["skipped_now"][0]["id"] == "class_0/img_0001.png"
    assert first["skipped_now"][0]["reason"].startswith("permission denied")
    again = extract_json(images, "-o", out, prefix=unprivileged)  # retried, fails the same way: nothing to rewrite
    assert again["status"] == "up-to-date" and again["skipped"] == 1
    item.chmod(0o644)
    second = extract_json(images, "-o", out, prefix=unprivileged)
    assert second["status"] == "updated" and second["items"] == 6 and second["skipped"] == 0
    assert "class_0/img_0001.png" in cache_ids(out)


def test_csv_quote_errors_name_the_line_and_missing_labels_are_named(tmp_path):
    """Point 9."""
    table = tmp_path / "t.csv"
    table.write_text('text,label\nfirst text,a\n"unclosed text,b\nthird,a\nfourth,b\n')
    one_line_error(tlkit_cli("extract", "fake/text", table, "-o", tmp_path / "t.h5", *FP32), "t.csv:3: a quote opened")
    table.write_text("text,label\nfirst text,a\nsecond text,\nthird,b\nfourth,a\n")
    proc = run_cli("extract", "fake/text", table, "-o", tmp_path / "t.h5", *FP32, "-q")
    assert "note: 1 item(s) have no label (t.csv:3)" in proc.stderr
    from tlkit.cache import FeatureCache

    with FeatureCache(tmp_path / "t.h5") as fc:
        assert fc.meta["dataset"]["unlabelled"] == 1
    train = [
        sys.executable,
        "-m",
        "tlkit",
        "train",
        str(tmp_path / "t.h5"),
        "-o",
        str(tmp_path / "run"),
        "--head",
        "knn",
    ]
    env = {k: v for k, v in CHILD_ENV.items() if k != "PYTHONWARNINGS"}  # the note is a warning: let it show
    trained = subprocess.run([*train, "--val-split", "0"], capture_output=True, text=True, timeout=180, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "1 of 4 items have no label and are left out of training (first: 't.csv:3')" in trained.stderr


def test_display_ids_are_valid_utf8():
    assert display_id("a\udcff") == "a\\xff"
