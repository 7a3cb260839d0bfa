"""A map to a mask: Otsu's threshold of its values, or a fraction of its maximum."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.grids import upsample_scores
from ..errors import ConfigError


def otsu_threshold(values: Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut that maximises the between-class variance."""
    v = values.flatten().double()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centers = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centers = (centers[:-1] + centers[1:]) / 2
    weight = hist.cumsum(0)
    mass = (hist * centers).cumsum(0)
    total, total_mass = weight[-1], mass[-1]
    w0, w1 = weight, total - weight
    valid = (w0 > 0) & (w1 > 0)
    between = torch.where(
        valid, (total_mass * w0 - total * mass) ** 2 / (w0 * w1).clamp_min(1e-12), torch.zeros_like(w0)
    )
    return float(centers[int(between.argmax())])


def check_threshold(threshold: str | float) -> str | float:
    """``threshold`` if it is ``"otsu"`` or a fraction in (0, 1) of a map's maximum (a number or its text)."""
    if threshold == "otsu":
        return threshold
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 < value < 1:
        raise ConfigError(f"threshold must be 'otsu' or a fraction in (0, 1) of the map's maximum, got {threshold!r}")
    return value


def mask_from_map(values: Tensor, size: tuple[int, int], threshold: str | float = "otsu") -> Tensor:
    """A boolean ``[H, W]`` mask from a grid map: bilinear upsampling, then Otsu's threshold or ``threshold * max``."""
    threshold = check_threshold(threshold)
    pixels = upsample_scores(values[None, None].float(), size)[0, 0]
    cut = otsu_threshold(values) if threshold == "otsu" else threshold * float(values.max())
    return pixels >= cut
