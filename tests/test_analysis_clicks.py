"""Clicks generated from labels: one per connected class region above the size floor, at its most interior pixel."""

import numpy as np
import pytest

from ultra.analysis.clicks import interior_clicks
from ultra.errors import ConfigError


def _label():
    label = np.zeros((40, 60), dtype=np.uint8)
    label[5:25, 5:25] = 1  # a 20x20 square: its centre is the most interior pixel
    label[30:38, 40:58] = 1  # a second region of the same class
    label[0:2, 58:60] = 2  # 4 pixels: below 2% of the image
    label[20:40, 30:40] = 255  # ignored
    return label


def test_every_connected_region_above_the_floor_is_clicked_at_its_most_interior_pixel():
    clicks = interior_clicks(_label(), min_fraction=0.02)
    assert [c.class_id for c in clicks] == [0, 1, 1]
    square = next(c for c in clicks if c.class_id == 1 and c.region[10, 10])
    assert (square.x, square.y) in {(14, 14), (15, 15), (14, 15), (15, 14)}
    assert square.region.sum() == 400 and not square.region[30:38, 40:58].any()
    for click in clicks:
        assert click.region[click.y, click.x]


def test_the_image_border_counts_as_outside_a_region():
    label = np.zeros((30, 30), dtype=np.uint8)
    label[:, :10] = 1  # a band along the left border: its interior lies 5 px from the border, not on it
    band = next(c for c in interior_clicks(label) if c.class_id == 1)
    assert band.x in (4, 5)


def test_skipped_classes_ignored_pixels_and_small_regions_make_no_click():
    clicks = interior_clicks(_label(), min_fraction=0.02, skip=(0,))
    assert {c.class_id for c in clicks} == {1}
    assert interior_clicks(np.full((8, 8), 255, dtype=np.uint8)) == []


@pytest.mark.parametrize("fraction", [0, 1, -0.5])
def test_a_size_floor_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ConfigError, match="min_fraction"):
        interior_clicks(_label(), min_fraction=fraction)
