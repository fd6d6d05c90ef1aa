"""trainer.strategy: DDP and FSDP2 on CPU (gloo), launched by the real torchrun, against one process.

A 2-process run and a 1-process run with the same global batch train on the same examples at
every update, so they log the same ``train/lr`` and end with the same parameters (up to the
order of fp32 sums). Every launch is 2 tiny processes with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import QUIET, REPO, TINY, compose_config, run_cli
from trainer.app.validate import validate
from trainer.data.loading import rank_batches
from trainer.distributed import (
    ORPHAN_EXIT_AFTER_S,
    Launch,
    blocks_to_shard,
    first_node,
    launch_from_env,
    resolve_backend,
    resolve_strategy,
)
from trainer.errors import EXIT_PREEMPTED, ConfigError
from trainer.models import build_model
from trainer.plan import plan_run
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars

LAUNCH_TIMEOUT = 240  # seconds: a launch that hangs fails instead of stalling CI
# 8 updates per epoch of 32 examples; each run below reaches them as batch × ranks × accumulation.
RUN = [*TINY, "schedule=cosine", "trainer.max_epochs=2", "trainer.global_batch_size=32"]
TOLERANCE = 1e-6  # fp32 sums over ranks vs over one batch
EVERY_3 = ["trainer.checkpoint_every_n_steps=3", "trainer.keep_last_n=10"]  # step-00000003.pt is mid-epoch
# A user's map-style dataset, jittered on every read: 72 examples / global batch 16 = 4 updates
# per epoch (the last 8 dropped); 21 validation examples, which 2 ranks × 16 do not divide.
MAP_RUN = [
    *QUIET, "model=mlp", "data=torch_dataset", "data.train={_target_:tests.userpkg.data.Blobs,size:72,jitter:0.5}",
    "data.val={_target_:tests.userpkg.data.Blobs,size:21,split_seed:1}", "data.num_classes=3", "data.batch_size=8",
    "schedule=cosine", "trainer.max_epochs=2", "trainer.global_batch_size=16", *EVERY_3,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "WORLD_SIZE"))}
    return {**clean, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "trainer", *args,
    ]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(*args, nproc=nproc), cwd=REPO, env=env(), capture_output=True, text=True,
        timeout=LAUNCH_TIMEOUT,
    )


def model_of(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=TOLERANCE, msg=key)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, micro-batches of 8, accumulating 4 (global batch 32), with a
    checkpoint every 3 updates."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_cli("trainer", [*RUN, "data.batch_size=8", *EVERY_3, f"hydra.run.dir={run_dir}"])
    return run_dir


# --- the plan at any world size ---------------------------------------------------------------


@pytest.mark.parametrize("world_size, accumulate", [(1, 1), (1, 3), (2, 1), (2, 2), (4, 3)])
def test_the_ranks_split_each_global_batch_of_one_process(world_size, accumulate):
    num_batches, per_update = 50, world_size * accumulate
    updates = num_batches // per_update
    ranks = [rank_batches(num_batches, start_batch=0, rank=r, world_size=world_size, accumulate=accumulate)
             for r in range(world_size)]
    for u in range(updates):
        mine = [batches[u * accumulate : (u + 1) * accumulate] for batches in ranks]
        # One process accumulating W·A micro-batches takes batches u·W·A .. (u+1)·W·A - 1 in order.
        assert sum(mine, []) == list(range(u * per_update, (u + 1) * per_update))
    assert all(len(batches) == updates * accumulate for batches in ranks)
    # Resuming at update 3 (micro-batch 3·A of the rank) continues with the same batches.
    later = rank_batches(num_batches, start_batch=3 * accumulate, rank=world_size - 1, world_size=world_size,
                         accumulate=accumulate)
    assert later == ranks[-1][3 * accumulate :]


def test_global_batch_derives_the_accumulation_and_the_plan_is_the_same_at_any_world_size():
    plans = [plan_run(compose_config("schedule=cosine", "data.batch_size=8", "trainer.global_batch_size=32",
                                     "optimizer.lr_scaling=linear"),
                      256, world_size) for world_size in (1, 2, 4)]
    assert [p.accumulate_grad_batches for p in plans] == [4, 2, 1]
    assert {(p.updates_per_epoch, p.total_steps, p.lr_scale, p.global_batch_size) for p in plans} == {
        (8, 24, 32 / 256, 32)
    }
    per_rank = plan_run(compose_config("schedule=cosine", "data.batch_size=8", "trainer.accumulate_grad_batches=3"), 256, 2)
    assert (per_rank.global_batch_size, per_rank.updates_per_epoch) == (48, 5)  # 8 × 2 ranks × 3; 256 // 48


@pytest.mark.parametrize(
    "overrides, world_size, message",
    [
        (["data.batch_size=8", "trainer.global_batch_size=40"], 2, "not a multiple of data.batch_size=8 × 2 ranks"),
        (["data.batch_size=1", "trainer.global_batch_size=2"], 4, "cannot give each of 4 ranks one"),
        (["data.batch_size=64", "trainer.global_batch_size=512"], 1, "256 training examples give 4 batches"),
    ],
)
def test_a_global_batch_that_does_not_fit_is_refused(overrides, world_size, message):
    with pytest.raises(ConfigError, match=message):
        plan_run(compose_config(*overrides), 256, world_size)


def test_global_batch_and_accumulation_are_not_both_set():
    with pytest.raises(ConfigError, match="trainer.global_batch_size: it derives"):
        validate(compose_config("trainer.global_batch_size=64", "trainer.accumulate_grad_batches=2"))


# --- launches ------------------------------------------------------------------------------------


def test_torchrun_and_slurm_variables_map_to_a_launch():
    torchrun_env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29400"}
    assert launch_from_env(torchrun_env) == Launch(3, 4, 1, "n1", 29400)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
             "SLURM_JOB_NODELIST": "gpu[003-005,9]"}
    assert launch_from_env(slurm) == Launch(5, 8, 1, "gpu003", 20000 + 123456 % 20000)
    assert launch_from_env({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}) == Launch(5, 8, 1, "head", 1234)
    # torchrun inside a SLURM allocation: torchrun's variables win.
    assert launch_from_env({**slurm, **torchrun_env}) == Launch(3, 4, 1, "n1", 29400)
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: no launch
    assert launch_from_env({}) is None
    assert [first_node(n) for n in ("node7", "a[1-3],b", "n[07,09]", "x-1,y")] == ["node7", "a1", "n07", "x-1"]


def test_strategy_and_backend_need_a_launch_and_a_device():
    two = Launch(0, 2, 0, "127.0.0.1", 1)
    assert resolve_strategy("auto", None) == "single" and resolve_strategy("auto", two) == "ddp"
    assert resolve_strategy("fsdp", two) == "fsdp"
    with pytest.raises(ConfigError, match="trainer.strategy: ddp needs a distributed launch"):
        resolve_strategy("ddp", None)
    with pytest.raises(ConfigError, match="trainer.strategy: single in a launch of 2 processes"):
        resolve_strategy("single", two)
    with pytest.raises(ConfigError, match="trainer.dist_backend: nccl needs CUDA"):
        resolve_backend("nccl", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"


def test_fsdp_shards_the_shipped_blocks_and_the_named_classes():
    gpt = build_model(compose_config("model=gpt", "data=shakespeare_char", "model.n_layer=3", "model.n_embd=16",
                                     "model.n_head=2", "model.block_size=8", base=[]).model,
                      input_shape=(8,), num_classes=20)
    assert [type(m).__name__ for m in blocks_to_shard(gpt, ())] == ["Block"] * 3
    resnet = build_model(compose_config("model=resnet20", "data=cifar10", base=[]).model, input_shape=(3, 32, 32),
                         num_classes=10)
    assert len(blocks_to_shard(resnet, ())) == 9  # 3 stages of 3 residual blocks
    mlp = build_model(compose_config(base=TINY).model, input_shape=(16,), num_classes=4)
    assert blocks_to_shard(mlp, ()) == []  # the root alone
    assert [type(m).__name__ for m in blocks_to_shard(mlp, ("Linear",))] == ["Linear", "Linear"]


def test_ddp_outside_a_launch_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("trainer", [*TINY, "trainer.strategy=ddp", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: trainer.strategy: ddp needs a distributed launch")
    assert not (tmp_path / "run").exists()


# --- the real torchrun ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, batch_size", [("ddp", 8), ("fsdp", 4)])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, single, strategy, batch_size):
    """DDP with micro-batches of 8 accumulating 2, FSDP2 with 4 accumulating 4, one process with
    8 accumulating 4: the same 32 examples per update. DDP trains from the start and its
    mid-epoch checkpoint resumes in one process; FSDP2 resumes the one process's mid-epoch
    checkpoint (its full state cut into shards)."""
    run_dir = tmp_path / "run"
    first = 0 if strategy == "ddp" else 3
    start = [*EVERY_3] if strategy == "ddp" else [f"trainer.resume={single / 'step-00000003.pt'}"]
    proc = torchrun(*RUN, f"trainer.strategy={strategy}", f"data.batch_size={batch_size}", *start,
                    f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = read_scalars(run_dir), read_scalars(single)
    assert ours["train/lr"] == theirs["train/lr"][first:]  # the same schedule, update by update
    assert [s for s, _ in ours["train/lr"]] == list(range(first, 16))
    for tag in ("train/loss", "train/grad_norm", "val/loss", "val/acc"):  # loss: the mean over ranks
        expected = [v for s, v in theirs[tag] if s >= first]
        assert [v for _, v in ours[tag]] == pytest.approx(expected, abs=1e-5), tag
    assert_same_parameters(model_of(run_dir / "last.pt"), model_of(single / "last.pt"))
    # Rank 0 alone writes and prints: one event file, each validation line once.
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    lines = proc.stdout.splitlines()
    assert [line.split("(")[-1] for line in lines if line.startswith("val/loss=")] == ["after 8 updates)",
                                                                                    "after 16 updates)"]
    assert sum(line.startswith("run completed") for line in lines) == 1
    if strategy != "ddp":
        return
    assert load_checkpoint(run_dir / "best.pt")["update"] == load_checkpoint(single / "best.pt")["update"]
    # The 2-process checkpoint at update 3 (mid-epoch) resumes in one process with the same global batch.
    resumed = tmp_path / "resumed"
    run_cli("trainer", [*RUN, "data.batch_size=8", f"trainer.resume={run_dir / 'step-00000003.pt'}",
                        f"hydra.run.dir={resumed}"])
    assert read_scalars(resumed)["train/lr"] == theirs["train/lr"][3:]
    assert_same_parameters(model_of(resumed / "last.pt"), model_of(single / "last.pt"))


@pytest.fixture(scope="module")
def map_runs(tmp_path_factory):
    """Map-style data read by one process (accumulating 2, no workers) and by 2 DDP ranks (2
    workers each): the same 16 examples per update. Returns (one process's run dir, the 2-process one)."""
    root = tmp_path_factory.mktemp("map")
    run_cli("trainer", [*MAP_RUN, "data.num_workers=0", f"hydra.run.dir={root / 'single'}"])
    proc = torchrun(*MAP_RUN, "data.num_workers=2", f"hydra.run.dir={root / 'ddp'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "single", root / "ddp"


def test_map_style_data_on_two_processes_trains_like_one(map_runs):
    single, ddp = map_runs
    ours, theirs = read_scalars(ddp), read_scalars(single)
    assert ours["train/lr"] == theirs["train/lr"] and [s for s, _ in ours["train/lr"]] == list(range(8))
    # The same examples (and the same jitter, seeded per example) at every update: the same loss
    # and gradient; validation scores each of the 21 examples once over the ranks.
    for tag in ("train/loss", "train/grad_norm", "val/loss", "val/acc"):
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs[tag]], abs=1e-5), tag
    assert [s for s, _ in ours["val/loss"]] == [4, 8]
    assert_same_parameters(model_of(ddp / "last.pt"), model_of(single / "last.pt"))


