"""The backbone's arithmetic: bf16 runs in bfloat16 and returns float32 tokens close to float32's, auto follows the
hardware, the choice is recorded in the backbone's description and refused when misspelt."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_VIT

from ultra.backbone import precision as precision_module
from ultra.backbone.precision import resolve_precision
from ultra.backbone.vit import FrozenViT
from ultra.errors import ConfigError


def _tiny(precision: str) -> FrozenViT:
    return FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT, precision=precision)


def test_bf16_runs_the_blocks_in_bfloat16_and_returns_float32_tokens_close_to_fp32():
    images = torch.rand(2, 3, 32, 48)
    fp32, bf16 = _tiny("fp32"), _tiny("bf16")
    seen = []
    hook = bf16.model.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        low = bf16(images, kinds=["x", "q", "k", "v", "n"])
    finally:
        hook.remove()
    assert seen == [torch.bfloat16]
    high = fp32(images, kinds=["x", "q", "k", "v", "n"])
    for key in high.keys():
        assert low[key].dtype == torch.float32
        cosine = F.cosine_similarity(low[key].flatten(0, 2), high[key].flatten(0, 2), dim=-1)
        assert cosine.min() > 0.99, key
        assert not torch.equal(low[key], high[key])  # it really ran in another arithmetic


def test_fp32_runs_in_float32():
    vit, seen = _tiny("fp32"), []
    vit.model.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    vit(torch.rand(1, 3, 32, 32))
    assert seen == [torch.float32]


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert _tiny("auto").describe()["precision"] == "bf16"
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert _tiny("auto").describe()["precision"] == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_a_misspelt_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="precision must be one of .*'float16'"):
        _tiny("float16")
