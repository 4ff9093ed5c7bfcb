"""The image reader with real files: layouts, formats, colour modes, EXIF, bad input and the --on-error policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlkit import open_dataset
from tlkit.data.base import load_or_skip
from tlkit.data.image import ImageReader, as_rgb_image, decode_image
from tlkit.errors import BadInputError, BadItemError

READER = ImageReader()


def gradient(w: int = 40, h: int = 30) -> np.ndarray:
    """An RGB test pattern whose colours vary over the image."""
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90)], 2)


def rgb(w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(gradient(w, h).astype(np.uint8), "RGB")


def good_jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    rgb(*size).save(path, quality=90)
    return path


# -- layouts ----------------------------------------------------------------------------------------------------
def test_class_folders_sorted_with_stable_relative_ids(tmp_path: Path) -> None:
    for cls in ("zebra", "ant", "Moth"):
        (tmp_path / cls / "sub").mkdir(parents=True)
        good_jpeg(tmp_path / cls / "b.JPG")
        good_jpeg(tmp_path / cls / "sub" / "a.png")
    (tmp_path / "ant" / ".hidden.jpg").write_bytes(b"")  # hidden files are ignored
    (tmp_path / "ant" / "notes.txt").write_text("not an image")  # other extensions are ignored
    ds = open_dataset(tmp_path, modality="image")
    assert ds.reader == "image" and ds.class_names == ["Moth", "ant", "zebra"]
    assert [r.id for r in ds.records] == [
        "Moth/b.JPG",
        "Moth/sub/a.png",
        "ant/b.JPG",
        "ant/sub/a.png",
        "zebra/b.JPG",
        "zebra/sub/a.png",
    ]
    assert [r.label for r in ds.records] == [0, 0, 1, 1, 2, 2]
    again = open_dataset(tmp_path, modality="image")
    assert again.fingerprint() == ds.fingerprint()
    good_jpeg(tmp_path / "ant" / "b.JPG", size=(30, 30))  # new content, same name
    assert open_dataset(tmp_path, modality="image").fingerprint() != ds.fingerprint()


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    good_jpeg(tmp_path / "one.jpg")
    rgb().save(tmp_path / "two.png")
    ds = open_dataset(tmp_path, modality="image")
    assert [r.id for r in ds.records] == ["one.jpg", "two.png"]
    assert ds.class_names == [] and not ds.labelled


def test_manifest_csv_with_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    good_jpeg(tmp_path / "imgs" / "a.jpg")
    rgb().save(tmp_path / "imgs" / "b.png")
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.jpg,dog\nimgs/b.png,cat\nimgs/missing.jpg,dog\n")
    ds = open_dataset(tmp_path / "list.csv", modality="image")
    assert ds.class_names == ["cat", "dog"]
    assert [(r.id, r.label) for r in ds.records] == [("imgs/a.jpg", 1), ("imgs/b.png", 0), ("imgs/missing.jpg", 1)]
    assert READER.load(ds.records[0]).size == (64, 48)
    with pytest.raises(BadItemError, match="imgs/missing.jpg: file not found"):
        READER.load(ds.records[2])


# -- formats and colour modes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"])
def test_every_format_decodes_to_rgb(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"img{ext}"
    rgb(40, 30).save(path, **({"quality": 95} if ext in (".jpg", ".jpeg", ".webp") else {}))
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    # lossy and palette formats change pixels a little; the picture is the same
    assert np.abs(np.asarray(img, np.float64) - gradient(40, 30)).mean() < 12


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert decode_image(tmp_path / "anim.gif").getpixel((10, 10)) == (255, 0, 0)


def test_colour_modes(tmp_path: Path) -> None:
    grey = Image.fromarray(np.full((10, 12), 100, np.uint8), "L")
    grey.save(tmp_path / "grey.png")
    assert decode_image(tmp_path / "grey.png").getpixel((0, 0)) == (100, 100, 100)

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red -> the white background
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    rgba.save(tmp_path / "alpha.png")
    out = decode_image(tmp_path / "alpha.png")
    assert out.getpixel((1, 1)) == (0, 0, 255) and out.getpixel((8, 8)) == (255, 255, 255)

    Image.new("LA", (6, 6), (30, 255)).save(tmp_path / "la.png")
    assert decode_image(tmp_path / "la.png").getpixel((0, 0)) == (30, 30, 30)

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert decode_image(tmp_path / "palette.png").getpixel((0, 0)) == (200, 10, 10)

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # CMYK red
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    cmyk.save(tmp_path / "cmyk.tif")
    for name in ("cmyk.jpg", "cmyk.tif"):
        r, g, b = decode_image(tmp_path / name).getpixel((4, 4))
        assert r > 200 and g < 40 and b < 40, name

    Image.new("1", (8, 8), 1).save(tmp_path / "bilevel.bmp")
    assert decode_image(tmp_path / "bilevel.bmp").getpixel((0, 0)) == (255, 255, 255)


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_sixteen_bit_images_keep_their_brightness(tmp_path: Path) -> None:
    dark = np.full((8, 8), 4000, np.uint16)  # 6% of the 16-bit range
    dark[0, 0] = 8000
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    out = np.asarray(decode_image(tmp_path / "dark16.png"))
    assert out[1, 1, 0] == round(4000 * 255 / 65535) and out[0, 0, 0] == round(8000 * 255 / 65535)

    rgb16 = (gradient(16, 8) * 257).astype(np.uint16)
    write_png16(tmp_path / "rgb16.png", rgb16)
    out = np.asarray(decode_image(tmp_path / "rgb16.png"), np.float64)
    assert np.abs(out - gradient(16, 8)).max() <= 1.0

    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, "F").save(tmp_path / "float.tif")
    out = np.asarray(decode_image(tmp_path / "float.tif"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rotated.jpg")
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 3))  # the left edge is now the top edge
    assert b > 200 and r < 60


def test_decompression_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tlkit.data.image as image_module

    good_jpeg(tmp_path / "big.jpg", size=(200, 100))
    monkeypatch.setattr(image_module, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    with pytest.raises(BadItemError, match=r"big\.jpg: too large \(decompression-bomb limit 10000 pixels\)"):
        decode_image(tmp_path / "big.jpg")


def test_as_rgb_image_for_api_users(tmp_path: Path) -> None:
    arr = gradient().astype(np.uint8)
    assert as_rgb_image(arr).size == (40, 30)
    assert as_rgb_image(arr[..., 0]).mode == "RGB"
    assert as_rgb_image(good_jpeg(tmp_path / "x.jpg")).size == (64, 48)
    with pytest.raises(BadInputError, match="uint8"):
        as_rgb_image(arr.astype(np.float32))


# -- bad input ----------------------------------------------------------------------------------------------------
def write_bad_files(folder: Path) -> dict[str, str]:
    """One real file per bad-input case under ``folder/<class>/``: ``{id: expected reason fragment}``."""
    for cls in ("cats", "dogs"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        good_jpeg(folder / cls / "good1.jpg")
        good_jpeg(folder / cls / "good2.jpg", size=(50, 50))
    whole = (folder / "cats" / "good1.jpg").read_bytes()
    (folder / "cats" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    rgb(64, 64).save(folder / "dogs" / "full.png")
    png = (folder / "dogs" / "full.png").read_bytes()
    (folder / "dogs" / "full.png").unlink()
    (folder / "dogs" / "truncated.png").write_bytes(png[: len(png) - 40])
    (folder / "dogs" / "empty.png").write_bytes(b"")
    (folder / "cats" / "notes.jpg").write_text("these are my notes, not a photo\n")
    return {
        "cats/truncated.jpg": "truncated or corrupt",
        "dogs/truncated.png": "truncated or corrupt",
        "dogs/empty.png": "empty file (0 bytes)",
        "cats/notes.jpg": "not an image",
    }


def test_each_bad_file_is_reported_with_its_reason(tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path)
    ds = open_dataset(tmp_path, modality="image")
    seen = {}
    for record in ds.records:
        item, reason = load_or_skip(READER, record)
        if reason is None:
            assert item.mode == "RGB"
        else:
            seen[record.id] = reason
            with pytest.raises(BadItemError) as err:  # --on-error fail: the message names the file
                READER.load(record)
            assert str(err.value).startswith(record.id + ": ")
    assert set(seen) == set(expected)
    for item_id, fragment in expected.items():
        assert fragment in seen[item_id], (item_id, seen[item_id])


def test_vanished_and_directory_items(tmp_path: Path) -> None:
    good_jpeg(tmp_path / "a.jpg")
    good_jpeg(tmp_path / "b.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "list.csv").write_text("path\na.jpg\nb.jpg\nfolder.jpg\n")
    ds = open_dataset(tmp_path / "list.csv", modality="image")
    (tmp_path / "b.jpg").unlink()  # deleted between scan and decode
    reasons = [load_or_skip(READER, r)[1] for r in ds.records]
    assert reasons[0] is None
    assert reasons[1] == "file not found"
    assert reasons[2] == "a directory, not an image file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = good_jpeg(tmp_path / "secret.jpg")
    path.chmod(0)
    try:
        with pytest.raises(BadItemError, match="secret.jpg: permission denied"):
            decode_image(path, "secret.jpg")
    finally:
        path.chmod(0o644)


def test_folder_level_problems_get_clear_messages(tmp_path: Path) -> None:
    (tmp_path / "two" / "a").mkdir(parents=True)
    (tmp_path / "two" / "b").mkdir()
    good_jpeg(tmp_path / "two" / "a" / "x.jpg")
    (tmp_path / "two" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(BadInputError, match=r"class folder\(s\) b contain no image files"):
        open_dataset(tmp_path / "two", modality="image")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "data.txt").write_text("x")
    with pytest.raises(BadInputError, match="no image files found"):
        open_dataset(tmp_path / "none", modality="image")
    (tmp_path / "single" / "only").mkdir(parents=True)
    good_jpeg(tmp_path / "single" / "only" / "x.jpg")
    with pytest.raises(BadInputError, match="only one class folder"):
        open_dataset(tmp_path / "single", modality="image")
    with pytest.raises(BadInputError, match="no such file or directory"):
        open_dataset(tmp_path / "missing", modality="image")


# -- the --on-error policy, end to end ----------------------------------------------------------------------------
@pytest.mark.slow
def test_extract_skips_bad_files_and_records_reasons(tmp_path: Path) -> None:
    from tlkit.cli import cli

    expected = write_bad_files(tmp_path / "data")
    args = ["extract", "fake/image", str(tmp_path / "data"), "-o", str(tmp_path / "c.h5"), "--workers", "0"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["items"] == 4 and out["skipped"] == len(expected)
    reasons = {s["id"]: s["reason"] for s in out["skipped_now"]}
    assert set(reasons) == set(expected)
    assert all(fragment in reasons[i] for i, fragment in expected.items())
    summary = CliRunner().invoke(cli, [*args[:-2], "--workers", "0", "-o", str(tmp_path / "d.h5"), "-q"])
    assert summary.exit_code == 0 and "skipped" in summary.output.splitlines()[-1]


@pytest.mark.slow
def test_extract_on_error_fail_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    good_jpeg(tmp_path / "data" / "a" / "ok.jpg")
    good_jpeg(tmp_path / "data" / "b" / "ok.jpg")
    (tmp_path / "data" / "b" / "zero.jpg").write_bytes(b"")
    cmd = [sys.executable, "-m", "tlkit", "extract", "fake/image", str(tmp_path / "data"), "-o", str(tmp_path / "c.h5")]
    proc = subprocess.run([*cmd, "--on-error", "fail", "--workers", "0", "-q"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "b/zero.jpg" in last and "empty file" in last
    assert "Traceback" not in proc.stderr
