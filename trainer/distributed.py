"""Data parallelism with PyTorch's own engine: ``trainer.strategy`` = auto | single | ddp | fsdp.

A launch is ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` variables) or a
SLURM job step with one task per device (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, the
first node of ``SLURM_JOB_NODELIST`` as the rendezvous host). Every rank computes the same plan
from the same config; rank 0 alone writes files. :class:`World` is the one object the loop asks
about ranks: it wraps the model (``DistributedDataParallel`` or FSDP2 ``fully_shard``), gathers
full state dicts for the single-file checkpoint, and reduces what logs and validation read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from trainer.errors import EXIT_CRASH, ConfigError

STRATEGIES = ("auto", "single", "ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")
#: A rank that waits longer than this in a collective (e.g. for a rank that crashed) fails.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
#: The port of a SLURM job's rendezvous when ``MASTER_PORT`` is not set: one per job id.
SLURM_BASE_PORT = 20000
#: A rank whose launcher died stops as if preempted; a stop that has not ended the process this many
#: seconds later (a collective waiting for a rank that died too) ends it anyway.
ORPHAN_EXIT_AFTER_S = 30.0
#: How often a rank under torchrun looks whether its launcher still lives (seconds).
PARENT_POLL_S = 1.0


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: its rank, the world size, its device index on its node,
    and the rendezvous address (``MASTER_ADDR:MASTER_PORT``)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-005,9],cpu1`` -> ``gpu003``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix if ranges is None else prefix + re.split(r"[-,]", ranges)[0]


def launch_from_env(env: Mapping[str, str]) -> Launch | None:
    """This process's launch from torchrun's variables, else from SLURM's (a step with more than
    one task), else None (a plain ``python -m trainer``)."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", 29500)),
        )
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:
        return Launch(
            rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_node(env["SLURM_JOB_NODELIST"]),
            master_port=int(env.get("MASTER_PORT") or SLURM_BASE_PORT + int(env["SLURM_JOB_ID"]) % 20000),
        )
    return None


def launch_rank() -> int:
    """This process's rank (0 outside a launch): who prints errors before the group exists."""
    launch = launch_from_env(os.environ)
    return 0 if launch is None else launch.rank


@functools.cache  # once per process: trainer.fit and sweep jobs may start many worlds
def end_with_launcher(rank: int) -> None:
    """Under torchrun (its ``TORCHELASTIC_RUN_ID``): when the launcher dies, e.g. SIGKILLed by a
    scheduler at a hard limit, this rank gets one SIGTERM within :data:`PARENT_POLL_S` seconds, the
    preemption every rank already handles (``last.pt``, exit 3), and ends at most
    :data:`ORPHAN_EXIT_AFTER_S` seconds later however that stop goes, so the run directory's lock is
    free for the requeued job. Elsewhere it does nothing: a SLURM step's tasks end with the step, and
    a plain process has no launcher."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        threading.Thread(target=_stop_when_orphaned, args=(os.getppid(), rank), name="launcher-watch",
                         daemon=True).start()


def _stop_when_orphaned(parent: int, rank: int) -> None:
    """Once ``parent`` is gone, SIGTERM this process; if that stop has not ended it
    :data:`ORPHAN_EXIT_AFTER_S` seconds later, end it: its peers may be gone, and a collective with
    them would otherwise wait :data:`COLLECTIVE_TIMEOUT` holding the lock.

    Polled, not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal again each time a dying
    multithreaded launcher hands its children to another of its threads (1 to 4 times for one
    SIGKILL, seen here), and a second SIGTERM kills a rank before it writes ``last.pt``. A thread,
    not the signal handler, keeps the bound: Python runs handlers only between bytecodes, never
    while the main thread waits inside a collective."""
    while os.getppid() == parent:  # a dead parent's orphans are adopted by init (or a subreaper)
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_EXIT_AFTER_S)
    with contextlib.suppress(OSError):  # nobody may read stderr any more
        print(f"rank {rank}: the launcher (pid {parent}) died {ORPHAN_EXIT_AFTER_S:.0f} s ago and the stop has not "
              "ended: exiting; last.pt is the last checkpoint written whole", file=sys.stderr, flush=True)
    os._exit(EXIT_CRASH)


def resolve_strategy(strategy: str, launch: Launch | None) -> str:
    """``single``, ``ddp`` or ``fsdp`` for ``trainer.strategy`` in this launch."""
    if strategy == "auto":
        return "ddp" if launch is not None and launch.world_size > 1 else "single"
    if strategy in ("ddp", "fsdp") and launch is None:
        raise ConfigError(
            "trainer.strategy",
            f"{strategy} needs a distributed launch: torchrun --nproc_per_node=N -m trainer ... (or srun with "
            "one task per device); for one process use trainer.strategy=auto or single",
        )
    if strategy == "single" and launch is not None and launch.world_size > 1:
        raise ConfigError(
            "trainer.strategy",
            f"single in a launch of {launch.world_size} processes would train {launch.world_size} copies: "
            "use trainer.strategy=auto, ddp or fsdp",
        )
    return strategy


def resolve_backend(backend: str, device: torch.device) -> str:
    """``trainer.dist_backend``: auto = NCCL on CUDA, gloo on the CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            "trainer.dist_backend", "nccl needs CUDA devices and this run trains on the CPU: use auto or gloo"
        )
    return backend


