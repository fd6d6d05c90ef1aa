"""A user's map-style dataset: Gaussian blobs, one per class, with a random jitter drawn from
torch's global generator on every read (the kind of augmentation the trainer seeds per example)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from trainer.data import ExampleDataset


class Blobs(Dataset):
    """``size`` examples of ``num_features`` features around class centres; item k is
    (features float32, class int). No ``classes`` attribute: the config gives data.num_classes."""

    def __init__(self, size: int, num_features: int = 8, num_classes: int = 3, jitter: float = 0.1,
                 split_seed: int = 0, pairs: bool = True) -> None:
        generator = torch.Generator().manual_seed(split_seed)
        centres = torch.randn(num_classes, num_features, generator=torch.Generator().manual_seed(1234)) * 2
        self.labels = torch.randint(0, num_classes, (size,), generator=generator)
        self.points = centres[self.labels] + torch.randn(size, num_features, generator=generator)
        self.jitter, self.pairs = jitter, pairs

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int):
        x = self.points[k] + self.jitter * torch.randn(self.points.shape[1])
        return (x, int(self.labels[k])) if self.pairs else x


def blob_tensors(*, seed: int, size: int, num_features: int = 8) -> ExampleDataset:
    """The same blobs as one in-memory source (``data._target_``): ``size`` training and
    ``size // 4`` validation examples as tensors, drawn from the run's ``seed``."""
    train, val = Blobs(size, num_features, split_seed=seed), Blobs(size // 4, num_features, split_seed=seed + 1)
    return ExampleDataset(train.points, train.labels, val.points, val.labels, num_classes=3,
                          input_shape=(num_features,))


class Outliers(Blobs):
    """Blobs whose examples ``outliers`` are scaled by ``scale``: confidently wrong examples, so an
    update whose batch holds one has a gradient-norm spike."""

    def __init__(self, size: int, outliers: tuple[int, ...] = (), scale: float = -1e3, **blobs) -> None:
        super().__init__(size, **blobs)
        self.points[list(outliers)] *= scale
