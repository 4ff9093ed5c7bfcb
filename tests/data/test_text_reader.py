"""The text reader: CSV, TSV and JSONL tables, folders of .txt files, and each bad-input case."""

from __future__ import annotations

import json

import pytest

from tlkit import open_dataset
from tlkit.data import UNLABELLED
from tlkit.data.text import TextReader
from tlkit.errors import BadInputError


def test_csv_rows_with_ids_lengths_labels_and_multiline_text(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\ngreat film,pos\n"long\nwinded, but fine",pos\n\nawful,neg\n', encoding="utf-8")
    ds = open_dataset(path, modality="text")
    assert ds.reader == "text" and ds.modality == "text" and ds.class_names == ["neg", "pos"]
    assert [r.id for r in ds.records] == ["reviews.csv:2", "reviews.csv:3", "reviews.csv:6"]
    assert [r.source for r in ds.records] == ["great film", "long\nwinded, but fine", "awful"]
    assert [r.length for r in ds.records] == [10, 21, 5]
    assert [r.label for r in ds.records] == [1, 1, 0]
    assert TextReader().load(ds.records[1]) == "long\nwinded, but fine"
    assert ds.skipped == []


def test_tsv_and_custom_columns(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("id\tbody\ttopic\n1\tthe cat sat, quietly\tpets\n2\tstocks fell\tmoney\n", encoding="utf-8")
    ds = open_dataset(path, modality="text", text_column="body", label_column="topic")
    assert [r.source for r in ds.records] == ["the cat sat, quietly", "stocks fell"]
    assert ds.class_names == ["money", "pets"] and ds.options["text_column"] == "body"


def test_jsonl_with_bad_lines_recorded(tmp_path):
    path = tmp_path / "items.jsonl"
    lines = [
        json.dumps({"text": "first", "label": 2}),
        "{not json",
        "",
        json.dumps({"text": "", "label": 1}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "second", "label": 10}),
        json.dumps({"text": "third"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = open_dataset(path, modality="text")
    assert [(r.id, r.source) for r in ds.records] == [("items.jsonl:1", "first"), ("items.jsonl:6", "second"),
                                                      ("items.jsonl:7", "third")]  # fmt: skip
    assert ds.class_names == ["2", "10"]  # integer labels sort as numbers
    assert [r.label for r in ds.records] == [0, 1, UNLABELLED]
    reasons = {s.id: s.reason for s in ds.skipped}
    assert set(reasons) == {"items.jsonl:2", "items.jsonl:4", "items.jsonl:5"}
    assert "not valid JSON" in reasons["items.jsonl:2"] and "empty 'text'" in reasons["items.jsonl:4"]


def test_empty_rows_are_recorded_and_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\n,b\n   ,a\nworld,b\n", encoding="utf-8")
    ds = open_dataset(path, modality="text")
    assert [r.source for r in ds.records] == ["hello", "world"]
    assert [(s.id, s.reason) for s in ds.skipped] == [("d.csv:3", "empty 'text'"), ("d.csv:4", "empty 'text'")]
    assert ds.fingerprint() == open_dataset(path, modality="text").fingerprint()
    path.write_text("text,label\nhello,a\n,b\n   ,a\nworld!,b\n", encoding="utf-8")
    assert ds.fingerprint() != open_dataset(path, modality="text").fingerprint()


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,category\nhi,a\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"d\.csv: no column 'text'; columns are sentence, category"):
        open_dataset(path, modality="text")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"body": "x", "y": 1}) + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="no column 'text'; columns are body, y"):
        open_dataset(jsonl, modality="text")


def test_missing_label_column_is_an_error_only_when_asked_for(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,category\nhi,a\n", encoding="utf-8")
    ds = open_dataset(path, modality="text")
    assert not ds.labelled and ds.class_names == []
    with pytest.raises(BadInputError, match=r"no column 'label'; columns are text, category \(set label_column\)"):
        open_dataset(path, modality="text", label_column="label")


def test_encoding_error_names_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nfine,a\nalso fine,b\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(BadInputError, match=r"latin\.csv: line 4 is not valid UTF-8.*re-save the file as UTF-8"):
        open_dataset(path, modality="text")


def test_empty_files_and_header_only_tables(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(BadInputError, match="no rows"):
        open_dataset(empty, modality="text")
    header = tmp_path / "header.csv"
    header.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="no data rows"):
        open_dataset(header, modality="text")
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\n,a\n ,b\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="every row has an empty 'text'"):
        open_dataset(blank, modality="text")
    sheet = tmp_path / "x.xlsx"
    sheet.write_bytes(b"PK")
    with pytest.raises(BadInputError, match="unsupported text input .xlsx"):
        TextReader().scan(sheet)
    with pytest.raises(BadInputError, match="no text reader understands"):
        open_dataset(sheet, modality="text")


def test_rows_with_too_many_fields_are_recorded(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,a\nunquoted, comma,b\nfine,b\n", encoding="utf-8")
    ds = open_dataset(path, modality="text")
    assert [r.source for r in ds.records] == ["ok", "fine"]
    assert ds.skipped[0].id == "d.csv:3" and "3 fields" in ds.skipped[0].reason


def test_folder_of_txt_files_by_class(tmp_path):
    root = tmp_path / "docs"
    (root / "sport").mkdir(parents=True)
    (root / "politics").mkdir()
    (root / "sport" / "a.txt").write_text("The match ended 2-1.\n", encoding="utf-8")
    (root / "sport" / "b.txt").write_text("   \n", encoding="utf-8")
    (root / "politics" / "c.txt").write_text("Parliament voted.", encoding="utf-8")
    (root / "politics" / "d.txt").write_bytes(b"line one\nline two \xff\xfe\n")
    (root / "politics" / "ignored.md").write_text("not a .txt file", encoding="utf-8")
    ds = open_dataset(root, modality="text")
    assert ds.class_names == ["politics", "sport"]
    assert [(r.id, r.source, r.label, r.length) for r in ds.records] == [
        ("politics/c.txt", "Parliament voted.", 0, 17),
        ("sport/a.txt", "The match ended 2-1.\n", 1, 21),
    ]
    reasons = {s.id: s.reason for s in ds.skipped}
    assert reasons["sport/b.txt"] == "empty file"
    assert reasons["politics/d.txt"].startswith("line 2 is not valid UTF-8")


def test_flat_folder_is_unlabelled_and_empty_class_is_an_error(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "one.txt").write_text("one", encoding="utf-8")
    (flat / "two.txt").write_text("two", encoding="utf-8")
    ds = open_dataset(flat, modality="text")
    assert not ds.labelled and [r.id for r in ds.records] == ["one.txt", "two.txt"]
    classes = tmp_path / "classes"
    (classes / "a").mkdir(parents=True)
    (classes / "b").mkdir()
    (classes / "a" / "x.txt").write_text("x", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"class folder\(s\) b contain no text files"):
        open_dataset(classes, modality="text")
