"""Resident memory of ``data=tokens`` against the size of its files: a memory figure, not a timing.

    python scripts/token_memory.py                       # a 1.2 GB file and a 12 MB one
    python scripts/token_memory.py --gb 2 --json docs/bench/token_memory.json

Writes two nanoGPT-format folders in a temporary directory: ``train.bin`` of ``--gb`` GB of uint16
ids (written in 64 MB chunks of real data, no sparse holes) and one of 1% of that size; each
folder's ``val.bin`` is a hard link to its ``train.bin``, so validation reads the whole file. Then,
in a fresh process per folder:

- ``read``: the trainer's own ``data=tokens`` builder; every validation window of the file end to
  end (each page of it read once) and 200 training batches of 64 × 1024-token windows at random
  offsets: the peak resident set (``VmHWM``) against the same process's after ``import torch``;
- ``train``: ``python -m trainer`` training a small GPT on it (30 updates of 16 windows of 256
  tokens, validation on 64 windows): the process's peak resident set (``ru_maxrss``).

``read`` runs twice: with the trainer's reader (a positioned read per window) and with nanoGPT's
(an ``np.memmap`` per batch, dropped after it), for comparison. If the memory held grew with the
data, the large folder's figures would exceed the small one's by about its size. The folders are
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CHUNK_TOKENS = 32 << 20  # 64 MB of uint16 per write
VOCAB = 256

READ = """
import json, sys, torch
import numpy as np
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
base = hwm()
from trainer.data.tokens import TokenFile, tokens
if sys.argv[2] == "memmap":  # nanoGPT's reader, for comparison: a memmap per batch, dropped after it
    def windows(self, starts, size):
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return np.stack([data[start : start + size] for start in starts])
    TokenFile.windows = windows
data = tokens(path=sys.argv[1], dtype="uint16", vocab_size=None, block_size=1024, windows_per_epoch=None,
              val_windows=None, tokenizer=None)
seen = sum(int(x.numel()) for x, _ in data.val_batches(64))
val_peak = hwm()
epoch = data.train_epoch(64, seed=0, epoch=0)
seen += sum(int(epoch[i][0].numel()) for i in range(min(200, len(epoch))))
print(json.dumps({"tokens_read": seen, "val_peak_rss": val_peak, "peak_rss": hwm(), "rss_after_import_torch": base}))
"""


def write_folder(folder: Path, size_bytes: int) -> None:
    """``train.bin`` of ``size_bytes`` (ids 0..VOCAB-1, a pattern), ``val.bin`` a hard link to it, meta.pkl."""
    import pickle

    folder.mkdir(parents=True)
    tokens = size_bytes // 2
    with (folder / "train.bin").open("wb") as file:
        for start in range(0, tokens, CHUNK_TOKENS):
            count = min(CHUNK_TOKENS, tokens - start)
            ((np.arange(start, start + count, dtype=np.uint64) * 2654435761) % VOCAB).astype(np.uint16).tofile(file)
    os.link(folder / "train.bin", folder / "val.bin")
    with (folder / "meta.pkl").open("wb") as file:
        pickle.dump({"vocab_size": VOCAB}, file)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def read(folder: Path, reader: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", READ, str(folder), reader], env=env(), capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def train(folder: Path, run_dir: Path) -> int:
    """Peak resident bytes of ``python -m trainer`` on ``folder`` (its own process, measured by a parent)."""
    command = [sys.executable, "-m", "trainer", "trainer.num_threads=1", "logger.progress_bar=false", "model=gpt",
               "data=tokens", f"data.path={folder}", "model.block_size=256", "model.n_layer=2", "model.n_head=2",
               "model.n_embd=64", "data.batch_size=16", "data.val_windows=64", "trainer.max_steps=30",
               "schedule=cosine", f"hydra.run.dir={run_dir}"]
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
    proc = subprocess.run([sys.executable, "-c", probe, *command], env=env(), cwd=REPO, capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) * 1024
    return f"{cpu}, {os.cpu_count()} CPUs, {memory / 1e9:.0f} GB RAM, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.2, help="size of the large train.bin in GB (10^9 bytes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    results = {"machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="token_memory_") as tmp:
        for name, size in (("small", int(args.gb * 1e7)), ("large", int(args.gb * 1e9))):
            folder = Path(tmp) / name
            write_folder(folder, size)
            for reader in ("trainer", "memmap"):
                row = {"file_bytes": size, "reader": reader, **read(folder, reader)}
                if reader == "trainer":
                    row["train_peak_rss"] = train(folder, Path(tmp) / f"run_{name}")
                results["runs"].append(row)
                print(f"{name} ({reader}): train.bin {size / 1e9:.3f} GB, {row['tokens_read'] * 2 / 1e9:.3f} GB read; "
                      f"peak RSS after import torch {row['rss_after_import_torch'] / 1e6:.0f} MB, after validating "
                      f"{row['val_peak_rss'] / 1e6:.0f} MB, after training batches {row['peak_rss'] / 1e6:.0f} MB"
                      + (f"; python -m trainer {row['train_peak_rss'] / 1e6:.0f} MB" if "train_peak_rss" in row else ""),
                      flush=True)
            for path in folder.iterdir():
                path.unlink()
    print(f"machine: {results['machine']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
