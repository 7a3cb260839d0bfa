"""Moving between pixels and token grids: label maps to grids, grid predictions to pixels, grid positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def labels_to_grid(labels: Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int = 255) -> Tensor:
    """The majority class of each grid cell of ``labels`` (``[..., H, W]``), ignoring ``ignore_index``.

    Cells with no labelled pixel get ``ignore_index``. Pixels are assigned to cells by nearest resampling
    of the cell index, so H and W need not be multiples of the grid.
    """
    h, w = grid
    *lead, height, width = labels.shape
    flat = labels.reshape(-1, height, width).long()
    rows = (torch.arange(height) * h // height).clamp(max=h - 1)
    cols = (torch.arange(width) * w // width).clamp(max=w - 1)
    cell = (rows[:, None] * w + cols[None, :]).flatten()
    valid = flat.flatten(1) != ignore_index
    counts = torch.zeros(flat.shape[0], h * w, num_classes + 1, dtype=torch.long)
    values = torch.where(valid, flat.flatten(1), torch.full_like(flat.flatten(1), num_classes))
    if (values[valid] >= num_classes).any() or (values[valid] < 0).any():
        raise ValueError(f"labels hold values outside [0, {num_classes}) that are not {ignore_index}")
    counts.view(flat.shape[0], -1).scatter_add_(
        1, cell.expand(flat.shape[0], -1) * (num_classes + 1) + values, torch.ones_like(values)
    )
    majority = counts[..., :num_classes].argmax(-1)
    empty = counts[..., :num_classes].sum(-1) == 0
    return torch.where(empty, torch.full_like(majority, ignore_index), majority).reshape(*lead, h, w)


def upsample_scores(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``[B, C, h, w]`` scores to ``size`` (the protocol's readout)."""
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def grid_to_pixels(grid_labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of integer ``[..., h, w]`` grid labels to ``size``."""
    lead = grid_labels.shape[:-2]
    flat = grid_labels.reshape(-1, 1, *grid_labels.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="nearest").long().reshape(*lead, *size)


def grid_positions(grid: tuple[int, int]) -> Tensor:
    """``[h*w, 2]`` cell-centre coordinates (x, y) in [-1, 1], row-major like the token order."""
    h, w = grid
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)
