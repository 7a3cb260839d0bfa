"""ultra: unsupervised semantic segmentation and spectral analysis of frozen vision transformers."""
from .backbone import FrozenViT, ViTFeatures

__version__ = "0.1.0"
__all__ = ["FrozenViT", "ViTFeatures", "__version__"]
