"""``decode="device"``: baseline JPEGs travel from the workers compressed (one buffer per batch) and are decoded in
one batched ``torchvision.io.decode_jpeg`` call where the model runs (nvJPEG on a CUDA GPU; libjpeg-turbo on the
CPU, which is how these tests run it), then resized and cropped there. It must give the features of full decoding,
the same skips with the same reasons, and send everything the device decoder does not take (progressive, CMYK,
EXIF-rotated JPEGs, PNGs) through the workers' usual path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _data import jpeg_bytes, write_jpeg_kinds
from PIL import Image

import tlkit
from tlkit.cache import FeatureCache
from tlkit.contract.pixels import EncodedBatch, PixelBatch
from tlkit.data.image import EncodedImage, decode_image, encoded_jpegs, pixel_decoding

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"input_size": [3, 64, 64]}  # effnet/lite0 at 64 px: the same pipeline kinds, a fraction of the compute
TAKEN = ("colour.jpg", "grey.jpg", "wide.jpg", "large.jpg")  # what the device decoder is given


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of image kinds: baseline colour, grey, wide and large JPEGs; progressive, EXIF-rotated and CMYK
    JPEGs; a PNG; and a truncated JPEG whose header is sound (so it travels compressed and fails to decode)."""
    root = tmp_path_factory.mktemp("kinds")
    write_jpeg_kinds(root, lambda base: {
        "large.jpg": jpeg_bytes(base.resize((1600, 1200), Image.BICUBIC)),
        "truncated.jpg": jpeg_bytes(base)[:1500],
    })  # fmt: skip
    return root


def test_only_what_the_device_decoder_takes_travels_compressed(kinds: Path) -> None:
    for path in sorted(kinds.rglob("*.*")):
        with pixel_decoding(), encoded_jpegs():
            item = decode_image(path.read_bytes(), path.name)
        if path.name in (*TAKEN, "truncated.jpg"):  # the truncated one's header is sound: the decoder finds out
            assert isinstance(item, EncodedImage), path.name
            assert item.data == path.read_bytes()
            assert (item.width, item.height) == Image.open(path).size
        else:
            assert isinstance(item, torch.Tensor), path.name  # decoded here, as without the block
        with pixel_decoding():
            if path.name != "truncated.jpg":
                assert isinstance(decode_image(path), torch.Tensor)  # outside the block nothing stays compressed


def test_an_encoded_batch_decodes_in_batch_order_and_names_what_no_decoder_reads(kinds: Path) -> None:
    backbone = tlkit.get_backbone("effnet/lite0", preprocess=SMALL)
    pipeline = backbone.pixel_pipeline()
    assert pipeline is not None
    names = ["colour.jpg", "progressive.jpg", "truncated.jpg", "grey.jpg", "lossless.png"]
    paths = [next(kinds.rglob(n)) for n in names]
    with pixel_decoding(), encoded_jpegs():
        items = [decode_image(p.read_bytes(), p.name) for p in paths]
    items = [x if isinstance(x, EncodedImage) else pipeline.pixels(x) for x in items]  # what a worker sends
    batch = pipeline.batch(items)
    assert isinstance(batch, EncodedBatch) and len(batch) == 5
    assert batch.encoded_at == [0, 2, 3] and batch.ready_at == [1, 4]
    assert batch.data.numel() == sum(len(items[i].data) for i in batch.encoded_at)  # one buffer for the batch
    decoded, failed = batch.decode(torch.device("cpu"), pipeline)
    assert isinstance(decoded, PixelBatch) and len(decoded) == 4
    assert [i for i, _ in failed] == [2] and failed[0][1].startswith("truncated or corrupt image")
    readable = [(n, p) for i, (n, p) in enumerate(zip(names, paths, strict=True)) if i != 2]
    with pixel_decoding():
        expected = [(n, pipeline.pixels(decode_image(p))) for n, p in readable]
    for k, (name, x) in enumerate(expected):
        assert torch.equal(decoded.pixels[k], x), name  # the very pixels of the workers' path, in batch order


@pytest.mark.parametrize("workers", [0, 2])
def test_device_decoding_gives_the_features_and_skips_of_full_decoding(
    kinds: Path, tmp_path: Path, workers: int
) -> None:
    """Through the real loader (in this process, and in worker processes with shared memory): the same ids, the
    same skip and reason, and rows within float rounding of ``decode="exact"``; the mode is part of the key."""
    device, exact = tmp_path / "device.h5", tmp_path / "exact.h5"
    common = {"precision": "fp32", "workers": workers, "batch_size": 4, "preprocess": SMALL}
    res = tlkit.extract("effnet/lite0", kinds, device, decode="device", **common)
    ref = tlkit.extract("effnet/lite0", kinds, exact, decode="exact", **common)
    assert res.n_items == ref.n_items == 8
    assert [(s.id, s.reason) for s in res.skipped_now] == [(s.id, s.reason) for s in ref.skipped_now]
    assert [s.id for s in res.skipped_now] == ["c0/truncated.jpg"]
    with FeatureCache(device) as a, FeatureCache(exact) as b:
        assert a.ids == b.ids
        assert a.meta["key"]["decode"] == "device"
        x, y = np.asarray(a.features[:]), np.asarray(b.features[:])
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() >= 0.9999, cos
    with pytest.raises(tlkit.errors.FingerprintMismatchError, match="image decoding device vs exact"):
        tlkit.extract("effnet/lite0", kinds, device, decode="exact", **common)
