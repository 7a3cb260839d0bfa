"""Synthetic scenes, the joint transforms and views, the package's names imported on use."""

import numpy as np
import pytest
import torch

from ultra.data import (
    EvalTransform,
    FiveCropViews,
    ImageFolder,
    RandomViews,
    SyntheticScenes,
    write_synthetic_folder,
)


def test_synthetic_is_deterministic_and_exact(tmp_path):
    a, b = SyntheticScenes(4, 64, 6, seed=3), SyntheticScenes(4, 64, 6, seed=3)
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["label"], b[i]["label"])
    assert not torch.equal(a[0]["image"], SyntheticScenes(4, 64, 6, seed=4)[0]["image"])
    seen = set().union(*(set(a[i]["label"].unique().tolist()) for i in range(4)))
    assert seen <= set(range(6)) and len(seen) >= 3
    write_synthetic_folder(tmp_path, 4, 64, 6, seed=3)
    folder = ImageFolder(tmp_path, classes=6)
    for i in range(4):
        assert torch.equal(folder[i]["image"], a[i]["image"]) and torch.equal(folder[i]["label"], a[i]["label"])


def test_synthetic_classes_have_their_own_appearance():
    """Mean colour of each class is consistent across images: a property the unsupervised methods rely on."""
    data = SyntheticScenes(12, 64, 4, seed=0)
    means = {c: [] for c in range(4)}
    for item in data:
        img, lab = item["image"].float(), item["label"]
        for c in lab.unique().tolist():
            means[c].append(img[:, lab == c].mean(1))
    spread = max(torch.stack(v).std(0).max() for v in means.values() if len(v) > 1)
    centers = torch.stack([torch.stack(v).mean(0) for v in means.values()])
    assert spread < torch.cdist(centers, centers).masked_fill(torch.eye(4, dtype=bool), 1e9).min()


def _coordinate_image(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.zeros_like(xx)], -1).astype(np.uint8)
    return image, (yy // 8 * 10 + xx // 8).astype(np.int64)


def test_eval_transform_protocol():
    from torchvision import tv_tensors

    image, label = _coordinate_image(400, 600)
    out = EvalTransform(320, 320)(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(label))
    )
    assert out["image"].shape == (3, 320, 320) and out["label"].shape == (320, 320)
    assert out["image"].dtype == torch.float32 and 0 <= out["image"].min() and out["image"].max() <= 1
    assert set(out["label"].unique().tolist()) <= set(np.unique(label).tolist())  # nearest: no new ids
    # centre crop of a 480x320 resize: x spans the middle two thirds
    assert abs(out["image"][0, :, 0].mean() - 80 / 480) < 0.02 and abs(out["image"][0, :, -1].mean() - 400 / 480) < 0.02


def test_view_geometry_describes_the_crops():
    from torchvision import tv_tensors

    image, label = _coordinate_image(200, 300)
    views = FiveCropViews(size=32, resize=None, crop_fraction=0.6, flip=True)(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(label))
    )
    assert views["image"].shape == (10, 3, 32, 32) and views["label"].shape == (10, 32, 32)
    for img, (x0, y0, x1, y1, flip) in zip(views["image"], views["geometry"].tolist()):
        left, right = img[0, :, 0].mean().item(), img[0, :, -1].mean().item()
        if flip:
            left, right = right, left
        assert abs(left - x0) < 0.03 and abs(right - x1) < 0.03
        assert abs(img[1, 0].mean().item() - y0) < 0.03 and abs(img[1, -1].mean().item() - y1) < 0.03
    torch.manual_seed(0)
    rand = RandomViews(size=32, num_views=3)(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(label))
    )
    assert rand["geometry"].shape == (3, 5)
    for img, (x0, _, _, _, flip) in zip(rand["image"], rand["geometry"].tolist()):
        left = img[0, :, -1 if flip else 0].mean().item()
        assert abs(left - x0) < 0.03


def test_an_unknown_package_name_is_an_attribute_error_naming_it_and_known_ones_import_on_use():
    import ultra
    import ultra.data

    with pytest.raises(AttributeError, match="module 'ultra.data' has no attribute 'CocoStuff28'"):
        ultra.data.CocoStuff28  # noqa: B018
    with pytest.raises(AttributeError, match="module 'ultra' has no attribute 'Segmentr'"):
        ultra.Segmentr  # noqa: B018
    assert (
        ultra.data.CocoStuff27.__module__ == "ultra.data.cocostuff"
        and ultra.load.__module__ == "ultra.readout.checkpoint"
    )
