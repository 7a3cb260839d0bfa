"""Dense CRF refinement of per-pixel scores (pydensecrf, the ``crf`` extra), with STEGO's settings."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import CRFUnavailable

POSITION_STD, POSITION_WEIGHT = 1, 3
BILATERAL_XY_STD, BILATERAL_RGB_STD, BILATERAL_WEIGHT = 67, 3, 4
ITERATIONS = 10
SCORE_SCALE = 10.0
"""The default unary scale: cosine scores (in [-1, 1]) become probabilities by ``softmax(scale * scores)``."""


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise CRFUnavailable("the dense CRF needs the 'crf' extra: pip install 'ultra-seg[crf]' (pydensecrf2)") from err
    return dcrf, unary_from_softmax


def require_crf(option: str) -> None:
    """Fail early, naming the ``option`` that asked for it, when the dense CRF is not installed."""
    try:
        _densecrf()
    except CRFUnavailable as err:
        raise CRFUnavailable(
            f"{option} needs the dense CRF: pip install 'ultra-seg[crf]' (pydensecrf2), or leave {option} off"
        ) from err


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """Labels ``[H, W]`` refined by a fully connected CRF from ``image`` (uint8 ``[H, W, 3]``) and ``probs`` ``[K,
    H, W]``."""
    dcrf, unary_from_softmax = _densecrf()
    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=POSITION_STD, compat=POSITION_WEIGHT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_XY_STD, srgb=BILATERAL_RGB_STD, rgbim=np.ascontiguousarray(image), compat=BILATERAL_WEIGHT
    )
    q = np.array(crf.inference(iterations)).reshape(k, h, w)
    return q.argmax(0)


def crf_labels(images: Tensor, scores: Tensor, scale: float = SCORE_SCALE) -> Tensor:
    """Labels ``[B, H, W]`` of images ``[B, 3, H, W]`` (in [0, 1]) refined by the dense CRF from their pixel scores
    ``[B, K, H, W]``, turned into probabilities by ``softmax(scale * scores)``."""
    pictures = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
    probs = torch.softmax(scores.float() * scale, 1).cpu().numpy()
    labels = np.stack([dense_crf(picture, p) for picture, p in zip(pictures, probs)])
    return torch.from_numpy(labels).to(scores.device)
