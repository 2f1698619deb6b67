"""Datasets in memory: where they come from (sources), how they are stored (dataset),
read (idx, folder, patterns) and batched (loader)."""

from cnnlab.data.dataset import ImageData, Split, channel_stats, train_val_split
from cnnlab.data.loader import BatchLoader
from cnnlab.data.sources import DATASETS, data_roots, load_dataset

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
