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
    """``[..., V, h*w, 2]`` source-image coordinates of every token centre of every view (``geometry`` ``[..., V,
    5]``)."""
    h, w = grid
    u = ((torch.arange(w) + 0.5) / w).repeat(h)
    v = ((torch.arange(h) + 0.5) / h).repeat_interleave(w)
    x0, y0, x1, y1, flip = (t[..., None] for t in geometry.unbind(-1))
    u = torch.where(flip > 0.5, 1 - u, u)
    return torch.stack([x0 + u * (x1 - x0), y0 + v * (y1 - y0)], -1)


def _bilinear(points: Tensor, box: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The four bilinear corners of ``points`` (``[..., 2]``) in the views ``box`` (``[..., 5]``, broadcast with
    ``points[..., 0]``), stacked on a last dimension of 4: whether each is used (the point is inside the view, the
    weight positive), its token in that view and its weight."""
    h, w = grid
    x0, y0, x1, y1, flip = box.unbind(-1)
    u = (points[..., 0] - x0) / (x1 - x0)
    v = (points[..., 1] - y0) / (y1 - y0)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    u = torch.where(flip > 0.5, 1 - u, u)
    fx = (u * w - 0.5).clamp(0, w - 1)
    fy = (v * h - 0.5).clamp(0, h - 1)
    ix0, iy0 = fx.floor().long(), fy.floor().long()
    ix1, iy1 = (ix0 + 1).clamp(max=w - 1), (iy0 + 1).clamp(max=h - 1)
    ax, ay = fx - ix0, fy - iy0
    weight = torch.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], -1)
    token = torch.stack([iy0 * w + ix0, iy0 * w + ix1, iy1 * w + ix0, iy1 * w + ix1], -1)
    return inside[..., None] & (weight > 0), token, weight


def image_correspondences(geometry: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse entries (row, col, weight) of C for ``I`` images of ``V`` views each (``geometry`` ``[I, V, 5]``),
    sorted by row then column, without duplicates (a CSR order: no sort is needed to build the operator).

    Nodes are numbered ``(image * V + view) * h*w + token``. Each row sums to 1 over its partner
    views' tokens (or has no entry when no other view sees that point).
    """
    images, views = geometry.shape[:2]
    n = grid[0] * grid[1]
    if views < 2:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    # every candidate entry in row-major order, [I, V (row view a), n (row token), V-1 (partner view b), 4 (corner)]:
    # the rows are the leading three dimensions, the columns grow with b, then with the corner
    points = _token_points(geometry, grid)[:, :, :, None]  # [I, V, n, 1, 2]
    used, token, weight = _bilinear(points, geometry[:, None, None], grid)  # [I, V, n, V, 4] (b == a included)
    partner = torch.tensor([[b for b in range(views) if b != a] for a in range(views)]).view(1, views, 1, views - 1, 1)
    index = partner.expand(images, views, n, views - 1, 4)
    used, token, weight = (t.gather(3, index) for t in (used, token, weight))
    seen_by = used.any(-1).sum(-1)[..., None, None]  # partner views that see each token's point
    image = torch.arange(images).view(images, 1, 1, 1, 1)
    where = used.flatten().nonzero().squeeze(1)
    cols = ((image * views + partner) * n + token).flatten()[where]
    return where // ((views - 1) * 4), cols, (weight / seen_by).flatten()[where]


def view_correspondences(
    geometry: Tensor, grid: tuple[int, int], view_offset: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """The entries of C for the ``V`` views of one image (``geometry`` ``[V, 5]``), nodes numbered from
    ``view_offset * h*w``."""
    rows, cols, vals = image_correspondences(geometry[None], grid)
    base = view_offset * grid[0] * grid[1]
    return rows + base, cols + base, vals
