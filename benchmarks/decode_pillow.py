"""Benchmark: tlkit's Pillow decoding (``decode_image``) against the textbook Pillow recipe, per image.

A: ``tlkit.data.image.decode_image(bytes)``: open, load, EXIF orientation applied in place, the RGB image returned as
   decoded (other modes converted). This is the path of every image that is not a plain JPEG going straight into a
   tensor: PNG, WebP and the rest, JPEGs decoded at reduced size, ``--decode exact``, and every image that
   fine-tuning, ``predict`` and ``evaluate`` read.
B: the textbook recipe, ``ImageOps.exif_transpose(Image.open(f)).convert("RGB")``, which is what tlkit did before:
   ``exif_transpose`` returns a copy even when nothing turns, and ``convert("RGB")`` copies an RGB image again.

Both give the same pixels (checked). One process, one thread, CPU seconds per image; A and B alternated, medians
of ``--reps`` after a warm-up. The last line is the headline ratio B/A per image kind.

    python benchmarks/decode_pillow.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from _extract_data import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    from PIL import Image, ImageOps

    from tlkit.data.image import decode_image

    rng = np.random.default_rng(0)

    def photo(w: int, h: int, fmt: str) -> bytes:
        # smooth gradients plus noise: compresses like a photo, not like white noise
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(w + h, 1))], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        return buf.getvalue()

    kinds = [
        ("8x8 PNG", photo(8, 8, "PNG"), 4000),
        ("500x375 PNG", photo(500, 375, "PNG"), 40),
        ("500x375 JPEG", photo(500, 375, "JPEG"), 80),
        ("1600x1200 JPEG", photo(1600, 1200, "JPEG"), 12),
    ]

    def plain(data: bytes) -> object:
        with Image.open(io.BytesIO(data)) as im:
            return ImageOps.exif_transpose(im).convert("RGB")

    def tlkit_path(data: bytes) -> object:
        return decode_image(data, "x")

    print(f"# {machine()}")
    print(f"# CPU ms per image, one thread, medians of {args.reps} alternated reps")
    print(f"{'image':<18}{'B: textbook Pillow':>20}{'A: decode_image':>18}{'B/A':>8}")
    heads = []
    for name, data, n in kinds:
        assert np.array_equal(np.asarray(plain(data)), np.asarray(tlkit_path(data))), name
        times: dict[str, list[float]] = {"a": [], "b": []}
        for fn in (plain, tlkit_path):  # warm-up
            fn(data)
        for _ in range(args.reps):
            for key, fn in (("b", plain), ("a", tlkit_path)):
                t = time.process_time()
                for _ in range(n):
                    fn(data)
                times[key].append((time.process_time() - t) / n * 1e3)
        a, b = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"{name:<18}{b:>20.3f}{a:>18.3f}{b / a:>8.2f}")
        heads.append(f"{name} {b / a:.2f}x")
    print(f"headline: decode_image is cheaper than the textbook Pillow recipe by B/A = {', '.join(heads)}")


if __name__ == "__main__":
    main()
