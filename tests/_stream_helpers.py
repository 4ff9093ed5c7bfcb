"""Helpers for the large-dataset reader tests: real WebDataset tars, Parquet files, ``datasets`` folders, and a local
HTTP server (with range requests, as object stores have) started in a thread by the test."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog")


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A small random RGB PNG; the same seed gives the same bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tf.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path, n_shards: int = 3, per_shard: int = 10, corrupt: frozenset[int] = frozenset(), text: bool = False
) -> Path:
    """``root/00000.tar`` ...: sample ``k`` is ``{k:06d}.png`` (or ``.txt``), ``.cls`` (k % 2) and ``.json``
    (``{"label": cat|dog}``); samples in ``corrupt`` hold bytes that are not an image."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for _ in range(per_shard):
                key = f"{k:06d}"
                if text:
                    _add(tf, key + ".txt", f"{CLASSES[k % 2]} number {k} ".encode() * (1 + k % 5))
                else:
                    _add(tf, key + ".png", b"not an image" if k in corrupt else png_bytes(k))
                _add(tf, key + ".cls", str(k % 2).encode())
                _add(tf, key + ".json", json.dumps({"label": CLASSES[k % 2]}).encode())
                k += 1
    return root


def write_folder(root: Path, n: int) -> Path:
    """The same images as :func:`write_shards` as class folders ``0/`` and ``1/`` (``{k:06d}.png``)."""
    for k in range(n):
        d = root / str(k % 2)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k:06d}.png").write_bytes(png_bytes(k))
    return root


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single ``Range: bytes=a-b`` requests (HTTP 206), as S3, GCS and most servers answer.
    ``served`` (a one-item list, when the server was given one) counts the body bytes sent."""

    served: list[int] | None = None
    bytes_per_s: float | None = None  # a simulated bandwidth per connection (benchmarks/remote_shards.py)

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        if self.served is None and self.bytes_per_s is None:
            return super().copyfile(source, outputfile)
        while chunk := source.read(64 << 10):
            outputfile.write(chunk)
            if self.served is not None:
                self.served[0] += len(chunk)
            if self.bytes_per_s:
                time.sleep(len(chunk) / self.bytes_per_s)

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        m = re.match(r"bytes=(\d+)-(\d*)", rng)
        size = os.path.getsize(path)
        a = int(m.group(1)) if m else 0
        b = min(int(m.group(2)) if m and m.group(2) else size - 1, size - 1)
        fh = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        fh.seek(a)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.send_header("Content-Length", str(b - a + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(fh, b - a + 1)


class _Limited(io.RawIOBase):
    def __init__(self, fh: io.BufferedReader, n: int) -> None:
        self.fh, self.left = fh, n

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        if self.left <= 0:
            return 0
        data = self.fh.read(min(len(buf), self.left))
        buf[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.fh.close()
        super().close()


@contextlib.contextmanager
def http_server(root: Path, served: list[int] | None = None, bytes_per_s: float | None = None) -> Iterator[str]:
    """Serve ``root`` on ``http://127.0.0.1:PORT/`` from a thread; yields the base URL. ``served[0]`` (when given)
    adds up the body bytes the server sends; ``bytes_per_s`` limits each connection to that rate."""
    cls = type("_Served", (_RangeHandler,), {"served": served, "bytes_per_s": bytes_per_s})
    handler = functools.partial(cls, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
