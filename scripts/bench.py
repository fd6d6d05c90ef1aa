"""Harness overhead: the trainer's loop against the same step written by hand, in one process.

    python scripts/bench.py                       # every case this machine can run
    python scripts/bench.py --cases mlp_cpu --updates 300 --repeats 5 --json bench.json
    python scripts/bench.py --cases gpt --device cpu --updates 3 --warmup 1 --repeats 1 \
        --set model.n_layer=1 model.n_head=2 model.n_embd=32 model.block_size=16   # a shrunk smoke run anywhere
    python scripts/bench.py --cases mlp_cpu --worlds 1 2 --updates 1000 --repeats 3   # 1 vs 2 processes (DDP)

Cases: ``mlp_cpu`` / ``mlp_cuda`` (a tiny MLP, where per-update overhead dominates), ``cnn_cpu``
(the default job's CNN, batch 128 and AdamW, on random data of Fashion-MNIST's shape),
``resnet18`` (CIFAR-shape ResNet-18, batch 512, bf16, channels_last, SGD Nesterov) and ``gpt``
(nanoGPT's Shakespeare size, batch 64 x 256 tokens, bf16, fused AdamW); the last two run on
CUDA and train on random data of the real shapes, resident on the device.

Both sides train the same model from the same initial weights on the same batches with the same
features (autocast dtype, gradient clipping, optimizer, warmup + cosine schedule). The harness
side is ``trainer.training.loop.Loop.run`` as ``python -m trainer`` builds it, logging every update to
TensorBoard. Each run's first ``--warmup`` updates are not timed (compilation, cuDNN autotuning,
optimizer state); the rest are, with device synchronisation at both ends. Runs are repeated with
raw and harness (and Lightning, when installed) alternating, after one untimed run of each; the
table gives the median and the spread (min-max) of updates/s, examples/s (tokens/s for the GPT),
the ratio harness/raw (median over pairs of neighbouring repeats, so that drift in a shared
machine's speed cancels), peak memory on CUDA, and Lightning/raw.

``--worlds 1 2`` instead runs the real CLI at each world size (``torchrun`` above one process,
DDP, the case's batch as the global batch split over the ranks, the CPU's cores or the GPUs shared
out) and times updates ``warmup..`` from the wall times of their event records, read every 10
updates.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F

from trainer.app.build import build_loop, build_optimization, build_training
from trainer.components import CONFIG_DIR
from trainer.data import Dataset, ExampleDataset, build_dataset
from trainer.data.text import TokenDataset
from trainer.errors import one_line
from trainer.plan import plan_run
from trainer.training.precision import resolve_precision
from trainer.training.step import TrainStep


def random_images(shape: tuple[int, int, int]) -> Callable[..., ExampleDataset]:
    """Data of ``shape`` (channels, height, width): ``examples`` random images in 10 classes (and
    one batch to validate)."""
    def make(cfg, examples: int) -> ExampleDataset:
        g = torch.Generator().manual_seed(cfg.seed)
        n = examples + cfg.data.batch_size
        x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
        return ExampleDataset(x[:examples], y[:examples], x[examples:], y[examples:], num_classes=10, input_shape=shape)

    return make


def random_text(cfg, examples: int) -> TokenDataset:
    """Shakespeare-char-shape data: random tokens over 65 symbols, ``examples`` windows of
    ``model.block_size`` to train on and two to validate."""
    block = cfg.model.block_size
    g = torch.Generator().manual_seed(cfg.seed)
    cut = examples * block + 1
    tokens = torch.randint(0, 65, (cut + 2 * block + 1,), generator=g)
    return TokenDataset(tokens[:cut], tokens[cut:], block, "".join(chr(33 + i) for i in range(65)))


@dataclass(frozen=True)
class Case:
    """One benchmark: a composed config (overrides) on one device; ``make_data(cfg, examples)``
    builds random data of the real shape, else the config's own data is loaded."""

    name: str
    device: str
    overrides: tuple[str, ...]
    make_data: Callable[..., Dataset] | None = None


