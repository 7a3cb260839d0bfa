"""Dense CRF refinement of per-pixel probabilities (pydensecrf, the ``crf`` extra), with STEGO's settings."""
from __future__ import annotations

import numpy as np

POSITION_STD, POSITION_WEIGHT = 1, 3
BILATERAL_XY_STD, BILATERAL_RGB_STD, BILATERAL_WEIGHT = 67, 3, 4
ITERATIONS = 10
SCORE_SCALE = 10.0
"""Cosine scores (in [-1, 1]) are turned into probabilities by ``softmax(SCORE_SCALE * scores)`` before the CRF."""


class CRFUnavailable(ImportError):
    """The dense CRF needs the ``crf`` extra."""


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
        raise CRFUnavailable(f"{option} needs the dense CRF: pip install 'ultra-seg[crf]' (pydensecrf2), or leave {option} off") from err


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """Labels ``[H, W]`` refined by a fully connected CRF from ``image`` (uint8 ``[H, W, 3]``) and ``probs`` ``[K, H, W]``."""
    dcrf, unary_from_softmax = _densecrf()
    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=POSITION_STD, compat=POSITION_WEIGHT)
    crf.addPairwiseBilateral(sxy=BILATERAL_XY_STD, srgb=BILATERAL_RGB_STD, rgbim=np.ascontiguousarray(image), compat=BILATERAL_WEIGHT)
    q = np.array(crf.inference(iterations)).reshape(k, h, w)
    return q.argmax(0)
