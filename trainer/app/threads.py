"""CPU threads that share the machine (``trainer.num_threads=auto``).

Two torch processes on a 2-core machine, each with 2 OpenMP threads that spin while they wait for
work (OpenMP's default), fight for the cores: measured here, one epoch of the default job took
13.1 s alone and 46-59 s when a second one started beside it. ``auto`` counts the cores other
processes kept busy while this one started (its imports and data loading: seconds) and takes the
rest, at least one: alone, every usable core, exactly as before; beside another run, what that run
leaves, so two runs started together take one core each instead of fighting over both.

The count is fixed for the run: a thread count changes how float sums are split, so changing it
as the load changes would make a run's results depend on the load, and a resumed run takes the
count its checkpoint ran with, so it continues bit for bit. (Threads that spin less, e.g.
``GOMP_SPINCOUNT=10000``, help a run that was going alone when a second one starts, but cost the
run alone a few percent: measured in docs/benchmarks.md, and left to the user's environment.)

The user's own ``OMP_NUM_THREADS`` always wins, as does a number in ``trainer.num_threads``.
Linux only (``/proc/stat``); elsewhere ``auto`` takes every usable core.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

#: A core counts as taken when other processes kept it busy at least this much of the time.
TAKEN = 0.5
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuClock:
    """The machine's busy CPU time and this process's own, at one moment (seconds)."""

    wall: float
    busy: float  # every core's non-idle time since boot (what any process, or the hypervisor, used)
    own: float  # this process's, all its threads

    @classmethod
    def now(cls) -> CpuClock | None:
        """Now; None where ``/proc/stat`` cannot be read (not Linux)."""
        try:
            fields = PROC_STAT.read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        ticks = os.sysconf("SC_CLK_TCK")
        return cls(time.monotonic(), (user + nice + system + irq + softirq + steal) / ticks, time.process_time())


def busy_elsewhere(since: CpuClock | None) -> float | None:
    """Cores other processes kept busy, on average, since ``since``; None when it cannot be told."""
    now = CpuClock.now()
    if since is None or now is None or now.wall - since.wall < 0.05:
        return None
    return max(0.0, (now.busy - since.busy) - (now.own - since.own)) / (now.wall - since.wall)


def pick_threads(
    setting: int | str, *, since: CpuClock | None, resumed: int | None = None,
    environ: MutableMapping[str, str] = os.environ,
) -> int:
    """Intra-op threads for ``trainer.num_threads``: a number as it is; ``auto`` = $OMP_NUM_THREADS
    (parallel launchers set it per job), else a resumed run's own count, else the usable CPUs (a
    SLURM task's allocation, not the whole node) less those other processes kept busy since ``since``."""
    if setting != "auto":
        return int(setting)
    if environ.get("OMP_NUM_THREADS"):
        return int(environ["OMP_NUM_THREADS"])
    usable = len(os.sched_getaffinity(0))
    if resumed is not None:
        return max(1, min(resumed, usable))
    others = busy_elsewhere(since)
    if others is None:
        return usable
    return max(1, usable - int(others + (1 - TAKEN)))
