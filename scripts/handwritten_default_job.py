"""The default job (``python -m trainer``) written by hand in plain PyTorch, for ``scripts/bench_job.py``.

    python scripts/handwritten_default_job.py --out DIR [--max-steps N --warmup-steps W]

What a careful user writes without a harness: Fashion-MNIST held in memory as tensors, the same
small CNN (two Conv-BN-ReLU-MaxPool stages of 16 and 32 channels, a 128-unit head), AdamW
(lr 1e-3, weight decay 0.01 except biases and norm weights), linear warmup over 100 updates then a
cosine to 1e-5, gradient clipping at 1.0, batch 128, 3 epochs, seed 0; a tqdm bar, the loss and LR
to TensorBoard through ``SummaryWriter`` every 10 updates, a validation and a checkpoint per epoch.
It prints the final validation metrics as JSON on its last line. It imports nothing from ``trainer``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

DATA = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
MEAN, STD = 0.2860, 0.3530
BATCH, EPOCHS, PEAK_LR, MIN_LR, WARMUP, CLIP, LOG_EVERY = 128, 3, 1e-3, 1e-5, 100, 1.0, 10


def read_idx(path: Path) -> torch.Tensor:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(root / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{split}-labels-idx1-ubyte.gz")
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1), labels.long()


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.0), nn.Linear(128, 10),
    )


def make_optimizer(model: nn.Module) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights, none on biases and norm weights."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=PEAK_LR, foreach=True
    )


def lr_at(t: int, total: int, warmup: int = WARMUP) -> float:
    """Linear warmup from 0 over ``warmup`` updates, then a cosine from PEAK_LR to MIN_LR at ``total``."""
    if t < warmup:
        return PEAK_LR * t / warmup
    progress = min((t - warmup) / max(total - warmup, 1), 1.0)
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), BATCH):
        logits = model(x[start : start + BATCH])
        loss += F.cross_entropy(logits, y[start : start + BATCH], reduction="sum").item()
        correct += (logits.argmax(1) == y[start : start + BATCH]).sum().item()
    model.train()
    return {"val/loss": loss / len(x), "val/acc": correct / len(x)}


def parse_args(doc: str) -> argparse.Namespace:
    """The command line of this script and of ``lightning_default_job.py``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run directory (events, checkpoints)")
    parser.add_argument("--root", type=Path, default=DATA, help="directory with the four gzipped IDX files")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N updates (a shortened run)")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP, help=f"warmup updates (default {WARMUP})")
    return parser.parse_args()


def main() -> None:
    args = parse_args(__doc__)
    torch.manual_seed(0)
    train_x, train_y = load(args.root, "train")
    val_x, val_y = load(args.root, "t10k")
    model = make_model()
    optimizer = make_optimizer(model)
    per_epoch = len(train_x) // BATCH
    total = args.max_steps or EPOCHS * per_epoch
    writer = SummaryWriter(args.out)
    bar = tqdm(total=total, unit="upd")
    step, metrics = 0, {}
    for epoch in range(math.ceil(total / per_epoch)):
        order = torch.randperm(len(train_x))
        for i in range(min(per_epoch, total - step)):
            index = order[i * BATCH : (i + 1) * BATCH]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, args.warmup_steps)
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % LOG_EVERY == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            step += 1
            bar.update(1)
        metrics = validate(model, val_x, val_y)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
        bar.write(f"epoch {epoch}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                   args.out / "last.pt")
    bar.close()
    writer.close()
    print(json.dumps({**metrics, "updates": step}))


if __name__ == "__main__":
    main()
