"""`tlkit export`: the exported ONNX and TorchScript models give the original model's outputs on fresh inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _ft_helpers import FAST, image_data
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.errors import BadInputError, ConfigError
from tlkit.finetuning.model import TransferModel
from tlkit.testing import sample_images, sample_texts

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = image_data(root / "data", classes=3, per_class=6)
    tlkit.finetune("fake/image", data, root / "run", epochs=1, head_epochs=0, unfreeze="all", lr=1e-2, **FAST)
    return root / "run"


def _reference(run: Path, batch):
    model = TransferModel.from_run(run)
    with torch.inference_mode():
        return model(batch).numpy()


def test_onnx_outputs_equal_the_original(image_run: Path, tmp_path: Path) -> None:
    from onnx.reference import ReferenceEvaluator

    runner = CliRunner()
    out = tmp_path / "m.onnx"
    res = runner.invoke(cli, ["export", str(image_run), "--format", "onnx", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["inputs"] == ["input"] and info["max_abs_diff"] <= 1e-4
    model = TransferModel.from_run(image_run)
    batch = model.preprocess(sample_images(5, size=(50, 37), seed=7))  # another batch size than the export's
    got = ReferenceEvaluator(str(out)).run(None, {"input": batch.numpy()})[0]
    np.testing.assert_allclose(got, _reference(image_run, batch), atol=1e-5, rtol=1e-5)
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["class_names"] == ["class_0", "class_1", "class_2"]
    assert sidecar["preprocess"]["input_size"] == [3, 32, 32]


def test_torchscript_outputs_equal_the_original(image_run: Path) -> None:
    result = tlkit.export_model(image_run, "torchscript")
    assert result.path == image_run / "model.torchscript.pt" and result.max_abs_diff == 0.0
    loaded = torch.jit.load(str(result.path))
    batch = TransferModel.from_run(image_run).preprocess(sample_images(4, size=(32, 32), seed=3))
    with torch.inference_mode():
        got = loaded(batch).numpy()
    np.testing.assert_array_equal(got, _reference(image_run, batch))


def test_text_model_exports_with_named_inputs(tmp_path: Path) -> None:
    rows = ["text,label"] + [f"{w} number {i},{lab}" for i in range(6) for w, lab in (("yes", "a"), ("no", "b"))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    tlkit.finetune("fake/text", tmp_path / "t.csv", run, epochs=1, head_epochs=0, unfreeze="all", **FAST)
    result = tlkit.export_model(run, "torchscript")
    assert result.inputs == ["input_ids", "attention_mask"]
    model = TransferModel.from_run(run)
    batch = model.preprocess(sample_texts())  # longer and more texts than the example batch
    loaded = torch.jit.load(str(result.path))
    with torch.inference_mode():
        np.testing.assert_allclose(
            loaded(batch["input_ids"], batch["attention_mask"]).numpy(), model(batch).numpy(), atol=1e-6
        )


def test_export_bad_input(image_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        tlkit.export_model(image_run, "tflite")
    with pytest.raises(BadInputError, match="not a tlkit run directory"):
        tlkit.export_model(tmp_path, "onnx")
