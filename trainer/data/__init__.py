"""Data sources, each built from ``data._target_`` (see ``trainer.components``).

The built-in ones are ``conf/data/NAME.yaml`` files naming their builders (``synthetic``,
``fashion_mnist``, ``cifar10``: :class:`~trainer.data.source.ExampleDataset` tensors held whole in
memory; ``shakespeare_char``: one token tensor; ``tokens``: nanoGPT's token files, read per
batch); a user's is another such file or a
``data._target_`` override returning a :class:`~trainer.data.source.Dataset`. Map-style datasets
(``data=torch_dataset``, ``data=image_folder``) name each split by ``_target_`` instead
(``data.train``, see ``trainer.data.map_style``). ``data.name`` labels the run, and
``batch_size``, ``loader`` and ``num_workers`` are the loop's (see ``trainer.data.loading``):
neither is passed to the builder.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainer.components import build, locate, target_of
from trainer.data import loading, map_style
from trainer.data.batches import Batch
from trainer.data.map_style import MapDataset, build_map_dataset
from trainer.data.named import has_token_rows
from trainer.data.source import Dataset, DataSpec, ExampleDataset, spec_of
from trainer.errors import ConfigError
from trainer.params import Param, check_params, declared, defaults

__all__ = ["Batch", "DataSpec", "Dataset", "ExampleDataset", "build_dataset", "check_data", "data_spec", "first_batch", "has_validation"]

#: Data whose examples are token sequences: they need a sequence model (``model.block_size``).
SEQUENCE_DATA = ("shakespeare_char", "tokens")
#: Shipped data whose examples are fixed-size inputs with a class: no sequence model reads them.
#: (``torch_dataset`` is a user's dataset, which may be either.)
CLASS_DATA = ("synthetic", "fashion_mnist", "cifar10", "image_folder")
#: The loop's keys of every in-memory source (conf/data_common.yaml and the batch): not the builder's.
LOOP_PARAMS = {
    **loading.PARAMS,
    "batch_size": Param(64, "examples (or text windows) per micro-batch on each rank", int, low=1),
}
_LOOP_KEYS = ("name", *LOOP_PARAMS)


def is_map_style(cfg: DictConfig) -> bool:
    """Whether ``cfg`` names its splits by ``_target_`` (``data.train``), as ``data=torch_dataset``
    and ``data=image_folder`` do, instead of one ``data._target_`` building the whole source."""
    return "train" in cfg


def check_data(cfg: DictConfig) -> None:
    """ConfigError unless each key is declared (by the builder or the loop) and allowed; a
    builder that declares nothing takes what its signature takes (checked when it is built). A
    map-style source that is not ``image_folder``, e.g. a user's, takes ``torch_dataset``'s keys."""
    if is_map_style(cfg):
        name = "image_folder" if cfg.get("name") == "image_folder" else "torch_dataset"
        params = {**loading.PARAMS, **map_style.PARAMS, **(map_style.IMAGE_FOLDER_PARAMS if name == "image_folder" else {})}
        values = {k: v for k, v in cfg.items() if k != "name" and k not in map_style.TARGET_NODES}
        check_params(params, values, "data", owner=f"data {name!r}")
        return
    target = target_of(cfg, "data")
    own = declared(locate(target, "data"))
    values = {k: v for k, v in cfg.items() if k not in ("name", "_target_") and (own or k in LOOP_PARAMS)}
    check_params({**own, **LOOP_PARAMS}, values, "data", owner=f"data {cfg.get('name') or target!r}")


def _builder_config(cfg: DictConfig) -> DictConfig:
    return OmegaConf.merge(cfg, {"_target_": target_of(cfg, "data")})


def data_spec(cfg: DictConfig) -> DataSpec:
    """Shape, classes and epoch size of ``cfg``'s (checked) data without loading it where its
    builder says them (:func:`~trainer.data.source.with_spec`); other sources (text, map-style, a
    user's) are built to be measured."""
    if not is_map_style(cfg):
        builder = locate(target_of(cfg, "data"), "data")
        spec = spec_of(builder)
        if spec is not None:
            given = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in (*_LOOP_KEYS, "_target_")}
            return spec(**{**defaults(declared(builder)), **given})
    data = build_dataset(cfg, seed=0)
    return DataSpec(tuple(data.input_shape), data.num_classes, data.num_train, has_token_rows(first_batch(data)))


def build_dataset(cfg: DictConfig, seed: int, *, pin_memory: bool = False) -> Dataset:
    """Build ``cfg``'s (checked: :func:`check_data`) data; ``seed`` goes to a builder that takes it
    (synthetic data is generated from it). ``pin_memory``: a map-style source's DataLoaders pin
    batches (for a CUDA device); it and ``data.num_workers`` go to a builder that names them."""
    if is_map_style(cfg):
        return build_map_dataset(cfg, pin_memory=pin_memory)
    # A builder whose data is read by DataLoader workers (data=hf_dataset) names num_workers and pin_memory.
    runtime = {"seed": seed, "num_workers": cfg.get("num_workers", "auto"), "pin_memory": pin_memory}
    dataset = build(_builder_config(cfg), "data", runtime=runtime, ours=_LOOP_KEYS)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            "data._target_", f"{target_of(cfg, 'data')} returned a {type(dataset).__name__}, not a dataset with "
            "num_classes, input_shape, num_train, to, train_epoch and val_batches (trainer.data.source.Dataset)",
        )
    return dataset


def has_validation(dataset: Dataset) -> bool:
    """Whether ``dataset`` has a validation split (only map-style data may go without: ``data.val: null``)."""
    return not isinstance(dataset, MapDataset) or dataset.val is not None


def first_batch(dataset: Dataset, size: int = 2) -> Batch:
    """A batch of ``size`` (or fewer) examples of ``dataset``, for checking that a model fits its data."""
    if isinstance(dataset, MapDataset):
        return dataset.first_batch(size)
    return next(iter(dataset.val_batches(size)))
