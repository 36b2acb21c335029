"""Datasets: one loader per format → :class:`CaptionSet`; batching; the feature cache.

Formats (auto-detected from the path, or named with ``fmt``): ``folder`` (native), ``coco``, ``karpathy``,
``flickr``, ``table`` (CSV/JSONL). Importing this package registers them all.
"""

from captioner.data import folder, coco, karpathy, flickr, tabular  # noqa: F401,I001  (registration order = detection order)
from captioner.data.base import FORMATS, CaptionSet, DatasetError, ImageItem, list_splits, load_dataset

__all__ = ["FORMATS", "CaptionSet", "DatasetError", "ImageItem", "list_splits", "load_dataset"]
