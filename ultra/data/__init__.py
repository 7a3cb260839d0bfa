"""Datasets in their real on-disk formats, a synthetic generator and joint transforms.

The names are imported on first use: reading a feature cache needs no torchvision.
"""

from .._lazy import lazy_attributes

_EXPORTS = {
    "IGNORE": "base",
    "SegmentationDataset": "base",
    "Cityscapes27": "cityscapes",
    "CocoStuff27": "cocostuff",
    "ImageFolder": "folder",
    "DataError": "io",
    "SyntheticScenes": "synthetic",
    "write_synthetic_folder": "synthetic",
    "CenterView": "transforms",
    "EvalTransform": "transforms",
    "FiveCropViews": "transforms",
    "RandomViews": "transforms",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_attributes(__name__, _EXPORTS)
