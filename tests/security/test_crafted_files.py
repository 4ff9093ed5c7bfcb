"""Files are data, not code: crafted run configs, head files and checkpoints never run code, and damaged files are
one-line errors, never tracebacks (issue 13, points 1-3 and the head-file part of 12).

Every run here is a real tlkit run (a real cache, a real head, a real fine-tuning); each test tampers with one of
its files and runs ``tlkit predict``/``evaluate``/``export``/``finetune`` through the CLI in a subprocess. Crafted
payloads write a marker file; the tests assert that it never appears.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _ft_helpers import image_data
from _heads_helpers import make_cache

import tlkit
from tlkit.errors import BadInputError, ConfigError
from tlkit.runs.checksums import sidecar, verify, write_checked

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--workers", "0", "--batch-size", "8", "--device", "cpu"]


def tlkit_cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_refused(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A non-zero exit, a one-line ``Error: ...`` naming every needle, and no traceback."""
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cache of a small image folder, a torch head run, a scikit-learn head run and a fine-tuned run."""
    root = tmp_path_factory.mktemp("crafted")
    folder = image_data(root / "data", classes=2, per_class=8)
    cache = make_cache(folder, root / "feats.h5", tlkit.get_backbone("fake/image"))
    tlkit.train_head(cache, root / "mlp", head="linear", epochs=2, val_split=0)
    tlkit.train_head(cache, root / "logreg", head="sklearn:logreg", val_split=0)
    ft = tlkit_cli("finetune", "fake/image", folder, "-o", root / "ft", "--epochs", "1", *FAST)
    assert ft.returncode == 0, ft.stderr
    return {"root": root, "folder": folder, "cache": cache, "mlp": root / "mlp", "logreg": root / "logreg",
            "ft": root / "ft"}  # fmt: skip


def copy_run(runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


def set_head(run: Path, head: dict[str, Any]) -> None:
    config = json.loads((run / "config.json").read_text())
    config["head"] = {**config["head"], **head}
    (run / "config.json").write_text(json.dumps(config))


def popen_head(marker: Path, kind: str | None) -> dict[str, Any]:
    """The head of issue 13 point 1: the sklearn head "constructing" ``subprocess.Popen`` with a shell command."""
    head: dict[str, Any] = {
        "name": "sklearn",
        "params": {"estimator": "subprocess.Popen", "args": f"touch {marker}", "shell": True},
    }
    if kind is not None:
        head["kind"] = kind
    return head


def record_checksum(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` and record its checksum as tlkit would: only the parser stands guard."""
    write_checked(path, lambda tmp: Path(tmp).write_bytes(content))


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


