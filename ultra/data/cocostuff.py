"""COCO-Stuff-27: COCO-Stuff 164k images, fine labels (ids 0-181) merged into the 27 supercategories.

Layout (the one STEGO and its successors use)::

    ROOT/images/{train2017,val2017}/*.jpg
    ROOT/annotations/{train2017,val2017}/*.png            fine ids 0-181, 255 = unlabelled
    ROOT/curated/train2017/Coco164kFull_Stuff_Coarse.txt  curated training list
    ROOT/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt  curated validation list

or, instead of the PNGs, COCO-Stuff's JSON files ``ROOT/annotations/stuff_{split}.json`` and
``ROOT/annotations/instances_{split}.json``, rendered with pycocotools to the same label maps.
PNGs already merged into the 27 coarse ids (0-26, the other common preprocessed layout) are read with
``label_layout="coarse"``; read as fine ids they would be merged a second time, so :meth:`CocoStuff27.check`
refuses a set whose ids never reach the stuff classes (every COCO-Stuff image has stuff pixels, fine ids 91-181).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import IGNORE, Sample, SegmentationDataset, Transform, label_lut
from .io import read_image, require_dir

COARSE_CLASSES = (
    # 12 "things" supercategories, ids 0-11
    "electronic",
    "appliance",
    "food-things",
    "furniture-things",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    # 15 "stuff" supercategories, ids 12-26
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)

# COCO category id (1-182) -> (name, coarse class); fine id in the PNGs = category id - 1.
# Ids absent here (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are unused by COCO but keep their coarse class.
_THINGS = {
    "person": ("person", [1]),
    "vehicle": ("vehicle", range(2, 10)),
    "outdoor": ("outdoor", range(10, 16)),
    "animal": ("animal", range(16, 26)),
    "accessory": ("accessory", range(26, 34)),
    "sports": ("sports", range(34, 44)),
    "kitchen": ("kitchen", range(44, 52)),
    "food": ("food-things", range(52, 62)),
    "furniture": ("furniture-things", range(62, 72)),
    "electronic": ("electronic", range(72, 78)),
    "appliance": ("appliance", range(78, 84)),
    "indoor": ("indoor", range(84, 92)),
}
_STUFF = (  # category ids 92-182 in order, with their supercategory
    ("banner", "textile"),
    ("blanket", "textile"),
    ("branch", "plant"),
    ("bridge", "building"),
    ("building-other", "building"),
    ("bush", "plant"),
    ("cabinet", "furniture-stuff"),
    ("cage", "structural"),
    ("cardboard", "rawmaterial"),
    ("carpet", "floor"),
    ("ceiling-other", "ceiling"),
    ("ceiling-tile", "ceiling"),
    ("cloth", "textile"),
    ("clothes", "textile"),
    ("clouds", "sky"),
    ("counter", "furniture-stuff"),
    ("cupboard", "furniture-stuff"),
    ("curtain", "textile"),
    ("desk-stuff", "furniture-stuff"),
    ("dirt", "ground"),
    ("door-stuff", "furniture-stuff"),
    ("fence", "structural"),
    ("floor-marble", "floor"),
    ("floor-other", "floor"),
    ("floor-stone", "floor"),
    ("floor-tile", "floor"),
    ("floor-wood", "floor"),
    ("flower", "plant"),
    ("fog", "water"),
    ("food-other", "food-stuff"),
    ("fruit", "food-stuff"),
    ("furniture-other", "furniture-stuff"),
    ("grass", "plant"),
    ("gravel", "ground"),
    ("ground-other", "ground"),
    ("hill", "solid"),
    ("house", "building"),
    ("leaves", "plant"),
    ("light", "furniture-stuff"),
    ("mat", "textile"),
    ("metal", "rawmaterial"),
    ("mirror-stuff", "furniture-stuff"),
    ("moss", "plant"),
    ("mountain", "solid"),
    ("mud", "ground"),
    ("napkin", "textile"),
    ("net", "structural"),
    ("paper", "rawmaterial"),
    ("pavement", "ground"),
    ("pillow", "textile"),
    ("plant-other", "plant"),
    ("plastic", "rawmaterial"),
    ("platform", "ground"),
    ("playingfield", "ground"),
    ("railing", "structural"),
    ("railroad", "ground"),
    ("river", "water"),
    ("road", "ground"),
    ("rock", "solid"),
    ("roof", "building"),
    ("rug", "textile"),
    ("salad", "food-stuff"),
    ("sand", "ground"),
    ("sea", "water"),
    ("shelf", "furniture-stuff"),
    ("sky-other", "sky"),
    ("skyscraper", "building"),
    ("snow", "ground"),
    ("solid-other", "solid"),
    ("stairs", "furniture-stuff"),
    ("stone", "solid"),
    ("straw", "plant"),
    ("structural-other", "structural"),
    ("table", "furniture-stuff"),
    ("tent", "building"),
    ("textile-other", "textile"),
    ("towel", "textile"),
    ("tree", "plant"),
    ("vegetable", "food-stuff"),
    ("wall-brick", "wall"),
    ("wall-concrete", "wall"),
    ("wall-other", "wall"),
    ("wall-panel", "wall"),
    ("wall-stone", "wall"),
    ("wall-tile", "wall"),
    ("wall-wood", "wall"),
    ("water-other", "water"),
    ("waterdrops", "water"),
    ("window-blind", "window"),
    ("window-other", "window"),
    ("wood", "solid"),
)
FIRST_STUFF_ID = 91  # fine ids 91-181 are the stuff classes
STUFF_OTHER_ID = 183  # "other" in stuff_*.json: pixels of thing classes, drawn from instances_*.json instead


def fine_to_coarse() -> dict[int, int]:
    """The standard COCO-Stuff fine id (0-181) -> 27-class coarse id table."""
    table: dict[int, int] = {}
    for coarse_name, ids in _THINGS.values():
        for cat_id in ids:
            table[cat_id - 1] = COARSE_CLASSES.index(coarse_name)
    for offset, (_, coarse_name) in enumerate(_STUFF):
        table[FIRST_STUFF_ID + offset] = COARSE_CLASSES.index(coarse_name)
    return table


LABEL_LAYOUTS = ("fine", "coarse")
CURATED_LISTS = {"train2017": "Coco164kFull_Stuff_Coarse.txt", "val2017": "Coco164kFull_Stuff_Coarse_7.txt"}
_SPLITS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}


class CocoStuff27(SegmentationDataset):
    """COCO-Stuff-27 (``split`` ``train``/``val`` or ``train2017``/``val2017``).

    ``curated=True`` restricts the split to the curated image list of the protocol;
    ``annotations="png"`` reads the label PNGs, ``"json"`` renders COCO-Stuff's JSON annotations;
    ``label_layout`` says what the PNGs hold: ``"fine"`` ids 0-181 or ``"coarse"`` ids 0-26 (255 unlabelled in both).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        curated: bool = True,
        annotations: str = "png",
        label_layout: str = "fine",
        transform: Transform | None = None,
    ):
        root = require_dir(Path(root), "COCO-Stuff root")
        if split not in _SPLITS:
            raise DataError(f"COCO-Stuff split must be one of {sorted(_SPLITS)}, got '{split}'")
        if annotations not in ("png", "json"):
            raise DataError(f"annotations must be 'png' or 'json', got '{annotations}'")
        if label_layout not in LABEL_LAYOUTS:
            raise DataError(f"label_layout must be one of {list(LABEL_LAYOUTS)}, got '{label_layout}'")
        if annotations == "json" and label_layout != "fine":
            raise DataError("label_layout 'coarse' describes label PNGs; the JSON annotations hold fine ids")
        self.label_layout = label_layout
        split = _SPLITS[split]
        image_dir = require_dir(root / "images" / split, "COCO-Stuff image folder")
        if curated:
            names = _read_list(root / "curated" / split / CURATED_LISTS[split])
        else:
            names = sorted(p.stem for p in image_dir.glob("*.jpg"))
        self._coco = None
        if annotations == "png":
            label_dir = require_dir(root / "annotations" / split, "COCO-Stuff label folder")
            samples = [Sample(n, image_dir / f"{n}.jpg", label_dir / f"{n}.png") for n in names]
        else:
            self._coco = _CocoJsonRenderer(root / "annotations", split)
            samples = [Sample(n, image_dir / f"{n}.jpg", None) for n in names]
        for s in samples:
            if not s.image.is_file():
                raise DataError(f"image {s.image} listed for COCO-Stuff {split} does not exist")
            if s.label is not None and not s.label.is_file():
                raise DataError(f"label map {s.label} of image {s.image} does not exist")
        mapping = fine_to_coarse() if label_layout == "fine" else {i: i for i in range(len(COARSE_CLASSES))}
        valid = "fine ids 0-181 or 255" if label_layout == "fine" else "coarse ids 0-26 or 255"
        super().__init__(samples, COARSE_CLASSES, label_lut({**mapping, IGNORE: IGNORE}), valid, transform)

    def settings(self) -> dict:
        # the default layout adds nothing, so that the fingerprints (and caches) of fine-id sets stay as they were
        return {} if self.label_layout == "fine" else {"label_layout": self.label_layout}

    def check_label_layout(self, raw_ids: set[int]) -> None:
        labelled = raw_ids - {IGNORE}
        if self.label_layout == "fine" and labelled and max(labelled) < FIRST_STUFF_ID:
            where = self.samples[0].label.parent if self.samples[0].label else "the JSON annotations"
            raise DataError(
                f"COCO-Stuff label maps in {where}: no pixel of any of the {len(self)} images holds a stuff id "
                f"(fine ids {FIRST_STUFF_ID}-181; the highest id is {max(labelled)}), yet every COCO-Stuff image "
                f"has stuff pixels: these look like the 27 coarse ids (0-26). Read them with "
                f"label_layout='coarse' (--dataset.label_layout coarse); read as fine ids they would be merged "
                f"again into the wrong classes"
            )

    @property
    def has_labels(self) -> bool:
        return True

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._coco is None:
            return super().load(index)
        sample = self.samples[index]
        image = read_image(sample.image)
        return image, self._coco.render(int(sample.name), image.shape[:2])


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"curated image list {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"curated image list {path} is empty")
    return names


