"""Correspondences between the tokens of several views (crops, flips) of one image.

A view's geometry is ``(x0, y0, x1, y1, flip)``: its crop box in coordinates normalised to the
source image. The centre of token (i, j) of a view maps to a point of the source image; in every
other view of the same image that contains the point, its bilinear weights on that view's grid
give the corresponding embedding. Averaged over the partner views, these weights form a sparse
operator C (rows: tokens that have a partner), so that ``C @ z`` is, for each token, the embedding
of the same image point seen by the other views: the geometric part of the augmentation undone.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _token_points(geometry: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[V, h*w, 2]`` source-image coordinates of every token centre of every view."""
    h, w = grid
    u = ((torch.arange(w) + 0.5) / w).repeat(h)
    v = ((torch.arange(h) + 0.5) / h).repeat_interleave(w)
    x0, y0, x1, y1, flip = geometry.T[..., None]
    u = torch.where(flip > 0.5, 1 - u, u)
    return torch.stack([x0 + u * (x1 - x0), y0 + v * (y1 - y0)], -1)


def _bilinear(points: Tensor, box: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Tokens and weights of ``points`` (``[P, 2]``) inside one view ``box``; returns (point, token, weight) triples."""
    h, w = grid
    x0, y0, x1, y1, flip = box.tolist()
    u = (points[:, 0] - x0) / (x1 - x0)
    v = (points[:, 1] - y0) / (y1 - y0)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if flip > 0.5:
        u = 1 - u
    fx = (u * w - 0.5).clamp(0, w - 1)
    fy = (v * h - 0.5).clamp(0, h - 1)
    ix0, iy0 = fx.floor().long(), fy.floor().long()
    ix1, iy1 = (ix0 + 1).clamp(max=w - 1), (iy0 + 1).clamp(max=h - 1)
    ax, ay = fx - ix0, fy - iy0
    corners = [(iy0, ix0, (1 - ax) * (1 - ay)), (iy0, ix1, ax * (1 - ay)), (iy1, ix0, (1 - ax) * ay), (iy1, ix1, ax * ay)]
    point = torch.arange(points.shape[0])
    rows, cols, vals = [], [], []
    for yy, xx, wt in corners:
        keep = inside & (wt > 0)
        rows.append(point[keep])
        cols.append(yy[keep] * w + xx[keep])
        vals.append(wt[keep])
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def view_correspondences(geometry: Tensor, grid: tuple[int, int], view_offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse entries (row, col, weight) of C for the ``V`` views of one image.

    Nodes are numbered ``(view_offset + view) * h*w + token``. Each row sums to 1 over its partner
    views' tokens (or has no entry when no other view sees that point).
    """
    n = grid[0] * grid[1]
    points = _token_points(geometry, grid)
    rows, cols, vals, partners = [], [], [], torch.zeros(geometry.shape[0] * n)
    for a in range(geometry.shape[0]):
        for b in range(geometry.shape[0]):
            if a == b:
                continue
            r, c, v = _bilinear(points[a], geometry[b], grid)
            if r.numel():
                rows.append(r + a * n)
                cols.append(c + b * n)
                vals.append(v)
                partners[torch.unique(r) + a * n] += 1
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    vals = vals / partners[rows]
    base = view_offset * n
    return rows + base, cols + base, vals
