"""Clicks generated from labels by a fixed rule, to score object selection without a person clicking.

Rule: every connected region (8-connectivity) of one class that covers at least ``min_fraction`` of
the image is an object; its click is its most interior pixel (the maximum of the Euclidean
distance transform, the image's border counting as outside; the first in row-major order on ties),
and a selection is scored by its IoU with that region. Ignored pixels (255) and the ``skip`` classes
(e.g. VOC's background) make no region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as connected_regions

from ..errors import ConfigError

IGNORE = 255


@dataclass(frozen=True)
class Click:
    """A click at pixel ``(x, y)`` inside ``region`` (a boolean ``[H, W]`` mask) of class ``class_id``."""

    x: int
    y: int
    class_id: int
    region: np.ndarray


def interior_clicks(
    label: np.ndarray, min_fraction: float = 0.02, skip: tuple[int, ...] = (), ignore_index: int = IGNORE
) -> list[Click]:
    """The clicks of a label map ``[H, W]`` of class ids, by the module's rule, ordered by class then region."""
    if not 0 < min_fraction < 1:
        raise ConfigError(f"min_fraction must lie in (0, 1), got {min_fraction}")
    label = np.asarray(label)
    min_pixels = min_fraction * label.size
    clicks = []
    for class_id in np.unique(label):
        if class_id == ignore_index or class_id in skip:
            continue
        regions, count = connected_regions(label == class_id, structure=np.ones((3, 3), dtype=bool))
        for index in range(1, count + 1):
            region = regions == index
            if region.sum() < min_pixels:
                continue
            depth = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # the image's border is outside
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            clicks.append(Click(int(x), int(y), int(class_id), region))
    return clicks
