"""ULTra relevance maps of latent tokens: gradient-weighted attention rollout, many targets at once.

For a target patch token ``t`` of layer ``l`` (the output of block ``l``, as everywhere in ultra)
and a scalar ``f`` of it (its norm, or the sum of the L2-normalised token), with ``A_b`` the
attention probabilities of block ``b``::

    R <- I;  for b = 0..l:  R <- R + mean_heads(clamp+(df/dA_b * A_b)) R;   map_t = R[t, patches]

and the token's own entry replaced by the largest other entry (ULTra). Many targets share one
forward pass; their gradients come from one vectorised reverse pass per chunk of targets
(``torch.autograd.grad(..., is_grads_batched=True)``), and only row ``t`` of ``R`` is needed,
``e_t^T (I + Abar_l) ... (I + Abar_0)``, computed by vector-matrix products from the left (``O(N^2)``
per block instead of ``O(N^3)``). Each target still needs its own reverse pass: exact per-token
maps cost about as many backward passes as there are targets. A chunk holds
``chunk x heads x N^2`` gradient floats per block (about 1.2 GB for 4 targets of a 448 px
DINOv2-S/14 image); lower ``chunk`` on small machines.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbone.vit import FrozenViT
from ..errors import ConfigError

SCORES = ("norm", "unit_sum")


@dataclass
class RelevanceMaps:
    """Maps ``[T, h, w]`` of the target patches ``targets`` (row-major indices) of one image at ``layer``."""

    maps: Tensor
    targets: Tensor
    layer: int
    grid: tuple[int, int]


@contextlib.contextmanager
def _recording(vit: FrozenViT, layer: int):
    """Explicit attention in blocks 0..layer, recording each block's attention probabilities (in the graph)."""
    blocks = vit.model.blocks[: layer + 1]
    store: dict[str, list] = {"A": [None] * len(blocks)}
    hooks, fused = [], []
    for b, block in enumerate(blocks):
        attn = block.attn
        if not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise TypeError(f"block {b} of {vit.model_name} has no timm attention with explicit probabilities")
        fused.append(attn.fused_attn)
        attn.fused_attn = False

        def keep(_module, _inputs, output, b=b):
            store["A"][b] = output

        hooks.append(attn.attn_drop.register_forward_hook(keep))
    try:
        yield store
    finally:
        for hook in hooks:
            hook.remove()
        for block, flag in zip(blocks, fused):
            block.attn.fused_attn = flag


def _scalar(tokens: Tensor, score: str) -> Tensor:
    if score == "norm":
        return tokens.norm(dim=-1)
    return F.normalize(tokens, dim=-1).sum(-1)


def anchor_targets(grid: tuple[int, int], stride: int) -> Tensor:
    """Row-major patch indices of a grid of anchors every ``stride`` tokens (offset to the cells' centres)."""
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    h, w = grid
    ys = torch.arange(stride // 2, h, stride)
    xs = torch.arange(stride // 2, w, stride)
    return (ys[:, None] * w + xs[None, :]).flatten()


def relevance_maps(
    vit: FrozenViT,
    image: Tensor,
    layer: int = -1,
    targets: Tensor | None = None,
    stride: int | None = None,
    score: str = "norm",
    chunk: int = 4,
) -> RelevanceMaps:
    """Relevance maps of target patch tokens of one image (``[3, H, W]`` in [0, 1], sides multiples of the patch).

    ``targets``: patch indices (row-major); default all patches, or an anchor grid with ``stride``.
    ``chunk`` targets share one vectorised reverse pass (memory: ``chunk x heads x N^2`` floats per block).
    """
    if score not in SCORES:
        raise ConfigError(f"score must be one of {SCORES}, got '{score}'")
    layer = vit.check_layers([layer])[0]
    grid = vit.check_images(image[None])
    n_patches = grid[0] * grid[1]
    if targets is None:
        targets = anchor_targets(grid, stride) if stride else torch.arange(n_patches)
    targets = torch.as_tensor(targets, dtype=torch.long).flatten()
    if targets.numel() == 0 or targets.min() < 0 or targets.max() >= n_patches:
        raise ConfigError(f"targets must be patch indices in [0, {n_patches}) for a {grid[0]}x{grid[1]} grid")
    prefix = vit.num_prefix_tokens
    device = vit.mean.device
    with torch.enable_grad(), _recording(vit, layer) as store:
        pixels = vit.normalize(image[None].to(device)).requires_grad_(True)
        tokens = vit.model.forward_intermediates(
            pixels, indices=[layer], norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
        )[0][0]  # [hw, D]
        maps = [_rollout(store, _scalar(tokens[part], score), prefix + part, layer) for part in targets.split(chunk)]
    maps = torch.cat(maps)[:, prefix:]
    rows = torch.arange(targets.numel())
    others = maps.clone()
    others[rows, targets] = -float("inf")
    maps[rows, targets] = others.max(1).values  # the token's own entry: the largest other entry
    return RelevanceMaps(maps.reshape(-1, *grid).detach().cpu(), targets, layer, grid)


def _rollout(store: dict, scalars: Tensor, rows: Tensor, layer: int) -> Tensor:
    """Rows ``rows`` of the rollout for the scalars of one chunk of targets: ``[T, N]``."""
    t = scalars.numel()
    attention = [store["A"][b] for b in range(layer + 1)]
    grads = torch.autograd.grad(
        scalars, attention, grad_outputs=torch.eye(t, device=scalars.device), is_grads_batched=True, retain_graph=True
    )
    v = F.one_hot(rows, attention[0].shape[-1]).to(scalars.dtype)
    for b in range(layer, -1, -1):
        weighted = grads[b][:, 0].mul_(attention[b][0].detach()).clamp_(min=0).mean(1)  # [T, N, N]
        v = v + torch.bmm(v[:, None, :], weighted)[:, 0]
    return v.detach()
