"""Cityscapes-27: gtFine labelIds 7-33 as classes 0-26 (labelId - 7); every other id is ignored.

Layout: ``ROOT/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
``ROOT/gtFine/{split}/{city}/*_gtFine_labelIds.png``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import IGNORE, Sample, SegmentationDataset, Transform, label_lut
from .io import require_dir

CLASSES = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
FIRST_LABEL_ID = 7
LAST_TRAIN_ID = 18
"""The highest id of Cityscapes' 19-class trainId maps (255: ignored)."""
# labelIds 0-6 (unlabeled, ego vehicle, ... , ground) and 255 (license plate, id -1 stored as 255) are ignored
_MAPPING = {**{i: IGNORE for i in range(FIRST_LABEL_ID)}, **{i: i - FIRST_LABEL_ID for i in range(7, 34)}, 255: IGNORE}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes27(SegmentationDataset):
    """Cityscapes with the 27-class protocol of the unsupervised segmentation literature."""

    def __init__(self, root: str | Path, split: str = "val", transform: Transform | None = None):
        root = require_dir(Path(root), "Cityscapes root")
        image_root = require_dir(root / "leftImg8bit" / split, "Cityscapes image folder")
        label_root = require_dir(root / "gtFine" / split, "Cityscapes gtFine folder")
        samples = []
        for image in sorted(image_root.glob(f"*/*{_IMAGE_SUFFIX}")):
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            label = label_root / image.parent.name / f"{stem}{_LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"label map {label} of image {image} does not exist")
            samples.append(Sample(stem, image, label))
        if not samples:
            raise DataError(f"no *{_IMAGE_SUFFIX} images under {image_root}/<city>/")
        super().__init__(samples, CLASSES, label_lut(_MAPPING), "labelIds 0-33 or 255", transform)

    def check_label_layout(self, raw_ids: set[int]) -> None:
        """Refuse trainId maps (0-18) stored under the labelIds name: every Cityscapes frame has labelIds of 19 and
        above (vegetation 21, sky 23, car 26, ...), which trainIds never reach."""
        labelled = raw_ids - {IGNORE}
        if labelled and max(labelled) < LAST_TRAIN_ID + 1:
            raise DataError(
                f"Cityscapes label maps in {self.samples[0].label.parent.parent}: no pixel of any of the {len(self)} "
                f"images holds a labelId of {LAST_TRAIN_ID + 1} or more (the highest is {max(labelled)}), yet every "
                f"Cityscapes frame has vegetation, sky or cars (labelIds 21, 23, 26): these look like trainIds "
                f"(0-18, *_gtFine_labelTrainIds.png) under the labelIds name. Give the *{_LABEL_SUFFIX} maps; read "
                f"as labelIds, trainIds would become the wrong classes"
            )
