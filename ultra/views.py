"""Correspondences between the tokens of several views (crops, flips) of one image.

A view's geometry is ``(x0, y0, x1, y1, flip)``: its crop box in coordinates normalised to the
source image. The centre of token (i, j) of a view maps to a point of the source image; in every
other view of the same image that contains the point, its bilinear weights on that view's grid
give the corresponding embedding. Averaged over the partner views, these weights form a sparse
operator C (rows: tokens that have a partner), so that ``C @ z`` is, for each token, the embedding
of the same image point seen by the other views: the geometric part of the augmentation undone.
Every function works on a batch of images at once (``geometry`` of shape ``[..., V, 5]``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _token_points(geometry: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[..., V, h*w, 2]`` source-image coordinates of every token centre of every view (``geometry`` ``[..., V, 5]``)."""
    h, w = grid
    u = ((torch.arange(w) + 0.5) / w).repeat(h)
    v = ((torch.arange(h) + 0.5) / h).repeat_interleave(w)
    x0, y0, x1, y1, flip = (t[..., None] for t in geometry.unbind(-1))
    u = torch.where(flip > 0.5, 1 - u, u)
    return torch.stack([x0 + u * (x1 - x0), y0 + v * (y1 - y0)], -1)


def _bilinear(points: Tensor, box: Tensor, grid: tuple[int, int]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The four bilinear corners of ``points`` (``[I, P, 2]``) in one view ``box`` per image (``[I, 5]``):
    for each corner, whether it is used (``[I, P]``: the point is inside the view, the weight positive),
    its token in that view and its weight."""
    h, w = grid
    x0, y0, x1, y1, flip = (t[:, None] for t in box.unbind(-1))
    u = (points[..., 0] - x0) / (x1 - x0)
    v = (points[..., 1] - y0) / (y1 - y0)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    u = torch.where(flip > 0.5, 1 - u, u)
    fx = (u * w - 0.5).clamp(0, w - 1)
    fy = (v * h - 0.5).clamp(0, h - 1)
    ix0, iy0 = fx.floor().long(), fy.floor().long()
    ix1, iy1 = (ix0 + 1).clamp(max=w - 1), (iy0 + 1).clamp(max=h - 1)
    ax, ay = fx - ix0, fy - iy0
    corners = [(iy0, ix0, (1 - ax) * (1 - ay)), (iy0, ix1, ax * (1 - ay)), (iy1, ix0, (1 - ax) * ay), (iy1, ix1, ax * ay)]
    return [(inside & (wt > 0), yy * w + xx, wt) for yy, xx, wt in corners]


def image_correspondences(geometry: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse entries (row, col, weight) of C for ``I`` images of ``V`` views each (``geometry`` ``[I, V, 5]``).

    Nodes are numbered ``(image * V + view) * h*w + token``. Each row sums to 1 over its partner
    views' tokens (or has no entry when no other view sees that point).
    """
    images, views = geometry.shape[:2]
    n = grid[0] * grid[1]
    points = _token_points(geometry, grid)  # [I, V, n, 2]
    partners = torch.zeros(images, views, n)
    rows, cols, vals = [], [], []
    for a in range(views):
        for b in range(views):
            if a == b:
                continue
            seen = torch.zeros(images, n, dtype=torch.bool)
            for used, token, weight in _bilinear(points[:, a], geometry[:, b], grid):
                image, t = used.nonzero(as_tuple=True)
                rows.append((image * views + a) * n + t)
                cols.append((image * views + b) * n + token[image, t])
                vals.append(weight[image, t])
                seen |= used
            partners[:, a] += seen
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    return rows, cols, vals / partners.flatten()[rows]


def view_correspondences(geometry: Tensor, grid: tuple[int, int], view_offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The entries of C for the ``V`` views of one image (``geometry`` ``[V, 5]``), nodes numbered from
    ``view_offset * h*w``."""
    rows, cols, vals = image_correspondences(geometry[None], grid)
    base = view_offset * grid[0] * grid[1]
    return rows + base, cols + base, vals
