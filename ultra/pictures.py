"""Pictures people look at: segment colours, overlays, eigenvector maps, sheets and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_path

IGNORE_COLOR = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 colours, distinct and stable (golden-ratio hues, alternating brightness)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895) % 1.0
    colors = [colorsys.hsv_to_rgb(h, 0.75 if i % 2 else 0.95, 0.95 if i % 3 else 0.7) for i, h in enumerate(hues)]
    return (np.array(colors).reshape(n, 3) * 255).astype(np.uint8)


def colorize(labels: np.ndarray, num_colors: int | None = None, ignore_index: int = 255) -> np.ndarray:
    """``[H, W]`` integer labels as an ``[H, W, 3]`` uint8 picture (ignored pixels black)."""
    labels = np.asarray(labels)
    valid = labels != ignore_index
    n = max(int(labels[valid].max()) + 1 if valid.any() else 1, num_colors or 0)
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[valid] = palette(n)[labels[valid]]
    out[~valid] = IGNORE_COLOR
    return out


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55, num_colors: int | None = None) -> np.ndarray:
    """Segments blended over an ``[H, W, 3]`` uint8 image (labels resized to the image with nearest)."""
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        labels = np.array(Image.fromarray(labels.astype(np.int32)).resize(image.shape[1::-1], Image.NEAREST))
    colors = colorize(labels, num_colors).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colors * alpha).astype(np.uint8)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 60, 0), alpha: float = 0.5
) -> np.ndarray:
    """``image`` with the pixels of a boolean ``mask`` tinted by ``color``."""
    out = image.astype(np.float32).copy()
    out[mask] = out[mask] * (1 - alpha) + np.array(color, np.float32) * alpha
    return out.astype(np.uint8)


MARK_COLOUR = (0, 255, 255)


def mark_point(picture: np.ndarray, point: tuple[float, float], radius: int = 3) -> np.ndarray:
    """A copy of ``picture`` with a small cyan square at pixel ``point = (x, y)`` (a click)."""
    marked = picture.copy()
    x, y = int(point[0]), int(point[1])
    marked[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = MARK_COLOUR
    return marked


def selection_pictures(
    picture: np.ndarray, mask: np.ndarray, relevance: np.ndarray, point: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The pictures of an object selected by a click: the mask over ``picture`` with the point marked, and the clicked
    token's ``relevance`` map (grid) as a heat picture at the picture's size."""
    return mark_point(overlay_mask(picture, mask), point), heatmap(relevance, picture.shape[1::-1])


def cluster_selection_pictures(
    picture: np.ndarray, mask: np.ndarray, clusters: np.ndarray, point: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The pictures of an object selected by a click in a head's clusters: the mask over ``picture`` with the point
    marked, and the ``clusters`` ``[H, W]`` over the picture."""
    return mark_point(overlay_mask(picture, mask), point), overlay(picture, clusters)


def eigen_rgb(vectors: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Three maps ``[h, w, 3]`` as an RGB picture, each channel stretched to [0, 255] (bilinear to ``size`` = (W,
    H))."""
    v = np.asarray(vectors, dtype=np.float64)
    lo, hi = v.min(axis=(0, 1)), v.max(axis=(0, 1))
    rgb = ((v - lo) / np.where(hi > lo, hi - lo, 1) * 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    return np.array(img.resize(size, Image.BILINEAR)) if size else rgb


def heatmap(values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A single map as a uint8 RGB heat picture (matplotlib's viridis)."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
    rgb = (colormaps["viridis"](v)[..., :3] * 255).astype(np.uint8)
    return np.array(Image.fromarray(rgb).resize(size, Image.BILINEAR)) if size else rgb


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 array as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array)).save(tmp, format="PNG")
    return path


def save_label_map(labels: np.ndarray, path: str | Path) -> Path:
    """Write integer ids ``[H, W]`` as a single-channel PNG, atomically: 8-bit when every id is at most 255, else
    16-bit (ids up to 65,535), so no id wraps around."""
    labels = np.asarray(labels)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"label ids must lie in [0, 65535] for a PNG, got [{low}, {high}] for {path}")
    return save_image(labels.astype(np.uint8 if high <= 255 else np.uint16), path)


def save_sheet(
    panels: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    panel_size: float = 2.2,
) -> Path:
    """A grid of pictures with titles (rows x columns), saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * rows + 0.3), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(panels[i]):
                ax.imshow(panels[i][j])
                ax.set_title(titles[i][j], fontsize=8)
        if row_labels:
            axes[i][0].text(
                -0.08,
                0.5,
                row_labels[i],
                transform=axes[i][0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize=9,
            )
    fig.tight_layout()
    return _save_figure(fig, path)


def save_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A row-normalised confusion matrix (true class x matched prediction) as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(confusion, dtype=np.float64)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(0.32 * n + 3, 0.32 * n + 2.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted (matched cluster)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
