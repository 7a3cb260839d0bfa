"""Synthetic scenes with exact labels: textured "stuff" regions and "thing" shapes, deterministic from a seed.

Each class has a fixed appearance (two colours blended by a class-specific texture: stripes of
an orientation and period, checks, dots or smooth noise), so classes are recognisable across
images; every image jitters brightness, texture phase and layout. The first half of the classes
are backgrounds (stuff), the second half shapes (things) drawn on top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import IGNORE, Sample, SegmentationDataset, Transform, label_lut

_PATTERNS = ("stripes", "checks", "dots", "noise")
_SHAPES = ("disc", "box", "triangle", "ellipse")


class SyntheticScenes(SegmentationDataset):
    """``num_images`` generated scenes of ``size`` x ``size`` px with ``num_classes`` classes (at least 2).

    ``seed`` draws the layouts; ``style_seed`` the classes' appearance, shared by sets that should
    have the same classes (e.g. a training and a validation set with different ``seed``).
    """

    def __init__(
        self,
        num_images: int = 32,
        size: int = 224,
        num_classes: int = 6,
        seed: int = 0,
        style_seed: int = 0,
        transform: Transform | None = None,
    ):
        if num_images < 1 or size < 16 or num_classes < 2 or num_classes > 64:
            raise DataError(
                f"synthetic set needs num_images >= 1, size >= 16, 2 <= num_classes <= 64 "
                f"(got {num_images}, {size}, {num_classes})"
            )
        self.size, self.seed, self.style_seed = size, seed, style_seed
        self.styles = _class_styles(num_classes, style_seed)
        samples = [Sample(f"synthetic_{seed}_{i:05d}", Path(f"<synthetic:{seed}:{i}>")) for i in range(num_images)]
        mapping = {i: i for i in range(num_classes)} | {IGNORE: IGNORE}
        names = tuple(f"{'stuff' if c < _num_stuff(num_classes) else 'thing'}_{c}" for c in range(num_classes))
        super().__init__(samples, names, label_lut(mapping), f"class ids 0-{num_classes - 1}", transform)

    @property
    def has_labels(self) -> bool:
        return True

    def check(self, require_labels: bool = False, headers_only: bool = False) -> None:
        """Nothing to check: the scenes are drawn in memory, each with its labels."""

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render_scene(self.styles, self.size, np.random.default_rng([self.seed, index]))

    def settings(self) -> dict:
        return {"size": self.size, "seed": self.seed, "style_seed": self.style_seed}


def _num_stuff(num_classes: int) -> int:
    return max(1, num_classes // 2)


def _class_styles(num_classes: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 10**6])
    hues = (np.arange(num_classes) / num_classes + rng.uniform(0, 1)) % 1.0
    styles = []
    for c in range(num_classes):
        base = _hsv_to_rgb(hues[c], rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95))
        second = _hsv_to_rgb((hues[c] + rng.uniform(0.08, 0.2)) % 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5))
        styles.append(
            {
                "colors": (base, second),
                "pattern": _PATTERNS[c % len(_PATTERNS)],
                "angle": rng.uniform(0, np.pi),
                "period": rng.uniform(6, 18),
            }
        )
    return styles


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _texture(style: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period, phase = style["period"] * rng.uniform(0.9, 1.1), rng.uniform(0, 2 * np.pi)
    if style["pattern"] == "stripes":
        u = xx * np.cos(style["angle"]) + yy * np.sin(style["angle"])
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
    elif style["pattern"] == "checks":
        t = ((np.floor(xx / period + phase) + np.floor(yy / period)) % 2).astype(np.float64)
    elif style["pattern"] == "dots":
        cx = (xx + phase * period) % period - period / 2
        cy = (yy % period) - period / 2
        t = (cx**2 + cy**2 < (period / 3) ** 2).astype(np.float64)
    else:
        coarse = rng.uniform(0, 1, (max(2, int(size / period)),) * 2)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    a, b = style["colors"]
    return t[..., None] * a + (1 - t[..., None]) * b


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    r = rng.uniform(0.1, 0.22) * size
    if kind == "disc":
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    if kind == "box":
        w, h = r * rng.uniform(0.7, 1.3, 2)
        return (abs(xx - cx) < w) & (abs(yy - cy) < h)
    if kind == "ellipse":
        a, b, th = r * 1.4, r * 0.6, rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        return (u / a) ** 2 + (v / b) ** 2 < 1
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    pts = np.stack([cx + r * 1.3 * np.cos(angles), cy + r * 1.3 * np.sin(angles)], 1)
    inside = np.ones((size, size), bool)
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) > 0
    return inside


def render_scene(styles: list[dict], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One ``uint8 [size, size, 3]`` image and its ``int64 [size, size]`` label map."""
    n_stuff = _num_stuff(len(styles))
    # backgrounds: one to three horizontal bands with wavy borders, top to bottom
    bands = rng.choice(n_stuff, size=min(n_stuff, rng.integers(1, 4)), replace=False)
    label = np.full((size, size), bands[0], np.int64)
    xx, rows = np.arange(size), np.arange(size)[:, None]
    for band, cut in zip(bands[1:], np.sort(rng.uniform(0.25, 0.75, len(bands) - 1)) * size):
        wave = cut + 0.06 * size * np.sin(2 * np.pi * xx / size * rng.uniform(0.5, 2) + rng.uniform(0, 6))
        label[rows >= wave[None, :]] = band
    # things: one to three shapes
    things = np.arange(n_stuff, len(styles))
    for _ in range(rng.integers(1, 4) if len(things) else 0):
        label[_shape_mask(_SHAPES[rng.integers(len(_SHAPES))], size, rng)] = rng.choice(things)
    image = np.zeros((size, size, 3))
    for c in np.unique(label):
        image[label == c] = _texture(styles[c], size, rng)[label == c]
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), label


def write_synthetic_folder(
    root: str | Path, num_images: int = 32, size: int = 224, num_classes: int = 6, seed: int = 0, style_seed: int = 0
) -> Path:
    """Write a synthetic set as an :class:`~ultra.data.folder.ImageFolder` (``images/*.png``, ``labels/*.png``)."""
    from ..files import atomic_path

    root = Path(root)
    data = SyntheticScenes(num_images, size, num_classes, seed, style_seed)
    for i, sample in enumerate(data.samples):
        image, label = data.load(i)
        for sub, array in (("images", image), ("labels", label.astype(np.uint8))):
            with atomic_path(root / sub / f"{sample.name}.png") as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
    return root