MLP = ("data=synthetic", "model=mlp", "data.batch_size=64", "data.train_size=65536", "data.val_size=64", "optimizer=adamw")
CASES = {
    "mlp_cpu": Case("mlp_cpu", "cpu", (*MLP, "trainer.precision=fp32")),
    "mlp_cuda": Case("mlp_cuda", "cuda", (*MLP, "trainer.precision=bf16")),
    # The default job's step (python -m trainer): its CNN, batch and AdamW, on Fashion-MNIST-shape data.
    "cnn_cpu": Case("cnn_cpu", "cpu", ("model=cnn", "data=fashion_mnist", "trainer.precision=fp32"),
                    random_images((1, 28, 28))),
    "resnet18": Case("resnet18", "cuda", (
        "model=resnet18", "data=cifar10", "data.batch_size=512", "optimizer=sgd", "optimizer.lr=0.2",
        "optimizer.nesterov=true", "trainer.precision=bf16",
    ), random_images((3, 32, 32))),
    "gpt": Case("gpt", "cuda", (
        "model=gpt", "data=shakespeare_char", "data.batch_size=64", "optimizer=adamw", "optimizer.betas=[0.9,0.99]",
        "optimizer.weight_decay=0.1", "trainer.precision=bf16",
    ), random_text),
}


def compose_case(case: Case, updates: int, device: str, extra: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            *case.overrides, f"trainer.device={device}", f"trainer.max_steps={updates}",
            "schedule=warmup_cosine", f"schedule.warmup_steps={max(updates // 10, 1)}", "trainer.clip_grad_norm=1.0",
            "logger.log_every_n_steps=1", "logger.progress_bar=false", "trainer.val_every_n_epochs=1000", *extra,
        ])


