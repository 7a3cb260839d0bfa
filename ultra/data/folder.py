"""A folder of the user's own photos: ``ROOT/images/*`` and optional ``ROOT/labels/<stem>.png``.

Labels are single-channel PNGs of class ids ``0..num_classes-1`` plus an ignore value. A folder
without an ``images/`` subfolder is read as a flat folder of unlabelled images. Optional:
``ROOT/classes.txt`` (one class name a line, in id order) and ``ROOT/splits/<split>.txt`` (one image
stem a line), the layout of CamVid and of most small segmentation sets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .base import IGNORE, Sample, SegmentationDataset, Transform, label_lut
from .io import list_images, require_dir

log = logging.getLogger(__name__)


class ImageFolder(SegmentationDataset):
    """Images matched to label maps by file stem.

    ``classes``: the class names, or their number; when not given, read from ``root/classes.txt``.
    They are required when ``labels/`` exists and ``use_labels`` is true. Every image must then have a
    label; labels without an image are reported. ``split``: only the images whose stems are listed
    in ``root/splits/<split>.txt`` (every listed stem must have an image).
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | int | None = None,
        ignore_index: int = IGNORE,
        use_labels: bool = True,
        split: str | None = None,
        transform: Transform | None = None,
    ):
        root = require_dir(Path(root), "image folder")
        image_dir = root / "images" if (root / "images").is_dir() else root
        images = list_images(image_dir)
        if not images:
            raise DataError(f"image folder {image_dir} contains no images ({', '.join(('jpg', 'png', '...'))})")
        if split is not None:
            images = _split_images(images, root / "splits" / f"{split}.txt")
        label_dir = root / "labels"
        labelled = use_labels and label_dir.is_dir()
        if classes is None and (root / "classes.txt").is_file():
            classes = _read_lines(root / "classes.txt", "class list")
        if labelled and classes is None:
            raise DataError(
                f"{label_dir} holds labels: pass classes (their names or their number) to ImageFolder "
                f"or list them in {root / 'classes.txt'}"
            )
        names = _class_names(classes)
        samples = []
        for image in images:
            label = label_dir / f"{image.stem}.png" if labelled else None
            if label is not None and not label.is_file():
                raise DataError(f"image {image} has no label map {label}")
            samples.append(Sample(image.stem, image, label))
        if labelled and split is None:
            orphans = sorted({p.stem for p in label_dir.glob("*.png")} - {s.name for s in samples})
            if orphans:
                log.warning(
                    "%s: %d label maps have no image and are not used: %s", label_dir, len(orphans), orphans[:5]
                )
        if len(names) > IGNORE:
            raise DataError(f"at most {IGNORE} classes are supported, got {len(names)}")
        if not len(names) <= ignore_index < 65536:
            raise DataError(f"ignore_index {ignore_index} must be in [{len(names)}, 65535]")
        mapping = {i: i for i in range(len(names))} | {ignore_index: IGNORE}
        super().__init__(
            samples, names, label_lut(mapping), f"class ids 0-{len(names) - 1} or {ignore_index}", transform
        )


def _class_names(classes: Sequence[str] | int | None) -> tuple[str, ...]:
    if classes is None:
        return ()
    if isinstance(classes, int):
        if classes < 1:
            raise DataError(f"classes must be positive, got {classes}")
        return tuple(f"class_{i}" for i in range(classes))
    return tuple(classes)


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from err
    if not lines:
        raise DataError(f"{what} {path} is empty")
    return lines


def _split_images(images: list[Path], split_file: Path) -> list[Path]:
    """The images named (by stem) in ``split_file``, in the file's order."""
    if not split_file.is_file():
        raise DataError(f"split list {split_file} does not exist")
    stems = _read_lines(split_file, "split list")
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise DataError(f"two images share the stem '{image.stem}': {by_stem[image.stem]} and {image}")
        by_stem[image.stem] = image
    missing = [stem for stem in stems if stem not in by_stem]
    if missing:
        raise DataError(f"{split_file} lists {len(missing)} images that do not exist, e.g. '{missing[0]}'")
    if len(set(stems)) != len(stems):
        raise DataError(f"{split_file} lists an image more than once")
    return [by_stem[stem] for stem in stems]
