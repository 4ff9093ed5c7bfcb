"""The bad-input corpus: small datasets of odd and broken images, tables and audio, each with its expectation.

Every file is generated here (PIL, numpy, soundfile, plain bytes); nothing binary is kept in git. A **case** is one
dataset (a folder, a manifest, a CSV/JSONL file, an audio folder) holding good items and bad items of one or more
**kinds**, plus what ``tlkit extract`` must make of it:

- ``rows``: ids that must be rows of the cache (odd-but-valid files count: tlkit must read them);
- ``skipped``: ids that must be named skip records, each with a substring its reason must contain ("" for any);
- ``ignored``: ids that must not be rows (hidden files, unknown extensions: documented as ignored);
- ``labels``: the class name some rows must carry ("" for unlabelled);
- ``error``: for a dataset-level problem, a substring of the one-line ``Error:`` the run must stop with.

``make_corpus(out)`` writes every case under ``out/<case>/`` and ``out/cases.json``; as a script,
``python tests/corpus/make_corpus.py OUT`` does the same and prints one line per case.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
AUDIO_PLUGIN = HERE / "tlkit_corpus_audio.py"
BACKBONES = {"image": "fake/image", "text": "fake/text", "audio": "corpus/audio"}


@dataclass
class Case:
    name: str
    modality: str
    input: str  # relative to the case folder
    kinds: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    options: list[str] = field(default_factory=list)
    needs_non_root: bool = False

    def good(self, kind: str, item_id: str, label: str | None = None) -> None:
        self._kind(kind)
        self.rows.append(item_id)
        if label is not None:
            self.labels[item_id] = label

    def bad(self, kind: str, item_id: str, reason: str = "") -> None:
        self._kind(kind)
        self.skipped[item_id] = reason

    def ignore(self, kind: str, item_id: str) -> None:
        self._kind(kind)
        self.ignored.append(item_id)

    def _kind(self, kind: str) -> None:
        if kind not in self.kinds:
            self.kinds.append(kind)


# -- images -----------------------------------------------------------------------------------------------------------
def _pixels(seed: int, size: tuple[int, int] = (24, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _rgb(seed: int, size: tuple[int, int] = (24, 20)) -> Any:
    from PIL import Image

    return Image.fromarray(_pixels(seed, size), "RGB")


def _encode(im: Any, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", __import__("zlib").crc32(kind + body))


def _odd_images(seed: int) -> dict[str, tuple[str, bytes]]:
    """Valid images in every mode and container tlkit promises to read: ``file name -> (kind, bytes)``."""
    from PIL import Image

    base = _rgb(seed)
    grey = base.convert("L")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray((_pixels(seed + 1)[..., 0] // 2).astype(np.uint8), "L"))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [_rgb(seed + i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    tiff = io.BytesIO()
    base.save(tiff, "TIFF", save_all=True, append_images=[_rgb(seed + 5), _rgb(seed + 6)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    bad_exif = Image.Exif()
    bad_exif[0x0112] = 9  # not a valid orientation: ignored
    wide = Image.fromarray(_pixels(seed, (600, 1)), "RGB")
    sixteen = Image.fromarray(_pixels(seed)[..., 0].astype(np.uint16) * 257)
    floats = Image.fromarray(_pixels(seed)[..., 0].astype(np.float32) / 255.0)
    int32 = Image.fromarray(_pixels(seed)[..., 0].astype(np.int32) * 1000)
    return {
        "rgb.jpg": ("RGB JPEG", _encode(base, "JPEG")),
        "grey.png": ("greyscale PNG", _encode(grey, "PNG")),
        "rgba.png": ("RGBA PNG (alpha composited)", _encode(rgba, "PNG")),
        "palette_transparent.png": ("palette PNG with transparency", _encode(palette, "PNG")),
        "sixteen_bit.png": ("16-bit greyscale PNG", _encode(sixteen, "PNG")),
        "cmyk.jpg": ("CMYK JPEG", _encode(base.convert("CMYK"), "JPEG")),
        "animated.gif": ("animated GIF (first frame)", gif.getvalue()),
        "exif_rotated.jpg": ("EXIF-rotated JPEG", _encode(base, "JPEG", exif=exif.tobytes())),
        "exif_bad_orientation.jpg": ("JPEG with an invalid EXIF orientation", _encode(base, "JPEG", exif=bad_exif)),
        "multipage.tif": ("multi-page TIFF (first page)", tiff.getvalue()),
        "float.tif": ("32-bit float TIFF", _encode(floats, "TIFF")),
        "int32.tif": ("32-bit integer TIFF", _encode(int32, "TIFF")),
        "bilevel.png": ("1-bit PNG", _encode(grey.convert("1"), "PNG")),
        "grey_alpha.png": ("greyscale+alpha PNG", _encode(rgba.convert("LA"), "PNG")),
        "picture.webp": ("WebP", _encode(base, "WEBP")),
        "picture.bmp": ("BMP", _encode(base, "BMP")),
        "progressive.jpg": ("progressive JPEG", _encode(base, "JPEG", progressive=True)),
        "one_pixel.png": ("1x1 image", _encode(_rgb(seed, (1, 1)), "PNG")),
        "wide.png": ("600x1 image", _encode(wide, "PNG")),
        "UPPER.JPG": ("upper-case extension", _encode(base, "JPEG")),
        "Mixed.PnG": ("mixed-case extension", _encode(base, "PNG")),
        "trailing_bytes.jpg": ("JPEG with bytes after the end marker", _encode(base, "JPEG") + b"\0garbage" * 64),
    }


def _broken_images(seed: int) -> dict[str, tuple[str, bytes, str]]:
    """Files with an image extension that are not decodable images: ``name -> (kind, bytes, reason substring)``."""
    from PIL import Image

    base = _rgb(seed, (64, 48))
    jpeg = _encode(base, "JPEG")
    png = _encode(base, "PNG")
    crc = bytearray(png)
    crc[29] ^= 0xFF  # the IHDR chunk's CRC
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    bomb += _png_chunk(b"IDAT", __import__("zlib").compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    lab = _encode(Image.new("LAB", (8, 8)), "TIFF")
    return {
        "truncated.jpg": ("truncated JPEG", jpeg[: len(jpeg) // 2], ""),
        "truncated.png": ("truncated PNG", png[: len(png) // 2], ""),
        "truncated.gif": ("truncated GIF", _encode(base.convert("P"), "GIF")[:40], ""),
        "truncated.webp": ("truncated WebP", _encode(base, "WEBP")[:60], ""),
        "signature_only.png": ("PNG signature only", png[:8], ""),
        "soi_only.jpg": ("JPEG start marker only", b"\xff\xd8", ""),
        "zero_bytes.jpg": ("zero-byte file", b"", "empty"),
        "random_bytes.jpg": ("random bytes named .jpg", np.random.default_rng(seed).bytes(2048), "not an image"),
        "text.png": ("text file named .png", b"just some notes, not a picture\n" * 4, "not an image"),
        "svg.png": ("SVG disguised as .png", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', ""),
        "page.jpg": ("HTML disguised as .jpg", b"<!doctype html><html><body>404</body></html>", ""),
        "bad_crc.png": ("PNG with a bad header CRC", bytes(crc), ""),
        "bomb.png": ("decompression bomb (40000x40000 declared)", bomb, "too large"),
        "lab.tif": ("LAB colour TIFF (unsupported mode)", lab, ""),
    }


def image_decode(root: Path) -> Case:
    """Class folders a/ and b/ with every odd-but-valid image and every undecodable one; a nested subfolder."""
    case = Case("image_decode", "image", "data")
    data = root / "data"
    for label, seed in (("a", 1), ("b", 2)):
        for name, (kind, blob) in _odd_images(seed).items():
            _write(data / label / name, blob)
            case.good(kind, f"{label}/{name}", label)
    for name, (kind, blob, reason) in _broken_images(3).items():
        label = "a" if len(case.skipped) % 2 else "b"
        _write(data / label / name, blob)
        case.bad(kind, f"{label}/{name}", reason)
    _write(data / "a" / "sub" / "deeper" / "nested.png", _encode(_rgb(9), "PNG"))
    case.good("image in nested subfolders of a class", "a/sub/deeper/nested.png", "a")
    _write(data / "b" / "folder.jpg" / "inside.png", _encode(_rgb(10), "PNG"))
    case.good("directory named x.jpg (searched, not decoded)", "b/folder.jpg/inside.png", "b")
    (data / "b" / "empty_dir.png").mkdir()
    case.ignore("empty directory named x.png", "b/empty_dir.png")
    _write(data / "a" / ".ipynb_checkpoints" / "rgb-checkpoint.png", _encode(_rgb(11), "PNG"))
    case.ignore("image inside a hidden folder of a class", "a/.ipynb_checkpoints/rgb-checkpoint.png")
    _write(data / "a" / "notes.txt", b"not an image extension")
    case.ignore("unknown extension in an image folder", "a/notes.txt")
    _write(data / "README.md", b"# about this dataset\n")
    case.ignore("non-image file at the root of class folders", "README.md")
    return case


def image_names(root: Path) -> Case:
    """A flat (unlabelled) folder of good images with hard file names, hidden files and a hidden folder."""
    case = Case("image_names", "image", "data")
    data = root / "data"
    names = {
        "with space.png": "space in the name",
        "new\nline.png": "newline in the name",
        "caf\u00e9.png": "accented name",
        "\u65e5\u672c\u8a9e.png": "CJK name",
        "\u0645\u0631\u062d\u0628\u0627.png": "right-to-left name",
        "cat_\U0001f431.png": "emoji in the name",
        "x" * 240 + ".png": "240-character name",
        "-starts-with-dash.png": "name starting with a dash",
        "comma,name.png": "comma in the name",
        'quote"name.png': "quote in the name",
        "=formula.png": "name starting with = (spreadsheet formula)",
        "back\\slash.png": "backslash in the name",
        "tab\tname.png": "tab in the name",
    }
    for i, (name, kind) in enumerate(names.items()):
        _write(data / name, _encode(_rgb(20 + i), "PNG"))
        case.good(kind, name)
    raw = b"latin1_\xe9t\xe9.png"  # not valid UTF-8
    with open(os.path.join(os.fsencode(data), raw), "wb") as f:
        f.write(_encode(_rgb(40), "PNG"))
    case.good("non-UTF-8 file name", os.fsdecode(raw))
    _write(data / ".hidden.png", _encode(_rgb(42), "PNG"))
    case.ignore("hidden file", ".hidden.png")
    _write(data / ".ipynb_checkpoints" / "checkpoint.png", _encode(_rgb(43), "PNG"))
    case.ignore("image inside a hidden folder", ".ipynb_checkpoints/checkpoint.png")
    _write(data / ".cache" / "nested" / "thumb.png", _encode(_rgb(44), "PNG"))
    case.ignore("image nested under a hidden folder", ".cache/nested/thumb.png")
    return case


def image_links(root: Path) -> Case:
    """Symlinks (to good files, broken, loops), a FIFO, and a stray image at the root of the class folders."""
    case = Case("image_links", "image", "data")
    data = root / "data"
    for label, seed in (("a", 50), ("b", 51)):
        _write(data / label / "real.png", _encode(_rgb(seed), "PNG"))
        case.good("plain image", f"{label}/real.png", label)
    _write(root / "outside" / "elsewhere.png", _encode(_rgb(52), "PNG"))
    (data / "a" / "link_outside.png").symlink_to(root / "outside" / "elsewhere.png")
    case.good("symlink to an image outside the dataset", "a/link_outside.png", "a")
    (data / "b" / "link_sibling.png").symlink_to("real.png")
    case.good("relative symlink to a sibling image", "b/link_sibling.png", "b")
    (data / "a" / "broken.png").symlink_to(root / "no-such-file.png")
    case.bad("broken symlink", "a/broken.png")
    (data / "b" / "loop1.png").symlink_to("loop2.png")
    (data / "b" / "loop2.png").symlink_to("loop1.png")
    case.bad("symlink loop (two links)", "b/loop1.png")
    case.bad("symlink loop (two links)", "b/loop2.png")
    (data / "a" / "self.jpg").symlink_to("self.jpg")
    case.bad("symlink to itself", "a/self.jpg")
    (data / "a" / "up").symlink_to("..")
    case.bad("directory symlink loop (to its parent)", "a/up/", "loop")
    os.mkfifo(data / "b" / "pipe.png")
    case.bad("named pipe (FIFO) with an image name", "b/pipe.png")
    # One image at the root of class folders is a named record; the labelled images stay rows (never a silently
    # flat dataset of one row).
    _write(data / "stray.png", _encode(_rgb(53), "PNG"))
    case.bad("stray image at the root of class folders", "stray.png", "class folder")
    return case


def image_permissions(root: Path) -> Case:
    """An unreadable file, an unreadable directory, and a directory without execute permission. Root ignores mode
    bits: the test runs this case without the DAC capabilities (``Case.needs_non_root``)."""
    case = Case("image_permissions", "image", "data", needs_non_root=True)
    data = root / "data"
    for label, seed in (("a", 60), ("b", 61)):
        _write(data / label / "ok.png", _encode(_rgb(seed), "PNG"))
        case.good("plain image", f"{label}/ok.png", label)
    _write(data / "a" / "unreadable.png", _encode(_rgb(62), "PNG")).chmod(0)
    case.bad("unreadable file (mode 000)", "a/unreadable.png", "permission")
    _write(data / "b" / "locked" / "inside.png", _encode(_rgb(63), "PNG"))
    (data / "b" / "locked").chmod(0)
    case.bad("unreadable directory (mode 000)", "b/locked/", "permission")
    _write(data / "a" / "noexec" / "inside.png", _encode(_rgb(64), "PNG"))
    (data / "a" / "noexec").chmod(0o644)
    case.bad("directory without execute permission", "a/noexec/inside.png", "permission")
    return case


def image_empty_class(root: Path) -> Case:
    case = Case("image_empty_class", "image", "data", error="empty_class")
    data = root / "data"
    for label, seed in (("a", 80), ("c", 81)):
        _write(data / label / "0.png", _encode(_rgb(seed), "PNG"))
    (data / "empty_class").mkdir()
    _write(data / "empty_class" / "notes.txt", b"no images here")
    case.kinds.append("empty class folder")
    return case


def _manifest(path: Path, lines: list[str], *, bom: bool = False, newline: str = "\n") -> None:
    text = newline.join(lines) + newline
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def image_manifest(root: Path) -> Case:
    """A path,label manifest (UTF-8 BOM, CRLF, an extra column, blank lines) with missing, empty, repeated, absolute
    and odd paths."""
    case = Case("image_manifest", "image", "manifest.csv")
    case.kinds += ["manifest with a UTF-8 BOM", "manifest with CRLF line ends", "manifest with an extra column"]
    imgs = root / "imgs"
    for i in range(4):
        _write(imgs / f"{i}.png", _encode(_rgb(90 + i), "PNG"))
    _write(imgs / "with,comma.png", _encode(_rgb(95), "PNG"))
    _write(imgs / "broken.jpg", b"not a jpeg")
    (imgs / "a_directory.png").mkdir()
    absolute = str(_write(root / "elsewhere" / "abs.png", _encode(_rgb(96), "PNG")).resolve())
    # (path cell, label cell, note cell, kind, expectation): "row", "row:unlabelled", or "skip:REASON" (the id is the
    # path) or "line:REASON" (the id is manifest.csv:LINE); None is a blank line.
    table: list[tuple[str, str, str, str, str] | None] = [
        ("imgs/0.png", "cat", "", "manifest row", "row"),
        ("imgs/1.png", "dog", '"extra, text"', "manifest row with a quoted note", "row"),
        None,
        ("imgs/2.png", "dog", "", "manifest row after a blank line", "row"),
        ("imgs/3.png", "", "", "manifest row with an empty label", "row:unlabelled"),
        ('"imgs/with,comma.png"', "cat", "", "quoted manifest path with a comma", "row"),
        ("imgs/missing.png", "cat", "", "manifest path to a missing file", "skip:not found"),
        ("", "cat", "", "manifest row with an empty path", "line:empty path"),
        ("imgs/broken.jpg", "dog", "", "manifest path to a broken image", "skip:not an image"),
        ("imgs/a_directory.png", "dog", "", "manifest path to a directory", "skip:directory"),
        ("imgs/0.png", "cat", "", "manifest listing a path twice", "line:line 2"),
        (absolute, "dog", "", "absolute path in a manifest (its id is the path as written)", "row"),
    ]
    lines = ["path,label,note"]
    for entry in table:
        lines.append("" if entry is None else ",".join(entry[:3]))
        if entry is None:
            case.kinds.append("blank line in a manifest")
            continue
        path, label, _, kind, expect = entry
        item_id = path.strip('"')
        if expect.startswith("row"):
            case.good(kind, item_id, "" if expect.endswith("unlabelled") else label)
        else:
            where, reason = expect.split(":", 1)
            case.bad(kind, f"manifest.csv:{len(lines)}" if where == "line" else item_id, reason)
    _manifest(root / "manifest.csv", lines, bom=True, newline="\r\n")
    return case


# -- text -------------------------------------------------------------------------------------------------------------
def text_csv(root: Path) -> Case:
    """One CSV (UTF-8 BOM, CRLF) with every odd row kind; ids are ``table.csv:LINE`` (the line a row starts on)."""
    case = Case("text_csv", "text", "table.csv")
    case.kinds += ["CSV with a UTF-8 BOM", "CSV with CRLF line ends", "duplicate name of an unused column"]
    lines = ["text,label,note,note"]

    def row(cells: str) -> str:
        start = sum(line.count("\n") + 1 for line in lines) + 1
        lines.append(cells)
        return f"table.csv:{start}"

    case.good("plain row", row("a quiet cat sleeps,animal,,"), "animal")
    case.good("plain row", row("the bus is late,vehicle,,"), "vehicle")
    case.bad("empty text", row(",animal,,"), "empty")
    case.bad("whitespace-only text", row("   \t ,animal,,"), "empty")
    case.good("text longer than the tokenizer's maximum", row("word " * 2000 + ",animal,,"), "animal")
    case.good("row with an empty label (unlabelled)", row("no label here,,,"), "")
    case.good("row with too few fields", row("short row"), "")
    case.good("numeric label", row("numbers as labels,7,,"), "7")
    formula = "=cmd|' /C calc'!A0"
    case.good("label starting with = (spreadsheet formula)", row(f'formula label,"{formula}",,'), formula)
    case.good("text with a NUL character", row("nul\0inside,animal,,"), "animal")
    case.good("text with control characters", row("bell\x07 escape\x1b[31m red,vehicle,,"), "vehicle")
    case.good("right-to-left text", row("\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd,animal,,"), "animal")
    case.good("emoji text", row("\U0001f431\U0001f68c mixed,vehicle,,"), "vehicle")
    case.good("quoted field spanning lines", row('"a quoted text\nover two lines, with a comma",animal,,'), "animal")
    case.bad("row with more fields than the header", row("too,many,fields,here,and,more"), "fields")
    case.good("row after a multi-line field", row("the last row,vehicle,,"), "vehicle")
    _manifest(root / "table.csv", lines, bom=True, newline="\r\n")
    return case


def text_csv_unbalanced_quote(root: Path) -> Case:
    """An opening quote that never closes would swallow the rest of the file: it is named, with its line."""
    case = Case("text_csv_unbalanced_quote", "text", "table.csv", error="table.csv:3")
    lines = ["text,label", "fine row,a", '"never closed,b', "next row,a", "another row,b", "last row,a"]
    _manifest(root / "table.csv", lines)
    case.kinds.append("CSV with an unbalanced quote")
    return case


def text_csv_non_utf8(root: Path) -> Case:
    case = Case("text_csv_non_utf8", "text", "table.csv", error="line 3")
    (root / "table.csv").write_bytes(b"text,label\nfine,a\ncaf\xe9 latin-1,b\nmore,a\n")
    case.kinds.append("CSV with non-UTF-8 bytes")
    return case


def text_csv_utf16(root: Path) -> Case:
    case = Case("text_csv_utf16", "text", "table.csv", error="UTF-8")
    (root / "table.csv").write_bytes("text,label\nfine,a\nalso fine,b\n".encode("utf-16"))
    case.kinds.append("CSV in UTF-16 with a BOM")
    return case


def text_csv_missing_column(root: Path) -> Case:
    case = Case("text_csv_missing_column", "text", "table.csv", error="no column 'text'")
    _manifest(root / "table.csv", ["sentence,label", "fine,a", "also fine,b"])
    case.kinds.append("CSV without the text column")
    return case


def text_jsonl(root: Path) -> Case:
    """JSON lines: objects, broken lines, non-objects, missing or null text; blank lines and CRLF ends."""
    case = Case("text_jsonl", "text", "rows.jsonl")
    case.kinds += ["JSONL with CRLF line ends", "blank line in JSONL"]
    lines: list[str] = []

    def row(obj: Any, raw: str | None = None) -> str:
        lines.append(raw if raw is not None else json.dumps(obj, ensure_ascii=False))
        return f"rows.jsonl:{len(lines)}"

    case.good("JSON object", row({"text": "a quiet cat", "label": "animal"}), "animal")
    case.good("JSON object", row({"text": "a late bus", "label": "vehicle"}), "vehicle")
    lines.append("")
    case.bad("JSONL line that is not JSON", row(None, '{"text": "cut off'), "JSON")
    case.bad("JSONL line that is an array", row(["text", "label"]), "")
    case.bad("JSONL line that is a string", row("just a string"), "")
    case.bad("JSONL object without the text field", row({"body": "wrong key", "label": "animal"}), "")
    case.bad("JSONL object with null text", row({"text": None, "label": "animal"}), "")
    case.good("JSONL object with an escaped NUL", row({"text": "nul\u0000inside", "label": "animal"}), "animal")
    case.bad("JSONL text with a lone surrogate escape", row(None, '{"text": "half \\ud800 a pair", "label": "animal"}'))
    case.good("JSONL object with extra fields", row({"text": "extra", "label": "animal", "x": [1, {"y": 2}]}), "animal")
    case.good("JSONL numeric label", row({"text": "numbered", "label": 3}), "3")
    case.good("JSONL last row", row({"text": "the end", "label": "vehicle"}), "vehicle")
    (root / "rows.jsonl").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return case


def text_folder(root: Path) -> Case:
    """Class folders of .txt files: a BOM, non-UTF-8 and UTF-16 files, empty and blank files, hidden files."""
    case = Case("text_folder", "text", "data")
    data = root / "data"
    files = {
        "a/plain.txt": ("plain .txt file", b"a calm cat", None),
        "b/plain.txt": ("plain .txt file", b"a fast train", None),
        "a/bom.txt": (".txt file with a UTF-8 BOM", b"\xef\xbb\xbfbom at the start", None),
        "b/multiline.txt": (".txt file with several lines", b"line one\r\nline two\n", None),
        "a/latin1.txt": (".txt file in Latin-1", "caf\u00e9".encode("latin-1"), "UTF-8"),
        "b/utf16.txt": (".txt file in UTF-16", "sixteen bits".encode("utf-16"), "UTF-8"),
        "a/empty.txt": ("empty .txt file", b"", "empty"),
        "b/blank.txt": ("whitespace-only .txt file", b" \n\t\n", "empty"),
    }
    for rel, (kind, blob, reason) in files.items():
        _write(data / rel, blob)
        if reason is None:
            case.good(kind, rel, rel.split("/")[0])
        else:
            case.bad(kind, rel, reason)
    _write(data / "a" / ".hidden.txt", b"hidden text")
    case.ignore("hidden .txt file", "a/.hidden.txt")
    _write(data / "b" / "notes.md", b"# not a .txt file")
    case.ignore("non-.txt file in a text folder", "b/notes.md")
    return case


# -- audio ------------------------------------------------------------------------------------------------------------
def _tone(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    freq = 220.0 * (1 + seed % 5)
    mono = 0.4 * np.sin(2 * np.pi * min(freq, rate / 4) * t) + 0.05 * rng.standard_normal(t.shape)
    return np.stack([mono * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float64)


def _sound(data: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _wav_header_only(rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
    return buf.getvalue()


def audio_folder(root: Path) -> Case:
    """Class folders of audio: every sample format, channel count and rate soundfile reads, and broken files."""
    case = Case("audio_folder", "audio", "data")
    data = root / "data"
    tone = _tone(16000, 0.5)
    nan = tone.copy()
    nan[100] = np.nan
    inf = tone.copy()
    inf[50] = np.inf
    pcm16 = _sound(tone, 16000, "WAV", "PCM_16")
    good = {
        "pcm16.wav": ("16-bit WAV", pcm16),
        "pcm_u8.wav": ("8-bit unsigned WAV", _sound(tone, 16000, "WAV", "PCM_U8")),
        "pcm24.wav": ("24-bit WAV", _sound(tone, 16000, "WAV", "PCM_24")),
        "pcm32.wav": ("32-bit integer WAV", _sound(tone, 16000, "WAV", "PCM_32")),
        "float32.wav": ("32-bit float WAV", _sound(tone, 16000, "WAV", "FLOAT")),
        "float64.wav": ("64-bit float WAV", _sound(tone, 16000, "WAV", "DOUBLE")),
        "ulaw.wav": ("mu-law WAV", _sound(tone, 8000, "WAV", "ULAW")),
        "stereo.wav": ("stereo WAV (mixed to mono)", _sound(_tone(16000, 0.5, 2, 1), 16000, "WAV", "PCM_16")),
        "six_channels.wav": ("6-channel WAV", _sound(_tone(16000, 0.3, 6, 2), 16000, "WAV", "PCM_16")),
        "short.wav": ("10 samples (shorter than the window)", _sound(tone[:10], 16000, "WAV", "PCM_16")),
        "one_sample.wav": ("1 sample", _sound(tone[:1], 16000, "WAV", "PCM_16")),
        "long.wav": ("3 s (longer than the window)", _sound(_tone(16000, 3.0, 1, 3), 16000, "WAV", "PCM_16")),
        "rate_384k.wav": ("384 kHz sample rate", _sound(_tone(384000, 0.2, 1, 4), 384000, "WAV", "PCM_16")),
        "rate_1k.wav": ("1 kHz sample rate", _sound(_tone(1000, 1.0, 1, 5), 1000, "WAV", "PCM_16")),
        "silence.wav": ("digital silence", _sound(np.zeros((8000, 1)), 16000, "WAV", "PCM_16")),
        "clipped.wav": ("float WAV beyond [-1, 1]", _sound(tone * 8.0, 16000, "WAV", "FLOAT")),
        "sound.flac": ("FLAC", _sound(tone, 16000, "FLAC")),
        "sound.ogg": ("Ogg Vorbis", _sound(tone, 16000, "OGG", "VORBIS")),
        "UPPER.WAV": ("upper-case audio extension", pcm16),
        "wavex.wav": ("WAVE_FORMAT_EXTENSIBLE WAV", _sound(tone, 16000, "WAVEX", "PCM_16")),
    }
    for i, (name, (kind, blob)) in enumerate(good.items()):
        label = "ab"[i % 2]
        _write(data / label / name, blob)
        case.good(kind, f"{label}/{name}", label)
    wrong = bytearray(pcm16)
    wrong[8:12] = b"WAVX"
    bad = {
        "zero_bytes.wav": ("zero-byte audio file", b"", "empty"),
        "header_only.wav": ("WAV with 0 samples", _wav_header_only(), "0 samples"),
        "cut_header.wav": ("WAV cut inside its header", pcm16[:20], ""),
        "wrong_header.wav": ("WAV with a wrong RIFF type", bytes(wrong), ""),
        "text.wav": ("text file named .wav", b"this is not audio\n" * 8, ""),
        "random.flac": ("random bytes named .flac", np.random.default_rng(7).bytes(4096), ""),
        "nan.wav": ("float WAV with a NaN sample", _sound(nan, 16000, "WAV", "FLOAT"), "NaN"),
        "inf.wav": ("float WAV with an infinite sample", _sound(inf, 16000, "WAV", "FLOAT"), "infinite"),
        "png.ogg": ("PNG named .ogg", _encode(_rgb(8), "PNG"), ""),
    }
    for i, (name, (kind, blob, reason)) in enumerate(bad.items()):
        label = "ab"[i % 2]
        _write(data / label / name, blob)
        case.bad(kind, f"{label}/{name}", reason)
    _write(data / "a" / "song.mp3", _sound(tone, 16000, "MP3"))
    case.ignore("MP3 (not a listed audio extension)", "a/song.mp3")
    _write(data / "b" / ".hidden.wav", pcm16)
    case.ignore("hidden audio file", "b/.hidden.wav")
    return case


GENERATORS: dict[str, Callable[[Path], Case]] = {
    f.__name__: f
    for f in (
        image_decode,
        image_names,
        image_links,
        image_permissions,
        image_empty_class,
        image_manifest,
        text_csv,
        text_csv_unbalanced_quote,
        text_csv_non_utf8,
        text_csv_utf16,
        text_csv_missing_column,
        text_jsonl,
        text_folder,
        audio_folder,
    )
}
CASE_NAMES = list(GENERATORS)


def make_case(name: str, out: Path) -> Case:
    """Write case ``name`` under ``out/name/`` (replacing it) and return its expectation."""
    folder = Path(out) / name
    if folder.exists():
        _make_removable(folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    case = GENERATORS[name](folder)
    assert case.name == name, (case.name, name)
    return case


def make_corpus(out: str | os.PathLike[str]) -> list[Case]:
    """Write every case under ``out`` and the expectations to ``out/cases.json``."""
    out = Path(out)
    cases = [make_case(name, out) for name in CASE_NAMES]
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1) + "\n")
    return cases


def all_kinds(cases: list[Case]) -> list[str]:
    """Distinct kinds, by modality (``image: truncated JPEG``)."""
    return sorted({f"{c.modality}: {k}" for c in cases for k in c.kinds})


def install_audio_plugin(site: str | os.PathLike[str]) -> Path:
    """Make ``corpus/audio`` discoverable from ``site`` (a folder to put on ``PYTHONPATH``)."""
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(AUDIO_PLUGIN, site / AUDIO_PLUGIN.name)
    info = site / "tlkit_corpus_audio-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tlkit-corpus-audio\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tlkit]\ncorpus_audio = tlkit_corpus_audio\n")
    return site


def _make_removable(folder: Path) -> None:
    for dirpath, dirnames, _ in os.walk(folder):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o755)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/corpus/make_corpus.py OUT", file=sys.stderr)
        return 2
    cases = make_corpus(argv[0])
    for c in cases:
        what = f"error {c.error!r}" if c.error else f"{len(c.rows)} rows, {len(c.skipped)} skipped"
        print(f"{c.name}: {c.modality}, {len(c.kinds)} kinds, {what}")
    print(f"{len(all_kinds(cases))} kinds in {len(cases)} cases under {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
