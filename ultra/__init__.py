"""ultra: unsupervised semantic segmentation and spectral analysis of frozen vision transformers."""
from .backbone import FrozenViT, ViTFeatures
from .inference import Segmenter, load

__version__ = "0.1.0"
__all__ = ["FrozenViT", "ViTFeatures", "Segmenter", "load", "__version__"]
