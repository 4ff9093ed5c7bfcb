"""An ONNX model too large for one protobuf file: its weights go to ``model.onnx.data`` beside it, named, and the
pair works wherever it is copied together. The limit is lowered here so that a small real model crosses it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _ft_helpers import FAST, image_data
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.finetuning.model import TransferModel
from tlkit.inference import export
from tlkit.testing import sample_images

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-data")
    data = image_data(root / "data", classes=2, per_class=5)
    tlkit.finetune("fake/image", data, root / "run", epochs=1, head_epochs=0, unfreeze="all", lr=1e-2, **FAST)
    return root / "run"


def test_weights_over_the_limit_go_to_a_named_file_that_travels_with_the_model(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "exports" / "m.onnx"
    monkeypatch.setattr(export, "EMBED_LIMIT", 0)
    res = CliRunner().invoke(cli, ["export", str(run), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"weights too large for one file: {out}.data (keep it beside m.onnx)" in res.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.json"]
    locations = {
        e.value for t in onnx.load(str(out), load_external_data=False).graph.initializer for e in t.external_data
    }
    assert "m.onnx.data" in locations  # the name beside it, not a temporary one

    moved = tmp_path / "deploy"
    moved.mkdir()
    for name in ("m.onnx", "m.onnx.data"):
        shutil.copy(out.parent / name, moved / name)
    model = TransferModel.from_run(run)
    batch = model.preprocess(sample_images(3, size=(40, 30), seed=5))
    got = ReferenceEvaluator(str(moved / "m.onnx")).run(None, {"input": batch.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(batch).numpy(), atol=1e-4, rtol=1e-4)

    monkeypatch.setattr(export, "EMBED_LIMIT", 1536 << 20)  # the same model, small enough again: one file
    result = tlkit.export_model(run, "onnx", out)
    assert result.data is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.json"]  # the old weights file is gone
    assert all(not t.external_data for t in onnx.load(str(out)).graph.initializer)
