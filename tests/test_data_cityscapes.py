"""Cityscapes-27: labelIds to the 27 classes, the files' errors, the real sample, trainIds refused by the layout
check."""

import numpy as np
import pytest
from helpers import realdata, save_png

from ultra.data import Cityscapes27, DataError
from ultra.data.cityscapes import CLASSES as CITY_CLASSES
from ultra.data.io import read_label

RNG = np.random.default_rng(0)


def _city_fixture(root, label_ids):
    h, w = label_ids.shape
    save_png(
        root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png",
        RNG.integers(0, 255, (h, w, 3), dtype=np.uint8),
    )
    save_png(
        root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", label_ids.astype(np.uint8)
    )


def test_cityscapes_label_ids_map_to_27_classes(tmp_path):
    ids = np.arange(34, dtype=np.uint8).repeat(2).reshape(4, 17)
    _city_fixture(tmp_path, ids)
    label = Cityscapes27(tmp_path, "val")[0]["label"].numpy()
    expected = np.where(ids >= 7, ids.astype(int) - 7, 255)
    assert np.array_equal(label, expected)
    assert len(CITY_CLASSES) == 27 and CITY_CLASSES[0] == "road" and CITY_CLASSES[26] == "bicycle"


def test_cityscapes_errors(tmp_path):
    _city_fixture(tmp_path, np.full((4, 6), 40))
    with pytest.raises(DataError, match=r"labelIds.png: values \[40\] are not valid .*labelIds 0-33"):
        Cityscapes27(tmp_path)[0]
    (tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="label map .*aachen_000000_000019_gtFine_labelIds.png of image"):
        Cityscapes27(tmp_path)
    with pytest.raises(DataError, match="Cityscapes image folder .*train does not exist"):
        Cityscapes27(tmp_path, "train")


def test_real_cityscapes_agrees_with_its_train_ids():
    root = realdata("cityscapes-mini")
    item = Cityscapes27(root, "val")[0]
    train_ids = read_label(next((root / "gtFine" / "val").glob("*/*_labelTrainIds.png")))
    label_of_train_id = {
        0: 7,
        1: 8,
        2: 11,
        3: 12,
        4: 13,
        5: 17,
        6: 19,
        7: 20,
        8: 21,
        9: 22,
        10: 23,
        11: 24,
        12: 25,
        13: 26,
        14: 27,
        15: 28,
        16: 31,
        17: 32,
        18: 33,
    }
    label = item["label"].numpy()
    # the downscaled sample resampled labelIds and trainIds separately: compare by majority per class
    present = [t for t in label_of_train_id if (train_ids == t).any()]
    assert len(present) >= 8
    for train_id in present:
        values, counts = np.unique(label[train_ids == train_id], return_counts=True)
        assert values[counts.argmax()] == label_of_train_id[train_id] - 7, CITY_CLASSES[label_of_train_id[train_id] - 7]
        assert counts.max() > 0.9 * counts.sum()


def test_cityscapes_train_ids_under_the_label_ids_name_are_refused(tmp_path):
    """The real sample with its trainId maps copied over its labelIds maps: refused by check, naming what they are."""
    import shutil

    root = tmp_path / "cityscapes"
    shutil.copytree(realdata("cityscapes-mini"), root)
    Cityscapes27(root, "val").check(require_labels=True)  # the real labelIds pass
    for train_ids in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        shutil.copy(train_ids, str(train_ids).replace("_labelTrainIds.png", "_labelIds.png"))
    with pytest.raises(DataError, match=r"these look like trainIds \(0-18.*Give the \*_gtFine_labelIds.png maps"):
        Cityscapes27(root, "val").check(require_labels=True)
