"""An image-classification data set held in memory as two tensors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from spikeforge.data.errors import DatasetError


@dataclass(eq=False, repr=False)
class ImageDataset:
    """One split of an image-classification data set, all in memory.

    Attributes:
        name: data set name, e.g. ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        images: uint8 tensor (N, C, H, W), contiguous.
        labels: int64 tensor (N,), values in ``range(num_classes)``.
        classes: class names, in label order.
        mean: per-channel mean for normalisation, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(f"{self.name} {self.split}: images must be uint8 (N, C, H, W), "
                               f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise DatasetError(f"{self.name} {self.split}: labels must be int64 "
                               f"({len(self.images)},), got {self.labels.dtype} "
                               f"{tuple(self.labels.shape)}")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise DatasetError(f"{self.name}: mean and std need {self.in_channels} values each")
        self.images = self.images.contiguous()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        return (f"ImageDataset({self.name!r}, {self.split!r}, {len(self)} images {c}x{h}x{w}, "
                f"{self.num_classes} classes)")

    def subset(self, n: int, seed: int = 0) -> ImageDataset:
        """``n`` images drawn at random without replacement (reproducibly for a given
        ``seed``), kept in their original order. For quick runs."""
        if not 0 < n <= len(self):
            raise DatasetError(f"cannot take a subset of {n} images from {self.name} "
                               f"{self.split}, which has {len(self)}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:n].sort().values
        return replace(self, images=self.images[index], labels=self.labels[index])
