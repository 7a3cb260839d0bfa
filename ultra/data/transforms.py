"""Joint image/label transforms (torchvision.transforms.v2; labels are ``tv_tensors.Mask``, resized with nearest).

Every transform maps ``(image uint8 [3, H, W], label [H, W])`` to a dict with ``image`` (float in
[0, 1]) and ``label``; the view transforms add ``geometry``: one row ``(x0, y0, x1, y1, flip)`` per
view, the crop box in coordinates normalised to the source image, so that the geometric part of
two views can be undone when they are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision import tv_tensors

from ..errors import ConfigError

_TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


class EvalTransform:
    """The evaluation protocol: shorter side resized to ``resize``, centre crop ``crop`` (labels with nearest)."""

    def __init__(self, resize: int = 320, crop: int | None = 320):
        steps = [v2.Resize(resize, antialias=True)] + ([v2.CenterCrop(crop)] if crop else []) + [_TO_FLOAT]
        self.transform = v2.Compose(steps)

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> dict:
        image, label = self.transform(image, label)
        return {"image": image, "label": label}


class _Views:
    """Crops given as boxes in pixels of the (resized) image, each resized to ``size`` and optionally flipped."""

    def __init__(self, size: int, resize: int | None):
        self.size, self.resize = size, resize

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int, bool]]:  # top, left, h, w, flip
        raise NotImplementedError

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> dict:
        if self.resize:
            image, label = v2.Resize(self.resize, antialias=True)(image, label)
        height, width = image.shape[-2:]
        images, labels, geometry = [], [], []
        for top, left, h, w, flip in self.boxes(height, width):
            view_image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
            view_label = F.resized_crop(label, top, left, h, w, [self.size, self.size])
            if flip:
                view_image, view_label = F.horizontal_flip(view_image), F.horizontal_flip(view_label)
            images.append(view_image)
            labels.append(view_label)
            geometry.append([left / width, top / height, (left + w) / width, (top + h) / height, float(flip)])
        return {
            "image": _TO_FLOAT(tv_tensors.Image(torch.stack(images))),
            "label": tv_tensors.Mask(torch.stack(labels)),
            "geometry": torch.tensor(geometry, dtype=torch.float32),
        }


class CenterView(_Views):
    """One view: the centred square of the shorter side, resized to ``size`` (the evaluation crop, with its
    geometry)."""

    def __init__(self, size: int = 224):
        super().__init__(size, None)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int, bool]]:
        c = min(height, width)
        return [((height - c) // 2, (width - c) // 2, c, c, False)]


class FiveCropViews(_Views):
    """The five-crop scheme: shorter side to ``resize``, square crops of ``crop_fraction`` of it at the four corners
    and the centre, each resized to ``size`` (with ``flip``, their mirror images are added: ten views).

    With ``crop_fraction`` above 0.5 the centre crop overlaps every corner crop, so views can be compared.
    """

    def __init__(self, size: int = 224, resize: int | None = 320, crop_fraction: float = 0.6, flip: bool = False):
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        super().__init__(size, resize)
        self.crop_fraction, self.flip = crop_fraction, flip

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int, bool]]:
        c = max(1, int(round(self.crop_fraction * min(height, width))))
        corners = [
            (0, 0),
            (0, width - c),
            (height - c, 0),
            (height - c, width - c),
            ((height - c) // 2, (width - c) // 2),
        ]
        flips = (False, True) if self.flip else (False,)
        return [(t, left, c, c, f) for f in flips for t, left in corners]


class RandomViews(_Views):
    """``num_views`` random resized crops (torchvision's sampling: area ``scale``, aspect 3/4-4/3), each flipped
    horizontally with probability 0.5 when ``flip``. Uses torch's global RNG (seeded per worker by Lightning)."""

    def __init__(
        self,
        size: int = 224,
        resize: int | None = None,
        num_views: int = 2,
        scale: tuple[float, float] = (0.3, 1.0),
        flip: bool = True,
    ):
        super().__init__(size, resize)
        self.num_views, self.flip = num_views, flip
        self.sampler = v2.RandomResizedCrop(size, scale=scale)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int, bool]]:
        out = []
        for _ in range(self.num_views):
            p = self.sampler.make_params([tv_tensors.Image(torch.empty(1, height, width))])
            flip = self.flip and bool(torch.rand(()) < 0.5)
            out.append((p["top"], p["left"], p["height"], p["width"], flip))
        return out


