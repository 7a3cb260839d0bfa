"""An exported segmenter run by onnxruntime, with numpy and PIL only: no torch, no timm.

:class:`OnnxSegmenter` reads the model's ``ultra`` metadata (patch, class names, the protocol's shorter side, the
readout's score-to-class table), refuses images of a size the model cannot take, and segments a photo of any size as
:meth:`ultra.Segmenter.segment` does (resize the shorter side to the checkpoint's, a multiple of the patch; the
readout's patch scores upsampled bilinearly to the photo; the argmax mapped to class ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..backbone.image_size import check_resized_side, resized_to_patches, snap_to_patch
from ..errors import CheckpointError, DataError, MissingExtra

FORMAT = "ultra-onnx-segmenter"
"""The ``format`` of an exported model's ``ultra`` metadata."""
UNMATCHED = 255
"""The class id of a cluster matched to no class (as :func:`ultra.readout.segmenter.apply_matching` writes it)."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        message = f"running an exported model needs onnxruntime: pip install 'ultra-seg[onnx]' ({err})"
        raise MissingExtra(message) from None
    return onnxruntime


def read_metadata(path: str | Path, metadata: dict[str, str]) -> dict:
    """The ``ultra`` entry of an ONNX model's metadata, checked to be an exported segmenter's."""
    try:
        meta = json.loads(metadata["ultra"])
    except (KeyError, json.JSONDecodeError) as err:
        message = f"{path} is an ONNX model without ultra's metadata ({err}): export it with ultra-export"
        raise CheckpointError(message) from None
    found = meta.get("format") if isinstance(meta, dict) else meta
    if found != FORMAT:
        raise CheckpointError(f"{path} is not an exported ultra segmenter (its ultra metadata says {found!r})")
    return meta


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` weights of bilinear resampling without corner alignment (torch's ``align_corners=False``
    convention: source position ``(i + 0.5) * in / out - 0.5``, clamped at 0)."""
    source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (source - low).astype(np.float32)
    weights = np.zeros((size_out, size_in), np.float32)
    np.add.at(weights, (np.arange(size_out), low), 1 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def upsample_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``[N, K, h, w]`` scores to ``size`` (as :func:`ultra.data.grids.upsample_scores`)."""
    rows, cols = bilinear_matrix(scores.shape[2], size[0]), bilinear_matrix(scores.shape[3], size[1])
    return np.einsum("oh,nkhw,pw->nkop", rows, scores, cols, optimize=True)


def resize_picture(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[3, h, w]`` float32 in [0, 1] at ``size`` (bilinear, antialiased when shrinking, in
    floating point: PIL's filter, the one torch's ``antialias=True`` follows)."""
    channels = [
        np.asarray(
            Image.fromarray(picture[..., c].astype(np.float32) / 255.0, mode="F").resize(
                size[::-1], Image.Resampling.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(channels).astype(np.float32)


class OnnxSegmenter:
    """An exported segmenter (``ultra-export``) in an onnxruntime session.

    ``run(images)`` takes ``[N, 3, H, W]`` float32 RGB in [0, 1] with H and W multiples of the patch and gives the
    model's outputs (``labels`` ``[N, H, W]`` int64, ``scores`` ``[N, K, H/p, W/p]``); ``segment(picture)`` takes a
    photo of any size (``[H, W, 3]`` uint8) and gives its label map ``[H, W]``.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        ort = _onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model {self.path} does not exist")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own unexported error types
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {err}") from None
        self.meta = read_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        self.patch_size = int(self.meta["patch_size"])
        self.resize = int(self.meta["resize"])
        self.class_names = tuple(self.meta["classes"])
        self.readout = str(self.meta["readout"])
        self.score_classes = np.asarray(self.meta["score_classes"], dtype=np.int64)

    def check_images(self, images: np.ndarray) -> None:
        """Refuse what the model cannot take, naming the size and the nearest that fits."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"images must be [N, 3, H, W], got {list(images.shape)}")
        height, width, p = images.shape[2], images.shape[3], self.patch_size
        if height < p or width < p or height % p or width % p:
            fit = snap_to_patch((height, width), p)
            raise DataError(
                f"image size {height}x{width} is not a multiple of the patch {p} of {self.path.name}; "
                f"resize to {fit[0]}x{fit[1]}"
            )

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs by name for ``images`` (checked first)."""
        self.check_images(images)
        names = [output.name for output in self.session.get_outputs()]
        values = self.session.run(names, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(names, values))

    def segment(self, picture: np.ndarray, flip: bool = False, what: str = "the image") -> np.ndarray:
        """The label map ``[H, W]`` (int64 class ids; 255 for a cluster matched to no class) of a photo
        ``[H, W, 3]`` uint8; ``flip`` averages the patch scores with the mirrored photo's."""
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise DataError(f"{what} must be [H, W, 3] uint8, got {list(picture.shape)} {picture.dtype}")
        size = picture.shape[:2]
        check_resized_side(size, self.resize, what)
        small = resize_picture(picture, resized_to_patches(size, self.resize, self.patch_size))[None]
        scores = self.run(small)["scores"]
        if flip:
            scores = (scores + self.run(small[..., ::-1])["scores"][..., ::-1]) / 2
        return self.score_classes[upsample_scores(scores, size)[0].argmax(0)]
