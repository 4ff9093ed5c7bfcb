"""``tlkit extract`` and ``tlkit cache ...`` through Click's CliRunner (and a real process where it matters)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _extract_helpers import assert_same_cache, run_cli, write_images, write_texts
from click.testing import CliRunner

import tlkit
from tlkit.cache import cache_lock, work_dir_for
from tlkit.cli import cli

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
FP32 = ["--precision", "fp32", "--workers", "0"]


@pytest.fixture
def images(tmp_path):
    root = write_images(tmp_path / "imgs", classes=2, per_class=5)
    (root / "class_0" / "broken.jpg").write_text("not a jpeg")
    return root


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_extract_then_noop_then_refuse_mismatch(images, tmp_path):
    out = tmp_path / "c.h5"
    res = invoke("extract", "fake/image", images, "-o", out, *FP32, "--quiet")
    assert res.exit_code == 0, res.output
    summary = res.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"created {out}: 10 items (10 computed, 1 skipped)")
    assert "items/s" in summary and " s, " in summary
    assert "skipped class_0/broken.jpg: not an image" in res.stderr
    res = invoke("extract", "fake/image", images, "-o", out, *FP32)
    assert res.exit_code == 0 and "is up to date: 10 items (1 skipped), nothing to extract" in res.stdout
    res = invoke("extract", "fake/image", images, "-o", out, *FP32, "--store-dtype", "float16")
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "store dtype" in res.output and "--overwrite" in res.output
    res = invoke("extract", "fake/image", images, "-o", out, *FP32, "--store-dtype", "float16", "--overwrite")
    assert res.exit_code == 0 and res.stdout.startswith(f"replaced {out}")


def test_json_result_layers_views(images, tmp_path):
    out = tmp_path / "c.h5"
    res = invoke("extract", "fake/image", images, "-o", out, *FP32, "--layers", "all", "--views", "2", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["status"] == "created" and data["items"] == 10 and data["skipped"] == 1
    assert data["skipped_now"][0]["id"] == "class_0/broken.jpg"
    assert data["precision"] == "fp32" and data["device"] == "cpu"
    info = json.loads(invoke("cache", "info", out, "--json").stdout)
    assert info["items"] == 10 and info["dim"] == 16 and info["views"] == 2
    assert info["layers"] == {"stem": 8, "stages.0": 16, "stages.1": 16}
    assert info["backbone"]["name"] == "fake/image" and len(info["backbone"]["fingerprint"]) == 32
    assert info["class_names"] == ["class_0", "class_1"] and info["skipped"][0]["id"] == "class_0/broken.jpg"
    text = invoke("cache", "info", out).stdout
    assert "fake/image" in text and "stages.0 (16)" in text and "skipped" in text


def test_on_error_fail_names_the_item(images, tmp_path):
    res = invoke("extract", "fake/image", images, "-o", tmp_path / "c.h5", *FP32, "--on-error", "fail")
    assert res.exit_code == 1
    assert "Error: class_0/broken.jpg: not an image" in res.output and "set --on-error to skip" in res.output


def test_verify_export_merge(images, tmp_path):
    parts = []
    for i in range(2):
        part = tmp_path / f"p{i}.h5"
        res = invoke("extract", "fake/image", images, "-o", part, *FP32, "--shard", f"{i}/2", "--commit-rows", "4")
        assert res.exit_code == 0, res.output
        parts.append(part)
    single = tmp_path / "single.h5"
    assert invoke("extract", "fake/image", images, "-o", single, *FP32, "--commit-rows", "4").exit_code == 0
    res = invoke("cache", "merge", *parts, "-o", tmp_path / "m.h5")
    assert res.exit_code == 0 and "10 items" in res.stdout
    assert_same_cache(tmp_path / "m.h5", single)
    res = invoke("cache", "merge", parts[0], "-o", tmp_path / "m2.h5")
    assert res.exit_code == 1 and "missing shard(s) 1 of 2" in res.output

    res = invoke("cache", "verify", single)
    assert res.exit_code == 0 and res.stdout.startswith(f"OK: {single} (10 items)")
    res = invoke("cache", "export", single, "-o", tmp_path / "x.npz")
    assert res.exit_code == 0
    X, y = tlkit.load_features(single)
    npz = np.load(tmp_path / "x.npz", allow_pickle=False)
    assert np.array_equal(npz["X"], X) and np.array_equal(npz["y"], y)

    work = work_dir_for(tmp_path / "half.h5")
    work.mkdir()
    (work / "plan.json").write_text('{"todo": 5}')
    res = invoke("cache", "verify", tmp_path / "half.h5")
    assert res.exit_code == 1 and res.stdout.startswith("INCOMPLETE") and "rerun" in res.stdout
    res = invoke("cache", "info", tmp_path / "half.h5")
    assert res.exit_code == 1 and "incomplete" in res.output and "Traceback" not in res.output


def test_reader_options_pass_through(tmp_path):
    csv = tmp_path / "t.csv"
    write_texts(tmp_path / "plain.csv", n=12)
    lines = (tmp_path / "plain.csv").read_text().splitlines()
    csv.write_text("\n".join(["body,kind", *lines[1:]]) + "\n")
    out = tmp_path / "t.h5"
    res = invoke("extract", "fake/text", csv, "-o", out, *FP32, "--text-column", "body", "--label-column", "kind")
    assert res.exit_code == 0, res.output
    with tlkit.FeatureCache(out) as fc:
        assert len(fc) == 12 and fc.class_names == ["animals", "vehicles"]
        assert fc.meta["dataset"]["options"] == {"text_column": "body", "label_column": "kind"}
    res = invoke("extract", "fake/text", csv, "-o", tmp_path / "u.h5", *FP32, "--text-column", "nope")
    assert res.exit_code == 1 and "no column 'nope'" in res.output and "body, kind" in res.output
    res = invoke("extract", "fake/text", csv, "-o", tmp_path / "u.h5", "-O", "broken")
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def test_a_held_lock_refuses_a_second_writer(images, tmp_path):
    out = tmp_path / "c.h5"
    with cache_lock(out):
        res = run_cli("extract", "fake/image", images, "-o", out, *FP32, check=False)
    assert res.returncode == 1
    assert "being written by another tlkit process" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_help_lists_options_and_stays_light():
    res = invoke("extract", "--help")
    options = "--weights --device --precision --batch-size --workers --layers --views --store-dtype --on-error --limit"
    for opt in [*options.split(), "--overwrite", "--shard", "--quiet", "--text-column"]:
        assert opt in res.stdout
    assert {"info", "verify", "export", "merge"} <= set(invoke("cache", "--help").stdout.split())
    code = "import sys, tlkit.cli.extract; print(sorted({'torch', 'h5py', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
