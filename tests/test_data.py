"""Data sets in their real on-disk formats: COCO-Stuff (PNGs and JSON), image folders, fingerprints (Cityscapes:
``test_data_cityscapes.py``)."""

import json
import logging

import numpy as np
import pytest
import torch
from helpers import realdata, save_jpg, save_png
from PIL import Image

from ultra.data import (
    CocoStuff27,
    DataError,
    ImageFolder,
    SyntheticScenes,
)
from ultra.data.cocostuff import COARSE_CLASSES, fine_to_coarse
from ultra.data.io import read_label

RNG = np.random.default_rng(0)


def test_fine_to_coarse_table_shape():
    table = fine_to_coarse()
    assert sorted(table) == list(range(182))
    assert sorted(set(table.values())) == list(range(27))
    assert len(COARSE_CLASSES) == 27
    # spot checks from the COCO category hierarchy: person, car, dog, tv, grass, sky-other, wall-brick, road
    assert [table[i] for i in (0, 2, 17, 71, 123, 156, 170, 148)] == [
        COARSE_CLASSES.index(n) for n in ("person", "vehicle", "animal", "electronic", "plant", "sky", "wall", "ground")
    ]
    assert all(table[i] < 12 for i in range(91)) and all(table[i] >= 12 for i in range(91, 182))


def test_real_cocostuff_labels_match_the_shipped_coarse_maps():
    root = realdata("cocostuff-mini/cocostuff")
    data = CocoStuff27(root, "val")
    assert len(data) == 2
    for item in data:
        reference = read_label(root / "coarse27" / "val2017" / f"{item['name']}.png")
        assert np.array_equal(item["label"].numpy(), reference)
        assert item["image"].shape[1:] == reference.shape


