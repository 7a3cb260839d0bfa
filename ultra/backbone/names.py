"""The names of the frozen ViTs: the default, the field's short aliases, and their timm names (timm is imported only
to check a name)."""

from __future__ import annotations

import difflib

from ..errors import UnknownModelError

DEFAULT_BACKBONE = "vit_small_patch14_dinov2"
"""The frozen ViT every command and config uses when none is named (DINOv2 ViT-S/14)."""

MODEL_ALIASES = {
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
}
"""Short names used by the field's papers -> timm model names (with their pretrained tag)."""


def resolve_model_name(name: str) -> str:
    """The timm name for ``name`` (an alias such as ``dino_vits8`` or any timm model name)."""
    import timm

    resolved = MODEL_ALIASES.get(name, name)
    if not timm.is_model(resolved.split(".")[0]):
        candidates = list(MODEL_ALIASES) + timm.list_models("vit_*")
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownModelError(f"unknown model '{name}': not a timm model nor one of {sorted(MODEL_ALIASES)}{hint}")
    arch, _, tag = resolved.partition(".")
    if tag and resolved not in timm.list_pretrained(f"{arch}.*"):
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{arch}.*")]
        raise UnknownModelError(f"unknown tag '{tag}' of the timm model {arch}: its tags are {tags}")
    return resolved
