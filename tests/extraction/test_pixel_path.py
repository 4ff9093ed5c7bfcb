"""The pixel path of image extraction: JPEGs decoded straight into uint8 tensors, uint8 crops collated into one NHWC
buffer, normalised once per batch where the model runs, and on a CPU the batches prepared on every core between
forward passes. It must compute the very numbers of the per-item path (``preprocess_item`` + ``collate``), keep the
bad-item policy (same skips, same reasons), and leave readers and backbones that do their own thing alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _data import write_jpeg_kinds
from PIL import Image

import tlkit
from tlkit.cache import FeatureCache
from tlkit.contract.pixels import PixelBatch
from tlkit.data.base import Reader, Record
from tlkit.data.image import ImageReader, decode_image, jpeg_frame, pixel_decoding, reduced_decoding
from tlkit.extraction.forward import Runner
from tlkit.extraction.loader import make_loader
from tlkit.host.readers import get_reader
from tlkit.runtime import RuntimeOptions, resolve
from tlkit.runtime.batching import to_device

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"input_size": [3, 64, 64]}  # effnet/lite0 at 64 px: the same pipeline kinds, a fraction of the compute


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEG kinds a camera folder holds: colour, grey, progressive, EXIF-rotated, CMYK, and a PNG; 2 classes."""
    root = tmp_path_factory.mktemp("jpegs")
    write_jpeg_kinds(root)
    return root


def test_pixel_decoding_gives_pillows_pixels_for_every_kind(jpegs: Path, tmp_path: Path) -> None:
    from torchvision.transforms.functional import pil_to_tensor

    for path in sorted(jpegs.rglob("*.*")):
        reference = pil_to_tensor(decode_image(path))
        with pixel_decoding():
            from_file, from_bytes = decode_image(path), decode_image(path.read_bytes())
        for x in (from_file, from_bytes):
            assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8, path.name
            assert torch.equal(x, reference), path.name  # same pixels, orientation and colour conversion
    colour = next(jpegs.rglob("colour.jpg"))
    with pixel_decoding(), reduced_decoding(50):  # 240 px >= 2 x 100: Pillow's DCT-scaled decode, as a tensor
        assert tuple(decode_image(colour).shape) == (3, 120, 160)
    assert isinstance(decode_image(colour), Image.Image)  # outside the block: PIL


def test_a_truncated_jpeg_is_the_same_bad_item_with_the_same_reason(jpegs: Path, tmp_path: Path) -> None:
    data = next(jpegs.rglob("colour.jpg")).read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    reasons = []
    for on in (False, True):
        with pixel_decoding(on), pytest.raises(tlkit.errors.BadItemError) as err:
            decode_image(bad)
        reasons.append(err.value.reason)
    assert reasons[0] == reasons[1] and "truncated" in reasons[0]


FUZZ = """
import io
import numpy as np
from PIL import Image
from tlkit.data.image import decode_image, pixel_decoding
from tlkit.errors import BadItemError
rng = np.random.default_rng(0)
base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
verdicts = []
for progressive in (False, True):
    buf = io.BytesIO()
    base.save(buf, "JPEG", quality=90, progressive=progressive)
    data = buf.getvalue()
    for _ in range(100):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(2, len(b)))] = int(rng.integers(0, 256))
        b = bytes(b if rng.random() < 0.7 else b[: int(rng.integers(100, len(b)))])
        verdict = []
        for on in (True, False):
            try:
                with pixel_decoding(on):
                    decode_image(b)
                verdict.append("good")
            except BadItemError:
                verdict.append("bad")
        verdicts.append(verdict)
print(sum(v[0] != v[1] for v in verdicts), sum(v[0] == "bad" for v in verdicts))
"""


