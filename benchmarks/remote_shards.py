"""Remote WebDataset shards and Parquet tables: bytes moved and time, with local copies on (the default) and off.

Listing a tar shard reads all of it (each header sits after the previous member), so without a copy a remote shard
crosses the network twice: once to list it, once to read its items. A Parquet table is listed from its footer and
label column, but each DataLoader worker reads the row groups of its own batches, so without a copy every worker
fetches the table again. The items here are photo-like 500x375 JPEGs in tar shards with a ``cls`` member, or in
Parquet tables (``--format parquet``: an ``image`` bytes column and a ``label`` column, row groups of 50), served
from ``http://127.0.0.1`` by a thread of this process with range requests, each connection limited to
``--mb-per-s`` (a simulated object store; 0: as fast as the loopback goes). Each run is
``tlkit extract fake/image URL -o CACHE`` with its defaults in a fresh process, copies on and off alternated
``--reps`` times; the server counts the body bytes it sends.

    python benchmarks/remote_shards.py --shards 8 --per-shard 100 --mb-per-s 25 --reps 3
    python benchmarks/remote_shards.py --format parquet --mb-per-s 5 --reps 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_shards(root: Path, n_shards: int, per_shard: int, fmt: str = "webdataset") -> int:
    """``root/{00000..}.tar`` of photo JPEGs with a ``cls`` member (or ``.parquet`` tables of them); returns their
    total size in bytes."""
    from _extract_data import photo_folder

    photos = sorted(photo_folder(root.parent / "photos", n_shards * per_shard).rglob("*.jpg"))
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for s in range(n_shards):
            part = photos[s * per_shard : (s + 1) * per_shard]
            rows = {"image": [p.read_bytes() for p in part], "label": [p.parent.name for p in part]}
            pq.write_table(pa.table(rows), root / f"{s:05d}.parquet", row_group_size=50)
        return sum(p.stat().st_size for p in root.glob("*.parquet"))
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tf:
            for k, photo in enumerate(photos[s * per_shard : (s + 1) * per_shard], start=s * per_shard):
                for ext, data in (("jpg", photo.read_bytes()), ("cls", photo.parent.name[-1].encode())):
                    info = tarfile.TarInfo(f"{k:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return sum(p.stat().st_size for p in root.glob("*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=["webdataset", "parquet"], default="webdataset")
    ap.add_argument("--shards", type=int, default=8, help="tar shards or Parquet files")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--mb-per-s", type=float, default=25.0, help="bandwidth per connection (0: unlimited)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _extract_data import machine, report
    from _stream_helpers import http_server

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tlkit-remote-bench-") as tmp:
        work = Path(tmp)
        total = make_shards(work / "shards", args.shards, args.per_shard, args.format)
        served = [0]
        rate = args.mb_per_s * 1e6 if args.mb_per_s > 0 else None
        runs: dict[str, list[dict[str, float]]] = {"copies": [], "off": []}
        with http_server(work / "shards", served, rate) as url:
            suffix = "parquet" if args.format == "parquet" else "tar"
            pattern = url + f"{{00000..{args.shards - 1:05d}}}.{suffix}"
            for _ in range(args.reps):
                for mode in runs:
                    out = work / f"{mode}.h5"
                    out.unlink(missing_ok=True)
                    env = {**os.environ, "TLKIT_REMOTE_COPIES": str(work / "copies") if mode == "copies" else "off"}
                    served[0] = 0
                    t = time.perf_counter()
                    proc = subprocess.run([sys.executable, "-m", "tlkit", "extract", "fake/image", pattern, "-o",
                                           str(out), "--json"], capture_output=True, text=True, env=env)  # fmt: skip
                    seconds = time.perf_counter() - t
                    if proc.returncode:
                        raise SystemExit(proc.stderr[-3000:])
                    items = json.loads(proc.stdout)["items"]
                    runs[mode].append({"seconds": seconds, "bytes": served[0], "items": items})
                    print(mode, json.dumps(runs[mode][-1]), file=sys.stderr, flush=True)
        result = {
            "format": args.format,
            "shards": args.shards,
            "items": args.shards * args.per_shard,
            "shard_bytes": total,
            "mb_per_s_per_connection": args.mb_per_s,
            "runs": runs,
            "bytes_over_shards": {m: statistics.median(r["bytes"] for r in rs) / total for m, rs in runs.items()},
            "seconds": {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()},
        }
        result["off_over_copies_seconds"] = result["seconds"]["off"] / result["seconds"]["copies"]
    report(result, args.json)


if __name__ == "__main__":
    main()
