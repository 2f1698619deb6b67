"""Datasets in memory: where they come from (sources), how they are stored (dataset),
read (idx, folder, patterns) and batched (loader)."""

from .dataset import ImageData, Split, channel_stats, train_val_split
from .loader import BatchLoader
from .sources import DATASETS, data_roots, load_dataset

__all__ = [
    "DATASETS",
    "BatchLoader",
    "ImageData",
    "Split",
    "channel_stats",
    "data_roots",
    "load_dataset",
    "train_val_split",
]
