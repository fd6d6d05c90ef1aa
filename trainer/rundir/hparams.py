"""TensorBoard's HParams tab: one session per run, one experiment per sweep (or single run).

TensorBoard takes the table's columns from one ``_hparams_/experiment`` summary, and picks an
arbitrary one when several runs under its ``--logdir`` wrote one. So each run writes only its
session (its values and how it ended); the experiment is written once: beside the session of a
single run (its usual keys and overrides), or, when every job of a sweep is known
(:class:`trainer.compare.SweepReport`), into its first job's directory with the keys that differ
between jobs alone. Not at the sweep's root: TensorBoard would list the root as an empty run
``.``. The dashboard ticks the first five columns and puts every ticked key before the metrics:
a sweep's table is the swept keys, then ``val/loss`` and ``val/acc``, within a laptop's width
(the keys every job shares are in its ``report.md``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import struct_pb2
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from trainer.rundir.events import EventWriter

#: The metrics the table shows beside the hyper-parameters: each run's last value of these tags.
METRICS = ("val/loss", "val/acc")

HParamValue = float | int | str | bool

#: Always in the table, beside whatever the command line set.
USUAL_KEYS = (
    "model.name", "optimizer.name", "optimizer.lr", "optimizer.weight_decay", "schedule.name",
    "schedule.interval", "schedule.warmup_steps", "schedule.total_steps", "data.batch_size",
    "trainer.accumulate_grad_batches", "trainer.clip_grad_norm", "seed",
)


def _column(config: DictConfig, key: str) -> str:
    """A group override's column is its group's name (``schedule=cosine``: ``schedule.name``, one
    column with the usual key, not two that always agree)."""
    value = OmegaConf.select(config, key, default=None)
    return f"{key}.name" if OmegaConf.is_dict(value) and "name" in value else key


def hyperparameters(config: DictConfig, overrides: Sequence[str]) -> dict[str, HParamValue]:
    """What TensorBoard's HParams tab shows for a run: the usual knobs plus every override."""
    keys = [*USUAL_KEYS, *(_column(config, o.split("=", 1)[0].lstrip("+~")) for o in overrides if "=" in o)]
    values = {}
    for key in dict.fromkeys(keys):
        value = OmegaConf.select(config, key, default=None)
        if OmegaConf.is_list(value):  # e.g. schedule.milestones=[30,60]
            values[key] = str(OmegaConf.to_container(value))
        elif key.split(".")[0] in config and value is not None and not OmegaConf.is_config(value):
            values[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        elif value is not None:  # a group override such as schedule=cosine
            values[key] = OmegaConf.select(config, f"{key}.name", default=str(value))
    return values


# TensorBoard's names (tensorboard.plugins.hparams.metadata, which would import its tensor
# utilities and their TensorFlow stub: a second of every run's start-up).
PLUGIN_NAME, PLUGIN_DATA_VERSION = "hparams", 0
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    data.version = PLUGIN_DATA_VERSION
    plugin_data = SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin_data))])


def _value(value: HParamValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=value)


def session_summaries(hparams: dict[str, HParamValue]) -> list[Summary]:
    """A completed run's session: its values (start info) and its success (end info)."""
    now = time.time()
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=now)
    for key, value in hparams.items():
        start.hparams[key].CopyFrom(_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=now)
    return [
        _summary(SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        _summary(SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ]


def _kind(value: HParamValue) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING


def hparam_infos(runs: Sequence[dict[str, HParamValue]]) -> list[api_pb2.HParamInfo]:
    """One column per key any run set: its type and domain, and whether it differs between runs
    (a key that some runs lack differs too). Differing keys come first, each group in first-seen order."""
    keys = list(dict.fromkeys(key for run in runs for key in run))
    infos = []
    for key in keys:
        values = [run[key] for run in runs if key in run]
        kinds = {_kind(v) for v in values}
        # TensorBoard's own rule when it infers a column from sessions: one type, else text.
        kind = kinds.pop() if len(kinds) == 1 else api_pb2.DATA_TYPE_STRING
        info = api_pb2.HParamInfo(name=key, type=kind)
        distinct = set(map(str, values)) if kind == api_pb2.DATA_TYPE_STRING else set(values)
        info.differs = len(distinct) > 1 or len(values) < len(runs)
        if kind == api_pb2.DATA_TYPE_FLOAT64:
            info.domain_interval.min_value, info.domain_interval.max_value = min(distinct), max(distinct)
        else:
            ordered = sorted(distinct, key=str)
            info.domain_discrete.extend(ordered if kind == api_pb2.DATA_TYPE_BOOL else list(map(str, ordered)))
        infos.append(info)
    return sorted(infos, key=lambda info: not info.differs)


def experiment_summary(infos: Sequence[api_pb2.HParamInfo], metrics: Sequence[str] = METRICS) -> Summary:
    """The table's columns: ``infos`` (from :func:`hparam_infos`), then ``metrics``."""
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
    )
    return _summary(EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def read_overrides(run_dir: Path) -> list[str]:
    """The command line's overrides a run saved (``overrides.yaml``), as typed: an interpolation such
    as ``trainer.max_steps='${add:8,${schedule.decay_steps}}'`` stays text (resolved in a list it
    would look its keys up in the list); none when the file is missing."""
    path = run_dir / "overrides.yaml"
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path), resolve=False)] if path.is_file() else []


def job_hyperparameters(sweep_dir: Path) -> dict[Path, dict[str, HParamValue]]:
    """The hyper-parameters of every job directory under ``sweep_dir`` that got as far as saving its
    config (its ``config.yaml`` and ``overrides.yaml``), in directory order."""
    runs = {}
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file()):
        runs[job_dir] = hyperparameters(OmegaConf.load(job_dir / "config.yaml"), read_overrides(job_dir))
    return runs


#: The file name's end that marks a sweep's experiment summary in its first job's directory.
SWEEP_EXPERIMENT_SUFFIX = ".sweep_experiment"


def write_sweep_experiment(sweep_dir: Path) -> None:
    """Write the experiment summary of every job under ``sweep_dir`` (the keys that differ between
    them; all of them when none does) into the first job's directory, replacing the one an earlier
    run of the same sweep left (TensorBoard would read only one of them); nothing when no job saved
    a config."""
    runs = job_hyperparameters(sweep_dir)
    if not runs:
        return
    for old in [*sweep_dir.glob(f"*/events.out.tfevents.*{SWEEP_EXPERIMENT_SUFFIX}"),
                *sweep_dir.glob("events.out.tfevents.*")]:  # the root: where earlier versions put it
        old.unlink()
    infos = hparam_infos(list(runs.values()))
    swept = [info for info in infos if info.differs] or infos
    writer = EventWriter(next(iter(runs)), suffix=SWEEP_EXPERIMENT_SUFFIX)
    try:
        writer.summary(experiment_summary(swept))
    finally:
        writer.close()