class Payload:
    """Unpickling it runs ``exec``: what a pickled ``head.safetensors`` could do if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


# -- 1. run configs never choose code ----------------------------------------------------------------------------
@pytest.mark.parametrize("base,kind", [("mlp", "torch"), ("mlp", None), ("logreg", "estimator")])
def test_config_naming_popen_runs_nothing_on_predict_and_evaluate(runs, tmp_path, base, kind):
    run = copy_run(runs, base, tmp_path)
    marker = tmp_path / "pwned"
    set_head(run, popen_head(marker, kind))
    for command in (["predict", run, runs["cache"], "-o", tmp_path / "p.csv"], ["evaluate", run, runs["cache"]]):
        out = tlkit_cli(*command)
        assert_refused(out, "config.json", "subprocess.Popen", "--allow-estimator")
        assert not marker.exists()


def test_config_of_a_fine_tuned_run_rebuilds_registered_torch_heads_only(runs, tmp_path):
    run = copy_run(runs, "ft", tmp_path)
    marker = tmp_path / "pwned"
    set_head(run, popen_head(marker, "torch"))
    out = tlkit_cli("predict", run, runs["folder"], "-o", tmp_path / "p.csv", "--workers", "0")
    assert_refused(out, "config.json", "subprocess.Popen")
    out = tlkit_cli("export", run, "--format", "torchscript", "-o", tmp_path / "m.pt")
    assert_refused(out, "config.json")
    assert not marker.exists() and not (tmp_path / "m.pt").exists()
    set_head(run, {"name": "sklearn", "kind": "estimator", "params": {"estimator": "logreg"}})
    assert_refused(tlkit_cli("export", run, "-o", tmp_path / "m.onnx"), "config.json", "not a torch head")
    set_head(run, {"name": "no-such-head", "kind": "torch", "params": {}})
    assert_refused(tlkit_cli("export", run, "-o", tmp_path / "m.onnx"), "unknown head 'no-such-head'")


def test_init_head_from_a_crafted_probe_runs_nothing(runs, tmp_path):
    probe = copy_run(runs, "mlp", tmp_path)
    marker = tmp_path / "pwned"
    set_head(probe, popen_head(marker, "torch"))
    out = tlkit_cli("finetune", "fake/image", runs["folder"], "-o", tmp_path / "ft", "--init-head", probe,
                    "--epochs", "1", *FAST)  # fmt: skip
    assert_refused(out, "config.json", "subprocess.Popen")
    assert not marker.exists()


def test_head_record_sizes_and_kind_are_checked(runs, tmp_path):
    run = copy_run(runs, "mlp", tmp_path)
    set_head(run, {"name": "linear", "kind": "torch", "params": {}, "in_dim": "8; rm -rf"})
    assert_refused(tlkit_cli("predict", run, runs["cache"], "-o", tmp_path / "p.csv"), "in_dim", "positive integer")
    set_head(run, {"in_dim": 8, "kind": "estimator"})
    assert_refused(tlkit_cli("evaluate", run, runs["cache"]), "linear", "kind 'estimator'")


def test_training_allows_scikit_learn_classifiers_and_explicitly_allowed_classes_only(runs, tmp_path):
    marker = tmp_path / "pwned"
    popen = ["--param", "estimator=subprocess:Popen", "--param", f"args=touch {marker}", "--param", "shell=true"]
    out = tlkit_cli("train", runs["cache"], "-o", tmp_path / "r", "--head", "sklearn", *popen)
    assert_refused(out, "subprocess.Popen", "--allow-estimator subprocess.Popen")
    # allowed by the user, but not a classifier: refused before it is constructed
    with pytest.raises(ConfigError, match="not a scikit-learn classifier"):
        tlkit.train_head(runs["cache"], tmp_path / "r2", head="sklearn",
                         head_params={"estimator": "subprocess.Popen", "args": f"touch {marker}", "shell": True},
                         allow_estimators=["subprocess.Popen"])  # fmt: skip
    with pytest.raises(ConfigError, match="not a scikit-learn classifier"):
        tlkit.train_head(runs["cache"], tmp_path / "r3", head="sklearn:sklearn.preprocessing.StandardScaler")
    assert not marker.exists()
    result = tlkit.train_head(runs["cache"], tmp_path / "ok", head="sklearn:sklearn.svm.LinearSVC", val_split=0)
    assert tlkit.predict(result.run_dir, runs["cache"]).probabilities.shape == (16, 2)


def test_an_allowed_third_party_classifier_trains_and_predicts_only_when_allowed(runs, tmp_path, monkeypatch):
    # A classifier outside the ``sklearn.`` namespace: a scikit-learn subclass in a module of this test suite
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = "_third_party.ThirdPartyClassifier"
    with pytest.raises(ConfigError, match="not allowed"):
        tlkit.train_head(runs["cache"], tmp_path / "r", head=f"sklearn:{path}", val_split=0)
    result = tlkit.train_head(runs["cache"], tmp_path / "r", head=f"sklearn:{path}", val_split=0,
                              allow_estimators=[path])  # fmt: skip
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = tlkit_cli("predict", result.run_dir, runs["cache"], "-o", tmp_path / "p.csv", env=env)
    assert_refused(out, "config.json", path, "--allow-estimator")
    out = tlkit_cli("predict", result.run_dir, runs["cache"], "-o", tmp_path / "p.csv", "--allow-estimator", path,
                    env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = tlkit_cli("evaluate", result.run_dir, runs["cache"], env={**env, "TLKIT_ALLOW_ESTIMATORS": path})
    assert out.returncode == 0, out.stderr


# -- 2. skops loading runs no code -------------------------------------------------------------------------------
def exec_pipeline(marker: Path) -> Any:
    """A real Pipeline whose transforms turn any features into a code string and ``exec`` it: NumPy functions
    (``full_like``, ``ravel``), ``builtins.max`` and ``builtins.exec``, before a fitted classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    code = f"open({str(marker)!r}, 'w').close()"
    clf = LogisticRegression().fit(np.random.default_rng(0).normal(size=(8, 8)), np.arange(8) % 2)
    steps = [
        ("a", FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": "U200"})),
        ("b", FunctionTransformer(np.ravel)),
        ("c", FunctionTransformer(builtins.max)),
        ("d", FunctionTransformer(builtins.exec)),
        ("clf", clf),
    ]
    return Pipeline(steps)


def test_crafted_skops_file_is_refused_and_runs_nothing(runs, tmp_path):
    import skops.io as sio

    # the payload is live: a loader trusting what the file asks for runs it
    canary = tmp_path / "canary"
    sio.dump(exec_pipeline(canary), tmp_path / "live.skops")
    loaded = sio.load(tmp_path / "live.skops", trusted=sio.get_untrusted_types(file=tmp_path / "live.skops"))
    with pytest.raises((TypeError, ValueError)):  # exec returns None, which the classifier refuses
        loaded.predict_proba(np.zeros((2, 8)))
    assert canary.exists()

    run = copy_run(runs, "logreg", tmp_path)
    marker = tmp_path / "pwned"
    record_checksum(run / "head.skops", _dumped(exec_pipeline(marker), tmp_path / "evil.skops"))
    for command in (["predict", run, runs["cache"], "-o", tmp_path / "p.csv"], ["evaluate", run, runs["cache"]]):
        line = assert_refused(tlkit_cli(*command), "head.skops", "holds functions", "refusing to load")
        assert "builtins.exec" in line and "numpy.full_like" in line
    assert not marker.exists()


def test_skops_function_types_trusted_by_skops_defaults_are_refused_too(runs, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = np.random.default_rng(0).normal(size=(8, 8)), np.arange(8) % 2
    est = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(np.abs(x), y)
    run = copy_run(runs, "logreg", tmp_path)
    record_checksum(run / "head.skops", _dumped(est, tmp_path / "ufunc.skops"))
    assert_refused(tlkit_cli("predict", run, runs["cache"], "-o", tmp_path / "p.csv"), "numpy.log1p")


def test_untrusted_types_are_named_and_allowed_classes_load(tmp_path):
    from _third_party import Foreign, ThirdPartyClassifier

    from tlkit.heads.sklearn_head import allowing, load_estimator, save_estimator

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    est = ThirdPartyClassifier().fit(x, y)
    with pytest.raises(BadInputError, match="_third_party.ThirdPartyClassifier.*refusing to load"):
        save_estimator(est, tmp_path / "tp.skops")  # refused at training time, not at the first predict
    with allowing(["_third_party.ThirdPartyClassifier"]):
        save_estimator(est, tmp_path / "tp.skops")
        assert np.array_equal(load_estimator(tmp_path / "tp.skops").predict(x), est.predict(x))
    with pytest.raises(BadInputError, match="ThirdPartyClassifier.*refusing to load"):
        load_estimator(tmp_path / "tp.skops")
    est.extra = Foreign()
    with allowing(["_third_party.ThirdPartyClassifier"]), pytest.raises(BadInputError) as info:
        save_estimator(est, tmp_path / "tp2.skops")
    assert "holds types outside scikit-learn's estimators (_third_party.Foreign)" in str(info.value)


def _dumped(est: Any, path: Path) -> bytes:
    import skops.io as sio

    sio.dump(est, path)
    return path.read_bytes()


# -- 3 and 12. checksums, and files that are not what they claim -------------------------------------------------
def test_flipped_byte_in_a_head_file_is_refused(runs, tmp_path):
    for base, name in (("mlp", "head.safetensors"), ("logreg", "head.skops")):
        run = copy_run(runs, base, tmp_path)
        flip_byte(run / name)
        out = tlkit_cli("predict", run, runs["cache"], "-o", tmp_path / "p.csv")
        assert_refused(out, name, "damaged", "SHA-256", "rerun tlkit train")


@pytest.mark.parametrize("content", ["pickle", "truncated", "garbage"])
def test_head_safetensors_that_is_not_safetensors_is_a_one_line_error(runs, tmp_path, content):
    run = copy_run(runs, "mlp", tmp_path)
    marker = tmp_path / "pwned"
    real = (run / "head.safetensors").read_bytes()
    data = {"pickle": pickle.dumps(Payload(marker)), "truncated": real[: len(real) // 2], "garbage": b"\xff" * 64}
    record_checksum(run / "head.safetensors", data[content])
    out = tlkit_cli("predict", run, runs["cache"], "-o", tmp_path / "p.csv")
    assert_refused(out, "head.safetensors", "not a readable safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize("content", ["truncated", "garbage", "pickle"])
def test_head_skops_that_is_not_skops_is_a_one_line_error(runs, tmp_path, content):
    run = copy_run(runs, "logreg", tmp_path)
    marker = tmp_path / "pwned"
    real = (run / "head.skops").read_bytes()
    data = {"pickle": pickle.dumps(Payload(marker)), "truncated": real[: len(real) // 2], "garbage": b"PK\x03\x04"}
    record_checksum(run / "head.skops", data[content])
    assert_refused(tlkit_cli("evaluate", run, runs["cache"]), "head.skops", "not a readable skops file")
    assert not marker.exists()


def test_missing_checksum_is_refused(runs, tmp_path):
    run = copy_run(runs, "mlp", tmp_path)
    sidecar(run / "head.safetensors").unlink()
    assert_refused(tlkit_cli("predict", run, runs["cache"], "-o", tmp_path / "p.csv"), "no checksum")


def test_flipped_byte_in_a_fine_tuned_model_is_refused(runs, tmp_path):
    run = copy_run(runs, "ft", tmp_path)
    flip_byte(run / "model.safetensors")
    out = tlkit_cli("predict", run, runs["folder"], "-o", tmp_path / "p.csv", "--workers", "0")
    assert_refused(out, "model.safetensors", "damaged", "rerun tlkit finetune")
    assert_refused(tlkit_cli("export", run, "-o", tmp_path / "m.onnx"), "model.safetensors", "damaged")


def test_flipped_byte_in_a_checkpoint_is_refused_on_resume(runs, tmp_path):
    run = copy_run(runs, "ft", tmp_path)
    last = run / "checkpoints" / "last.safetensors"
    before = last.read_bytes()
    flip_byte(last)  # in the tensors
    args = ["finetune", "fake/image", runs["folder"], "-o", run, "--epochs", "1", *FAST, "--resume"]
    assert_refused(tlkit_cli(*args), "last.safetensors", "damaged", "delete last.safetensors")
    last.write_bytes(before)
    flip_byte(last, offset=20)  # in the JSON header: a changed digit would otherwise pass unnoticed
    assert_refused(tlkit_cli(*args), "last.safetensors", "damaged")
    record_checksum(last, before[: len(before) // 3])
    assert_refused(tlkit_cli(*args), "last.safetensors", "unreadable checkpoint")
    last.write_bytes(before)
    record_checksum(last, before)
    out = tlkit_cli(*args)
    assert out.returncode == 0, out.stderr


def test_an_interrupted_write_is_incomplete_not_damaged(runs, tmp_path):
    """The sidecar is replaced before the file: a kill between the two leaves the complete previous file, whose
    digest the sidecar records as ``previous``. Checkpoints resume from it; final files say "incomplete"."""
    from tlkit.finetuning.state import read_meta
    from tlkit.runs.rundir import load_tensors

    run = copy_run(runs, "ft", tmp_path)
    for path in (run / "checkpoints" / "last.safetensors", run / "model.safetensors"):
        record = json.loads(sidecar(path).read_text())
        record.update(previous=record["sha256"], sha256="0" * 64)  # the state right after step 2
        sidecar(path).write_text(json.dumps(record))
        assert verify(path, "fix") == "previous"
    assert read_meta(run / "checkpoints" / "last.safetensors")["epoch"] == 1
    with pytest.raises(BadInputError, match="incomplete: tlkit was interrupted"):
        load_tensors(run / "model.safetensors")
