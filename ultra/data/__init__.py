"""Datasets in their real on-disk formats, a synthetic generator and joint transforms."""
from .base import IGNORE, SegmentationDataset
from .cityscapes import Cityscapes27
from .cocostuff import CocoStuff27
from .folder import ImageFolder
from .io import DataError
from .synthetic import SyntheticScenes, write_synthetic_folder
from .transforms import CenterView, EvalTransform, FiveCropViews, RandomViews

__all__ = [
    "IGNORE", "SegmentationDataset", "Cityscapes27", "CocoStuff27", "ImageFolder", "DataError",
    "SyntheticScenes", "write_synthetic_folder", "CenterView", "EvalTransform", "FiveCropViews", "RandomViews",
]
