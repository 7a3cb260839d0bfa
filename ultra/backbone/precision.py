"""The frozen backbone's arithmetic: bfloat16 autocast where the hardware runs it natively, float32 elsewhere.

``auto`` (the default everywhere) resolves per device: bfloat16 on a CUDA device that supports it and on a CPU with
AMX or AVX512-BF16 instructions; float32 on any other CPU (there bfloat16 is emulated and slower than float32).
``bf16`` and ``fp32`` force one. Tokens leave the backbone as float32 whatever ran inside it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # the precisions' names need no torch (a command's parser, the ONNX runtime path)
    import torch

PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str, option: str = "precision") -> str:
    """Refuse a precision that is not one of :data:`PRECISIONS`, naming the option."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{option} must be one of {PRECISIONS}, got '{precision}'")
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products in hardware (AMX tiles or AVX512-BF16)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 natively (the ``auto`` rule)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``bf16`` or ``fp32``: what ``precision`` means on ``device``."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context the backbone's forward runs in for a resolved ``precision`` (``bf16`` or ``fp32``)."""
    import torch

    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
