"""Benchmark: the CPU cost of turning a JPEG into model input, per image, with tlkit's decoding against the plain one.

A: tlkit's path: ``decode_image`` inside ``reduced_decoding(backbone.decode_size())`` (libjpeg DCT scaling for large
   JPEGs) and ``pixel_decoding()`` (other JPEGs straight into a uint8 tensor), the evaluation transform's resize and
   crop on uint8 (``backbone.pixel_pipeline().pixels``), then the files' crops as one uint8 batch normalised at once
   (``PixelBatch.to``), as extraction does.
B: the plain path: Pillow decodes in full, then the model's own transform (``make_transform(False)``, on Pillow),
   and the tensors stacked into a batch.

One process, torch on one thread (as in a DataLoader worker); CPU seconds (``time.process_time``), so the figure is
what a worker spends, little affected by other load. Medians of ``--reps``, after a warm-up. The last line is the
headline ratio B/A per size (how many times cheaper tlkit's path is).

    python benchmarks/decode_cost.py                       # effnet/lite0 preprocessing, 500x375 and 1600x1200
    python benchmarks/decode_cost.py --backbone timm/resnet50 --sizes 500x375,4000x3000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _extract_data import machine, photo_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet/lite0")
    ap.add_argument("--sizes", default="500x375,1600x1200", help="comma list of WxH")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import torch
    from PIL import Image

    import tlkit
    from tlkit.data.image import decode_image, pixel_decoding, reduced_decoding

    torch.set_num_threads(1)
    bb = tlkit.get_backbone(args.backbone, weights="none")
    reference = bb.make_transform(False)
    side = bb.decode_size()
    pipe = bb.pixel_pipeline()
    if pipe is None:
        raise SystemExit(f"{args.backbone}: its evaluation transform is not a standard pipeline (no pixel path)")
    cpu = torch.device("cpu")

    def plain(files: list[Path]) -> None:
        out = []
        for path in files:
            with Image.open(path) as im:
                out.append(reference(im.convert("RGB")))
        torch.stack(out)

    def fast(files: list[Path]) -> None:
        with reduced_decoding(side), pixel_decoding():
            crops = [pipe.pixels(decode_image(path)) for path in files]
        pipe.batch(crops).to(cpu)

    def cost(fn, files: list[Path]) -> float:  # noqa: ANN001
        t = time.process_time()
        fn(files)
        return (time.process_time() - t) / len(files) * 1000

    print(f"# {machine()}")
    print(f"# {args.backbone} preprocessing (decode_size {side}), {args.images} JPEGs per size, {args.reps} reps, "
          "CPU ms per image on one thread")  # fmt: skip
    print(f"{'size':<12}{'B: Pillow + own transform':>28}{'A: tlkit':>12}{'B/A':>8}")
    heads = []
    with tempfile.TemporaryDirectory(prefix="tlkit-decode-") as tmp:
        for text in args.sizes.split(","):
            w, h = (int(v) for v in text.lower().split("x"))
            files = sorted(photo_folder(Path(tmp) / text, args.images, size=(w, h), classes=1).rglob("*.jpg"))
            cost(plain, files[:2]), cost(fast, files[:2])  # warm-up
            ta, tb = [], []
            for _ in range(args.reps):
                tb.append(cost(plain, files))
                ta.append(cost(fast, files))
            a, b = statistics.median(ta), statistics.median(tb)
            heads.append(f"{text} {b / a:.2f}x")
            print(f"{text:<12}{b:>28.2f}{a:>12.2f}{b / a:>8.2f}")
    print(f"headline: tlkit's decoding is cheaper per image by B/A = {', '.join(heads)}")


if __name__ == "__main__":
    main()
