"""Reading images and label maps from disk, with errors that name the file and the problem."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")


@contextlib.contextmanager
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """The file opened by PIL (header read, pixels not yet), its failures as :class:`DataError` naming it."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # PIL only warns between its limit and twice it: refused here as above it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{what} {path} is refused: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from err
    try:
        with opened as img:
            yield img
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from err


def _open(path: Path, what: str) -> Image.Image:
    """The file's pixels, loaded (the file is closed)."""
    with _opened(path, what) as img:
        img.load()
        return img


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from a file's header alone (no pixels decoded), with the errors of :func:`read_image`."""
    with _opened(Path(path), what) as img:
        return img.size


def read_image(path: str | Path, orient: bool = False) -> np.ndarray:
    """An image file as ``uint8 [H, W, 3]`` RGB; grayscale, RGBA, palette and 16-bit images are converted.

    ``orient``: turn the pixels as the file's EXIF orientation says (as a photo viewer shows them). Off for data
    sets, whose label maps are drawn on the stored pixels; on for the user's own photos."""
    return picture_array(_open(Path(path), "image"), orient)


def picture_array(img: Image.Image, orient: bool = False) -> np.ndarray:
    """An opened PIL image as ``uint8 [H, W, 3]`` RGB, converted as :func:`read_image` converts a file: 16-bit
    scaled, transparency composited on white, and with ``orient`` turned as its EXIF orientation says."""
    if orient:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / max(float(arr.max()), 1.0)
        img = Image.fromarray((arr * scale).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel label map (mode L, P or 16-bit) as an integer array of class ids (palette indices for P)."""
    path = Path(path)
    img = _open(path, "label map")
    if img.mode not in _LABEL_MODES:
        raise DataError(f"label map {path} must be single-channel (mode L, P or 16-bit), found mode {img.mode}")
    return np.array(img, dtype=np.int64 if img.mode.startswith("I") else np.uint8)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a folder")
    return path
