"""The labelled photo sets of ``../shared/realdata`` the interpretation benches measure, by short name."""

from __future__ import annotations

from pathlib import Path

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def open_set(name: str, split: str = "val", transform=None):
    """The ``split`` images of set ``name`` with their labels (voc-mini and folders: all their images):
    ``camvid``, ``cocostuff`` (cocostuff-dev), ``voc`` (voc-mini), or any folder in ImageFolder's layout with its
    ``classes.txt``; ``transform`` as the data sets take it (None: the images at their own size)."""
    from ultra.data import CocoStuff27, ImageFolder

    if name == "camvid":
        return ImageFolder(REALDATA / "camvid", split=split, transform=transform)
    if name == "cocostuff":
        return CocoStuff27(REALDATA / "cocostuff-dev" / "cocostuff", split=split, transform=transform)
    if name == "voc":
        return ImageFolder(REALDATA / "voc-mini", classes=21, transform=transform)
    if (Path(name) / "classes.txt").is_file():
        return ImageFolder(name, transform=transform)
    raise ValueError(f"unknown set '{name}': camvid, cocostuff, voc or an ImageFolder with classes.txt")
