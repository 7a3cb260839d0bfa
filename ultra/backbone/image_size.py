"""The sizes of the images a frozen ViT is given: patch multiples, the input-size options and their limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # the sizes need no torch: the ONNX runtime path (ultra.deploy.runtime) runs without it
    from torch import Tensor

MAX_SIDE = 2048
"""The longest side (pixels, after resizing the shorter side) of an image given to the backbone by the segmenter, the
relevance maps and the demo: the tokens, and the attention's memory, grow with it."""


def check_resized_side(size: tuple[int, int], shorter_side: int, what: str = "image") -> None:
    """Refuse, before any work, an image of ``size = (H, W)`` whose longer side would exceed :data:`MAX_SIDE` once
    its shorter side is resized to ``shorter_side``."""
    height, width = size
    if shorter_side > MAX_SIDE:
        raise ConfigError(
            f"a shorter side of {shorter_side} px is above the maximum side {MAX_SIDE} px the backbone is given"
        )
    long_side = round(max(height, width) * shorter_side / min(height, width))
    if long_side > MAX_SIDE:
        raise ConfigError(
            f"{what} is {width}x{height} px: at a shorter side of {shorter_side} px its longer side would "
            f"be {long_side} px, more than the maximum {MAX_SIDE} (an aspect ratio above "
            f"{MAX_SIDE / shorter_side:.1f}); crop it first"
        )


def snap_to_patch(size: tuple[int, int], patch: int) -> tuple[int, int]:
    """The nearest size (at least one patch) whose sides are multiples of ``patch``."""
    return tuple(max(patch, int(round(s / patch)) * patch) for s in size)


def resized_to_patches(size: tuple[int, int], shorter_side: int, patch: int) -> tuple[int, int]:
    """The size ``(H, W)`` of an image of ``size`` once :func:`resize_to_patches` has resized it."""
    height, width = size
    scale = shorter_side / min(height, width)
    return snap_to_patch((round(height * scale), round(width * scale)), patch)


def resize_to_patches(images: Tensor, shorter_side: int, patch: int) -> Tensor:
    """``images [B, 3, H, W]`` resized (bilinear, antialiased) so the shorter side is about ``shorter_side``
    and both sides are multiples of ``patch``: one interpolation, no second snap."""
    target = resized_to_patches(tuple(images.shape[-2:]), shorter_side, patch)
    import torch

    return torch.nn.functional.interpolate(
        images.float(), size=target, mode="bilinear", align_corners=False, antialias=True
    )


DEFAULT_SIZE = 448
"""The shorter side (pixels) the interpretation commands feed to the backbone (``--size``)."""


def check_size(size: int, option: str = "--size") -> None:
    """Refuse an input size (pixels) below 1, the same way in every command."""
    if size < 1:
        raise ConfigError(f"{option} must be a positive number of pixels, got {size}")
