"""Screenshots of what TensorBoard shows for a sweep: its Scalars and HParams pages, in headless
Chromium, into ``docs/tensorboard/``. Checks the logs' layout by eye, where tests check it by reading
the event files (``tests/test_sweeps.py``, ``tests/test_cli.py``).

Needs Chromium (``apt-get install -y chromium``) and TensorBoard (a dependency). Runs a small sweep
of three schedules on synthetic data (about a minute on 2 cores), serves it on a free local port
and loads each page with the network and background services off::

    python scripts/tensorboard_screenshots.py [--out docs/tensorboard] [--browser chromium]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SWEEP = [
    "-m", "schedule=constant,cosine,onecycle", "optimizer.lr=0.01", "trainer.max_epochs=2", "trainer.num_threads=1",
    "logger.progress_bar=false", "data=synthetic", "model=mlp", "data.train_size=1024", "data.val_size=256",
    "data.batch_size=32",
]

#: Page -> the dashboard's address fragment.
PAGES = {"scalars": "#scalars", "hparams": "#hparams"}

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900", "--virtual-time-budget=15000", "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(logdir: Path, port: int) -> subprocess.Popen:
    """TensorBoard on ``logdir``, once it answers (within 60 s)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("error: TensorBoard did not answer within 60 s")


def screenshot(browser: str, url: str, path: Path, profile: Path) -> None:
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "tensorboard")
    parser.add_argument("--browser", default="chromium")
    args = parser.parse_args()
    if shutil.which(args.browser) is None:
        raise SystemExit(f"error: no {args.browser} on PATH: apt-get install -y chromium, or pass --browser")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        subprocess.run([sys.executable, "-m", "trainer", *SWEEP, f"hydra.sweep.dir={sweep_dir}"], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
        port = free_port()
        server = serve(sweep_dir, port)
        try:
            for name, fragment in PAGES.items():
                screenshot(args.browser, f"http://127.0.0.1:{port}/{fragment}", args.out / f"{name}.png",
                           Path(tmp) / "profile")
                print(args.out / f"{name}.png")
        finally:
            server.terminate()
            server.wait()
    print("sweep: trainer " + " ".join(SWEEP))


if __name__ == "__main__":
    main()
