"""How much training loss does LP-FT's start probe leave fine-tuning? The diagnosis behind ``--probe-loss-floor``.

For each dataset of ``finetune_defaults.py`` (the same draws), on frozen features of the training items:

- the cross-validated start probe of ``tlkit finetune`` (:func:`tlkit.finetuning.probe_head.fit_start_probe`), as
  fitted: its training loss as a fraction of chance (ln K) and its training accuracy;
- the temperature that lifts it to the default floor, and the loss after;
- a random linear head after one epoch at the head's rate (AdamW 1e-3, batch 32, on 90 % of the items): what
  ``--no-linear-probe`` starts its fine-tuning from, without augmentation.

    python benchmarks/probe_energy.py text fmnist
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(data: str) -> None:
    import torch
    from finetune_defaults import prepare

    from tlkit.finetuning.options import DEFAULT_PROBE_LOSS_FLOOR
    from tlkit.finetuning.probe_head import fit_start_probe, frozen_features
    from tlkit.host.readers import open_dataset
    from tlkit.runtime import resolve

    args = argparse.Namespace(
        data=data, train_per_class=1000 if data == "text" else 200, test_per_class=1, data_seed=0, input_size=224
    )
    with tempfile.TemporaryDirectory() as tmp:
        backbone, train, _ = prepare(args, Path(tmp))
        dataset = open_dataset(train, modality=backbone.modality)
        runtime = resolve("finetune", env=False)
        x_np, y_np = frozen_features(backbone, dataset, runtime)
        k = len(dataset.class_names)
        fitted = fit_start_probe(backbone, dataset, k, runtime, 32, loss_floor=0.0)
        floored = fit_start_probe(backbone, dataset, k, runtime, 32)
    x, y = torch.from_numpy(x_np).float(), torch.from_numpy(y_np).long()
    chance = math.log(k)
    acc = float(((x @ fitted.state["weight"].T + fitted.state["bias"]).argmax(1) == y).float().mean())
    print(
        f"{data}: {len(y)} items, {k} classes; probe as fitted: training loss {fitted.train_loss:.3f} = "
        f"{fitted.train_loss / chance:.2f} of chance, training accuracy {acc:.3f}; floor {DEFAULT_PROBE_LOSS_FLOOR}: "
        f"temperature {floored.temperature:.2f}, loss {floored.start_loss:.3f}",
        flush=True,
    )
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    n = int(len(x) * 0.9)
    perm = torch.randperm(n)
    for i in range(0, n, 32):
        idx = perm[i : i + 32]
        loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        one = float(torch.nn.functional.cross_entropy(head(x[:n]), y[:n]))
    print(f"{data}: a random head after one epoch: training loss {one:.3f} = {one / chance:.2f} of chance", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", choices=("text", "fmnist"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from finetune_precision import cpu_flags

    print(f"machine: {cpu_flags()}; torch {torch.__version__}; {args.threads} threads", flush=True)
    for data in args.data:
        measure(data)


if __name__ == "__main__":
    main()
