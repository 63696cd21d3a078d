"""Image-classification data sets for spikeforge: loading (with download and integrity
checks), the bundled offline MNIST subset, and batching with vectorised augmentation.

>>> from spikeforge.data import load_dataset, BatchLoader, Augment
>>> train = load_dataset("mnist_demo", "train")
>>> loader = BatchLoader(train, 128, shuffle=True, augment=Augment(crop_padding=2))
"""

from __future__ import annotations

from spikeforge.data.catalog import DATASETS, load_dataset, resolve_root
from spikeforge.data.dataset import ImageDataset
from spikeforge.data.errors import DatasetError
from spikeforge.data.loader import Augment, BatchLoader

__all__ = ["DATASETS", "Augment", "BatchLoader", "DatasetError", "ImageDataset", "load_dataset",
           "resolve_root"]