def case_data(case: Case, cfg, updates: int) -> Dataset:
    """Exactly ``updates`` batches of training data (one epoch), in host memory."""
    if case.make_data is not None:
        return case.make_data(cfg, updates * cfg.data.batch_size)
    return build_dataset(cfg.data, cfg.seed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimedStep(TrainStep):
    """The harness's step, which also notes (device synchronised) when update ``first_timed``
    starts and when the last update ends."""

    first_timed: int
    last_update: int
    marks: list[float]

    def __call__(self, micro_batches, update):
        if update == self.first_timed:
            synchronize(self.params[0].device)
            self.marks.append(time.perf_counter())
        result = super().__call__(micro_batches, update)
        if update == self.last_update:
            synchronize(self.params[0].device)
            self.marks.append(time.perf_counter())
        return result


def harness_run(cfg, dataset, device: torch.device, run_dir: Path, warmup: int) -> float:
    """Seconds for updates ``warmup..`` of ``Loop.run`` as ``python -m trainer`` builds it, to the
    end of its last update (the validation and checkpoint after it are left out: the raw loop has
    neither)."""
    built = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    config = OmegaConf.to_container(cfg)
    training = build_training(cfg, built, dataset=dataset, precision=resolve_precision(cfg.trainer.precision, device),
                              run_dir=run_dir, config=config, fingerprint={})
    loop = build_loop(cfg, training, plan=built.plan, run_dir=run_dir, config=config)
    loop.step.__class__ = TimedStep  # the same step, which also notes the times
    loop.step.first_timed, loop.step.last_update, loop.step.marks = warmup, built.plan.max_updates - 1, []
    loop.run()
    loop.logger.close()
    start, end = loop.step.marks
    return end - start


def raw_run(cfg, dataset, device: torch.device, warmup: int) -> float:
    """Seconds for updates ``warmup..`` written by hand: the classic loop, no logging."""
    built = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    model, optimizer, schedule, plan = built.model, built.optimizer, built.schedule, built.plan
    dtype = resolve_precision(cfg.trainer.precision, device).dtype
    params = [p for p in model.parameters()]
    lrs = [schedule.lr(u) for u in range(plan.max_updates)]
    batches = dataset.train_epoch(cfg.data.batch_size, seed=cfg.seed, epoch=0)
    for update in range(plan.max_updates):
        if update == warmup:
            synchronize(device)
            start = time.perf_counter()
        x, y = batches[update]
        for group in optimizer.param_groups:
            group["lr"] = lrs[update]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.trainer.clip_grad_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def lightning_run(cfg, dataset, device: torch.device, run_dir: Path, warmup: int) -> float:
    """Seconds for the same updates as a Lightning ``Trainer.fit`` with the same features (autocast,
    clipping at 1.0, the schedule through a per-step LambdaLR, the LR logged every update), from the
    start of update ``warmup`` to the end of the last, device synchronised."""
    import lightning as L  # noqa: N812 (Lightning's own convention); optional, not a dependency

    built = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    model, optimizer, schedule, plan = built.model, built.optimizer, built.schedule, built.plan
    peak = cfg.optimizer.lr
    marks: list[float] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x).flatten(0, -2), y.flatten())
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
            return loss

        def configure_optimizers(self):
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: schedule.lr(update) / peak)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def on_train_batch_start(self, batch, batch_idx):
            if batch_idx == warmup:
                synchronize(device)
                marks.append(time.perf_counter())

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if batch_idx == plan.max_updates - 1:
                synchronize(device)
                marks.append(time.perf_counter())

    dtype = resolve_precision(cfg.trainer.precision, device).dtype
    precision = {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[dtype]
    epoch = dataset.train_epoch(cfg.data.batch_size, seed=cfg.seed, epoch=0)
    loader = torch.utils.data.DataLoader(epoch, batch_size=None, sampler=range(len(epoch)))
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=plan.max_updates, precision=precision,
        gradient_clip_val=cfg.trainer.clip_grad_norm, log_every_n_steps=1, default_root_dir=run_dir,
        logger=L.pytorch.loggers.TensorBoardLogger(run_dir), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(Module(), train_dataloaders=loader)
    return marks[1] - marks[0]


def bench_case(
    case: Case, updates: int, repeats: int, *, warmup: int = 10, device: str | None = None, extra: list[str] = (),
    with_lightning: bool = False,
) -> dict:
    """Time both sides, alternating raw and harness each repeat so that drift in the machine's
    speed (shared VMs have plenty) hits both alike; one untimed warm-up run of each first."""
    device = torch.device(device or case.device)
    cfg = compose_case(case, updates, device.type, list(extra))
    dataset = case_data(case, cfg, updates).to(device)
    assert plan_run(cfg, dataset.num_train).num_epochs == 1, "keep the benchmark within one epoch"
    sides = {"raw": lambda: raw_run(cfg, dataset, device, warmup),
             "harness": lambda: harness_run(cfg, dataset, device, Path(tempfile.mkdtemp()), warmup)}
    if with_lightning:
        sides["lightning"] = lambda: lightning_run(cfg, dataset, device, Path(tempfile.mkdtemp()), warmup)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    peak: dict[str, float | None] = {}
    results: dict = {}
    for repeat in range(repeats + 1):
        for side, fn in list(sides.items()):
            if device.type == "cuda":
                # A compiled module keeps itself alive in a reference cycle: collect the previous
                # side's model and optimizer state, or they count towards this side's peak.
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                elapsed = fn()
            except Exception as error:  # only Lightning may fail here (e.g. fused AdamW + clipping)
                if side != "lightning":
                    raise
                results["lightning_error"] = f"{type(error).__name__}: {one_line(error)}"
                del sides[side], seconds[side]
                continue
            if repeat > 0:  # repeat 0 warms up allocator, kernels and lazy imports
                seconds[side].append(elapsed)
            peak[side] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    for side, times in seconds.items():
        rates = sorted((updates - warmup) / s for s in times)
        results[side] = {
            "updates_per_s": statistics.median(rates),
            "min": rates[0],
            "max": rates[-1],
            "examples_per_s": statistics.median(rates) * cfg.data.batch_size,
            "tokens_per_s": statistics.median(rates) * cfg.data.batch_size * math.prod(dataset.input_shape)
            if isinstance(dataset, TokenDataset) else None,
            "peak_memory_mb": peak[side],
        }
    # Each harness repeat against the raw repeat run right beside it: drift cancels in the pair.
    paired = sorted(r / h for r, h in zip(seconds["raw"], seconds["harness"]))
    results["ratio"] = statistics.median(paired)
    results["ratio_min"], results["ratio_max"] = paired[0], paired[-1]
    if "lightning" in seconds:
        results["lightning_ratio"] = statistics.median(r / t for r, t in zip(seconds["raw"], seconds["lightning"]))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READ_EVERY = 10  # updates between the world runs' log reads, whose event records carry the wall times


def world_run(case: Case, world_size: int, updates: int, warmup: int, extra: list[str], run_dir: Path) -> float:
    """Seconds for updates ``warmup..`` of ``python -m trainer`` in ``world_size`` processes
    (torchrun above one), from the wall times of the event records written when updates
    ``warmup - 1`` and the last were read."""
    cfg = compose_case(case, updates, case.device, extra)
    batch = cfg.data.batch_size
    if batch % world_size:
        raise SystemExit(f"--worlds: {world_size} does not divide the case's batch of {batch}")
    threads = max(len(os.sched_getaffinity(0)) // world_size, 1) if case.device == "cpu" else 1
    overrides = [
        *case.overrides, f"trainer.device={case.device}", f"trainer.max_steps={updates}", "schedule=warmup_cosine",
        f"schedule.warmup_steps={max(updates // 10, 1)}", "trainer.clip_grad_norm=1.0", "logger.log_every_n_steps=1",
        f"logger.read_every_n_steps={READ_EVERY}", "logger.progress_bar=false", "trainer.val_every_n_epochs=1000",
        f"trainer.global_batch_size={batch}", f"data.batch_size={batch // world_size}", f"trainer.num_threads={threads}",
        *extra, f"hydra.run.dir={run_dir}",
    ]
    launcher = [sys.executable] if world_size == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
    ]
    subprocess.run([*launcher, "-m", "trainer", *overrides], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parent.parent)
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    wall = {event.step: event.wall_time for event in accumulator.Scalars("train/lr")}
    return wall[updates - 1] - wall[warmup - 1]


def bench_worlds(case: Case, worlds: list[int], updates: int, repeats: int, *, warmup: int, extra: list[str]) -> dict:
    """Updates/s of the real CLI at each world size, repeats alternating between them."""
    if warmup < 1 or warmup % READ_EVERY or updates % READ_EVERY:
        raise SystemExit(f"--worlds needs --warmup and --updates that are multiples of {READ_EVERY}")
    seconds: dict[int, list[float]] = {w: [] for w in worlds}
    for _ in range(repeats):
        for world_size in worlds:
            seconds[world_size].append(world_run(case, world_size, updates, warmup, extra, Path(tempfile.mkdtemp())))
    results = {}
    for world_size, times in seconds.items():
        rates = sorted((updates - warmup) / s for s in times)
        results[world_size] = {"updates_per_s": statistics.median(rates), "min": rates[0], "max": rates[-1]}
    return results


def throughput(side: dict) -> str:
    """Examples/s, or tokens/s (``tok``) for a language model."""
    if side["tokens_per_s"] is not None:
        return f"{side['tokens_per_s']:.0f} tok"
    return f"{side['examples_per_s']:.0f}"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def lightning_column(result: dict) -> str:
    if "lightning_ratio" in result:
        return f"{result['lightning_ratio']:.3f}"
    return "failed" if "lightning_error" in result else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=None, help=f"subset of {', '.join(CASES)}")
    parser.add_argument("--updates", type=int, default=300, help="optimizer updates per run (warm-up included)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed updates at the start of every run (compilation, autotuning, lazy state)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="run every case on this device")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning column even if installed")
    parser.add_argument("--worlds", nargs="*", type=int, default=None,
                        help="time the real CLI at these numbers of processes instead (e.g. 1 2)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.updates:
        parser.error(f"--warmup must be in [0, --updates), got {args.warmup} of {args.updates}")
    if args.worlds:
        report = {"machine": cpu_name(), "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d"), "updates": args.updates, "warmup": args.warmup,
                  "repeats": args.repeats, "overrides": args.set, "worlds": {}}
        for name in args.cases or ["mlp_cpu"]:
            results = bench_worlds(CASES[name], args.worlds, args.updates, args.repeats, warmup=args.warmup,
                                   extra=args.set)
            report["worlds"][name] = results
            base = results[args.worlds[0]]["updates_per_s"]
            for world_size, r in results.items():
                print(f"{name:<10} {world_size} processes: {r['updates_per_s']:.0f} updates/s "
                      f"({r['min']:.0f}-{r['max']:.0f}), {r['updates_per_s'] / base:.3f} of {args.worlds[0]}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return
    with_lightning = not args.no_lightning and importlib.util.find_spec("lightning") is not None
    names = args.cases or [n for n, c in CASES.items() if c.device == "cpu" or torch.cuda.is_available()]
    report = {
        "machine": cpu_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "updates": args.updates,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "overrides": args.set,
        "lightning": importlib.metadata.version("lightning") if with_lightning else None,
        "cases": {},
    }
    print(f"{'case':<10} {'raw upd/s':>16} {'harness upd/s':>16} {'examples/s (h)':>15} "
          f"{'ratio (paired)':>20} {'peak MB r/h':>12} {'lightning/raw':>14}")
    for name in names:
        r = bench_case(CASES[name], args.updates, args.repeats, warmup=args.warmup, device=args.device, extra=args.set,
                       with_lightning=with_lightning)
        report["cases"][name] = r
        raw, harness = r["raw"], r["harness"]
        memory = "-" if raw["peak_memory_mb"] is None else f"{raw['peak_memory_mb']:.0f}/{harness['peak_memory_mb']:.0f}"
        print(f"{name:<10} {raw['updates_per_s']:>8.0f} ({raw['min']:.0f}-{raw['max']:.0f}) "
              f"{harness['updates_per_s']:>7.0f} ({harness['min']:.0f}-{harness['max']:.0f}) "
              f"{throughput(harness):>15} {r['ratio']:>6.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
              f"{memory:>12} {lightning_column(r):>14}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    assert all(math.isfinite(c["ratio"]) for c in report["cases"].values())


if __name__ == "__main__":
    main()
