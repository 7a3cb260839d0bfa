"""The example photos the demo offers: synthetic scenes drawn on first use (nothing outside the package)."""

from __future__ import annotations

from pathlib import Path

from ..data.synthetic import SyntheticScenes
from ..pictures import save_image

EXAMPLE_COUNT = 3
EXAMPLE_SIZE = 320


def write_examples(folder: str | Path, count: int = EXAMPLE_COUNT, size: int = EXAMPLE_SIZE) -> list[Path]:
    """Draw ``count`` synthetic scenes (textured bands and shapes, ``size`` px square) as PNGs into ``folder``."""
    folder = Path(folder)
    scenes = SyntheticScenes(num_images=count, size=size, num_classes=6, seed=2026)
    return [save_image(scenes.load(i)[0], folder / f"example_{i + 1}.png") for i in range(count)]