def test_damaged_jpegs_get_pillows_verdict_on_the_pixel_path_and_never_crash() -> None:
    """200 JPEGs with flipped bytes or cut short, in a child process (a decoder crash must fail this test, not end
    the test run): libjpeg-turbo's path calls each one good or bad exactly as Pillow's path does. (PNGs are not on a
    tensor decoder's path: torchvision's ``decode_png`` crashes the process on damaged data.)"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FUZZ], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    differ, bad = (int(v) for v in proc.stdout.split())
    assert differ == 0 and 20 < bad < 180  # the damage makes both kinds of file


def test_the_decompression_bomb_limit_holds_on_the_pixel_path(jpegs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tlkit.data.image as image_module

    monkeypatch.setattr(image_module, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    with pixel_decoding(), pytest.raises(tlkit.errors.BadItemError, match=r"too large \(decompression-bomb limit"):
        decode_image(next(jpegs.rglob("colour.jpg")))


def test_the_jpeg_header_reader_never_fails(jpegs: Path) -> None:
    """Only the frame header is read to choose the path; any damage there means Pillow's path (None), never an
    exception or a wrong size."""
    data = next(jpegs.rglob("colour.jpg")).read_bytes()
    assert jpeg_frame(data) == (320, 240, 3)
    assert jpeg_frame(next(jpegs.rglob("grey.jpg")).read_bytes()) == (320, 240, 1)
    assert jpeg_frame(next(jpegs.rglob("cmyk.jpg")).read_bytes())[2] == 4  # type: ignore[index]
    assert jpeg_frame((jpegs / "c0" / "lossless.png").read_bytes()) is None
    rng = np.random.default_rng(0)
    for cut in range(0, 700, 7):
        assert jpeg_frame(data[:cut]) in (None, (320, 240, 3))
    for _ in range(300):
        damaged = bytearray(data[:800])
        damaged[int(rng.integers(2, 800))] = int(rng.integers(0, 256))
        frame = jpeg_frame(bytes(damaged))
        assert frame is None or all(isinstance(v, int) for v in frame)


def test_a_pixel_batch_is_the_per_item_batch(jpegs: Path) -> None:
    bb = tlkit.get_backbone("effnet/lite0", weights="none", preprocess=SMALL)
    pipe = bb.pixel_pipeline()
    assert pipe is not None
    images = [decode_image(p) for p in sorted(jpegs.rglob("*.*"))]
    reference = bb.collate([bb.preprocess_item(im) for im in images])
    batch = pipe.batch([pipe.pixels(im) for im in images])
    assert isinstance(batch, PixelBatch) and batch.pixels.dtype == torch.uint8 and len(batch) == len(images)
    for channels_last in (False, True):
        x = to_device(batch, torch.device("cpu"), channels_last)
        assert x.dtype == torch.float32 and torch.equal(x, reference)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=layout)
    pinned = batch.pin_memory() if torch.cuda.is_available() else batch
    assert torch.equal(pinned.pixels, batch.pixels)


def test_extraction_on_the_pixel_path_computes_the_per_item_features(jpegs: Path, tmp_path: Path) -> None:
    """A worker process gives the reference rows bit for bit, in-process threads up to the float noise of a forward
    pass on two threads instead of one; the reference decodes with Pillow, preprocesses each item with the model's
    transform, collates, and runs the same forward (BatchNorms folded, as extraction does)."""
    bb = tlkit.get_backbone("effnet/lite0", weights="none", preprocess=SMALL).load()
    torch.set_num_threads(2)  # two preparing threads, even on a one-core runner
    try:
        threaded = tlkit.extract(bb, jpegs, tmp_path / "auto.h5", precision="fp32", batch_size=4)
    finally:
        torch.set_num_threads(1)
    assert threaded.workers == 0  # prepared in this process, between forward passes
    tlkit.extract(bb, jpegs, tmp_path / "worker.h5", precision="fp32", batch_size=4, workers=1)
    with FeatureCache(tmp_path / "auto.h5") as a, FeatureCache(tmp_path / "worker.h5") as b:
        ids, x, y = list(a.ids), np.asarray(a.features[:]), np.asarray(b.features[:])
        assert list(b.ids) == ids and len(ids) == 7
    items = [bb.preprocess_item(decode_image(jpegs / i)) for i in ids]
    with Runner(bb, resolve("extract", RuntimeOptions.of("cpu", "fp32", 4, 0), env=None)) as runner:
        ref = np.concatenate(
            [runner.forward(runner.to_device(bb.collate(items[a : a + 4])), [], len(items[a : a + 4]))[0].numpy()
             for a in range(0, len(items), 4)]
        )  # fmt: skip
    assert np.array_equal(y, ref)
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5)


def test_the_loader_prepares_on_every_core_on_a_cpu_and_measures_elsewhere(jpegs: Path) -> None:
    bb = tlkit.get_backbone("effnet/lite0", weights="none", preprocess=SMALL)
    ds = tlkit.open_dataset(jpegs, modality="image")
    reader = get_reader(ds)
    auto = resolve("extract", RuntimeOptions.of("cpu", "fp32", 4, "auto"), env=None)
    torch.set_num_threads(2)
    try:
        loader = make_loader(ds.records, reader, bb, auto, batch=4, window=8)
        batches = list(loader)
    finally:
        torch.set_num_threads(1)
    assert (loader.workers, loader.threads) == (0, 2)
    assert all(isinstance(b.inputs, PixelBatch) for b in batches)
    assert sorted(p for b in batches for p in b.positions) == list(range(len(ds.records)))
    explicit = resolve("extract", RuntimeOptions.of("cpu", "fp32", 4, 1), env=None)
    assert make_loader(ds.records, reader, bb, explicit, batch=4, window=8).workers == 1  # a given count is kept
    fake = tlkit.get_backbone("fake/image")  # its own preprocessing: the measured rule, per-item tensors
    loader = make_loader(ds.records, reader, fake, auto, batch=4, window=8)
    assert loader.source.pixels is None and not isinstance(next(iter(loader)).inputs, PixelBatch)


class ConvertingReader(ImageReader):
    """A third-party reader that works on the decoded PIL image itself (and does not declare otherwise)."""

    name = "converting"
    returns_decoded_images = False

    def load(self, record: Record) -> object:
        return decode_image(record.source, record.id).convert("L").convert("RGB")


def test_readers_that_do_not_declare_it_keep_getting_pil_images(jpegs: Path) -> None:
    bb = tlkit.get_backbone("effnet/lite0", weights="none", preprocess=SMALL)
    ds = tlkit.open_dataset(jpegs, modality="image")
    reader: Reader = ConvertingReader()
    loaded = make_loader(ds.records, reader, bb, resolve("extract", RuntimeOptions.of("cpu", "fp32", 4, 0), env=None),
                         batch=4, window=8).source[0]  # fmt: skip
    assert loaded.reason is None and loaded.x.dtype == torch.uint8  # the PIL image went the pixel path's other door


def test_a_backbone_with_its_own_preprocessing_keeps_it() -> None:
    from tlkit_timm.backbone import TimmBackbone

    class Own(TimmBackbone):
        def preprocess_item(self, item: object, *, train: bool = False) -> object:
            return super().preprocess_item(item, train=train) * 2

    assert Own("timm/resnet18", weights="none").pixel_pipeline() is None
    assert tlkit.get_backbone("timm/resnet18", weights="none").pixel_pipeline() is not None
