"""Harness overhead: the trainer's loop against the same step written by hand, in one process.

    python scripts/bench.py                       # every case this machine can run
    python scripts/bench.py --cases mlp_cpu --updates 300 --repeats 5 --json bench.json
    python scripts/bench.py --cases gpt --device cpu --updates 3 --repeats 1 \
        --set model.n_layer=1 model.n_embd=32 model.block_size=16   # a shrunk smoke run anywhere

Cases: ``mlp_cpu`` / ``mlp_cuda`` (a tiny MLP, where per-update overhead dominates),
``resnet18`` (CIFAR-shape ResNet-18, batch 512, bf16, channels_last, SGD Nesterov) and ``gpt``
(nanoGPT's Shakespeare size, batch 64 x 256 tokens, bf16, fused AdamW); the last two run on
CUDA and train on random data of the real shapes, resident on the device.

Both sides train the same model from the same initial weights on the same batches with the same
features (autocast dtype, gradient clipping, optimizer, warmup + cosine schedule). The harness
side is ``trainer.loop.Loop.run`` as ``python -m trainer`` builds it, logging every update to
TensorBoard. Each measurement is taken after warm-up updates, with device synchronisation, and
repeated with raw and harness alternating; the table gives the median and the spread (min-max)
of updates/s, examples/s, the ratio harness/raw (median over pairs of neighbouring repeats, so
that drift in a shared machine's speed cancels) and, on CUDA, peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from trainer.config import plan_run
from trainer.data import Dataset, ExampleDataset, build_dataset
from trainer.data.text import TokenDataset
from trainer.hydra_app import CONFIG_DIR
from trainer.precision import resolve_precision
from trainer.run import build_loop, build_optimization


def random_images(cfg, examples: int) -> ExampleDataset:
    """CIFAR-shape data: ``examples`` random 3x32x32 images in 10 classes (and one batch to validate)."""
    g = torch.Generator().manual_seed(cfg.seed)
    n = examples + cfg.data.batch_size
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return ExampleDataset(x[:examples], y[:examples], x[examples:], y[examples:], num_classes=10, input_shape=(3, 32, 32))


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
    "resnet18": Case("resnet18", "cuda", (
        "model=resnet18", "data=cifar10", "data.batch_size=512", "optimizer=sgd", "optimizer.lr=0.2",
        "optimizer.nesterov=true", "trainer.precision=bf16",
    ), random_images),
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
    """Exactly ``updates`` batches of training data (one epoch), on the config's device."""
    if case.make_data is not None:
        return case.make_data(cfg, updates * cfg.data.batch_size)
    return build_dataset(cfg.data, cfg.seed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def harness_run(cfg, dataset, device: torch.device, run_dir: Path) -> float:
    """Seconds for ``Loop.run`` as ``python -m trainer`` builds it (validation once, at the end)."""
    model, optimizer, schedule, plan = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    loop = build_loop(
        cfg, model=model, optimizer=optimizer, schedule=schedule, plan=plan, dataset=dataset,
        precision=resolve_precision(cfg.trainer.precision, device), run_dir=run_dir,
        config=OmegaConf.to_container(cfg), fingerprint={},
    )
    synchronize(device)
    start = time.perf_counter()
    loop.run()
    synchronize(device)
    elapsed = time.perf_counter() - start
    loop.logger.close()
    return elapsed


def raw_run(cfg, dataset, device: torch.device) -> float:
    """Seconds for the same updates written by hand: the classic loop, no logging."""
    model, optimizer, schedule, plan = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    dtype = resolve_precision(cfg.trainer.precision, device).dtype
    params = [p for p in model.parameters()]
    lrs = [schedule.lr(u) for u in range(plan.max_updates)]
    batches = dataset.train_epoch(cfg.data.batch_size, seed=cfg.seed, epoch=0)
    synchronize(device)
    start = time.perf_counter()
    for update in range(plan.max_updates):
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


def bench_case(case: Case, updates: int, repeats: int, *, device: str | None = None, extra: list[str] = ()) -> dict:
    """Time both sides, alternating raw and harness each repeat so that drift in the machine's
    speed (shared VMs have plenty) hits both alike; one untimed warm-up run of each first."""
    device = torch.device(device or case.device)
    cfg = compose_case(case, updates, device.type, list(extra))
    dataset = case_data(case, cfg, updates).to(device)
    assert plan_run(cfg, dataset.num_train).num_epochs == 1, "keep the benchmark within one epoch"
    sides = {"raw": lambda: raw_run(cfg, dataset, device),
             "harness": lambda: harness_run(cfg, dataset, device, Path(tempfile.mkdtemp()))}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    peak: dict[str, float | None] = {}
    for repeat in range(repeats + 1):
        for side, fn in sides.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            elapsed = fn()
            if repeat > 0:  # repeat 0 warms up allocator, kernels and lazy imports
                seconds[side].append(elapsed)
            peak[side] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    results = {}
    for side, times in seconds.items():
        rates = sorted(updates / s for s in times)
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
    return results


def throughput(side: dict) -> str:
    """Examples/s, or tokens/s (``tok``) for a language model."""
    if side["tokens_per_s"] is not None:
        return f"{side['tokens_per_s']:.0f} tok"
    return f"{side['examples_per_s']:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=None, help=f"subset of {', '.join(CASES)}")
    parser.add_argument("--updates", type=int, default=300, help="timed optimizer updates per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="run every case on this device")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args()
    names = args.cases or [n for n, c in CASES.items() if c.device == "cpu" or torch.cuda.is_available()]
    report = {
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "updates": args.updates,
        "repeats": args.repeats,
        "overrides": args.set,
        "cases": {},
    }
    print(f"{'case':<10} {'raw upd/s':>16} {'harness upd/s':>16} {'examples/s (h)':>15} "
          f"{'ratio (paired)':>20} {'peak MB r/h':>12}")
    for name in names:
        r = bench_case(CASES[name], args.updates, args.repeats, device=args.device, extra=args.set)
        report["cases"][name] = r
        raw, harness = r["raw"], r["harness"]
        memory = "-" if raw["peak_memory_mb"] is None else f"{raw['peak_memory_mb']:.0f}/{harness['peak_memory_mb']:.0f}"
        print(f"{name:<10} {raw['updates_per_s']:>8.0f} ({raw['min']:.0f}-{raw['max']:.0f}) "
              f"{harness['updates_per_s']:>7.0f} ({harness['min']:.0f}-{harness['max']:.0f}) "
              f"{throughput(harness):>15} {r['ratio']:>6.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
              f"{memory:>12}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    assert all(math.isfinite(c["ratio"]) for c in report["cases"].values())


if __name__ == "__main__":
    main()
