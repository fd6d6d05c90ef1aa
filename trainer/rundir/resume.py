"""Resuming: which checkpoint, and whether it continues this run (the restore itself is
:meth:`trainer.rundir.checkpoint.Checkpointer.restore`).

A resume must continue the run it stopped as if it never had: the schedule fingerprint (every
setting that fixes the LR of an update, and the optimizer's own settings) must match, unless
``trainer.resume_schedule=override`` says a change is meant (a cooldown branched into a run of its
own is :mod:`trainer.rundir.branch`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError
from trainer.optim.names import under
from trainer.plan import RunPlan


def schedule_fingerprint(cfg: DictConfig, plan: RunPlan) -> dict:
    """What fixes the LR of every update (the schedule's keys, η, the derived lengths and scales) and
    the optimizer settings the update uses with it."""
    resolved = OmegaConf.to_container(cfg.schedule, resolve=True)
    resolved.update(
        peak_lr=cfg.optimizer.lr,
        total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps,
        warmup_ratio=None,
        updates_per_epoch=plan.updates_per_epoch,
        lr_scale=plan.lr_scale,
        group_lr_scales={str(k): v for k, v in (cfg.optimizer.lr_scales or {}).items()},
        unfreeze=OmegaConf.to_container(cfg.trainer.unfreeze, resolve=True),
        # The examples per update over all ranks: any world size with the same global batch
        # continues the same run.
        global_batch_size=plan.global_batch_size,
    )
    if plan.ramp is not None:  # trainer.batch_ramp: the size of every update (in examples: any world size continues)
        resolved["batch_ramp"] = plan.ramp.fingerprint()
    # The optimizer's own settings (η and the scales are above): a resume with another weight
    # decay, betas or momentum would quietly change the run as much as a schedule change.
    resolved.update({
        f"optimizer.{k}": v for k, v in OmegaConf.to_container(cfg.optimizer, resolve=True).items()
        if k not in ("lr", "lr_scales", "lr_scaling", "reference_batch_size")
    })
    return resolved


#: The keys of a resolved config that change what an update computes, besides the schedule and the
#: optimizer (the fingerprint above): a resume that changed one would splice two runs. Prefixes
#: cover a whole node. Left out on purpose: how batches are gathered (data.loader,
#: data.num_workers: the same batches), data.batch_size (the global batch counts, so any world
#: size continues), trainer.compile (the same update in other kernels: a compiled run resumes
#: eager, e.g. to debug), labels (*.name), and where and how often things are written or read.
COMPUTES = ("seed", "data", "model", "loss", "trainer.clip_grad_norm", "trainer.label_smoothing", "trainer.precision",
            "trainer.ema_decay", "trainer.grad_spike", "trainer.nonfinite", "trainer.early_stopping")
#: ... of which these are not: what the run names, and how it reads its data.
NOT_COMPUTED = ("data.name", "model.name", "data.batch_size", "data.loader", "data.num_workers")
#: Keys that only decode, per data source: data=tokens reads ids from its files, and its tokenizer
#: only turns samples back into text (data=hf_dataset's makes the ids: it counts).
DECODE_ONLY = {"tokens": ("data.tokenizer",)}


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a resolved config's leaves by their dotted keys."""
    out: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def check_run_unchanged(saved: dict, current: dict, path: Path, accepted: list[str]) -> None:
    """Refuse to resume when a key that changes what an update computes (:data:`COMPUTES`) differs
    from the checkpoint's resolved config, unless ``trainer.resume_accept`` names it (or a node of it)."""

    decode_only = DECODE_ONLY.get((current.get("data") or {}).get("name"), ())

    def counted(key: str) -> bool:
        return (any(under(key, node) for node in COMPUTES) and not any(under(key, node) for node in NOT_COMPUTED)
                and not any(under(key, node) for node in (*accepted, *decode_only)))

    old, new = flat(saved), flat(current)
    changed = [key for key in sorted(set(old) | set(new)) if counted(key) and old.get(key) != new.get(key)]
    if changed:
        what = ", ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in changed)
        raise ConfigError(
            "trainer.resume_accept",
            f"{path} was trained with other settings ({what}); resuming would splice two different runs: "
            f"keep them, or accept the change with trainer.resume_accept=[{','.join(changed)}]",
        )


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``trainer.resume``: null = fresh run; ``auto`` = the run dir's last.pt if there is one."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.exists() else None  # a last.pt that is a directory fails to load, loudly
    return Path(resume).expanduser()


def check_schedule_unchanged(saved: dict, current: dict, path: Path, policy: str) -> None:
    """Refuse to resume onto a different schedule unless ``trainer.resume_schedule=override``."""
    if saved == current or policy == "override":
        return
    keys = sorted(set(saved) | set(current), key=str)
    diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k))
    raise ConfigError(
        "trainer.resume_schedule",
        f"{path} was trained with another schedule or optimizer setting ({diff}); resuming would change "
        "every later update. Pass trainer.resume_schedule=override to continue with the new settings "
        "(a WSD cooldown into a run of its own: trainer.branch_from)",
    )
