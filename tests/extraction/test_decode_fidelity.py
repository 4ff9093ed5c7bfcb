"""Faster image decoding keeps the features: reduced-size JPEG decoding (libjpeg DCT scaling for a backbone's resize)
and the evaluation transform on uint8 tensors, against full decoding and the model's own Pillow transform.

The tolerance (docs/extraction.md): per-row cosine >= 0.999 between reduced and exact decoding on large photos;
bit-identical features where no image is large enough to reduce (Fashion-MNIST, 500x375 photos for a 256-px
resize); the uint8 transform within 2 grey levels of Pillow's, and a linear probe on Fashion-MNIST within 0.3
points of the reference pipeline's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlkit
from tlkit.cache import FeatureCache
from tlkit.contract.pixels import resize_side, uint8_pipeline
from tlkit.data.image import REDUCED_DECODE_MARGIN, decode_image, reduced_decoding

pytestmark = pytest.mark.usefixtures("one_thread")

LARGE = ((1600, 1200), (1200, 1600), (2048, 1536))


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """A synthetic photo: a smooth colour field, solid shapes (edges) and grain (fine texture)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.fromarray(rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.25) * w
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    grain = rng.normal(0, float(rng.uniform(5, 40)), (h // 2, w // 2)).astype(np.float32)
    grain_full = np.asarray(Image.fromarray(grain, "F").resize((w, h), Image.BILINEAR))[..., None]
    return Image.fromarray(np.clip(np.asarray(im, np.float32) + grain_full, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of JPEGs (quality 90): large ones (reduced decoding applies) and 500x375 ones (it does not)."""
    root = tmp_path_factory.mktemp("large")
    for i in range(8):
        size = LARGE[i % len(LARGE)] if i < 6 else (500, 375)
        folder = root / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        photo_like(size, i).save(folder / f"p{i}_{size[0]}x{size[1]}.jpg", quality=90)
    return root


def test_reduced_decoding_keeps_at_least_the_margin_and_only_touches_large_jpegs(tmp_path: Path) -> None:
    big = photo_like((1600, 1200), 0)
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    big.resize((500, 375)).save(tmp_path / "small.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoded size is the rotated one
    big.save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    with reduced_decoding(256):  # keeps >= 512 px: 1/2 scale for a 1200-px side
        assert decode_image(tmp_path / "big.jpg").size == (800, 600)
        assert decode_image((tmp_path / "big.jpg").read_bytes()).size == (800, 600)  # bytes (tar members) too
        assert decode_image(tmp_path / "big.png").size == (1600, 1200)  # not a JPEG: full size
        assert decode_image(tmp_path / "small.jpg").size == (500, 375)  # not twice the margin: full size
        assert decode_image(tmp_path / "rotated.jpg").size == (600, 800)
        assert decode_image(tmp_path / "big.jpg", min_side=0).size == (1600, 1200)  # explicit: full size
    with reduced_decoding(100):
        img = decode_image(tmp_path / "big.jpg")
        assert img.size == (400, 300) and img.mode == "RGB"  # 1/4: the largest scale keeping 200 px
        assert min(img.size) >= 100 * REDUCED_DECODE_MARGIN
    assert decode_image(tmp_path / "big.jpg").size == (1600, 1200)  # outside the block: full size
    with reduced_decoding(None):
        assert decode_image(tmp_path / "big.jpg").size == (1600, 1200)


def test_the_uint8_transform_is_the_models_own_up_to_rounding(large_photos: Path, photos: Path) -> None:
    """timm's and torchvision's evaluation transforms run on uint8 tensors: same shape, within 2 grey levels."""
    images = [decode_image(p) for p in sorted(large_photos.rglob("*.jpg"))[::2] + sorted(photos.iterdir())]
    for name in ("effnet/lite0", "torchvision/resnet18"):
        bb = tlkit.get_backbone(name, weights="none")
        ref = bb.make_transform(False)
        fast = uint8_pipeline(ref)
        assert fast is not None, name
        assert bb.decode_size() == resize_side(ref) == 256
        std = np.asarray(bb.spec.preprocess["std"], np.float32).reshape(3, 1, 1)
        for img in images:
            a, b = ref(img).numpy(), fast(img).numpy()
            assert a.shape == b.shape == (3, 224, 224)
            grey_levels = np.abs(a - b) * std * 255
            assert grey_levels.max() <= 2.01, (name, img.size, grey_levels.max())
            assert grey_levels.mean() < 0.05


def test_an_unknown_transform_keeps_full_decoding_and_runs_as_it_is() -> None:
    from torchvision import transforms as T

    own = T.Compose([T.CenterCrop(200), T.Resize(128), T.ToTensor()])  # crops full-resolution pixels first
    assert resize_side(own) is None  # so nothing may be decoded smaller
    fast, img = uint8_pipeline(own), photo_like((320, 240), 1)
    assert fast is not None and np.abs(fast(img).numpy() - own(img).numpy()).max() <= 2.01 / 255
    assert uint8_pipeline(T.Compose([T.Resize(128), T.Grayscale(), T.ToTensor()])) is None  # a step it does not know
    nearest = T.Compose([T.Resize(128, interpolation=T.InterpolationMode.NEAREST), T.ToTensor()])
    assert uint8_pipeline(nearest) is None  # no uint8 kernel that matches Pillow's


def test_reduced_decoding_features_stay_within_tolerance(tmp_path: Path, large_photos: Path) -> None:
    """effnet/lite0 (ImageNet weights): cosine >= 0.999 per row on large JPEGs; identical rows where the photos are
    too small to reduce. The decoding is part of the cache key."""
    reduced, exact = tmp_path / "reduced.h5", tmp_path / "exact.h5"
    common = {"precision": "fp32", "workers": 0, "batch_size": 4}
    assert tlkit.extract("effnet/lite0", large_photos, reduced, **common).n_computed == 8
    tlkit.extract("effnet/lite0", large_photos, exact, decode="exact", **common)
    with FeatureCache(reduced) as a, FeatureCache(exact) as b:
        assert a.ids == b.ids
        assert (a.meta["key"]["decode"], b.meta["key"]["decode"]) == ("reduced", "exact")
        x, y = np.asarray(a.features[:]), np.asarray(b.features[:])
        ids = list(a.ids)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    small = np.array(["500x375" in i for i in ids])
    assert cos.min() >= 0.999, dict(zip(ids, cos.round(5).tolist(), strict=True))
    assert np.array_equal(x[small], y[small])  # nothing to reduce: the very same computation
    assert not np.array_equal(x[~small], y[~small])  # and the large ones were really decoded smaller
    with pytest.raises(tlkit.errors.FingerprintMismatchError, match="image decoding reduced vs exact"):
        tlkit.extract("effnet/lite0", large_photos, reduced, decode="exact", **common)


@pytest.mark.slow
def test_fashion_mnist_probe_is_unchanged(tmp_path: Path, fashion_mnist_folder) -> None:  # noqa: ANN001
    """Fashion-MNIST (28 px): reduced decoding never triggers (the features are identical), and a linear probe on
    features from the uint8 transform is within 0.3 points of one on the model's own Pillow transform."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = fashion_mnist_folder(tmp_path / "train", "train", 20)
    test = fashion_mnist_folder(tmp_path / "test", "t10k", 40)
    common = {"precision": "fp32", "workers": 0}
    for split in (train, test):
        tlkit.extract("effnet/lite0", split, split.with_suffix(".h5"), **common)
        tlkit.extract("effnet/lite0", split, split.with_suffix(".exact.h5"), decode="exact", **common)
        with FeatureCache(split.with_suffix(".h5")) as a, FeatureCache(split.with_suffix(".exact.h5")) as b:
            assert np.array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))

    bb = tlkit.get_backbone("effnet/lite0").load()
    ref = bb.make_transform(False)

    def pillow_features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with FeatureCache(folder.with_suffix(".h5")) as fc:
            ids, labels = list(fc.ids), np.asarray(fc.labels)
        xs = []
        for a in range(0, len(ids), 50):
            batch = torch.stack([ref(decode_image(folder / i)) for i in ids[a : a + 50]])
            with torch.inference_mode():
                xs.append(bb.embed(batch).numpy())
        return np.concatenate(xs), labels

    def cached(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        with FeatureCache(folder.with_suffix(".h5")) as fc:
            return np.asarray(fc.features[:]), np.asarray(fc.labels)

    scores = {}
    for name, features in (("uint8", cached), ("pillow", pillow_features)):
        (xtr, ytr), (xte, yte) = features(train), features(test)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xtr, ytr)
        scores[name] = float(probe.score(xte, yte))
    assert abs(scores["uint8"] - scores["pillow"]) <= 0.003, scores
