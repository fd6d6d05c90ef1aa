"""The default job (``python -m trainer``) as a LightningModule and ``lightning.Trainer``, for
``scripts/bench_job.py`` (which runs it only where Lightning is installed).

    python scripts/lightning_default_job.py --out DIR [--max-steps N --warmup-steps W]

The job of ``scripts/handwritten_default_job.py`` (its data, model, optimizer groups, schedule and
seed) the way Lightning is written: the schedule as a per-update ``LambdaLR``,
``gradient_clip_val=1.0``, Lightning's progress bar, TensorBoard logger (every 10 updates) and its
default checkpoint after every epoch, a validation per epoch. Batches are gathered whole from the
tensors (a ``BatchSampler`` as the sampler), as the other two sides do, so that the comparison is
of the training loops and not of per-example collation. It prints the final validation metrics
as JSON on its last line.
"""

from __future__ import annotations

import json
import math

import lightning
import torch
from handwritten_default_job import (
    BATCH,
    CLIP,
    EPOCHS,
    LOG_EVERY,
    PEAK_LR,
    load,
    lr_at,
    make_model,
    make_optimizer,
    parse_args,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


class DefaultJob(lightning.LightningModule):
    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        super().__init__()
        self.model, self.total_steps, self.warmup_steps = make_model(), total_steps, warmup_steps

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs), targets)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        inputs, targets = batch
        logits = self.model(inputs)
        # Means over batches weighted by their sizes: the same as the other sides' sums over examples.
        self.log("val/loss", F.cross_entropy(logits, targets), batch_size=len(targets))
        self.log("val/acc", (logits.argmax(1) == targets).float().mean(), batch_size=len(targets))

    def configure_optimizers(self):
        optimizer = make_optimizer(self.model)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_at(t, self.total_steps, self.warmup_steps) / PEAK_LR)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def batches(x: torch.Tensor, y: torch.Tensor, *, shuffle: bool) -> DataLoader:
    sampler = RandomSampler(range(len(x))) if shuffle else SequentialSampler(range(len(x)))
    return DataLoader(TensorDataset(x, y), sampler=BatchSampler(sampler, BATCH, drop_last=shuffle), batch_size=None)


def main() -> None:
    args = parse_args(__doc__)
    torch.manual_seed(0)
    train_x, train_y = load(args.root, "train")
    val_x, val_y = load(args.root, "t10k")
    total = args.max_steps or EPOCHS * (len(train_x) // BATCH)
    trainer = lightning.Trainer(
        max_steps=total, max_epochs=math.ceil(total / (len(train_x) // BATCH)), gradient_clip_val=CLIP,
        logger=TensorBoardLogger(args.out), log_every_n_steps=LOG_EVERY, default_root_dir=args.out,
        num_sanity_val_steps=0, accelerator="cpu", devices=1,
    )
    job, val = DefaultJob(total, args.warmup_steps), batches(val_x, val_y, shuffle=False)
    trainer.fit(job, batches(train_x, train_y, shuffle=True), val)
    if "val/loss" not in trainer.callback_metrics:  # max_steps ended an epoch early: validate as the others do
        trainer.validate(job, val, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    print(json.dumps({**metrics, "updates": trainer.global_step}))


if __name__ == "__main__":
    main()
