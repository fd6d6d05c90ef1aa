"""``data=image_folder``: torchvision's ``ImageFolder`` (``ROOT/CLASS/IMAGE``) with the standard
ImageNet transforms, or ``_target_`` transform lists in their place."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from trainer.errors import ConfigError, one_line

#: The ImageNet training set's per-channel mean and std (RGB, in [0, 1]), as torchvision's models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Validation resizes the short side to image_size / 0.875 (256 px for 224) before the center crop.
CROP_FRACTION = 0.875


def standard_transforms(image_size: int, *, augment: bool) -> list[Any]:
    """The usual ImageNet pipeline: with ``augment``, a random-resized crop (scale 0.08-1, aspect
    3/4-4/3) and a horizontal flip; without, resize + center crop; then to a tensor, normalized."""
    if augment:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(image_size / CROP_FRACTION)), transforms.CenterCrop(image_size)]
    return [*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class _FolderWithClasses(ImageFolder):
    """An ``ImageFolder`` whose labels come from another split's class -> index mapping (by folder
    name), so a validation folder that lacks a class still labels the others as training does."""

    def __init__(self, root: str, class_to_idx: dict[str, int], key: str, **kwargs: Any) -> None:
        self._given, self._key = class_to_idx, key
        super().__init__(root, allow_empty=True, **kwargs)  # allow_empty: a class may be absent here

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        extra = sorted(set(find_classes(directory)[0]) - set(self._given))
        if extra:
            raise ConfigError(self._key, f"class folder(s) {', '.join(extra)} not among the training classes "
                              f"({', '.join(self._given)}): remove them, or add them to data.train_dir")
        return list(self._given), dict(self._given)


def image_folder(
    root: str | None, *, split: str = "train", image_size: int = 224, augment: bool = True,
    transform: Sequence[Any] | None = None, classes_from: str | None = None,
) -> ImageFolder:
    """The images under ``root`` (one folder per class, classes in sorted order), as the ``split``
    (``train`` or ``val``, which names the config key ``data.SPLIT_dir`` in errors) of a run.

    ``transform``: the steps to apply instead of :func:`standard_transforms` (``augment`` applies
    to those only). ``classes_from``: the training folder whose classes (and their indices) label
    these images; a class folder here that it lacks is a ConfigError at ``data.val_dir``.
    """
    key = f"data.{split}_dir"
    if root is None:
        raise ConfigError(key, "missing: set it to a folder with one folder of images per class")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(key, f"no directory at {path}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError("data.image_size", f"got {image_size!r}; expected a whole number of pixels >= 1")
    if transform is not None and not isinstance(transform, (list, tuple)):
        raise ConfigError(
            f"data.{split}_transform", f"got {transform!r}; expected null or a list of _target_ transforms"
        )
    steps = standard_transforms(image_size, augment=augment) if transform is None else list(transform)
    try:
        if classes_from is None:
            return ImageFolder(str(path), transform=transforms.Compose(steps))
        class_to_idx = find_classes(str(Path(classes_from).expanduser()))[1]
        folder = _FolderWithClasses(str(path), class_to_idx, key, transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as error:  # no class folders, or no images in them
        raise ConfigError(key, one_line(error)) from None
    if not folder.samples:
        raise ConfigError(key, f"no images in the class folders of {path}")
    return folder
