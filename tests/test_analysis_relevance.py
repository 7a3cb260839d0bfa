"""ULTra relevance maps: batched maps equal the plain reference, later blocks do not count, errors are named."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_VIT

from ultra.analysis.relevance import _recording, anchor_targets, relevance_maps
from ultra.backbone.vit import FrozenViT


def _reference_map(vit: FrozenViT, image: torch.Tensor, layer: int, target: int, score: str) -> torch.Tensor:
    """The rollout of DESIGN.md section 8 written plainly: one backward per target, full N x N matrices."""
    prefix = vit.num_prefix_tokens
    with torch.enable_grad(), _recording(vit, layer) as store:
        pixels = vit.normalize(image[None]).requires_grad_(True)
        tokens = vit.model.forward_intermediates(
            pixels, indices=[layer], norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
        )[0][0]
        token = tokens[target]
        f = token.norm() if score == "norm" else F.normalize(token, dim=0).sum()
        grads = torch.autograd.grad(f, [store["A"][b] for b in range(layer + 1)])
    n = store["A"][0].shape[-1]
    r = torch.eye(n)
    for b in range(layer + 1):
        weighted = (grads[b][0] * store["A"][b][0].detach()).clamp(min=0).mean(0)
        r = r + weighted @ r
    row = r[prefix + target, prefix:].clone()
    others = row.clone()
    others[target] = -float("inf")
    row[target] = others.max()
    return row


@pytest.mark.parametrize("score", ["norm", "unit_sum"])
@pytest.mark.parametrize("layer", [1, 2])
def test_batched_maps_equal_the_plain_reference(tiny_vit, score, layer):
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(layer))
    result = relevance_maps(tiny_vit, image, layer=layer, score=score, chunk=5)
    assert result.maps.shape == (12, 3, 4) and result.grid == (3, 4)
    for target in range(12):
        reference = _reference_map(tiny_vit, image, layer, target, score).view(3, 4)
        assert (result.maps[target] - reference).abs().max() <= 1e-5, target


def test_a_map_at_layer_l_ignores_later_blocks_but_not_block_l():
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    vit = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    before = relevance_maps(vit, image, layer=1).maps
    with torch.no_grad():
        for p in vit.model.blocks[2].parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(relevance_maps(vit, image, layer=1).maps, before)
    with torch.no_grad():
        for p in vit.model.blocks[1].attn.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(relevance_maps(vit, image, layer=1).maps, before)


def test_register_tokens_and_anchor_grid(tiny_vit):
    vit = FrozenViT("vit_small_patch14_reg4_dinov2", weights="random", model_kwargs=TINY_VIT)
    flags = [b.attn.fused_attn for b in vit.model.blocks]
    image = torch.rand(3, 56, 56)
    result = relevance_maps(vit, image, layer=2, stride=2)
    assert [b.attn.fused_attn for b in vit.model.blocks] == flags  # restored
    assert all(not b.attn.attn_drop._forward_hooks for b in vit.model.blocks)
    assert result.targets.tolist() == anchor_targets((4, 4), 2).tolist() == [5, 7, 13, 15]
    assert result.maps.shape == (4, 4, 4)
    full = relevance_maps(vit, image, layer=2)
    assert torch.allclose(full.maps[result.targets], result.maps, atol=1e-6)


def test_relevance_errors(tiny_vit):
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        relevance_maps(tiny_vit, torch.rand(3, 32, 32), layer=7)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        relevance_maps(tiny_vit, torch.rand(3, 8, 32))
    with pytest.raises(ValueError, match=r"targets must be patch indices in \[0, 4\)"):
        relevance_maps(tiny_vit, torch.rand(3, 32, 32), targets=torch.tensor([4]))
    with pytest.raises(ValueError, match="score must be one of"):
        relevance_maps(tiny_vit, torch.rand(3, 32, 32), score="max")
