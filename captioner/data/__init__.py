"""Datasets: one loader per format → :class:`CaptionSet`; batching; the feature cache."""

from captioner.data import folder  # noqa: F401  (registers the "folder" format)
from captioner.data.base import CaptionSet, DatasetError, ImageItem, list_splits, load_dataset

__all__ = ["CaptionSet", "DatasetError", "ImageItem", "list_splits", "load_dataset"]
