"""Scanning rules (issue 13): every entry under an input is an item, a named skip record, or ignored by a documented
rule. In-process and fast; the same cases run through the CLI in ``tests/extraction/test_inputs.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tlkit.data.ids import csv_cell, display_id, id_bytes, id_from_bytes
from tlkit.data.listing import is_transient
from tlkit.errors import BadInputError
from tlkit.host.readers import open_dataset


def _images(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    from tlkit.data.samples import make_image_folder

    return make_image_folder(root, classes=classes, per_class=per_class, size=(16, 16))


def _skips(ds) -> dict[str, str]:
    return {s.id: s.reason for s in ds.skipped}


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = _images(tmp_path / "d")
    hidden = root / "class_0" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(root / "class_0" / "img_0000.png", hidden / "img_0000-checkpoint.png")
    shutil.copy(root / "class_0" / "img_0000.png", root / "class_1" / ".hidden.png")
    (root / ".git").mkdir()
    shutil.copy(root / "class_0" / "img_0000.png", root / ".git" / "x.png")
    ds = open_dataset(root)
    assert [r.id for r in ds.records] == [
        "class_0/img_0000.png", "class_0/img_0001.png", "class_1/img_0000.png", "class_1/img_0001.png"
    ]  # fmt: skip
    assert ds.class_names == ["class_0", "class_1"]
    assert ds.skipped == []


def test_a_file_beside_class_folders_is_a_named_skip_not_a_flat_dataset(tmp_path):
    root = _images(tmp_path / "d", per_class=3)
    shutil.copy(root / "class_0" / "img_0000.png", root / "stray.png")
    ds = open_dataset(root)
    assert len(ds) == 6 and ds.class_names == ["class_0", "class_1"]
    assert "outside the class folders" in _skips(ds)["stray.png"]


def test_a_flat_folder_with_an_empty_subfolder_stays_flat(tmp_path):
    root = _images(tmp_path / "d", classes=1)
    for p in (root / "class_0").iterdir():
        shutil.move(p, root / p.name)
    ds = open_dataset(root)
    assert [r.id for r in ds.records] == ["img_0000.png", "img_0001.png"] and ds.class_names == []


def test_broken_links_and_loops_are_skip_records(tmp_path):
    root = _images(tmp_path / "d")
    (root / "class_1" / "broken.png").symlink_to("nowhere.png")
    (root / "class_1" / "up").symlink_to("..")
    (root / "class_1" / "self").symlink_to("self")
    (root / "class_0" / "linked").symlink_to(root / "class_1")  # a link to a sibling is followed, not a loop
    ds = open_dataset(root)
    skips = _skips(ds)
    assert skips["class_1/broken.png"].startswith("broken symbolic link")
    assert skips["class_1/up/"].startswith("symbolic link loop")
    assert skips["class_1/self"].startswith("symbolic link loop")
    assert "class_0/linked/img_0000.png" in [r.id for r in ds.records]
    assert len(ds) == 6


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_pipe_with_an_image_name_is_a_skip_record(tmp_path):
    root = _images(tmp_path / "d")
    os.mkfifo(root / "class_0" / "pipe.png")
    ds = open_dataset(root)
    assert _skips(ds)["class_0/pipe.png"].startswith("not a regular file")


def test_non_utf8_file_names_give_surrogate_escaped_ids(tmp_path):
    root = _images(tmp_path / "d")
    raw = os.fsencode(root / "class_0") + b"/caf\xe9\xff.png"
    os.rename(os.fsencode(root / "class_0" / "img_0000.png"), raw)
    ds = open_dataset(root)
    ids = [r.id for r in ds.records]
    assert "class_0/caf\udce9\udcff.png" in ids
    assert os.fsencode(root / "class_0") + b"/" + os.fsencode(ids[0].split("/", 1)[1]) == raw
    assert id_from_bytes(id_bytes(ids[0])) == ids[0]
    assert display_id(ids[0]) == "class_0/caf\\xe9\\xff.png"
    assert len(ds.fingerprint()) == 32


def test_manifest_absolute_paths_duplicates_and_conflicts(tmp_path):
    root = _images(tmp_path / "d")
    absolute = root / "class_1" / "img_0000.png"
    manifest = root / "man.csv"
    manifest.write_text(
        f"path,label\nclass_0/img_0000.png,a\n./class_0/img_0000.png,a\n{absolute},b\nclass_1/img_0001.png,\n"
    )
    ds = open_dataset(manifest)
    assert [(r.id, r.label) for r in ds.records] == [
        ("class_0/img_0000.png", 0), (str(absolute), 1), ("class_1/img_0001.png", -1)
    ]  # fmt: skip
    assert _skips(ds) == {"man.csv:3": "duplicate of line 2 (./class_0/img_0000.png); left out"}
    manifest.write_text("path,label\nclass_0/img_0000.png,a\nclass_1/img_0000.png,b\nclass_0/img_0000.png,b\n")
    with pytest.raises(BadInputError, match=r"man.csv:4: class_0/img_0000.png is listed again with another label"):
        open_dataset(manifest)


@pytest.mark.parametrize("suffix", [".csv", "manifest"])
def test_an_unclosed_quote_is_an_error_naming_its_line(tmp_path, suffix):
    if suffix == ".csv":
        path = tmp_path / "t.csv"
        path.write_text('text,label\ngood one,a\n"never closed,b\nthird,a\nfourth,b\n')
        with pytest.raises(BadInputError, match=r"t.csv:3: a quote opened on this line is never closed"):
            open_dataset(path, modality="text")
    else:
        root = _images(tmp_path / "d")
        path = root / "m.csv"
        path.write_text('path,label\nclass_0/img_0000.png,a\n"class_0/img_0001.png,a\nclass_1/img_0000.png,b\n')
        with pytest.raises(BadInputError, match=r"m.csv:3: a quote opened"):
            open_dataset(path)


def test_quoted_fields_may_still_span_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"two\nlines",a\nthird,b\n')
    ds = open_dataset(path, modality="text")
    assert [(r.id, r.source) for r in ds.records] == [("t.csv:2", "two\nlines"), ("t.csv:4", "third")]


def test_text_folder_follows_the_scan_rules(tmp_path):
    root = tmp_path / "txt"
    for c in ("pos", "neg"):
        (root / c).mkdir(parents=True)
        (root / c / "a.txt").write_text(f"a {c} text")
    (root / "pos" / ".hidden").mkdir()
    (root / "pos" / ".hidden" / "h.txt").write_text("hidden")
    (root / "stray.txt").write_text("beside the classes")
    (root / "neg" / "latin.txt").write_bytes(b"caf\xe9")
    ds = open_dataset(root, modality="text")
    assert sorted(r.id for r in ds.records) == ["neg/a.txt", "pos/a.txt"]
    skips = _skips(ds)
    assert set(skips) == {"stray.txt", "neg/latin.txt"}
    assert "not valid UTF-8" in skips["neg/latin.txt"]


def test_jsonl_lone_surrogate_text_is_a_skip_record(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": "bad \\udcff", "label": "b"}\n')
    ds = open_dataset(path, modality="text")
    assert [r.id for r in ds.records] == ["t.jsonl:1"]
    assert "lone surrogate" in _skips(ds)["t.jsonl:2"]


def test_audio_folder_hidden_and_stray_files(tmp_path):
    import numpy as np
    import soundfile as sf

    root = tmp_path / "a"
    for c in ("yes", "no"):
        (root / c).mkdir(parents=True)
        sf.write(root / c / "x.wav", np.zeros(800, np.float32), 8000)
    (root / "yes" / ".cache").mkdir()
    sf.write(root / "yes" / ".cache" / "h.wav", np.zeros(800, np.float32), 8000)
    sf.write(root / "loose.wav", np.zeros(800, np.float32), 8000)
    ds = open_dataset(root, modality="audio")
    assert sorted(r.id for r in ds.records) == ["no/x.wav", "yes/x.wav"]
    assert list(_skips(ds)) == ["loose.wav"]


def test_transient_reasons_and_csv_cells():
    assert is_transient("permission denied (unreadable file)")
    assert is_transient("file not found")
    assert is_transient("I/O error (Input/output error); check the disk and rerun")
    assert not is_transient("truncated or corrupt image (image file is truncated)")
    assert [csv_cell(v) for v in ("=1+1", "+x", "-x", "@x", "\tx", "plain", "a=b")] == [
        "'=1+1", "'+x", "'-x", "'@x", "'\tx", "plain", "a=b"
    ]  # fmt: skip
    assert csv_cell("caf\udce9") == "caf\\xe9"