def _coco_fixture(
    root, names=("000000000001", "000000000002", "000000000003"), curated=("000000000001", "000000000003")
):
    fine = {}
    for i, name in enumerate(names):
        h, w = 30 + i, 40
        save_jpg(root / "images" / "val2017" / f"{name}.jpg", RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))
        label = np.full((h, w), 255, np.uint8)
        label[:10] = 0  # person
        label[10:20, :20] = 123  # grass
        label[10:20, 20:] = 156  # sky-other
        fine[name] = label
        save_png(root / "annotations" / "val2017" / f"{name}.png", label)
    (root / "curated" / "val2017").mkdir(parents=True)
    (root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("\n".join(curated) + "\n")
    return fine


def test_cocostuff_png_layout_and_curated_list(tmp_path):
    fine = _coco_fixture(tmp_path)
    data = CocoStuff27(tmp_path, "val2017")
    assert [s.name for s in data.samples] == ["000000000001", "000000000003"]
    table = fine_to_coarse()
    for item in data:
        raw = fine[item["name"]]
        expected = np.where(raw == 255, 255, np.vectorize(lambda v: table.get(int(v), 255))(raw))
        assert np.array_equal(item["label"].numpy(), expected)
    assert len(CocoStuff27(tmp_path, "val", curated=False)) == 3


def test_cocostuff_json_annotations_render_like_the_pngs(tmp_path):
    from pycocotools import mask as mask_utils

    h, w = 24, 32
    save_jpg(tmp_path / "images" / "val2017" / "000000000007.jpg", RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (tmp_path / "curated" / "val2017").mkdir(parents=True)
    (tmp_path / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000007\n")
    grass, other, dog, crowd = (np.zeros((h, w), np.uint8) for _ in range(4))
    grass[12:] = 1
    other[4:12, 8:20] = 1
    dog[5:11, 9:19] = 1
    crowd[14:20, 22:30] = 1  # a crowd of dogs over the grass

    def ann(i, mask, category, crowd=0):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        return {
            "id": i,
            "image_id": 7,
            "category_id": category,
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [0, 0, w, h],
            "iscrowd": crowd,
        }

    image = {"id": 7, "file_name": "000000000007.jpg", "height": h, "width": w}
    stuff = {
        "images": [image],
        "annotations": [ann(1, grass, 124), ann(2, other, 183)],
        "categories": [{"id": 124, "name": "grass"}, {"id": 183, "name": "other"}],
    }
    things = {
        "images": [image],
        "annotations": [ann(3, dog, 18), ann(4, crowd, 18, crowd=1)],
        "categories": [{"id": 18, "name": "dog"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "stuff_val2017.json").write_text(json.dumps(stuff))
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(things))

    label = CocoStuff27(tmp_path, "val", annotations="json")[0]["label"].numpy()
    expected = np.full((h, w), 255)
    expected[grass == 1] = COARSE_CLASSES.index("plant")
    expected[dog == 1] = COARSE_CLASSES.index("animal")  # "other" pixels outside the dog stay unlabelled
    # crowd regions are not drawn (the official convention): the grass under the crowd stays grass
    assert np.array_equal(label, expected)


def test_cocostuff_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="COCO-Stuff root .*nope does not exist"):
        CocoStuff27(tmp_path / "nope")
    _coco_fixture(tmp_path)
    with pytest.raises(DataError, match="COCO-Stuff image folder .*train2017 does not exist"):
        CocoStuff27(tmp_path, "train")
    (tmp_path / "images" / "train2017").mkdir()
    with pytest.raises(DataError, match="Coco164kFull_Stuff_Coarse.txt does not exist"):
        CocoStuff27(tmp_path, "train")
    (tmp_path / "annotations" / "val2017" / "000000000003.png").unlink()
    with pytest.raises(DataError, match="label map .*000000000003.png of image .*000000000003.jpg does not exist"):
        CocoStuff27(tmp_path, "val")
    with pytest.raises(DataError, match="split must be one of"):
        CocoStuff27(tmp_path, "test")


def test_cocostuff_errors_for_bad_label_contents(tmp_path):
    _coco_fixture(tmp_path)
    labels = tmp_path / "annotations" / "val2017"
    save_png(labels / "000000000001.png", np.full((30, 40), 200, np.uint8))
    with pytest.raises(DataError, match=r"000000000001.png: values \[200\] are not valid .*fine ids 0-181 or 255"):
        CocoStuff27(tmp_path)[0]
    save_png(labels / "000000000001.png", np.zeros((31, 40), np.uint8))
    with pytest.raises(DataError, match="000000000001.png is 40x31 px but its image .*000000000001.jpg is 40x30 px"):
        CocoStuff27(tmp_path)[0]
    save_png(labels / "000000000001.png", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(DataError, match="000000000001.png must be single-channel .*found mode RGB"):
        CocoStuff27(tmp_path)[0]
    (tmp_path / "images" / "val2017" / "000000000003.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image .*000000000003.jpg"):
        CocoStuff27(tmp_path)[1]


def test_cocostuff_labels_in_the_coarse_layout_are_refused_as_fine_and_read_when_said(tmp_path):
    fine = _coco_fixture(tmp_path)
    CocoStuff27(tmp_path).check()  # fine ids reaching the stuff classes pass
    table = np.vectorize(lambda v: 255 if v == 255 else fine_to_coarse()[int(v)])
    for name, label in fine.items():
        save_png(tmp_path / "annotations" / "val2017" / f"{name}.png", table(label).astype(np.uint8))
    as_fine = CocoStuff27(tmp_path)
    with pytest.raises(DataError, match=r"annotations/val2017: no pixel .* stuff id .*label_layout='coarse'"):
        as_fine.check()
    coarse = CocoStuff27(tmp_path, label_layout="coarse")
    coarse.check()
    for item in coarse:
        assert np.array_equal(item["label"].numpy(), table(fine[item["name"]]))
    assert coarse.fingerprint() != as_fine.fingerprint()  # another content, another cache
    save_png(tmp_path / "annotations" / "val2017" / "000000000001.png", np.full((30, 40), 27, np.uint8))
    with pytest.raises(DataError, match=r"000000000001.png: values \[27\] .*coarse ids 0-26 or 255"):
        coarse[0]
    with pytest.raises(DataError, match="label_layout must be one of"):
        CocoStuff27(tmp_path, label_layout="coarse27")
    with pytest.raises(DataError, match="JSON annotations hold fine ids"):
        CocoStuff27(tmp_path, annotations="json", label_layout="coarse")


def test_real_cocostuff_coarse_maps_are_refused_as_fine_and_match_when_read_as_coarse(tmp_path):
    real = realdata("cocostuff-mini/cocostuff")
    for part, target in (("images", "images"), ("curated", "curated"), ("coarse27", "annotations")):
        (tmp_path / target).symlink_to(real / part)
    with pytest.raises(DataError, match="look like the 27 coarse ids"):
        CocoStuff27(tmp_path).check()
    fine, coarse = CocoStuff27(real), CocoStuff27(tmp_path, label_layout="coarse")
    for a, b in zip(fine, coarse):
        assert np.array_equal(a["label"].numpy(), b["label"].numpy())


def test_an_image_listed_twice_or_two_images_of_one_name_are_refused(tmp_path):
    _coco_fixture(tmp_path, curated=("000000000001", "000000000003", "000000000001"))
    with pytest.raises(DataError, match="two images are named '000000000001'"):
        CocoStuff27(tmp_path)
    photos = tmp_path / "photos"
    for suffix in ("jpg", "png"):
        save_png(photos / f"a.{suffix}", RNG.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"two images are named 'a' \(.*a.jpg and .*a.png\)"):
        ImageFolder(photos)


def test_real_voc_folder():
    data = ImageFolder(realdata("voc-mini"), classes=21)
    assert len(data) == 14
    for item in data:
        raw = np.array(Image.open(data.samples[item["index"]].label))
        assert np.array_equal(item["label"].numpy(), raw)
        assert item["image"].dtype == torch.uint8 and item["image"].shape[0] == 3


def test_folder_converts_image_modes_and_checks_pairs(tmp_path, caplog):
    rgb = RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    save_png(tmp_path / "images" / "gray.png", rgb[..., 0])
    save_png(tmp_path / "images" / "rgba.png", np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], -1))
    save_png(tmp_path / "images" / "palette.png", rgb, palette=True)
    for name in ("gray", "rgba", "palette"):
        save_png(tmp_path / "labels" / f"{name}.png", np.full((8, 8), 2, np.uint8), palette=(name == "palette"))
    save_png(tmp_path / "labels" / "orphan.png", np.zeros((8, 8), np.uint8))
    with caplog.at_level(logging.WARNING):
        data = ImageFolder(tmp_path, classes=["a", "b", "c"])
    assert "orphan" in caplog.text
    for item in data:
        assert item["image"].shape == (3, 8, 8)
        assert (item["label"] == 2).all()
    gray = data[[s.name for s in data.samples].index("gray")]["image"]
    assert torch.equal(gray[0], gray[1])
    with pytest.raises(DataError, match="holds labels: pass classes"):
        ImageFolder(tmp_path)
    assert not ImageFolder(tmp_path, use_labels=False).has_labels
    with pytest.raises(DataError, match=r"values \[2\] are not valid .*class ids 0-1 or 255"):
        ImageFolder(tmp_path, classes=2)[0]
    (tmp_path / "labels" / "gray.png").unlink()
    with pytest.raises(DataError, match="image .*gray.png has no label map .*labels/gray.png"):
        ImageFolder(tmp_path, classes=3)


def test_folder_ignore_value_and_flat_folders(tmp_path):
    save_png(tmp_path / "a" / "images" / "x.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "a" / "labels" / "x.png", np.array([[0, 1, 9, 9]] * 4, np.uint8))
    label = ImageFolder(tmp_path / "a", classes=2, ignore_index=9)[0]["label"]
    assert label[0].tolist() == [0, 1, 255, 255]
    save_png(tmp_path / "flat" / "y.jpg", np.zeros((4, 4, 3), np.uint8))
    flat = ImageFolder(tmp_path / "flat")
    assert (flat[0]["label"] == 255).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        ImageFolder(tmp_path / "empty")


def test_folder_splits_and_class_list(tmp_path):
    for stem, value in (("a", 0), ("b", 1), ("c", 2)):
        save_png(tmp_path / "images" / f"{stem}.png", np.full((4, 4, 3), value, np.uint8))
        save_png(tmp_path / "labels" / f"{stem}.png", np.full((4, 4), value, np.uint8))
    (tmp_path / "classes.txt").write_text("sky\nroad\n\ncar\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("c\na\n")
    train = ImageFolder(tmp_path, split="train")
    assert train.classes == ("sky", "road", "car")
    assert [s.name for s in train.samples] == ["c", "a"]
    assert [int(train[i]["label"][0, 0]) for i in range(2)] == [2, 0]
    assert len(ImageFolder(tmp_path)) == 3
    assert ImageFolder(tmp_path, classes=["x", "y", "z"]).classes == ("x", "y", "z")  # given names win
    with pytest.raises(DataError, match=r"split list .*splits/val.txt does not exist"):
        ImageFolder(tmp_path, split="val")
    (tmp_path / "splits" / "val.txt").write_text("a\nmissing\n")
    with pytest.raises(DataError, match=r"val.txt lists 1 images that do not exist, e.g. 'missing'"):
        ImageFolder(tmp_path, split="val")
    (tmp_path / "splits" / "val.txt").write_text("a\na\n")
    with pytest.raises(DataError, match="more than once"):
        ImageFolder(tmp_path, split="val")
    (tmp_path / "classes.txt").write_text("\n")
    with pytest.raises(DataError, match="class list .*classes.txt is empty"):
        ImageFolder(tmp_path)


def test_real_camvid_splits():
    train, val = (ImageFolder(realdata("camvid"), split=s) for s in ("train", "val"))
    assert (len(train), len(val)) == (367, 101)
    assert train.classes[0] == "sky" and len(train.classes) == 11
    assert not {s.name for s in train.samples} & {s.name for s in val.samples}


def test_fingerprint_follows_the_files_and_the_generator_settings(tmp_path):
    image = tmp_path / "a" / "images" / "x.png"
    save_png(image, np.zeros((4, 4, 3), np.uint8))
    before = ImageFolder(tmp_path / "a").fingerprint()
    assert ImageFolder(tmp_path / "a").fingerprint() == before
    save_png(image, np.full((5, 4, 3), 7, np.uint8))
    assert ImageFolder(tmp_path / "a").fingerprint() != before
    base = SyntheticScenes(2, 32, 3, seed=0).fingerprint()
    assert SyntheticScenes(2, 32, 3, seed=0).fingerprint() == base
    assert SyntheticScenes(2, 32, 3, seed=1).fingerprint() != base
    assert SyntheticScenes(2, 32, 3, style_seed=1).fingerprint() != base
    assert SyntheticScenes(2, 48, 3).fingerprint() != base


def test_coco_json_labels_reproduce_the_official_pngs():
    """Stuff first, then non-crowd things in file order; crowd regions stay unlabelled (about 1 image in 10 has one)."""
    root = realdata("cocostuff-dev") / "cocostuff"
    compared = 0
    for split in ("train", "val"):
        from_json, from_png = CocoStuff27(root, split, annotations="json"), CocoStuff27(root, split)
        png_index = {s.name: i for i, s in enumerate(from_png.samples)}
        for i, sample in enumerate(from_json.samples):
            if int(sample.name) not in from_json._coco.stuff.imgs:
                continue  # an image the JSON subset does not cover
            assert torch.equal(from_json[i]["label"], from_png[png_index[sample.name]]["label"]), sample.name
            compared += 1
    assert compared == 151


@pytest.mark.parametrize("pixels", [1600, 2500])
def test_images_above_pils_limit_are_refused_also_where_pil_only_warns(tmp_path, monkeypatch, pixels):
    """PIL warns between its limit and twice it, and raises above: both are one clear refusal naming the file."""
    from ultra.data.io import read_image
    from ultra.errors import DataError

    side = int(pixels**0.5)
    path = save_png(tmp_path / "big.png", np.zeros((side, side, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: a warning in PIL; 2500: its error
    with pytest.raises(DataError, match=r"image .*big.png is refused: .*exceeds limit"):
        read_image(path)
