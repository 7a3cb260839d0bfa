"""Unsupervised segmentation metrics: one confusion matrix over the whole set, Hungarian matching, mIoU and accuracy.

This is the STEGO-family protocol: clusters are matched one-to-one to classes so as to maximise
the number of matched pixels (scipy's ``linear_sum_assignment``); pixels of clusters left
unmatched (when there are more clusters than classes) count as wrong. The functional twins
(:func:`hungarian_match`, :func:`scores_from_confusion`) work on a confusion matrix directly.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric


def hungarian_match(confusion: Tensor) -> Tensor:
    """For a ``[clusters, classes]`` confusion matrix, the class matched to each cluster (``-1``: unmatched).

    Maximises the total number of matched pixels; each class gets at most one cluster and each cluster at most one
    class.
    """
    rows, cols = linear_sum_assignment(confusion.detach().cpu().double().numpy(), maximize=True)
    cluster_to_class = torch.full((confusion.shape[0],), -1, dtype=torch.long)
    cluster_to_class[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return cluster_to_class


def matched_confusion(confusion: Tensor, cluster_to_class: Tensor) -> Tensor:
    """``[classes, classes]`` confusion (predicted class x true class) after mapping clusters to classes.

    Pixels of unmatched clusters appear in no row: they are misses of their true class.
    """
    num_classes = confusion.shape[1]
    out = torch.zeros(num_classes, num_classes, dtype=confusion.dtype, device=confusion.device)
    matched = cluster_to_class >= 0
    out.index_add_(0, cluster_to_class[matched].to(confusion.device), confusion[matched])
    return out


def scores_from_confusion(matched: Tensor, class_pixels: Tensor | None = None) -> dict[str, Tensor]:
    """Per-class IoU, mIoU and pixel accuracy from a ``[predicted class, true class]`` confusion matrix.

    ``miou`` averages over the classes present in the labels or the predictions; ``miou_present``
    over the classes present in the labels only (the convention of small benchmark sets).
    ``class_pixels``: labelled pixels of each class, when some of them are in no row of ``matched``
    (unmatched clusters); by default the column sums. A class absent from both the labels and the
    predictions has an undefined IoU (NaN) and is left out of the mean.
    """
    matched = matched.double()
    tp = matched.diagonal()
    predicted = matched.sum(1)
    actual = matched.sum(0) if class_pixels is None else class_pixels.double().to(matched.device)
    union = predicted + actual - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = actual.sum()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return {
        "miou": iou.nanmean() if (union > 0).any() else nan,
        "miou_present": iou[actual > 0].mean() if (actual > 0).any() else nan,
        "acc": tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64),
        "iou": iou,
    }


class _ConfusionMetric(Metric):
    """Accumulates a ``[num_predictions, num_classes]`` confusion matrix, summed across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_predictions: int, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1 or num_predictions < 1:
            raise ValueError(
                f"num_classes and the number of predictions must be positive, got {num_classes}, {num_predictions}"
            )
        self.num_predictions, self.num_classes, self.ignore_index = num_predictions, num_classes, ignore_index
        self.add_state(
            "confusion", default=torch.zeros(num_predictions, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` ids, or ``[B, C, H, W]`` scores (argmax over C); ``target``: ``[B, H, W]`` class
        ids."""
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    f"float preds must be scores [B, C, H, W]; got {tuple(preds.shape)} "
                    f"for target {tuple(target.shape)}"
                )
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        preds, target = preds[valid].long(), target[valid].long()
        for name, values, limit in (("preds", preds, self.num_predictions), ("target", target, self.num_classes)):
            if values.numel() and (values.min() < 0 or values.max() >= limit):
                bad = values[(values < 0) | (values >= limit)].unique()[:10].tolist()
                raise ValueError(f"{name} holds ids {bad} outside [0, {limit}) (ignore_index={self.ignore_index})")
        flat = preds * self.num_classes + target
        self.confusion += torch.bincount(flat, minlength=self.num_predictions * self.num_classes).view(
            self.num_predictions, self.num_classes
        )


class UnsupervisedSegmentationMetric(_ConfusionMetric):
    """Hungarian-matched unsupervised mIoU and pixel accuracy over a whole set.

    Args:
        num_classes: classes of the ground truth.
        num_clusters: clusters of the predictions (default ``num_classes``); may exceed the classes,
            unmatched clusters' pixels count as wrong; if fewer, the unmatched classes score IoU 0.
        ignore_index: label value of unlabelled pixels.

    ``compute()`` returns ``miou`` and ``acc`` (floats in [0, 1]), per-class ``iou`` (NaN for classes
    absent from both the labels and the matched predictions, which are left out of the mean),
    ``miou_present`` (the mean over the classes present in the labels only),
    ``cluster_to_class`` (the matched class of each cluster, ``-1`` if none), ``assignment``
    (the cluster matched to each class, ``-1`` if none) and the raw ``confusion`` matrix.
    """

    def __init__(self, num_classes: int, num_clusters: int | None = None, ignore_index: int = 255, **kwargs):
        super().__init__(num_clusters or num_classes, num_classes, ignore_index, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        cluster_to_class = hungarian_match(self.confusion)
        assignment = torch.full((self.num_classes,), -1, dtype=torch.long)
        matched = cluster_to_class >= 0
        assignment[cluster_to_class[matched]] = torch.nonzero(matched).flatten()
        matched_pixels = matched_confusion(self.confusion, cluster_to_class.to(self.confusion.device))
        scores = scores_from_confusion(matched_pixels, class_pixels=self.confusion.sum(0))
        return {
            **scores,
            "cluster_to_class": cluster_to_class,
            "assignment": assignment,
            "confusion": self.confusion.clone(),
        }


class SupervisedSegmentationMetric(_ConfusionMetric):
    """Plain mIoU and accuracy of class predictions (e.g. a linear probe): no matching, same conventions."""

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(num_classes, num_classes, ignore_index, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        return {**scores_from_confusion(self.confusion), "confusion": self.confusion.clone()}


def as_floats(result: dict[str, Tensor]) -> dict:
    """A metric result with tensors turned into Python numbers and lists (NaN -> None), for JSON."""

    def convert(value):
        if isinstance(value, Tensor):
            value = value.tolist()
        if isinstance(value, float) and np.isnan(value):
            return None
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in result.items()}