class _CocoJsonRenderer:
    """Renders fine-id label maps (0-181, 255 unlabelled) from stuff_*.json + instances_*.json.

    The official convention (it reproduces COCO-Stuff's label PNGs): stuff first, then the non-crowd
    things in file order over it; crowd regions and the stuff class "other" are not drawn.
    """

    def __init__(self, folder: Path, split: str):
        from pycocotools.coco import COCO

        files = [folder / f"stuff_{split}.json", folder / f"instances_{split}.json"]
        for f in files:
            if not f.is_file():
                raise DataError(f"COCO-Stuff JSON annotations {f} do not exist")
        try:
            self.stuff, self.things = (COCO(str(f)) for f in files)
        except Exception as err:
            raise DataError(f"cannot parse COCO JSON in {folder}: {err}") from err

    def render(self, image_id: int, shape: tuple[int, int]) -> np.ndarray:
        label = np.full(shape, IGNORE, dtype=np.int64)
        for coco, where, crowd in ((self.stuff, "stuff", None), (self.things, "instances", False)):  # things over stuff
            if image_id not in coco.imgs:
                raise DataError(f"image id {image_id} has no entry in the {where} JSON annotations")
            info = coco.imgs[image_id]
            if (info["height"], info["width"]) != tuple(shape):
                raise DataError(
                    f"{where} JSON says image {image_id} is {info['width']}x{info['height']} px, "
                    f"the file is {shape[1]}x{shape[0]}"
                )
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=crowd)):
                if ann["category_id"] == STUFF_OTHER_ID:
                    continue
                label[coco.annToMask(ann).astype(bool)] = ann["category_id"] - 1
        return label
