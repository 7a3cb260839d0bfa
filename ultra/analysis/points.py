"""A clicked pixel: its text parsed, its check against the image, the token under it, that token's pixels, and
the connected part of a mask that holds it."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..errors import ConfigError


def parse_point(text: str, option: str = "--point") -> tuple[float, float]:
    """``"X,Y"`` (pixels) as ``(x, y)``; anything else is refused naming ``option``."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} must be X,Y in pixels, got '{text}'") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ConfigError(f"{option} must be X,Y in pixels (finite numbers), got '{text}'")
    return x, y


def check_point(point: tuple[float, float], image_size: tuple[int, int]) -> None:
    """Refuse a pixel ``point = (x, y)`` outside an image of ``image_size = (H, W)``, naming the valid range."""
    x, y = point
    height, width = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise ConfigError(
            f"point ({x!r}, {y!r}) is outside the {width}x{height} image "
            f"(x must lie in [0, {width}), y in [0, {height}))"
        )


def point_token(point: tuple[float, float], image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Row-major index of the token under pixel ``point = (x, y)`` of an image of ``image_size = (H, W)``."""
    check_point(point, image_size)
    x, y = point
    height, width = image_size
    return int(y * grid[0] // height) * grid[1] + int(x * grid[1] // width)


def token_pixels(token: int, image_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """The boolean ``[H, W]`` mask of the pixels under patch ``token`` (row-major), as :func:`point_token` maps them."""
    height, width = image_size
    rows = torch.arange(height) * grid[0] // height == token // grid[1]
    cols = torch.arange(width) * grid[1] // width == token % grid[1]
    return rows[:, None] & cols[None, :]


def region_under(mask: Tensor, point: tuple[float, float]) -> Tensor:
    """The 8-connected part of the boolean ``[H, W]`` ``mask`` that holds the pixel under ``point = (x, y)`` (empty
    when that pixel is not in the mask)."""
    parts, _ = ndimage.label(mask.numpy(), structure=np.ones((3, 3), dtype=bool))
    x, y = (int(v) for v in point)
    inside = parts[y, x]
    return torch.from_numpy(parts == inside) if inside else torch.zeros_like(mask)
