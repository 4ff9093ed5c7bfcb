"""Peak memory of fine-tuning: `--unfreeze last:1` against `--unfreeze all`, same model, data and batch.

Each setting runs one epoch of `tlkit.finetune` in a fresh subprocess, which reports its own peak resident set size
(``ru_maxrss``) and, on a GPU, ``torch.cuda.max_memory_allocated``. Freezing early blocks saves the activations
autograd would keep for them, their gradients and their optimizer state. Settings alternate, ``--reps`` times; the
median is reported. The last line is the headline ratio.

    python benchmarks/finetune_memory.py --backbone timm/resnet18 --input-size 160 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, torch, tlkit
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
dev = a["device"]
tlkit.finetune(a["backbone"], a["data"], a["out"], weights="none", input_size=a["input_size"], unfreeze=a["unfreeze"],
               head_epochs=0, epochs=1, val_split=0.0, batch_size=a["batch_size"], workers=0, precision="fp32",
               device=dev, head="linear")
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and dev != "cpu" else 0
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mb": gpu / 2**20}))
"""


def measure(args: argparse.Namespace, data: Path, out: Path, unfreeze: str) -> dict[str, float]:
    payload = {
        "backbone": args.backbone,
        "data": str(data),
        "out": str(out),
        "input_size": args.input_size,
        "unfreeze": unfreeze,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
    }
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="timm/resnet18")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from tlkit.testing import make_image_folder

    results: dict[str, list[dict[str, float]]] = {"last:1": [], "all": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "data", classes=2, per_class=args.items // 2, size=(192, 192), seed=2)
        for rep in range(args.reps):
            for spec in results:
                results[spec].append(measure(args, data, Path(tmp) / f"{spec.replace(':', '')}-{rep}", spec))
                print(f"rep {rep + 1} {spec}: {results[spec][-1]}", flush=True)
    med = {s: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for s, rows in results.items()}
    print()
    print(f"| {args.backbone} @ {args.input_size}px, batch {args.batch_size}, {args.device} | peak RSS | peak GPU |")
    print("|---|---|---|")
    for spec, m in med.items():
        print(f"| --unfreeze {spec} | {m['rss_mb']:.0f} MiB | {m['gpu_mb']:.0f} MiB |")
    key = "gpu_mb" if med["all"]["gpu_mb"] else "rss_mb"
    print(f"peak memory ratio last:1 / all ({key}): {med['last:1'][key] / med['all'][key]:.3f}")


if __name__ == "__main__":
    main()
