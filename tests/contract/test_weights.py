"""The one safe weights loader: safetensors or weights-only torch files, checkpoint containers, DDP prefixes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tlkit.plugin import BadInputError, load_state_dict_file


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.full((2, 2), value), "conv.bias": torch.zeros(2)}


def test_safetensors_and_torch_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_state(1.0), str(tmp_path / "w.safetensors"))
    torch.save(_state(2.0), tmp_path / "w.pth")
    assert load_state_dict_file(tmp_path / "w.safetensors")["conv.weight"][0, 0] == 1.0
    assert load_state_dict_file(tmp_path / "w.pth")["conv.weight"][0, 0] == 2.0


def test_containers_and_ema(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": _state(1.0), "state_dict_ema": _state(3.0), "epoch": 7}, path)
    assert load_state_dict_file(path)["conv.weight"][0, 0] == 1.0
    assert load_state_dict_file(path, prefer_ema=True)["conv.weight"][0, 0] == 3.0
    torch.save({"model": {f"module.{k}": v for k, v in _state(4.0).items()}}, path)
    assert set(load_state_dict_file(path)) == {"conv.weight", "conv.bias"}  # a DDP save's prefix goes


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv.weight": _Payload()}, protocol=2))
    with pytest.raises(BadInputError, match=r"evil\.pth: cannot read weights"):
        load_state_dict_file(path)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_missing_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="weights file not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BadInputError, match="expected a state dict of tensors, found list"):
        load_state_dict_file(tmp_path / "list.pth")