def image_to_tensor(image) -> Tensor:
    """A PIL image or ``uint8 [H, W, 3]`` array as float ``[3, H, W]`` in [0, 1]."""
    return _TO_FLOAT(
        tv_tensors.Image(F.pil_to_tensor(image) if hasattr(image, "mode") else torch.as_tensor(image).permute(2, 0, 1))
    )


def check_eval_geometry(resize, crop, resize_name: str, crop_name: str) -> None:
    """Refuse an evaluation geometry that is not a positive size, or whose crop exceeds the shorter side (the crop
    would be padded, and the padding counted as labelled pixels of class 0)."""
    for name, value in ((resize_name, resize), (crop_name, crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive number of pixels, got {value!r}")
    if crop > resize:
        raise ConfigError(
            f"{crop_name} ({crop}) exceeds {resize_name} ({resize}), the shorter side: the crop would be "
            f"padded and the padding scored as pixels of class 0; use a crop <= the resize"
        )


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation: the protocol's geometry and its options (``evaluation:`` in a training config, read by
    ``train.py`` after training and by ``ultra-eval --config``).

    Args:
        resize: shorter side of an evaluated image, in pixels.
        crop: side of its centre crop, in pixels.
        flip: average the scores of each image and its mirror image.
        crf: also report every readout after a dense CRF (the ``crf`` extra).
        batch_size: images per evaluation batch.
        run: evaluate on ``data.val_dataset`` after training.
    """

    resize: int = 320
    crop: int = 320
    flip: bool = False
    crf: bool = False
    batch_size: int = 4
    run: bool = True

    def __post_init__(self):
        check_eval_geometry(self.resize, self.crop, "evaluation.resize", "evaluation.crop")
        if self.batch_size < 1:
            raise ConfigError(f"evaluation.batch_size must be >= 1, got {self.batch_size}")

    def transform(self) -> EvalTransform:
        return EvalTransform(self.resize, self.crop)


VIEW_SCHEMES = ("five", "center")


@dataclass(frozen=True)
class ViewConfig:
    """The training views the cache holds.

    Args:
        scheme: ``five`` (five crops of ``crop_fraction`` of the shorter side after resizing it to
            ``resize``, each resized to ``size``) or ``center`` (the centre square at ``size``).
        size: side of a view in pixels (a multiple of the patch size).
        resize: shorter side before cropping (``five``).
        crop_fraction: side of a crop as a fraction of the shorter side (``five``).
        flip: add the mirror image of every view (doubles the cache).
    """

    scheme: str = "five"
    size: int = 224
    resize: int = 320
    crop_fraction: float = 0.6
    flip: bool = False

    def __post_init__(self):
        if self.scheme not in VIEW_SCHEMES:
            raise ConfigError(f"data.views.scheme must be one of {VIEW_SCHEMES}, got '{self.scheme}'")
        if self.size < 1 or self.resize < 1 or not 0 < self.crop_fraction <= 1:
            raise ConfigError(
                f"data.views: size and resize must be >= 1 and crop_fraction in (0, 1], got "
                f"{self.size}, {self.resize}, {self.crop_fraction}"
            )

    @property
    def views_per_image(self) -> int:
        """The views the cache holds of each image."""
        return 1 if self.scheme == "center" else 5 * (2 if self.flip else 1)

    def transform(self) -> _Views:
        """The view transform of the cache."""
        if self.scheme == "center":
            return CenterView(self.size)
        return FiveCropViews(self.size, self.resize, self.crop_fraction, self.flip)
