"""One image reads the same way by every door of ``segment``: a path, a PIL image and a tensor; tensors outside the
two accepted encodings are refused."""

import numpy as np
import pytest
import torch
from PIL import Image

import ultra
from ultra.data import SyntheticScenes
from ultra.readout.segmenter import as_image_tensor


def _scene(size: int = 64) -> np.ndarray:
    return SyntheticScenes(1, size, 4, seed=3)[0]["image"].permute(1, 2, 0).numpy()


def test_an_rgba_path_and_its_pil_image_agree(tmp_path):
    rgba = np.dstack([_scene(), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))])
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(path)
    from_path, from_pil = as_image_tensor(path), as_image_tensor(Image.open(path))
    assert torch.equal(from_path, from_pil)
    assert from_path[:, :, 0].min() > 0.99  # the transparent column is white, not the dropped alpha's colour


def test_an_exif_turned_path_and_its_pil_image_agree(tmp_path):
    path = tmp_path / "turned.jpg"
    picture = Image.fromarray(_scene()[:, :48])
    exif = picture.getexif()
    exif[0x0112] = 6  # rotated: a viewer shows it turned 90 degrees
    picture.save(path, exif=exif)
    from_path, from_pil = as_image_tensor(path), as_image_tensor(Image.open(path))
    assert from_path.shape == from_pil.shape == (3, 48, 64)
    assert torch.equal(from_path, from_pil)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.rand(3, 8, 8) * 255, r"in \[0, 1\].*got [\d.]+ to 2\d\d.*divide 0-255 values by 255"),
        (torch.full((3, 8, 8), float("nan")), "non-finite"),
        (-torch.rand(3, 8, 8), r"in \[0, 1\]"),
        (torch.ones(3, 8, 8, dtype=torch.bool), "must be uint8 .* got torch.bool"),
        (torch.ones(3, 8, 8, dtype=torch.int64), "got torch.int64"),
    ],
)
def test_out_of_range_tensors_are_refused(tensor, message):
    with pytest.raises(ValueError, match=message):
        as_image_tensor(tensor)


def test_accepted_tensors_read_alike():
    image = torch.from_numpy(_scene()).permute(2, 0, 1)
    assert torch.equal(as_image_tensor(image), as_image_tensor(image.float() / 255))


def test_segment_refuses_a_0_255_float_tensor(trained):
    root, _, _ = trained
    segmenter = ultra.load(root / "run" / "model.safetensors")
    with pytest.raises(ValueError, match="divide 0-255 values by 255"):
        segmenter.segment(torch.from_numpy(_scene()).permute(2, 0, 1).float())
