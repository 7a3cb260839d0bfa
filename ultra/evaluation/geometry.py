"""The evaluation protocol's geometry: each image resized (shorter side) and centre-cropped, checked before any work."""
from __future__ import annotations

from dataclasses import dataclass

from ..data.transforms import EvalTransform
from ..errors import ConfigError


def check_eval_geometry(resize, crop, resize_name: str, crop_name: str) -> None:
    """Refuse an evaluation geometry that is not a positive size, or whose crop exceeds the shorter side (the crop
    would be padded, and the padding counted as labelled pixels of class 0)."""
    for name, value in ((resize_name, resize), (crop_name, crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive number of pixels, got {value!r}")
    if crop > resize:
        raise ConfigError(f"{crop_name} ({crop}) exceeds {resize_name} ({resize}), the shorter side: the crop would be "
                          f"padded and the padding scored as pixels of class 0; use a crop <= the resize")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol's geometry.

    Args:
        resize: shorter side of an evaluated image, in pixels.
        crop: side of its centre crop, in pixels.
    """

    resize: int = 320
    crop: int = 320

    def __post_init__(self):
        check_eval_geometry(self.resize, self.crop, "data.evaluation.resize", "data.evaluation.crop")

    def transform(self) -> EvalTransform:
        return EvalTransform(self.resize, self.crop)
