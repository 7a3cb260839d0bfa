"""Figures that test "key-query graphs say where, value graphs say what" on eigenvectors.

For each eigenvector: the fraction of its variance explained by token position (R^2 of a least
squares fit on a cubic polynomial of x, y) and by the ground-truth class of the token (R^2 of a
fit on one-hot classes, i.e. the between-class share of variance); and the Hungarian mIoU of
k-means on the eigenvectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.grids import grid_positions, grid_to_pixels
from ..evaluation.metrics import UnsupervisedSegmentationMetric
from ..readout.kmeans import assign, kmeans


def polynomial_features(positions: Tensor, degree: int = 3) -> Tensor:
    """``[n, F]``: all monomials x^i y^j with i + j <= degree (constant included)."""
    x, y = positions[:, 0:1].double(), positions[:, 1:2].double()
    return torch.cat([x**i * y ** (d - i) for d in range(degree + 1) for i in range(d + 1)], 1)


def r_squared(targets: Tensor, design: Tensor) -> Tensor:
    """R^2 of the least-squares fit of each column of ``targets`` ``[n, m]`` on ``design`` ``[n, F]``."""
    t = targets.double()
    coef = torch.linalg.lstsq(design, t).solution
    residual = (t - design @ coef).square().sum(0)
    total = (t - t.mean(0)).square().sum(0).clamp_min(1e-30)
    return 1 - residual / total


def position_r2(vectors: Tensor, grid: tuple[int, int], degree: int = 3) -> Tensor:
    """R^2 on position of each eigenvector; ``vectors`` is ``[images, h*w, m]`` (positions pooled over images)."""
    design = polynomial_features(grid_positions(grid), degree).repeat(vectors.shape[0], 1)
    return r_squared(vectors.reshape(-1, vectors.shape[-1]), design)


def class_r2(vectors: Tensor, classes: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """R^2 on class of each eigenvector over the labelled tokens; ``classes`` is the grid label of each row."""
    rows, classes = vectors.reshape(-1, vectors.shape[-1]), classes.flatten()
    keep = classes != ignore_index
    present = classes[keep].unique()
    if present.numel() < 2:
        return torch.full((rows.shape[1],), float("nan"), dtype=torch.float64)
    design = (classes[keep][:, None] == present[None, :]).double()
    return r_squared(rows[keep], design)


def level_r2(
    vectors: Tensor, grid: tuple[int, int], grid_labels: Tensor | None, num_classes: int, per_image: bool
) -> dict[str, float]:
    """Mean position R^2 and, with ``grid_labels``, class R^2 of the non-trivial eigenvectors of ``vectors``
    ``[images, h*w, m]`` (the leading one is sqrt(degree): no grouping information): per image, then averaged over
    the images, or pooled over the set."""
    informative = vectors[..., 1:]
    parts = [slice(i, i + 1) for i in range(len(vectors))] if per_image else [slice(None)]
    position = torch.tensor([float(position_r2(informative[p], grid).mean()) for p in parts], dtype=torch.float64)
    figures = {"position_r2": float(position.mean())}
    if grid_labels is not None:
        classes = [float(class_r2(informative[p], grid_labels[p], num_classes).nanmean()) for p in parts]
        figures["class_r2"] = float(torch.tensor(classes, dtype=torch.float64).nanmean())
    return figures


def kmeans_scores(
    vectors: Tensor, labels: Tensor, grid: tuple[int, int], num_classes: int, k: int, seed: int = 0
) -> tuple[dict, Tensor]:
    """k-means (``k`` clusters) on the L2-normalised rows of ``vectors`` ``[images, h*w, m]``, scored
    against pixel ``labels`` ``[images, H, W]`` with one Hungarian matching; returns scores and ``[images, h, w]``
    clusters."""
    rows = vectors.reshape(-1, vectors.shape[-1])
    centroids = kmeans(rows, k, restarts=5, seed=seed).centroids
    clusters = assign(rows, centroids)[0].reshape(vectors.shape[0], *grid)
    metric = UnsupervisedSegmentationMetric(num_classes, num_clusters=k)
    metric.update(grid_to_pixels(clusters, tuple(labels.shape[-2:])), labels)
    result = metric.compute()
    return {"miou": float(result["miou"]), "acc": float(result["acc"])}, clusters