def device_of(launch: Launch | None, device: torch.device) -> torch.device:
    """This rank's device: the ``LOCAL_RANK``-th GPU of its node on CUDA."""
    if launch is None or device.type != "cuda":
        return device
    if launch.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            "trainer.device",
            f"rank {launch.rank} has LOCAL_RANK={launch.local_rank} but its node shows "
            f"{torch.cuda.device_count()} GPUs: launch at most one process per GPU",
        )
    torch.cuda.set_device(launch.local_rank)
    return torch.device("cuda", launch.local_rank)


@dataclass
class World:
    """The processes training together (one, outside a launch) and how the model is spread
    over them. ``strategy`` is ``single``, ``ddp`` or ``fsdp``."""

    strategy: str = "single"
    rank: int = 0
    world_size: int = 1
    shard_modules: tuple[str, ...] = ()
    bf16_params: bool = False  # FSDP2 keeps bf16 parameter copies for compute, reduces in fp32
    _control: object = field(default=None, repr=False)  # a gloo group for host-side flags

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"

    @classmethod
    def start(
        cls, strategy: str, launch: Launch | None, *, backend: str, shard_modules: tuple[str, ...] = (),
        bf16_params: bool = False,
    ) -> World:
        """Join the process group of ``launch`` (nothing to join for ``single``); a rank of any launch
        ends with its launcher (:func:`end_with_launcher`)."""
        if launch is not None:
            end_with_launcher(launch.rank)
        if strategy == "single":
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(
                backend, init_method=f"tcp://{launch.master_addr}:{launch.master_port}", rank=launch.rank,
                world_size=launch.world_size, timeout=COLLECTIVE_TIMEOUT,
            )
        # Stop flags are agreed on a CPU group: under NCCL a device flag would sync every update.
        control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        return cls(strategy, launch.rank, launch.world_size, shard_modules, bf16_params, control)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def parallelize(self, model: nn.Module) -> nn.Module:
        """Shard ``model`` in place for FSDP2 (each block, then the root); call before the
        optimizer is built, which must see the sharded parameters."""
        if self.strategy != "fsdp":
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.bf16_params \
            else MixedPrecisionPolicy()
        for module in blocks_to_shard(model, self.shard_modules):
            fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model

    def trainable(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: DDP's wrapper, else ``model`` itself."""
        if self.strategy != "ddp":
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def model_state(self, model: nn.Module) -> dict:
        """The full (unsharded) model state, the keys a single process writes."""
        if self.strategy != "fsdp":
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))

    def load_model_state(self, model: nn.Module, state: dict) -> None:
        if self.strategy != "fsdp":
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def full_optimizer_state(self, state: dict) -> dict:
        """``optimizer.state_dict()`` with FSDP2's sharded moments gathered whole (the same
        tensors a single process saves); a collective on every rank."""
        if self.strategy != "fsdp":
            return state
        from torch.distributed.tensor import DTensor

        per_param = {
            index: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in param_state.items()}
            for index, param_state in state["state"].items()
        }
        return {**state, "state": per_param}

    def shard_optimizer_state(self, state: dict, params: list[torch.Tensor]) -> dict:
        """A full optimizer state cut into this rank's shards of the FSDP2 parameters ``params``
        (in the optimizer's order, which the saved indices count)."""
        if self.strategy != "fsdp":
            return state
        from torch.distributed.tensor import DTensor, distribute_tensor

        per_param = {}
        for index, param_state in state["state"].items():
            param = params[int(index)]
            per_param[index] = {
                k: distribute_tensor(v.to(param.device), param.device_mesh, param.placements)
                if isinstance(param, DTensor) and torch.is_tensor(v) and v.shape == param.shape else v
                for k, v in param_state.items()
            }
        return {**state, "state": per_param}

    @contextlib.contextmanager
    def gradient_sync(self, model: nn.Module, enabled: bool) -> Iterator[None]:
        """Skip the gradient all-reduce (DDP's ``no_sync``, FSDP2's
        ``set_requires_gradient_sync``) on micro-batches that do not step."""
        if enabled or not self.distributed:
            yield
        elif self.strategy == "ddp":
            with model.no_sync():
                yield
        else:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (a new tensor; itself alone)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.sum(tensor) / self.world_size if self.distributed else tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a host-side collective)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self._control)

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (e.g. the run directory, named from each one's clock)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def gather(self, value: object) -> list[object]:
        """Every rank's ``value``, in rank order, on every rank (plain data: pickled over the CPU group)."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self._control)
        return values


def blocks_to_shard(model: nn.Module, class_names: tuple[str, ...]) -> list[nn.Module]:
    """The modules FSDP2 shards one by one (each gathers its parameters only for its own
    forward and backward): the residual blocks a model's classes mark with ``is_block = True``
    (the shipped ResNet's and GPT's) and the modules whose class is named in
    ``trainer.fsdp.shard_modules``. The root takes the rest."""
    return [
        m for m in model.modules()
        if m is not model and (getattr(type(m), "is_block", False) or type(m).__name__ in class_names)
    ]