def test_map_style_data_stopped_mid_epoch_on_two_processes_resumes_in_one(tmp_path, map_runs):
    single, ddp = map_runs
    resumed = tmp_path / "resumed"
    run_cli("trainer", [*MAP_RUN, "data.num_workers=1", f"trainer.resume={ddp / 'step-00000003.pt'}",
                        f"hydra.run.dir={resumed}"])
    ours, theirs = read_scalars(resumed), read_scalars(single)
    assert ours["train/lr"] == theirs["train/lr"][3:]  # from update 3, batch 3 of epoch 0's 4
    for tag in ("train/loss", "val/loss"):
        expected = [v for s, v in theirs[tag] if s >= 3]
        assert [v for _, v in ours[tag]] == pytest.approx(expected, abs=1e-5), tag
    assert_same_parameters(model_of(resumed / "last.pt"), model_of(single / "last.pt"))


def test_a_changed_global_batch_is_refused_on_resume(tmp_path, single):
    proc = run_cli("trainer", [*RUN, "trainer.global_batch_size=64", "schedule.total_steps=16",
                               f"trainer.resume={single / 'last.pt'}", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: trainer.resume_schedule:") and "global_batch_size: 32 -> 64" in proc.stderr


def test_two_nodes_rendezvous_on_one_machine(tmp_path, single):
    """Two torchrun processes, one per "node", meeting through the c10d rendezvous on 127.0.0.1."""
    run_dir, port = tmp_path / "run", free_port()
    args = [*RUN, "data.batch_size=16", f"hydra.run.dir={run_dir}"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test", "-m", "trainer", *args],
            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=LAUNCH_TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert read_scalars(run_dir)["train/lr"] == read_scalars(single)["train/lr"]
    assert_same_parameters(model_of(run_dir / "last.pt"), model_of(single / "last.pt"))


def test_a_global_batch_the_ranks_do_not_divide_is_one_line_from_rank_0(tmp_path):
    proc = torchrun(*TINY, "trainer.global_batch_size=40", "data.batch_size=8", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: trainer.global_batch_size: 40 is not a multiple of data.batch_size=8 × 2 ranks = 16: use a "
        "multiple of it (e.g. 32) or another data.batch_size"
    ]
    # torchrun's report: the first rank to end exited 2 (it then stops the other, which may be
    # killed by that before it exits 2 itself); the launch returned, so no rank was left waiting.
    assert "exitcode  : 2" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_sigterm_to_torchrun_stops_every_rank_at_one_update_and_resumes_in_one_process(tmp_path):
    run_dir = tmp_path / "run"
    args = [*QUIET, "data=synthetic", "model=mlp", "data.train_size=256", "data.val_size=64", "schedule=linear",
            "optimizer.lr=0.01", "trainer.max_epochs=50", "trainer.global_batch_size=32", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(torchrun_command(*args, "data.batch_size=16"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait (without sleeping) until training is under way
        if "after 8 updates" in line:
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
            break
    _, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert stderr.count("stopped by SIGTERM") == 1 and "trainer.resume=auto" in stderr  # rank 0's line
    stopped_at = load_checkpoint(run_dir / "last.pt")["update"]
    assert 8 <= stopped_at < 400
    assert len(list(run_dir.glob("*.pt"))) == 2  # last.pt and best.pt (epoch 1's validation), nothing else

    resumed = run_cli("trainer", [*args, "data.batch_size=16", "trainer.resume=auto"])  # one process, accumulating 2
    assert resumed.returncode == 0
    lrs = read_scalars(run_dir)["train/lr"]
    assert [s for s, _ in lrs] == list(range(400))  # every update logged once across the restart
    assert [v for _, v in lrs] == pytest.approx([0.01 * (1 - t / 400) for t in range(400)], abs=1e-9)
    # Uninterrupted in one process with the same micro-batches of 16: the same sums as DDP's two ranks
    # (its average halves each rank's gradient exactly, as accumulating halves each micro-batch's loss).
    uninterrupted = tmp_path / "uninterrupted"
    run_cli("trainer", [*args[:-1], "data.batch_size=16", f"hydra.run.dir={uninterrupted}"])
    assert_same_parameters(model_of(run_dir / "last.pt"), model_of(uninterrupted / "last.pt"))


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """``pid`` exists and has not exited (an exited orphan may stay a zombie: PID 1 here may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks in /proc")
def test_sigkill_to_torchrun_ends_both_ranks_and_frees_the_run_dir_for_a_resume(tmp_path):
    """What a scheduler does at a hard limit: SIGKILL the launcher alone. Its ranks (in a session of
    their own, so the kill does not reach them) stop as if preempted and release the lock."""
    run_dir = tmp_path / "run"
    args = [*TINY, "schedule=linear", "trainer.max_epochs=50", "trainer.global_batch_size=32",
            "data.batch_size=16", f"hydra.run.dir={run_dir}"]
    launcher = subprocess.Popen(torchrun_command(*args), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    for line in launcher.stdout:  # rank 0 logs an update only once both ranks reduced its gradients
        if "after 8 updates" in line:
            break
    ranks = children_of(launcher.pid)
    assert len(ranks) == 2
    launcher.kill()
    # The ranks inherited the launcher's pipes: they close when both ranks have exited.
    _, stderr = launcher.communicate(timeout=ORPHAN_EXIT_AFTER_S + 30)
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in ranks)
    # A clean preemption, not the watchdog: rank 0 wrote last.pt and said so once (its own SIGTERM,
    # or rank 1's when that rank's watch saw the launcher gone first).
    assert stderr.count("stopped by ") == 1 and "last.pt. Continue with" in stderr, stderr[-3000:]
    assert "the launcher" not in stderr
    stopped_at = load_checkpoint(run_dir / "last.pt")["update"]
    assert 8 <= stopped_at < 400

    resumed = run_cli("trainer", [*args, "trainer.resume=auto"], check=False)  # the requeued job
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lrs = read_scalars(run_dir)["train/lr"]
    assert [s for s, _ in lrs] == list(range(400))  # every update logged once across the kill
    assert load_checkpoint(run_dir / "last.pt")["update"] == 400


# A rank whose stop hangs (a peer gone mid-collective): SIGTERM is only noted, and nothing ends.
HUNG_RANK = """
import signal, sys, time
import trainer.distributed as d
d.ORPHAN_EXIT_AFTER_S = 1.0
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM", flush=True))
d.end_with_launcher(1)
print("watching", flush=True)
while True:
    time.sleep(60)
"""


def test_a_rank_whose_stop_hangs_after_its_launcher_died_exits_anyway():
    """The launcher starts the rank and dies; the rank gets one SIGTERM and, its stop never ending,
    exits ORPHAN_EXIT_AFTER_S (here 1 s) later, saying why."""
    launcher = (f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {HUNG_RANK!r}], "
                "start_new_session=True); print(input(), flush=True)")  # waits for a line, then dies
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env(), "TORCHELASTIC_RUN_ID": "test"})
    assert proc.stdout.readline() == "watching\n"
    # The rank holds the launcher's pipes: they close when it exits.
    stdout, stderr = proc.communicate("bye\n", timeout=60)
    assert stdout.splitlines() == ["bye", "SIGTERM"]  # one SIGTERM, however the launcher died
    assert stderr == f"rank 1: the launcher (pid {proc.pid}) died 1 s ago and the stop has not ended: exiting; " \
                     "last.pt is the last checkpoint written whole\n"


def test_sigterm_to_every_task_of_a_slurm_step_exits_3_on_each(tmp_path):
    """srun starts each task itself (no torchrun); SLURM signals every task of a step."""
    run_dir, port = tmp_path / "run", free_port()
    args = [*TINY, "schedule=linear", "trainer.max_epochs=50", "data.batch_size=16", f"hydra.run.dir={run_dir}"]
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**env(), "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
                            "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in range(2)
    ]
    for line in tasks[0].stdout:
        if "after 8 updates" in line:
            for task in tasks:
                task.send_signal(signal.SIGTERM)
            break
    outputs = [task.communicate(timeout=LAUNCH_TIMEOUT) for task in tasks]
    assert [task.returncode for task in tasks] == [EXIT_PREEMPTED] * 2, [err[-2000:] for _, err in outputs]
    assert "stopped by SIGTERM" in outputs[0][1] and outputs[1][1] == ""  # rank 1 prints nothing
    assert 8 <= load_checkpoint(run_dir / "last.pt")["update"] < 400


def test_the_weight_ema_under_ddp_is_the_one_process_average(tmp_path):
    """Every rank averages the same (all-reduced) weights; rank 0's checkpoint holds the average
    one process computes with the same global batch, and validates with it."""
    ema = ["trainer.ema_decay=0.9"]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    run_cli("trainer", [*RUN, *ema, "data.batch_size=8", f"hydra.run.dir={single_dir}"])
    proc = torchrun(*RUN, *ema, "trainer.strategy=ddp", "data.batch_size=8", f"hydra.run.dir={ddp_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = read_scalars(ddp_dir), read_scalars(single_dir)
    for tag in ("val/loss", "val/acc", "val_raw/loss", "val_raw/acc"):  # the EMA's and the model's own
        assert [s for s, _ in ours[tag]] == [8, 16], tag
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs[tag]], abs=1e-5), tag
    assert ours["val/loss"] != ours["val_raw/loss"]  # the average is not the weights themselves
    averages = load_checkpoint(ddp_dir / "last.pt")["controls"]["ema"]
    assert_same_parameters(averages, load_checkpoint(single_dir / "last.pt")["controls"]["ema"])
    assert averages.keys() >= {k for k, v in model_of(ddp_dir / "last.pt").items() if v.is_floating_point()}
