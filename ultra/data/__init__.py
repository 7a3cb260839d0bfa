"""Datasets in their real on-disk formats, a synthetic generator and joint transforms."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "IGNORE": "base", "SegmentationDataset": "base", "Cityscapes27": "cityscapes", "CocoStuff27": "cocostuff",
    "ImageFolder": "folder", "DataError": "io", "SyntheticScenes": "synthetic", "write_synthetic_folder": "synthetic",
    "CenterView": "transforms", "EvalTransform": "transforms", "FiveCropViews": "transforms", "RandomViews": "transforms",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The data sets and transforms, imported on first use (reading a feature cache needs no torchvision)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ultra.data' has no attribute '{name}'")
