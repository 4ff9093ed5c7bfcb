"""A local model directory gets a portable name: ``hf/<directory name>``, with where it lies kept beside the name
(the ``local_dir`` option), so names, fingerprints and run configs hold no machine path, a copy of the directory
elsewhere is the same model, and runs still find it. A tiny BERT saved with ``save_pretrained``, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlkit.errors import BadInputError
from tlkit.host.api import backbone_from_record, get_backbone

WORDS = "the a cat dog sat on mat good bad film plot actor music long short fun dull".split()


def save_tiny_bert(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(3)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok_dir = path.parent / f".{path.name}-vocab"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    BertTokenizer(str(tok_dir / "vocab.txt"), model_max_length=32).save_pretrained(path)
    shutil.rmtree(tok_dir)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_a_local_directory_is_named_after_itself(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bb = get_backbone(f"hf/{tiny}")  # hf//tmp/.../tiny-bert
    assert bb.name == "hf/tiny-bert" and bb.spec.name == "hf/tiny-bert"
    assert bb.init_kwargs()["local_dir"] == str(tiny.resolve()) and bb.weights == "pretrained"
    monkeypatch.chdir(tiny.parent)
    relative = get_backbone("hf/./tiny-bert")
    assert relative.name == "hf/tiny-bert" and relative.fingerprint() == bb.fingerprint()
    assert str(tiny) not in json.dumps(bb.fingerprint_data())  # what the model is, not where it lies


def test_a_copy_elsewhere_is_the_same_model_and_runs_find_it(tiny: Path, tmp_path: Path) -> None:
    bb = get_backbone(f"hf/{tiny}")
    copy = shutil.copytree(tiny, tmp_path / "elsewhere" / "tiny-bert")
    assert get_backbone(f"hf/{copy}").fingerprint() == bb.fingerprint()
    renamed = shutil.copytree(tiny, tmp_path / "other-name")
    assert get_backbone(f"hf/{renamed}").fingerprint() != bb.fingerprint()  # another name: another backbone
    # Rebuilt from what a run records: the name and the options (with local_dir).
    record = {"name": bb.name, "options": get_backbone(f"hf/{copy}").init_kwargs()}
    assert backbone_from_record(record).fingerprint() == bb.fingerprint()
    assert backbone_from_record(record, weights="none").name == "hf/tiny-bert"
    shutil.rmtree(copy)  # the recorded directory is gone: say where it was and how to point at it
    with pytest.raises(BadInputError, match=r"model directory .*tiny-bert does not exist here.*pass the directory"):
        backbone_from_record(record)
    found = backbone_from_record(record, weights=str(tiny))
    assert found.name == "hf/tiny-bert" and found.fingerprint() == bb.fingerprint()


def test_cli_info_extract_train_predict_with_a_local_directory(tiny: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TLKIT_PLUGINS"}

    def tlkit(*args: object) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True,
                             env=env, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out

    info = json.loads(tlkit("backbones", "info", f"hf/{tiny}", "--json").stdout)
    assert info["name"] == "hf/tiny-bert" and info["weights"] == "pretrained"  # its own weights, not "none"
    assert info["fingerprint"] == get_backbone(f"hf/{tiny}").fingerprint()
    texts = tmp_path / "texts.csv"
    rows = [f"{' '.join(WORDS[i % 7 : i % 7 + 4])},{'a' if i % 2 else 'b'}" for i in range(12)]
    texts.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    tlkit("extract", f"hf/{tiny}", texts, "-o", tmp_path / "c.h5", "--workers", "0")
    tlkit("train", tmp_path / "c.h5", "-o", tmp_path / "run")
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"hf/tiny-bert"' in config and "hf//" not in config
    tlkit("predict", tmp_path / "run", texts, "-o", tmp_path / "pred.csv", "--workers", "0")
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 13
